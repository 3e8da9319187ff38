/**
 * The WebSocket wire format: parsing server frames from text and writing
 * client frames. No I/O here, so it is tested with strings.
 *
 * A frame that is not JSON, has no known `type`, or lacks a field of the
 * right kind is returned as a `FrameProblem`, never thrown: the client
 * reports it and carries on. Extra fields are allowed (the contract may add
 * them). The field table is typed against `ServerFrame`, so a change of the
 * wire types that is not reflected here fails to compile.
 */
import type { ClientFrame, ServerFrame } from './wire.js';

type FieldKind = 'string' | 'uint' | 'bool' | 'any' | 'seqMap' | 'optString';

type FieldsOf<T extends { type: string }> = {
  [K in Exclude<keyof T, 'type'>]-?: FieldKind;
};

type FrameTable = {
  [K in ServerFrame['type']]: FieldsOf<Extract<ServerFrame, { type: K }>>;
};

const FRAME_FIELDS: FrameTable = {
  welcome: { server_id: 'string', user: 'string', session: 'string' },
  message: {
    room: 'string',
    seq: 'uint',
    id: 'string',
    from: 'string',
    body: 'string',
    ts: 'uint',
    client_msg_id: 'optString',
  },
  ack: { client_msg_id: 'optString', room: 'string', seq: 'uint', id: 'string' },
  resumed: { rooms: 'seqMap' },
  typing: { room: 'string', user: 'string' },
  pong: { nonce: 'any' },
  reconnect: { reason: 'string', after_ms: 'uint' },
  error: { code: 'string', message: 'string', client_msg_id: 'optString' },
  read: { room: 'string', user: 'string', seq: 'uint' },
  presence: { room: 'string', user: 'string', online: 'bool', ts: 'uint' },
};

/** Why a frame from the server was skipped. */
export interface FrameProblem {
  kind: 'not_json' | 'not_an_object' | 'unknown_type' | 'bad_field' | 'binary';
  detail: string;
  /** The raw text, cut to 200 characters. */
  text: string;
}

export type ParseResult = { ok: true; frame: ServerFrame } | { ok: false; problem: FrameProblem };

function isUint(v: unknown): boolean {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function fits(kind: FieldKind, v: unknown): boolean {
  switch (kind) {
    case 'string':
      return typeof v === 'string';
    case 'uint':
      return isUint(v);
    case 'bool':
      return typeof v === 'boolean';
    case 'any':
      return true;
    case 'optString':
      return v === undefined || v === null || typeof v === 'string';
    case 'seqMap':
      return (
        typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every(isUint)
      );
  }
}

export function parseServerFrame(text: string): ParseResult {
  const problem = (kind: FrameProblem['kind'], detail: string): ParseResult => ({
    ok: false,
    problem: { kind, detail, text: text.slice(0, 200) },
  });
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return problem('not_json', e instanceof Error ? e.message : 'bad JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return problem('not_an_object', 'a frame must be a JSON object');
  }
  const object = value as Record<string, unknown>;
  const type = object['type'];
  if (typeof type !== 'string' || !Object.prototype.hasOwnProperty.call(FRAME_FIELDS, type)) {
    return problem('unknown_type', `unknown frame type ${JSON.stringify(type)}`);
  }
  const fields = FRAME_FIELDS[type as ServerFrame['type']] as Record<string, FieldKind>;
  for (const [name, kind] of Object.entries(fields)) {
    if (!fits(kind, object[name])) {
      return problem('bad_field', `"${type}" frame: field "${name}" is not a ${kind}`);
    }
  }
  return { ok: true, frame: object as ServerFrame };
}

export function encodeClientFrame(frame: ClientFrame): string {
  return JSON.stringify(frame);
}
