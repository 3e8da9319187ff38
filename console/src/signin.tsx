/**
 * Sign-in: a user name gets a development token (local mode); otherwise a
 * token minted by the application's backend is pasted.
 */
import { useState } from 'preact/hooks';
import { ApiError } from '@scalechat/client';
import { TextInput } from './fields.js';
import { saveCredentials, signIn, userIdProblem, userOfToken, type Credentials } from './session.js';
import { describe, type ConsoleStore } from './store.js';

export function SignIn({ onSignedIn, initialError }: { onSignedIn: (s: ConsoleStore) => void; initialError?: string | undefined }) {
  const [user, setUser] = useState('');
  const [token, setToken] = useState('');
  const [error, setError] = useState<string | undefined>(initialError);
  const [busy, setBusy] = useState(false);

  const start = async (c: Credentials) => {
    setBusy(true);
    setError(undefined);
    try {
      const store = await signIn(c);
      saveCredentials(c);
      onSignedIn(store);
    } catch (e) {
      if (c.kind === 'dev' && e instanceof ApiError && e.status === 404) {
        setError('Development tokens are off on this server: paste a token instead.');
      } else if (e instanceof ApiError && e.status === 401) {
        setError(`The server refused the token: ${e.message}`);
      } else {
        setError(`Cannot sign in: ${describe(e)}`);
      }
      setBusy(false);
    }
  };

  const onDev = (e: Event) => {
    e.preventDefault();
    const name = user.trim();
    const problem = userIdProblem(name);
    if (problem) {
      setError(problem);
      return;
    }
    void start({ kind: 'dev', user: name });
  };

  const onToken = (e: Event) => {
    e.preventDefault();
    const t = token.trim();
    const sub = userOfToken(t);
    if (!sub) {
      setError('That is not a token this console can read (a JWT with a "sub" claim).');
      return;
    }
    void start({ kind: 'token', token: t, user: sub });
  };

  return (
    <main class="signin">
      <h1>chat console</h1>
      <p class="hint">
        Sign in to chat. On a local system (<code>chat-local</code>) any user name works; open a second tab to chat with
        yourself under another name.
      </p>
      <form class="card" onSubmit={onDev} data-testid="dev-signin-form">
        <h2>Development sign-in</h2>
        <label for="signin-user">User name</label>
        <div class="row">
          <TextInput id="signin-user" testId="signin-user" autoComplete="username" autoFocus value={user} onValue={setUser} disabled={busy} />
          <button type="submit" data-testid="signin-submit" disabled={busy}>
            Sign in
          </button>
        </div>
      </form>
      <form class="card" onSubmit={onToken}>
        <h2>Sign in with a token</h2>
        <label for="signin-token">Token (a JWT from your application's backend)</label>
        <textarea
          id="signin-token"
          data-testid="signin-token"
          rows={3}
          spellcheck={false}
          value={token}
          onInput={(e) => setToken((e.target as HTMLTextAreaElement).value)}
          disabled={busy}
        />
        <button type="submit" data-testid="signin-token-submit" disabled={busy}>
          Use token
        </button>
      </form>
      <p class="error" role="alert" data-testid="signin-error">
        {error ?? ''}
      </p>
    </main>
  );
}
