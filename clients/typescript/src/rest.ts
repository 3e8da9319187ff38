/**
 * The REST half of the contract: one `request` that adds the token, retries
 * once with a fresh token after a 401, and turns error bodies into
 * `ApiError`s; then one small method per endpoint, arguments checked first.
 */
import { ApiError, ChatError, type ChatErrorCode } from './errors.js';
import type { GetToken } from './token.js';
import { TokenSource } from './token.js';
import {
  checkBody,
  checkClientMsgId,
  checkLimit,
  checkRoomId,
  checkRoomName,
  checkSeq,
  checkUserId,
} from './validate.js';
import type {
  ConnectResponse,
  CreateRoomRequest,
  ErrorBody,
  Member,
  MemberList,
  MemberRead,
  Message,
  MessageList,
  PostMessageRequest,
  ReadList,
  ReadMarker,
  Room,
  RoomList,
  ServerInfo,
  ServerList,
  TokenRequest,
  TokenResponse,
} from './wire.js';

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

const STATUS_CODES: Record<number, ChatErrorCode> = {
  400: 'invalid_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  413: 'payload_too_large',
  429: 'rate_limited',
  503: 'unavailable',
};

interface RequestOptions {
  body?: unknown;
  query?: Record<string, number | undefined>;
  /** false: no Authorization header (dev tokens). */
  auth?: boolean;
}

async function errorOf(response: Response): Promise<ApiError> {
  let code: ChatErrorCode = STATUS_CODES[response.status] ?? (response.status >= 500 ? 'unavailable' : 'invalid_request');
  let message = `HTTP ${response.status}`;
  try {
    const body = (await response.json()) as Partial<ErrorBody>;
    if (body?.error && typeof body.error.code === 'string') {
      code = body.error.code;
      if (typeof body.error.message === 'string') message = body.error.message;
    }
  } catch {
    // Not the contract's error body (a proxy's page): the status decides.
  }
  return new ApiError(response.status, code, message);
}

export class RestClient {
  private readonly base: string;

  constructor(
    apiUrl: string,
    private readonly tokens: TokenSource,
    private readonly fetchImpl: FetchLike,
  ) {
    this.base = apiUrl.replace(/\/+$/, '');
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    let url = this.base + path;
    if (options.query) {
      const params = Object.entries(options.query)
        .filter((entry): entry is [string, number] => entry[1] !== undefined)
        .map(([k, v]) => `${encodeURIComponent(k)}=${v}`);
      if (params.length > 0) url += `?${params.join('&')}`;
    }
    const useAuth = options.auth !== false;
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = {};
      let token: string | undefined;
      if (useAuth) {
        token = await this.tokens.get();
        headers['authorization'] = `Bearer ${token}`;
      }
      if (options.body !== undefined) headers['content-type'] = 'application/json';
      let response: Response;
      try {
        response = await this.fetchImpl(url, {
          method,
          headers,
          body: options.body === undefined ? undefined : JSON.stringify(options.body),
        });
      } catch (e) {
        throw new ApiError(0, 'network', `${method} ${path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
      }
      if (response.status === 401 && token !== undefined && attempt === 0) {
        // Expired or revoked: ask the app for a new token and try once more.
        this.tokens.invalidate(token);
        continue;
      }
      if (!response.ok) throw await errorOf(response);
      if (response.status === 204) return undefined as T;
      try {
        return (await response.json()) as T;
      } catch (e) {
        throw new ApiError(response.status, 'protocol', `${method} ${path}: the answer is not JSON`, { cause: e });
      }
    }
  }

  // --- rooms ----------------------------------------------------------------

  async listRooms(): Promise<Room[]> {
    return (await this.request<RoomList>('GET', '/v1/rooms')).rooms;
  }

  async getRoom(room: string): Promise<Room> {
    return this.request<Room>('GET', `/v1/rooms/${enc(checkRoomId(room))}`);
  }

  async createRoom(request: CreateRoomRequest): Promise<Room> {
    checkRoomName(request.name);
    request.members?.forEach((m, i) => checkUserId(m, `members[${i}]`));
    if (request.created_by != null) checkUserId(request.created_by, 'created_by');
    return this.request<Room>('POST', '/v1/rooms', { body: request });
  }

  /** Services only: the rooms of `user`, with that user's read state. */
  async roomsOfUser(user: string): Promise<Room[]> {
    return (await this.request<RoomList>('GET', `/v1/users/${enc(checkUserId(user))}/rooms`)).rooms;
  }

  // --- members --------------------------------------------------------------

  async listMembers(room: string): Promise<Member[]> {
    return (await this.request<MemberList>('GET', `/v1/rooms/${enc(checkRoomId(room))}/members`)).members;
  }

  async addMember(room: string, user: string): Promise<void> {
    await this.request<void>('PUT', `/v1/rooms/${enc(checkRoomId(room))}/members/${enc(checkUserId(user))}`);
  }

  async removeMember(room: string, user: string): Promise<void> {
    await this.request<void>('DELETE', `/v1/rooms/${enc(checkRoomId(room))}/members/${enc(checkUserId(user))}`);
  }

  // --- messages -------------------------------------------------------------

  async postMessage(room: string, request: PostMessageRequest): Promise<Message> {
    checkRoomId(room);
    checkBody(request.body);
    if (request.client_msg_id != null) checkClientMsgId(request.client_msg_id);
    if (request.from != null) checkUserId(request.from, 'from');
    return this.request<Message>('POST', `/v1/rooms/${enc(room)}/messages`, { body: request });
  }

  /** History: `after`, `before` (exclusive bounds), or neither for the latest. */
  async history(room: string, page: { after?: number; before?: number; limit?: number }): Promise<Message[]> {
    checkRoomId(room);
    if (page.after !== undefined) checkSeq(page.after, 'after');
    if (page.before !== undefined) checkSeq(page.before, 'before');
    if (page.limit !== undefined) checkLimit(page.limit);
    const list = await this.request<MessageList>('GET', `/v1/rooms/${enc(room)}/messages`, {
      query: { after: page.after, before: page.before, limit: page.limit },
    });
    return list.messages;
  }

  // --- read state (v1.1) ----------------------------------------------------

  async markRead(room: string, seq: number): Promise<ReadMarker> {
    checkRoomId(room);
    checkSeq(seq);
    return this.request<ReadMarker>('PUT', `/v1/rooms/${enc(room)}/read`, { body: { seq } });
  }

  async reads(room: string): Promise<MemberRead[]> {
    return (await this.request<ReadList>('GET', `/v1/rooms/${enc(checkRoomId(room))}/reads`)).reads;
  }

  // --- connection -----------------------------------------------------------

  async connectTicket(): Promise<ConnectResponse> {
    return this.request<ConnectResponse>('POST', '/v1/connect');
  }

  async servers(): Promise<ServerInfo[]> {
    return (await this.request<ServerList>('GET', '/v1/servers')).servers;
  }
}

function enc(segment: string): string {
  return encodeURIComponent(segment);
}

/**
 * A development token from `POST /v1/auth/token` (only where the server has
 * development tokens on, as in the local mode).
 */
export async function fetchDevToken(
  apiUrl: string,
  user: string,
  options: { scope?: TokenRequest['scope']; fetch?: FetchLike } = {},
): Promise<TokenResponse> {
  checkUserId(user);
  const fetchImpl = options.fetch ?? globalFetch();
  const rest = new RestClient(apiUrl, new TokenSource(() => ''), fetchImpl);
  const body: TokenRequest = options.scope ? { user, scope: options.scope } : { user };
  return rest.request<TokenResponse>('POST', '/v1/auth/token', { body, auth: false });
}

export function globalFetch(): FetchLike {
  if (typeof globalThis.fetch !== 'function') {
    throw new ChatError('invalid_argument', 'no global fetch: pass the `fetch` option');
  }
  return (input, init) => globalThis.fetch(input, init);
}
