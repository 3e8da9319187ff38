/**
 * What the client needs from a WebSocket: the browser's `WebSocket`, the
 * `ws` package on Node, or a fake in tests all fit. The client only sets the
 * `on*` handlers, calls `send` and `close`, and reads `readyState`.
 */
import { ChatError } from './errors.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- the handlers' event
 * types differ between implementations (DOM events, `ws` events, fakes);
 * `any` lets each of them fit. The client reads `data` of message events and
 * `code` of close events only. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** `readyState` of an open socket (the same in every implementation). */
export const OPEN = 1;

export type WebSocketFactory = (url: string) => WebSocketLike;

export type WebSocketConstructor = new (url: string) => unknown;

export function resolveWebSocketFactory(
  factory: WebSocketFactory | undefined,
  ctor: WebSocketConstructor | undefined,
): WebSocketFactory {
  if (factory) return factory;
  const Ctor = ctor ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!Ctor) {
    throw new ChatError(
      'invalid_argument',
      'no global WebSocket (Node 20): pass the `WebSocket` option, e.g. the `ws` package',
    );
  }
  return (url) => new Ctor(url) as WebSocketLike;
}

const decoder = new TextDecoder();

/** The text of a message event: a string, or bytes some implementations hand over. */
export function textOf(data: unknown): string | undefined {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return decoder.decode(data);
  if (ArrayBuffer.isView(data)) return decoder.decode(data);
  return undefined;
}

/** The socket URL with the ticket as a query parameter. */
export function withTicket(url: string, ticket: string): string {
  const separator = url.includes('?') ? '&' : '?';
  return `${url}${separator}ticket=${encodeURIComponent(ticket)}`;
}
