/**
 * `@scalechat/client`: the TypeScript SDK of the chat service. See README.md.
 */
export {
  ChatClient,
  newClientMsgId,
  type ChatClientOptions,
  type ChatEvents,
  type ConnectionState,
  type PresenceEvent,
  type ReadEvent,
  type SendAck,
  type SessionInfo,
  type TypingEvent,
} from './client.js';
export { ApiError, ChatError, ClosedError, InvalidArgumentError, SendError, type ChatErrorCode } from './errors.js';
export type { FrameProblem } from './frames.js';
export { fetchDevToken, type FetchLike } from './rest.js';
export type { GetToken } from './token.js';
export type { WebSocketConstructor, WebSocketFactory, WebSocketLike } from './transport.js';
export { limits } from './validate.js';
export type {
  ClientFrame,
  CreateRoomRequest,
  ErrorCode,
  Member,
  MemberRead,
  Message,
  ReadMarker,
  Room,
  ServerFrame,
  ServerInfo,
  ServerState,
  TokenResponse,
  TokenScope,
} from './wire.js';
