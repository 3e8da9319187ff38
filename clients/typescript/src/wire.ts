/**
 * Every wire type the SDK uses, in one place, all generated.
 *
 * They come from `generated/openapi.ts`, which `npm run generate` writes
 * from the server's `/openapi.json` (checked in as `openapi.json`; the
 * WebSocket frames are in it as `ClientFrame` and `ServerFrame`). Nothing
 * else in the SDK imports the generated file, and nothing here is written
 * by hand: a change of the contract is a change of `openapi.json`, then
 * `npm run generate`, and the compiler shows what has to follow.
 */
import type { components } from './generated/openapi.js';

type Schemas = components['schemas'];

export type Message = Schemas['Message'];
/** `last_seq`, `read_seq` and `unread` are the caller's read state (v1.1). */
export type Room = Schemas['Room'];
export type RoomList = Schemas['RoomList'];
export type CreateRoomRequest = Schemas['CreateRoomRequest'];
export type Member = Schemas['Member'];
export type MemberList = Schemas['MemberList'];
export type MessageList = Schemas['MessageList'];
export type PostMessageRequest = Schemas['PostMessageRequest'];
export type ReadRequest = Schemas['ReadRequest'];
export type ReadMarker = Schemas['ReadMarker'];
export type MemberRead = Schemas['MemberRead'];
export type ReadList = Schemas['ReadList'];
export type ConnectResponse = Schemas['ConnectResponse'];
export type ServerInfo = Schemas['ServerInfo'];
export type ServerList = Schemas['ServerList'];
export type ServerState = Schemas['ServerState'];
export type TokenRequest = Schemas['TokenRequest'];
export type TokenResponse = Schemas['TokenResponse'];
export type TokenScope = Schemas['TokenScope'];
export type ErrorBody = Schemas['ErrorBody'];
export type ErrorCode = Schemas['ErrorCode'];

/** WebSocket frames, client to server. */
export type ClientFrame = Schemas['ClientFrame'];
/** WebSocket frames, server to client. */
export type ServerFrame = Schemas['ServerFrame'];
