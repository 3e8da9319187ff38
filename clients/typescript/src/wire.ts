/**
 * Every wire type the SDK uses, in one place.
 *
 * Types come from `generated/openapi.ts` (written by `npm run generate`
 * from the server's `/openapi.json`); nothing else in the SDK imports the
 * generated file, so switching a type from hand-written to generated is a
 * change of this file only.
 *
 * TEMPORARY: the `openapi.json` checked in today describes contract v1.0.
 * The v1.1 additions (read state, service tokens, the WebSocket frames as
 * `ClientFrame` / `ServerFrame`) are written below by hand from
 * `shared/PROTOCOL.md` v1.1, each marked `v1.1 (hand-written)`. When the
 * server's document carries them, replace each with its generated
 * `Schemas['...']` and delete the hand-written part.
 */
import type { components } from './generated/openapi.js';

type Schemas = components['schemas'];

// --- generated (contract v1.0) -------------------------------------------

export type Message = Schemas['Message'];
export type Member = Schemas['Member'];
export type MemberList = Schemas['MemberList'];
export type MessageList = Schemas['MessageList'];
export type ConnectResponse = Schemas['ConnectResponse'];
export type ServerInfo = Schemas['ServerInfo'];
export type ServerList = Schemas['ServerList'];
export type ServerState = Schemas['ServerState'];
export type ErrorBody = Schemas['ErrorBody'];
export type ErrorCode = Schemas['ErrorCode'];

// --- v1.1 (hand-written, temporary) --------------------------------------

/** v1.1 (hand-written): who a token speaks for. */
export type TokenScope = 'user' | 'service';

/** v1.1 (hand-written): a Room carries the caller's read state. Optional
 * here because a v1.0 server leaves the fields out. */
export type Room = Schemas['Room'] & {
  last_seq?: number;
  read_seq?: number;
  unread?: number;
};

export interface RoomList {
  rooms: Room[];
}

/** v1.1 (hand-written): `scope` on dev tokens. */
export type TokenRequest = Schemas['TokenRequest'] & { scope?: TokenScope | null };
export type TokenResponse = Schemas['TokenResponse'] & { scope?: TokenScope };

/** v1.1 (hand-written): `created_by` for services. */
export type CreateRoomRequest = Schemas['CreateRoomRequest'] & { created_by?: string | null };

/** v1.1 (hand-written): `from` for services. */
export type PostMessageRequest = Schemas['PostMessageRequest'] & { from?: string | null };

/** v1.1 (hand-written): `PUT /v1/rooms/{room}/read`. */
export interface ReadRequest {
  seq: number;
}

/** v1.1 (hand-written): the caller's marker after `PUT .../read`. */
export interface ReadMarker {
  room: string;
  read_seq: number;
}

/** v1.1 (hand-written): one member's read marker. */
export interface MemberRead {
  user: string;
  seq: number;
}

/** v1.1 (hand-written): `GET /v1/rooms/{room}/reads`. */
export interface ReadList {
  reads: MemberRead[];
}

// --- WebSocket frames (hand-written, temporary) ----------------------------
// To be generated from `components.schemas.ClientFrame` / `ServerFrame`.

export type ClientFrame =
  | { type: 'send'; room: string; body: string; client_msg_id?: string | null }
  | { type: 'resume'; rooms: { [room: string]: number } }
  | { type: 'typing'; room: string }
  | { type: 'ping'; nonce?: unknown }
  | { type: 'read'; room: string; seq: number };

export type ServerFrame =
  | { type: 'welcome'; server_id: string; user: string; session: string }
  | ({ type: 'message' } & Message)
  | { type: 'ack'; client_msg_id?: string | null; room: string; seq: number; id: string }
  | { type: 'resumed'; rooms: { [room: string]: number } }
  | { type: 'typing'; room: string; user: string }
  | { type: 'pong'; nonce?: unknown }
  | { type: 'reconnect'; reason: string; after_ms: number }
  | { type: 'error'; code: ErrorCode; message: string; client_msg_id?: string | null }
  | { type: 'read'; room: string; user: string; seq: number }
  | { type: 'presence'; room: string; user: string; online: boolean; ts: number };
