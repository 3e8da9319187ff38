/**
 * Argument checks done before anything is sent, with the contract's limits
 * as named values. A bad argument is the app's bug: it fails at once with an
 * `InvalidArgumentError` instead of as a server error later.
 */
import { InvalidArgumentError } from './errors.js';

/** The contract's limits. */
export const limits = {
  maxBodyBytes: 4096,
  maxRoomNameChars: 100,
  maxClientMsgIdChars: 128,
  maxHistoryLimit: 200,
  maxUserIdChars: 64,
} as const;

const USER_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const encoder = new TextEncoder();

export function checkUserId(user: unknown, argument = 'user'): string {
  if (typeof user !== 'string' || !USER_ID.test(user)) {
    throw new InvalidArgumentError(argument, 'must be 1-64 characters of [A-Za-z0-9_.-]');
  }
  return user;
}

export function checkRoomId(room: unknown, argument = 'room'): string {
  if (typeof room !== 'string' || room.length === 0) {
    throw new InvalidArgumentError(argument, 'must be a non-empty room id');
  }
  return room;
}

export function checkBody(body: unknown): string {
  if (typeof body !== 'string' || body.length === 0) {
    throw new InvalidArgumentError('body', 'must be a non-empty string');
  }
  const bytes = encoder.encode(body).length;
  if (bytes > limits.maxBodyBytes) {
    throw new InvalidArgumentError('body', `is ${bytes} bytes of UTF-8; at most ${limits.maxBodyBytes} are allowed`);
  }
  return body;
}

export function checkSeq(seq: unknown, argument = 'seq'): number {
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) {
    throw new InvalidArgumentError(argument, 'must be an integer >= 0');
  }
  return seq;
}

export function checkLimit(limit: unknown): number {
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > limits.maxHistoryLimit) {
    throw new InvalidArgumentError('limit', `must be an integer in 1..${limits.maxHistoryLimit}`);
  }
  return limit;
}

export function checkRoomName(name: unknown): string {
  const chars = typeof name === 'string' ? [...name].length : 0;
  if (typeof name !== 'string' || chars === 0 || chars > limits.maxRoomNameChars) {
    throw new InvalidArgumentError('name', `must be 1..${limits.maxRoomNameChars} characters`);
  }
  return name;
}

export function checkClientMsgId(id: unknown): string {
  const chars = typeof id === 'string' ? [...id].length : 0;
  if (typeof id !== 'string' || chars === 0 || chars > limits.maxClientMsgIdChars) {
    throw new InvalidArgumentError('clientMsgId', `must be 1..${limits.maxClientMsgIdChars} characters`);
  }
  return id;
}
