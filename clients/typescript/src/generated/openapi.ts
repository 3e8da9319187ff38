// PLACEHOLDER until chat-local is built; overwritten by `npm run generate`.
export interface components {
  schemas: {
    Message: { room: string; seq: number; id: string; from: string; body: string; ts: number; client_msg_id?: string | null };
    Room: { id: string; name: string; created_by: string; created_at: number; member_count: number };
    Member: { user: string; online: boolean };
    MemberList: { members: components['schemas']['Member'][] };
    MessageList: { messages: components['schemas']['Message'][] };
    ConnectResponse: { url: string; ticket: string; server_id: string; expires_in_ms: number };
    ServerState: 'ready' | 'draining';
    ServerInfo: { id: string; url: string; state: components['schemas']['ServerState']; connections: number; last_seen_ms: number };
    ServerList: { servers: components['schemas']['ServerInfo'][] };
    ErrorCode: 'unauthorized' | 'forbidden' | 'not_found' | 'invalid_request' | 'conflict' | 'payload_too_large' | 'rate_limited' | 'no_chat_server' | 'unavailable' | 'invalid_frame';
    ErrorDetail: { code: components['schemas']['ErrorCode']; message: string };
    ErrorBody: { error: components['schemas']['ErrorDetail'] };
    TokenRequest: { user: string };
    TokenResponse: { token: string; user: string; expires_at: number };
    CreateRoomRequest: { name: string; members?: string[] | null };
    PostMessageRequest: { body: string; client_msg_id?: string | null };
  };
}
