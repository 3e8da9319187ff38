import { describe, expect, it } from 'vitest';
import { encodeClientFrame, parseServerFrame } from '../src/frames.js';

describe('parseServerFrame', () => {
  it('accepts every frame type of the contract', () => {
    const frames = [
      { type: 'welcome', server_id: 'chat-1', user: 'alice', session: 's1' },
      { type: 'message', room: 'r', seq: 1, id: 'm', from: 'bob', body: 'hi', ts: 5, client_msg_id: null },
      { type: 'ack', client_msg_id: 'c1', room: 'r', seq: 2, id: 'm2' },
      { type: 'resumed', rooms: { r: 3 } },
      { type: 'typing', room: 'r', user: 'bob' },
      { type: 'pong', nonce: { any: [1] } },
      { type: 'reconnect', reason: 'draining', after_ms: 250 },
      { type: 'error', code: 'forbidden', message: 'no', client_msg_id: 'c1' },
      { type: 'read', room: 'r', user: 'bob', seq: 4 },
      { type: 'presence', room: 'r', user: 'bob', online: true, ts: 9 },
    ];
    for (const frame of frames) {
      const parsed = parseServerFrame(JSON.stringify(frame));
      expect(parsed, JSON.stringify(frame)).toEqual({ ok: true, frame });
    }
  });

  it('tolerates extra fields and an absent optional client_msg_id', () => {
    const parsed = parseServerFrame('{"type":"error","code":"invalid_frame","message":"x","new_field":1}');
    expect(parsed.ok).toBe(true);
  });

  it.each([
    ['not json', 'not_json'],
    ['{', 'not_json'],
    ['[]', 'not_an_object'],
    ['42', 'not_an_object'],
    ['null', 'not_an_object'],
    ['{"no_type":1}', 'unknown_type'],
    ['{"type":7}', 'unknown_type'],
    ['{"type":"explode"}', 'unknown_type'],
    ['{"type":"toString"}', 'unknown_type'],
    ['{"type":"__proto__"}', 'unknown_type'],
    ['{"type":"message","room":"r","seq":-1,"id":"m","from":"a","body":"b","ts":1}', 'bad_field'],
    ['{"type":"message","room":"r","seq":1.5,"id":"m","from":"a","body":"b","ts":1}', 'bad_field'],
    ['{"type":"message","room":"r","seq":"1","id":"m","from":"a","body":"b","ts":1}', 'bad_field'],
    ['{"type":"message","room":"r","seq":1,"id":"m","from":"a","ts":1}', 'bad_field'],
    ['{"type":"ack","client_msg_id":5,"room":"r","seq":1,"id":"m"}', 'bad_field'],
    ['{"type":"resumed","rooms":{"r":"3"}}', 'bad_field'],
    ['{"type":"resumed","rooms":[1]}', 'bad_field'],
    ['{"type":"presence","room":"r","user":"u","online":"yes","ts":1}', 'bad_field'],
  ])('reports %s as %s', (text, kind) => {
    const parsed = parseServerFrame(text);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.problem.kind).toBe(kind);
  });
});

describe('encodeClientFrame', () => {
  it('writes the contract shapes', () => {
    expect(JSON.parse(encodeClientFrame({ type: 'send', room: 'r', body: 'hi', client_msg_id: 'c' }))).toEqual({
      type: 'send',
      room: 'r',
      body: 'hi',
      client_msg_id: 'c',
    });
    expect(JSON.parse(encodeClientFrame({ type: 'resume', rooms: { a: 0, b: 7 } }))).toEqual({
      type: 'resume',
      rooms: { a: 0, b: 7 },
    });
    expect(JSON.parse(encodeClientFrame({ type: 'read', room: 'r', seq: 3 }))).toEqual({ type: 'read', room: 'r', seq: 3 });
  });
});
