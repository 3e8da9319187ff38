/**
 * The store's bookkeeping, without a browser or a server: a fake client
 * emits the SDK's events and answers its calls.
 */
import { describe, expect, it } from 'vitest';
import type { ChatClient, Message, Room } from '@scalechat/client';
import { ConsoleStore } from './store.js';

type Handler = (value: never) => void;

class FakeChat {
  readonly handlers = new Map<string, Handler[]>();
  readonly sent: { room: string; body: string; clientMsgId: string; resolve: (ack: unknown) => void }[] = [];
  roomList: Room[] = [];
  memberList: { user: string; online: boolean }[] = [];
  /** Resolves the pending members call (to order it against events). */
  releaseMembers: (() => void) | undefined;
  on(event: string, handler: Handler) {
    this.handlers.set(event, [...(this.handlers.get(event) ?? []), handler]);
    return () => undefined;
  }
  emit(event: string, value: unknown) {
    for (const h of this.handlers.get(event) ?? []) (h as (v: unknown) => void)(value);
  }
  send(room: string, body: string, options: { clientMsgId: string }) {
    return new Promise((resolve) => this.sent.push({ room, body, clientMsgId: options.clientMsgId, resolve }));
  }
  rooms = {
    list: async () => this.roomList,
    get: async (id: string) => this.roomList.find((r) => r.id === id)!,
    reads: async () => [],
  };
  members = {
    list: async () => {
      const list = this.memberList;
      await new Promise<void>((resolve) => (this.releaseMembers = resolve));
      return list;
    },
  };
  messages = { latest: async () => [], before: async () => [] };
  markRead = async (room: string, seq: number) => ({ room, read_seq: seq });
  connect = async () => undefined;
  close() {}
}

const tick = () => new Promise((r) => setTimeout(r, 0));

function room(id: string, lastSeq = 0, readSeq = 0): Room {
  return { id, name: id, created_by: 'alice', created_at: 1, member_count: 2, last_seq: lastSeq, read_seq: readSeq, unread: lastSeq - readSeq };
}

function message(room: string, seq: number, from: string, body: string, clientMsgId: string | null = null): Message {
  return { room, seq, id: `m${seq}`, from, body, ts: 1000 + seq, client_msg_id: clientMsgId };
}

async function storeWith(rooms: Room[]) {
  const chat = new FakeChat();
  chat.roomList = rooms;
  const store = new ConsoleStore('alice', chat as unknown as ChatClient);
  await store.start();
  store.close = () => undefined;
  return { chat, store };
}

/** What the room view would show: one entry per message or unplaced send. */
function shown(store: ConsoleStore, roomId: string) {
  const r = store.rooms.get(roomId)!;
  const placed = [...r.messages.values()].sort((a, b) => a.seq - b.seq).map((m) => `${m.body}:${store.statusOf(r, m) ?? 'received'}`);
  return [...placed, ...store.unplacedSends(r).map((s) => `${s.body}:${s.status}`)];
}

describe('ConsoleStore', () => {
  it('shows a send once: pending, then acknowledged, whichever of ack and message comes first', async () => {
    const { chat, store } = await storeWith([room('r1')]);
    store.send('r1', 'one');
    store.send('r1', 'two');
    expect(shown(store, 'r1')).toEqual(['one:pending', 'two:pending']);
    const [one, two] = chat.sent;
    // "one": the ack first, then the message.
    one!.resolve({ room: 'r1', seq: 1, id: 'm1', clientMsgId: one!.clientMsgId });
    await tick();
    expect(shown(store, 'r1')).toEqual(['one:acked', 'two:pending']);
    chat.emit('message', message('r1', 1, 'alice', 'one', one!.clientMsgId));
    expect(shown(store, 'r1')).toEqual(['one:acked', 'two:pending']);
    // "two": the message first (still pending), then the ack.
    chat.emit('message', message('r1', 2, 'alice', 'two', two!.clientMsgId));
    expect(shown(store, 'r1')).toEqual(['one:acked', 'two:pending']);
    two!.resolve({ room: 'r1', seq: 2, id: 'm2', clientMsgId: two!.clientMsgId });
    await tick();
    expect(shown(store, 'r1')).toEqual(['one:acked', 'two:acked']);
    expect(store.rooms.get('r1')!.sends.size).toBe(0);
  });

  it('keeps messages by seq, so a replayed or re-fetched message is shown once', async () => {
    const { chat, store } = await storeWith([room('r1')]);
    chat.emit('message', message('r1', 1, 'bob', 'hi'));
    chat.emit('message', message('r1', 1, 'bob', 'hi'));
    chat.emit('message', message('r1', 2, 'bob', 'there'));
    expect(shown(store, 'r1')).toEqual(['hi:received', 'there:received']);
  });

  it('counts unread from read state, messages and read events', async () => {
    const { chat, store } = await storeWith([room('r1', 3, 1)]);
    const r = () => store.rooms.get('r1')!;
    expect(store.unread(r())).toBe(2);
    chat.emit('message', message('r1', 4, 'bob', 'x'));
    expect(store.unread(r())).toBe(3);
    // Sending moves one's own marker.
    chat.emit('message', message('r1', 5, 'alice', 'y'));
    expect(store.unread(r())).toBe(0);
    chat.emit('message', message('r1', 6, 'bob', 'z'));
    expect(store.unread(r())).toBe(1);
    // Another device of Alice read it; a lower marker changes nothing.
    chat.emit('read', { room: 'r1', user: 'alice', seq: 6 });
    chat.emit('read', { room: 'r1', user: 'alice', seq: 2 });
    expect(store.unread(r())).toBe(0);
    expect(store.totalUnread()).toBe(0);
  });

  it('learns a room from its first message', async () => {
    const { chat, store } = await storeWith([]);
    chat.roomList = [room('r2', 1, 0)];
    chat.emit('message', message('r2', 1, 'bob', 'welcome'));
    await tick();
    expect(shown(store, 'r2')).toEqual(['welcome:received']);
    expect(store.unread(store.rooms.get('r2')!)).toBe(1);
  });

  it('keeps the newest presence per user, and a members list does not undo a later event', async () => {
    const { chat, store } = await storeWith([room('r1')]);
    chat.emit('presence', { room: 'r1', user: 'bob', online: true, ts: 200 });
    chat.emit('presence', { room: 'r1', user: 'bob', online: false, ts: 100 }); // late, older
    expect(store.isOnline('bob')).toBe(true);
    chat.emit('presence', { room: 'r1', user: 'bob', online: false, ts: 300 });
    expect(store.isOnline('bob')).toBe(false);

    // The members list is asked for; meanwhile carol comes online; the
    // list (saying offline) answers afterwards and must not win.
    chat.memberList = [
      { user: 'alice', online: true },
      { user: 'carol', online: false },
      { user: 'dave', online: true },
    ];
    const details = store.refreshRoomDetails('r1');
    await tick();
    await new Promise((r) => setTimeout(r, 5));
    chat.emit('presence', { room: 'r1', user: 'carol', online: true, ts: 400 });
    chat.releaseMembers!();
    await details;
    expect(store.isOnline('carol')).toBe(true);
    expect(store.isOnline('dave')).toBe(true);
    expect(store.rooms.get('r1')!.members).toEqual(['alice', 'carol', 'dave']);
  });

  it('puts read receipts under the newest loaded message each member has read, not under their own', async () => {
    const { chat, store } = await storeWith([room('r1')]);
    chat.emit('message', message('r1', 1, 'alice', 'a'));
    chat.emit('message', message('r1', 2, 'alice', 'b'));
    chat.emit('read', { room: 'r1', user: 'bob', seq: 2 });
    chat.emit('read', { room: 'r1', user: 'carol', seq: 1 });
    expect(Object.fromEntries(store.receipts(store.rooms.get('r1')!))).toEqual({ 1: ['carol'], 2: ['bob'] });
    // Bob writes: his marker moves to his own message, which shows he saw everything.
    chat.emit('message', message('r1', 3, 'bob', 'c'));
    expect(Object.fromEntries(store.receipts(store.rooms.get('r1')!))).toEqual({ 1: ['carol'] });
  });
});
