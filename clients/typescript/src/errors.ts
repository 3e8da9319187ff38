/**
 * The SDK's typed errors. Every failure the app can see is a `ChatError`
 * with a `code`: the contract's error code where the server gave one, or one
 * of the SDK's own (`invalid_argument`, `closed`, `network`, `protocol`).
 */
import type { ErrorCode } from './wire.js';

export type ChatErrorCode = ErrorCode | 'invalid_argument' | 'closed' | 'network' | 'protocol';

export class ChatError extends Error {
  readonly code: ChatErrorCode;
  constructor(code: ChatErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ChatError';
    this.code = code;
  }
}

/** An argument broke the contract's rules; nothing was sent. */
export class InvalidArgumentError extends ChatError {
  readonly argument: string;
  constructor(argument: string, message: string) {
    super('invalid_argument', `${argument}: ${message}`);
    this.name = 'InvalidArgumentError';
    this.argument = argument;
  }
}

/** A REST call answered with an error status (`status` 0: no answer). */
export class ApiError extends ChatError {
  readonly status: number;
  constructor(status: number, code: ChatErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ApiError';
    this.status = status;
  }
}

/** The server refused a `send` for good (`forbidden`, `invalid_request`). */
export class SendError extends ChatError {
  readonly room: string;
  readonly clientMsgId: string;
  constructor(code: ChatErrorCode, message: string, room: string, clientMsgId: string) {
    super(code, message);
    this.name = 'SendError';
    this.room = room;
    this.clientMsgId = clientMsgId;
  }
}

/** The client was closed (or never connected) before the operation finished. */
export class ClosedError extends ChatError {
  constructor(message = 'the client is closed') {
    super('closed', message);
    this.name = 'ClosedError';
  }
}
