/**
 * The room list: unread badges (from the rooms' read state), and the form
 * that creates a room with its first members.
 */
import { useState } from 'preact/hooks';
import { TextInput } from './fields.js';
import { splitUsers } from './format.js';
import { focusComposerSoon } from './room-view.js';
import { userIdProblem } from './session.js';
import { describe, type ConsoleStore } from './store.js';

export function RoomList({ store }: { store: ConsoleStore }) {
  const rooms = store.roomList();
  return (
    <aside class="rooms" aria-label="Rooms">
      <h2>Rooms</h2>
      <CreateRoom store={store} />
      {rooms.length === 0 ? (
        <p class="hint" data-testid="no-rooms">
          No rooms yet.
        </p>
      ) : (
        <ul class="room-list" data-testid="room-list">
          {rooms.map((r) => {
            const unread = store.unread(r);
            const current = store.openRoom === r.room.id;
            return (
              <li key={r.room.id}>
                <button
                  type="button"
                  class="room-item"
                  data-testid="room-item"
                  data-room-id={r.room.id}
                  data-unread={unread}
                  aria-current={current ? 'true' : undefined}
                  onClick={() => {
                    store.open(r.room.id);
                    focusComposerSoon();
                  }}
                >
                  <span class="room-name" data-testid="room-name">
                    {r.room.name}
                  </span>
                  {unread > 0 && (
                    <span class="badge" data-testid="unread-badge" aria-label={`${unread} unread`}>
                      {unread > 99 ? '99+' : unread}
                    </span>
                  )}
                </button>
              </li>
            );
          })}
        </ul>
      )}
    </aside>
  );
}

function CreateRoom({ store }: { store: ConsoleStore }) {
  const [name, setName] = useState('');
  const [members, setMembers] = useState('');
  const [error, setError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const users = splitUsers(members);
    const bad = users.map(userIdProblem).find((p) => p !== undefined);
    if (name.trim().length === 0) return setError('Give the room a name.');
    if (bad) return setError(bad);
    setBusy(true);
    setError(undefined);
    try {
      const id = await store.createRoom(name.trim(), users);
      setName('');
      setMembers('');
      store.open(id);
      focusComposerSoon();
    } catch (err) {
      setError(`Cannot create the room: ${describe(err)}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="create-room" onSubmit={submit} aria-label="Create a room">
      <label for="new-room-name">New room</label>
      <TextInput id="new-room-name" testId="new-room-name" placeholder="Name" maxLength={100} value={name} onValue={setName} />
      <label for="new-room-members" class="sr-only">
        Members
      </label>
      <TextInput id="new-room-members" testId="new-room-members" placeholder="Members: bob, carol" value={members} onValue={setMembers} />
      <button type="submit" data-testid="create-room" disabled={busy}>
        Create
      </button>
      {error && (
        <p class="error" role="alert" data-testid="create-room-error">
          {error}
        </p>
      )}
    </form>
  );
}
