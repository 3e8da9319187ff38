/**
 * The open room: history with scroll-back (more pages as the reader
 * scrolls up, or with the button), live messages, own sends (pending, then
 * acknowledged), read receipts, the typing line, the composer and the
 * members. The view stays at the newest message while the reader is there,
 * and marks the room read when that message is on screen.
 */
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import type { Message } from '@scalechat/client';
import { clockTime, fullTime } from './format.js';
import { Members } from './members.js';
import { ConsoleStore, READ_RECEIPTS_MAX_MEMBERS, type OwnSend, type RoomState, type SendStatus } from './store.js';

/** Within this many pixels of the bottom counts as "at the newest message". */
const AT_BOTTOM_PX = 24;
/** Scrolled this close to the top, the next history page is loaded. */
const NEAR_TOP_PX = 48;

export function RoomView({ store, r }: { store: ConsoleStore; r: RoomState }) {
  const list = useRef<HTMLDivElement>(null);
  const stickToBottom = useRef(true);
  const previous = useRef<{ oldest: number | undefined; height: number }>({ oldest: undefined, height: 0 });
  const [showMembers, setShowMembers] = useState(false);

  const messages = [...r.messages.values()].sort((a, b) => a.seq - b.seq);
  const unplaced = store.unplacedSends(r);
  const receipts = store.receipts(r);
  const typing = store.typingUsers(r);
  const oldest = messages[0]?.seq;
  const newest = messages.at(-1)?.seq ?? 0;

  const markReadIfSeen = () => {
    const el = list.current;
    if (!el || document.visibilityState !== 'visible') return;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= AT_BOTTOM_PX;
    if (atBottom && newest >= r.lastSeq) store.markRead(r.room.id);
  };

  // Keep the view where the reader is: at the bottom for live messages,
  // on the same message when older ones are put above.
  useLayoutEffect(() => {
    const el = list.current;
    if (!el) return;
    const before = previous.current;
    if (before.oldest !== undefined && oldest !== undefined && oldest < before.oldest) {
      el.scrollTop += el.scrollHeight - before.height;
    } else if (stickToBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
    previous.current = { oldest, height: el.scrollHeight };
    markReadIfSeen();
  });

  useEffect(() => {
    const onVisible = () => markReadIfSeen();
    document.addEventListener('visibilitychange', onVisible);
    return () => document.removeEventListener('visibilitychange', onVisible);
  });

  const onScroll = () => {
    const el = list.current;
    if (!el) return;
    stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight <= AT_BOTTOM_PX;
    previous.current = { oldest, height: el.scrollHeight };
    if (el.scrollTop <= NEAR_TOP_PX) void store.loadOlder(r.room.id);
    markReadIfSeen();
  };

  const small = r.room.member_count <= READ_RECEIPTS_MAX_MEMBERS;
  const memberCount = `${r.room.member_count} ${r.room.member_count === 1 ? 'member' : 'members'}`;
  return (
    <section
      class="room"
      aria-label={`Room ${r.room.name}`}
      data-testid="room-view"
      data-room-id={r.room.id}
      data-show-members={showMembers ? 'true' : 'false'}
    >
      <header class="room-head">
        <button type="button" class="back" data-testid="back-to-rooms" onClick={() => store.open(undefined)}>
          <span aria-hidden="true">←</span> Rooms
        </button>
        <h2 data-testid="room-title">{r.room.name}</h2>
        <span class="member-count" data-testid="member-count">
          {memberCount}
        </span>
        <button
          type="button"
          class="members-toggle"
          data-testid="toggle-members"
          aria-expanded={showMembers}
          onClick={() => setShowMembers(!showMembers)}
        >
          {memberCount}
        </button>
      </header>
      <div class="messages" ref={list} onScroll={onScroll} role="log" aria-label="Messages" data-testid="message-list" tabIndex={0}>
        {!r.historyLoaded ? (
          <p class="hint">Loading…</p>
        ) : r.hasOlder ? (
          <button
            type="button"
            class="link older"
            data-testid="load-older"
            disabled={r.loadingOlder}
            onClick={() => void store.loadOlder(r.room.id)}
          >
            {r.loadingOlder ? 'Loading…' : 'Load older messages'}
          </button>
        ) : (
          <p class="hint" data-testid="history-start">
            {messages.length === 0 && unplaced.length === 0 ? 'No messages yet: say hello.' : 'The start of the room.'}
          </p>
        )}
        <ol class="message-list">
          {messages.map((m) => (
            <MessageItem key={`s${m.seq}`} store={store} m={m} status={store.statusOf(r, m)} seenBy={small ? receipts.get(m.seq) : undefined} />
          ))}
          {unplaced.map((s) => (
            <PendingItem key={`c${s.clientMsgId}`} store={store} roomId={r.room.id} send={s} />
          ))}
        </ol>
      </div>
      <p class="typing" data-testid="typing-indicator" aria-live="polite">
        {typingText(typing)}
      </p>
      <Composer store={store} roomId={r.room.id} />
      <Members store={store} r={r} />
    </section>
  );
}

function typingText(users: string[]): string {
  if (users.length === 0) return '';
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length <= 3) return `${users.join(', ')} are typing…`;
  return 'Several people are typing…';
}

const STATUS_TEXT: Record<SendStatus, string> = { pending: 'sending…', acked: '✓ sent', failed: 'not sent' };

function MessageItem({ store, m, status, seenBy }: { store: ConsoleStore; m: Message; status: SendStatus | undefined; seenBy: string[] | undefined }) {
  const own = m.from === store.user;
  return (
    <li
      class={own ? 'msg own' : 'msg'}
      data-testid="message"
      data-seq={m.seq}
      data-from={m.from}
      data-status={status ?? 'received'}
    >
      <div class="meta">
        <span class="from" data-testid="message-from">
          {m.from}
        </span>
        <time dateTime={new Date(m.ts).toISOString()} title={fullTime(m.ts)}>
          {clockTime(m.ts)}
        </time>
        {status && (
          <span class={`send-status ${status}`} data-testid="message-status">
            {STATUS_TEXT[status]}
          </span>
        )}
      </div>
      <div class="body" data-testid="message-body">
        {m.body}
      </div>
      {seenBy && seenBy.length > 0 && (
        <div class="receipt" data-testid="read-receipt" data-users={seenBy.join(',')}>
          Seen by {seenBy.join(', ')}
        </div>
      )}
    </li>
  );
}

function PendingItem({ store, roomId, send }: { store: ConsoleStore; roomId: string; send: OwnSend }) {
  return (
    <li class="msg own" data-testid="message" data-status={send.status} data-from={store.user}>
      <div class="meta">
        <span class="from" data-testid="message-from">
          {store.user}
        </span>
        <time dateTime={new Date(send.ts).toISOString()} title={fullTime(send.ts)}>
          {clockTime(send.ts)}
        </time>
        <span class={`send-status ${send.status}`} data-testid="message-status">
          {STATUS_TEXT[send.status]}
        </span>
      </div>
      <div class="body" data-testid="message-body">
        {send.body}
      </div>
      {send.status === 'failed' && (
        <div class="error" role="alert">
          {send.error}{' '}
          <button type="button" class="link" onClick={() => store.dismissSend(roomId, send.clientMsgId)}>
            Dismiss
          </button>
        </div>
      )}
    </li>
  );
}

function Composer({ store, roomId }: { store: ConsoleStore; roomId: string }) {
  const [text, setText] = useState('');
  const [error, setError] = useState<string | undefined>(undefined);

  const submit = () => {
    const problem = ConsoleStore.bodyProblem(text);
    if (problem) {
      setError(problem);
      return;
    }
    setError(undefined);
    store.send(roomId, text);
    setText('');
  };

  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        submit();
      }}
    >
      <label for="composer-input" class="sr-only">
        Message
      </label>
      <textarea
        id="composer-input"
        data-testid="composer-input"
        rows={1}
        placeholder="Write a message…"
        aria-describedby="composer-hint"
        value={text}
        onInput={(e) => {
          const value = (e.target as HTMLTextAreaElement).value;
          setText(value);
          if (value.length > 0) store.typing(roomId);
        }}
        onKeyDown={(e) => {
          if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            submit();
          }
        }}
      />
      <button type="submit" data-testid="send-button">
        Send
      </button>
      <span id="composer-hint" class="sr-only">
        Enter sends; Shift+Enter starts a new line.
      </span>
      {error && (
        <p class="error" role="alert" data-testid="composer-error">
          {error}
        </p>
      )}
    </form>
  );
}

export function focusComposerSoon(): void {
  requestAnimationFrame(() => document.getElementById('composer-input')?.focus());
}
