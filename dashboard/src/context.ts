import { createContext, useContext, useEffect, useState } from 'react';
import type { AgentcastClient, ConnectionState } from '@agentcast/client';

export interface Session {
  client: AgentcastClient;
  token: string | null;
  canControl: boolean;
  signIn(): void;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error('no session');
  return s;
}

export function useConnectionState(client: AgentcastClient): ConnectionState {
  const [state, setState] = useState(client.state);
  useEffect(() => {
    setState(client.state);
    return client.onStateChange((s) => setState(s));
  }, [client]);
  return state;
}

/** The current time, ticking every `ms` (durations of live runs). */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

export type Route =
  | { view: 'runs' }
  | { view: 'run'; topic: string }
  | { view: 'chat'; conversation?: string }
  | { view: 'monitoring' };

export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, '') || '/';
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'runs' && parts[1]) return { view: 'run', topic: parts[1] };
  if (parts[0] === 'chat') return { view: 'chat', conversation: parts[1] };
  if (parts[0] === 'monitoring') return { view: 'monitoring' };
  return { view: 'runs' };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}

export function runHref(topic: string): string {
  return `#/runs/${encodeURIComponent(topic)}`;
}
