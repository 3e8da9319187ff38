/** The open room's members with online dots, and the form that adds one. */
import { useState } from 'preact/hooks';
import { TextInput } from './fields.js';
import { userIdProblem } from './session.js';
import { describe, type ConsoleStore, type RoomState } from './store.js';

export function Members({ store, r }: { store: ConsoleStore; r: RoomState }) {
  const [user, setUser] = useState('');
  const [error, setError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const name = user.trim();
    const problem = userIdProblem(name);
    if (problem) return setError(problem);
    setBusy(true);
    setError(undefined);
    try {
      await store.addMember(r.room.id, name);
      setUser('');
    } catch (err) {
      setError(`Cannot add ${name}: ${describe(err)}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <aside class="members" aria-label="Members" data-testid="members-panel">
      <h3>Members</h3>
      {r.members === undefined ? (
        <p class="hint">Loading…</p>
      ) : (
        <ul>
          {r.members.map((u) => {
            const online = store.isOnline(u);
            return (
              <li key={u} data-testid="member" data-user={u} data-online={online ? 'true' : 'false'}>
                <span class={online ? 'dot online' : 'dot'} role="img" aria-label={online ? 'online' : 'offline'} />
                <span class="member-name">{u}</span>
                {u === store.user && <span class="hint"> (you)</span>}
              </li>
            );
          })}
        </ul>
      )}
      <form class="add-member" onSubmit={submit}>
        <label for="add-member-input">Add a member</label>
        <div class="row">
          <TextInput id="add-member-input" testId="add-member-input" placeholder="user id" value={user} onValue={setUser} />
          <button type="submit" data-testid="add-member-button" disabled={busy}>
            Add
          </button>
        </div>
        {error && (
          <p class="error" role="alert" data-testid="add-member-error">
            {error}
          </p>
        )}
      </form>
    </aside>
  );
}
