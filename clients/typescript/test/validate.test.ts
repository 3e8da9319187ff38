import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../src/errors.js';
import { checkBody, checkLimit, checkRoomName, checkSeq, checkUserId } from '../src/validate.js';

describe('argument checks', () => {
  it('follow the contract alphabet for user ids', () => {
    for (const ok of ['alice', 'a.b-c_D9', 'x'.repeat(64)]) expect(checkUserId(ok)).toBe(ok);
    for (const bad of ['', 'x'.repeat(65), 'al ice', 'a{b}', 'a:b', 'émile', '<img src=x>', 42, null]) {
      expect(() => checkUserId(bad)).toThrow(InvalidArgumentError);
    }
  });

  it('count body bytes in UTF-8', () => {
    expect(checkBody('a'.repeat(4096))).toHaveLength(4096);
    expect(() => checkBody('a'.repeat(4097))).toThrow(InvalidArgumentError);
    expect(checkBody('é'.repeat(2048))).toHaveLength(2048);
    expect(() => checkBody('é'.repeat(2049))).toThrow(InvalidArgumentError);
    expect(() => checkBody('')).toThrow(InvalidArgumentError);
  });

  it('take seqs as integers >= 0 and limits in 1..200', () => {
    expect(checkSeq(0)).toBe(0);
    for (const bad of [-1, 1.5, Number.NaN, Infinity, '3', 2 ** 60]) expect(() => checkSeq(bad)).toThrow(InvalidArgumentError);
    expect(checkLimit(200)).toBe(200);
    for (const bad of [0, 201, 2.5]) expect(() => checkLimit(bad)).toThrow(InvalidArgumentError);
  });

  it('bound room names in characters', () => {
    expect(checkRoomName('é'.repeat(100))).toHaveLength(100);
    expect(() => checkRoomName('é'.repeat(101))).toThrow(InvalidArgumentError);
    expect(() => checkRoomName('')).toThrow(InvalidArgumentError);
  });
});
