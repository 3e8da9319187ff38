/**
 * The page: the sign-in form until signed in, then the chat and cluster
 * views under one header (connection state, placement, sign-out).
 */
import { useEffect, useState } from 'preact/hooks';
import { ChatView } from './chat-view.js';
import { ClusterView } from './cluster-view.js';
import { clearCredentials, loadCredentials, signIn } from './session.js';
import { SignIn } from './signin.js';
import { describe, type ConsoleStore } from './store.js';
import { useStore } from './use-store.js';

type View = 'chat' | 'cluster';

function viewOfHash(): View {
  return window.location.hash === '#cluster' ? 'cluster' : 'chat';
}

export function App() {
  const [store, setStore] = useState<ConsoleStore | undefined>(undefined);
  const [restoring, setRestoring] = useState(() => loadCredentials() !== undefined);
  const [error, setError] = useState<string | undefined>(undefined);

  useEffect(() => {
    const saved = loadCredentials();
    if (!saved) return;
    signIn(saved)
      .then(setStore, (e: unknown) => {
        clearCredentials();
        setError(`Signed out: ${describe(e)}`);
      })
      .finally(() => setRestoring(false));
  }, []);

  if (restoring) return <p class="loading">Signing in…</p>;
  if (!store) return <SignIn onSignedIn={setStore} initialError={error} />;
  return (
    <Shell
      store={store}
      onSignOut={() => {
        store.close();
        clearCredentials();
        setError(undefined);
        setStore(undefined);
      }}
    />
  );
}

const STATE_LABELS = {
  connected: 'connected',
  connecting: 'connecting…',
  reconnecting: 'reconnecting…',
  disconnected: 'disconnected',
} as const;

function Shell({ store, onSignOut }: { store: ConsoleStore; onSignOut: () => void }) {
  useStore(store);
  const [view, setView] = useState<View>(viewOfHash);

  useEffect(() => {
    const onHash = () => setView(viewOfHash());
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);

  const unread = store.totalUnread();
  useEffect(() => {
    document.title = unread > 0 ? `(${unread}) chat console` : 'chat console';
  }, [unread]);

  const show = (next: View) => {
    window.location.hash = next === 'cluster' ? '#cluster' : '#chat';
    setView(next);
  };

  return (
    <div class="shell">
      <header class="topbar">
        <span class="brand">chat console</span>
        <nav class="tabs" aria-label="Views">
          <button
            type="button"
            data-testid="tab-chat"
            aria-current={view === 'chat' ? 'page' : undefined}
            onClick={() => show('chat')}
          >
            Chat{unread > 0 ? ` (${unread})` : ''}
          </button>
          <button
            type="button"
            data-testid="tab-cluster"
            aria-current={view === 'cluster' ? 'page' : undefined}
            onClick={() => show('cluster')}
          >
            Cluster
          </button>
        </nav>
        <span class="status" role="status">
          <span class="conn" data-testid="connection-state" data-state={store.connection}>
            {STATE_LABELS[store.connection]}
          </span>
          <span class="placement" title="The chat server this session is placed on">
            on <span data-testid="session-server">{store.session?.serverId ?? '—'}</span>
          </span>
        </span>
        <span class="whoami">
          <span data-testid="current-user">{store.user}</span>
          <button type="button" class="link" data-testid="sign-out" onClick={onSignOut}>
            Sign out
          </button>
        </span>
      </header>
      {store.notice && (
        <div class={`notice ${store.notice.kind}`} role="alert" data-testid="notice">
          <span>{store.notice.text}</span>
          <button type="button" class="link" onClick={() => store.clearNotice()} aria-label="Dismiss">
            ×
          </button>
        </div>
      )}
      {view === 'chat' ? <ChatView store={store} /> : <ClusterView store={store} />}
    </div>
  );
}
