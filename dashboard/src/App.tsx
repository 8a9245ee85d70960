import { useCallback, useEffect, useMemo, useState } from 'react';
import { api, claims, getToken, HttpError, mayControl, setToken, wsUrl } from './api';
import { SessionContext, useConnectionState, useRoute } from './context';
import { AgentcastClient, type ConnectionState } from '@agentcast/client';
import { RunsView } from './views/RunsView';
import { RunView } from './views/RunView';
import { ChatView } from './views/ChatView';
import { MonitoringView } from './views/MonitoringView';
import { SignIn } from './components/SignIn';

const LABELS: Record<ConnectionState, string> = {
  idle: 'offline',
  connecting: 'connecting',
  open: 'live',
  reconnecting: 'reconnecting',
  closed: 'offline',
  unauthorized: 'signed out',
};

export function App() {
  const [token, setTok] = useState<string | null>(getToken());
  const [needSignIn, setNeedSignIn] = useState(false);
  const [signInError, setSignInError] = useState<string | null>(null);
  const client = useMemo(
    () =>
      new AgentcastClient({
        url: wsUrl(),
        token: () => getToken(),
        // the first retry within 0.3 s, doubling to at most 5 s, each wait 50–100 % of that
        reconnect: { initialMs: 300, maxMs: 5000, jitter: 0.5 },
      }),
    [token],
  );
  const state = useConnectionState(client);
  const route = useRoute();
  const [mode, setMode] = useState<string | null>(null);
  /** The token's first read answered: the views (whose hooks open the socket) may mount. */
  const [checked, setChecked] = useState(false);

  useEffect(() => {
    // "open": no authentication on this server (then there is nothing to sign in to)
    api<{ mode?: string }>('/healthz')
      .then((h) => setMode(h.mode ?? null))
      .catch(() => setMode(null));
  }, []);

  useEffect(() => {
    const on = () => setNeedSignIn(true);
    window.addEventListener('agentcast:unauthorized', on);
    // is authentication on, and does it take this token? a read answers 401 if not; the
    // socket is opened only once the answer is yes (or the server has no run store: 404)
    let cancelled = false;
    setChecked(false);
    api('/api/runs?limit=1')
      .then(() => {
        if (cancelled) return;
        client.connect();
        setChecked(true);
      })
      .catch((err) => {
        if (cancelled) return;
        if (!(err instanceof HttpError && err.status === 401)) client.connect();
        setChecked(true);
      });
    return () => {
      cancelled = true;
      window.removeEventListener('agentcast:unauthorized', on);
      client.dispose(); // a new token makes a new client: this one is done for good
    };
  }, [client]);

  useEffect(() => {
    if (state === 'unauthorized') setNeedSignIn(true);
  }, [state]);

  const submitToken = useCallback(async (value: string) => {
    setToken(value);
    try {
      await api('/api/runs?limit=1');
      setSignInError(null);
      setNeedSignIn(false);
      setTok(value);
    } catch (err) {
      setToken(token);
      setSignInError(err instanceof Error ? err.message : String(err));
    }
  }, [token]);

  const signOut = useCallback(() => {
    setToken(null);
    setTok(null);
    setNeedSignIn(true);
  }, []);

  const session = useMemo(
    () => ({ client, token, canControl: mayControl(token), signIn: () => setNeedSignIn(true) }),
    [client, token],
  );
  const who = claims(token)?.sub;
  const nav = [
    { href: '#/', label: 'Runs', active: route.view === 'runs' || route.view === 'run' },
    { href: '#/chat', label: 'Chat', active: route.view === 'chat' },
    { href: '#/monitoring', label: 'Monitoring', active: route.view === 'monitoring' },
  ];

  return (
    <SessionContext.Provider value={session}>
      <div className="app">
        <header className="topbar">
          <a className="brand" href="#/">
            <img src="favicon.svg" alt="" width={22} height={22} />
            <span>agentcast</span>
          </a>
          <nav className="nav">
            {nav.map((n) => (
              <a key={n.href} href={n.href} className={n.active ? 'active' : ''}>
                {n.label}
              </a>
            ))}
          </nav>
          <div className="topbar-right">
            <span className={`conn conn-${state}`} data-testid="connection" title={`WebSocket: ${state}`}>
              <i />
              <span className="conn-label">{needSignIn && state !== 'open' ? 'signed out' : LABELS[state]}</span>
            </span>
            {token ? (
              <button className="btn ghost small" onClick={signOut} title="Forget the token">
                {who ? <span className="who">{who}</span> : null} Sign out
              </button>
            ) : mode === 'open' ? (
              <span className="mode-pill" title="This server runs without authentication: every visitor sees everything">
                dev mode
              </span>
            ) : (
              <button className="btn ghost small" onClick={() => setNeedSignIn(true)}>
                Sign in
              </button>
            )}
          </div>
        </header>
        <main className="content">
          {!checked && !needSignIn ? null : needSignIn && !token ? (
            <SignIn onSubmit={submitToken} error={signInError} />
          ) : needSignIn ? (
            <SignIn onSubmit={submitToken} error={signInError ?? 'The server refused this token.'} />
          ) : route.view === 'runs' ? (
            <RunsView key={token ?? ''} />
          ) : route.view === 'run' ? (
            <RunView key={`${route.topic}|${token ?? ''}`} topic={route.topic} />
          ) : route.view === 'chat' ? (
            <ChatView key={token ?? ''} conversation={route.conversation} />
          ) : (
            <MonitoringView key={token ?? ''} />
          )}
        </main>
      </div>
    </SessionContext.Provider>
  );
}
