/**
 * The cluster view: every chat server the API server knows (`GET
 * /v1/servers`), re-read every second, with state, connections, load (when
 * the API reports one) and the age of its last heartbeat; the row of the
 * server this session is placed on is marked. A server the API stops
 * listing (dead: silent for 3 s) stays on the page as "gone".
 */
import { useEffect } from 'preact/hooks';
import { ago } from './format.js';
import { SERVERS_REFRESH_MS, type ConsoleStore } from './store.js';

export function ClusterView({ store }: { store: ConsoleStore }) {
  useEffect(() => {
    void store.refreshServers();
    const timer = setInterval(() => void store.refreshServers(), SERVERS_REFRESH_MS);
    return () => clearInterval(timer);
  }, [store]);

  const now = Date.now();
  const session = store.session;
  const withLoad = store.servers.some((s) => s.load !== undefined);
  return (
    <main class="cluster" data-testid="cluster-view">
      <h2>Chat servers</h2>
      <p class="placement-line" data-testid="placement">
        {session ? (
          <>
            This session (<code>{session.session}</code>) is placed on <strong>{session.serverId}</strong>.
          </>
        ) : (
          <>This session is not connected right now ({store.connection}).</>
        )}
      </p>
      <div class="table-wrap">
        <table class="servers">
          <thead>
            <tr>
              <th scope="col">Server</th>
              <th scope="col">State</th>
              <th scope="col">Connections</th>
              {withLoad && <th scope="col">Load</th>}
              <th scope="col">Last heartbeat</th>
              <th scope="col">URL</th>
            </tr>
          </thead>
          <tbody>
            {store.servers.map(({ info, gone, load }) => {
              const mine = session?.serverId === info.id;
              const state = gone ? 'gone' : info.state;
              return (
                <tr key={info.id} data-testid="server-row" data-server-id={info.id} data-state={state} data-current={mine ? 'true' : 'false'}>
                  <th scope="row" data-label="Server">
                    {info.id}
                    {mine && (
                      <span class="you" data-testid="current-server-marker">
                        your session
                      </span>
                    )}
                  </th>
                  <td data-label="State">
                    <span class={`state ${state}`} data-testid="server-state">
                      {state}
                    </span>
                  </td>
                  <td data-label="Connections" data-testid="server-connections">
                    {info.connections}
                  </td>
                  {withLoad && <td data-label="Load">{load === undefined ? '—' : load.toFixed(2)}</td>}
                  <td data-label="Last heartbeat" data-testid="server-heartbeat">
                    {ago(info.last_seen_ms, now)}
                  </td>
                  <td data-label="URL">
                    <code>{info.url}</code>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      <p class="hint" data-testid="servers-status">
        {store.serversError
          ? `Cannot read the servers: ${store.serversError}`
          : store.servers.length === 0
            ? 'Loading…'
            : `Updated every ${SERVERS_REFRESH_MS / 1000} s. A server silent for 3 s is dead and gets no new sessions.`}
      </p>
    </main>
  );
}
