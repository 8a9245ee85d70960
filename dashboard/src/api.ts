/** HTTP API access and the visitor's token (sessionStorage: gone when the tab closes). */

const TOKEN_KEY = 'agentcast.token';

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** `fetch` of the API with `Authorization: Bearer <token>`; JSON in and out. */
export async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const headers: Record<string, string> = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (init.body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(apiUrl(path), {
    method: init.method ?? 'GET',
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
  if (!res.ok) {
    let code = 'error';
    let message = res.statusText;
    try {
      const body = await res.json();
      code = body?.detail?.code ?? code;
      message = body?.detail?.message ?? message;
    } catch {
      /* not JSON */
    }
    if (res.status === 401) window.dispatchEvent(new CustomEvent('agentcast:unauthorized'));
    throw new HttpError(res.status, code, message);
  }
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export interface Claims {
  sub?: string;
  scope?: string;
  exp?: number;
}

/** The token's claims, read without verifying (the server verifies; this only decides
 * which buttons to show). */
export function claims(token: string | null): Claims | null {
  if (!token) return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    return JSON.parse(json) as Claims;
  } catch {
    return null;
  }
}

/** May this visitor pause, resume and cancel runs? Open dev mode (no token): yes. */
export function mayControl(token: string | null): boolean {
  if (!token) return true;
  const scopes = (claims(token)?.scope ?? '').split(/\s+/);
  return scopes.includes('control') || scopes.includes('admin');
}

/** The directory the page was served from ("/" or a proxy's prefix such as "/gw/"). */
function basePath(): string {
  return location.pathname.replace(/[^/]*$/, '');
}

/** An API path ("/api/runs") under the page's base path. */
export function apiUrl(path: string): string {
  return basePath() + path.replace(/^\//, '');
}

export function wsUrl(): string {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${basePath()}ws`;
}

export interface RunRow {
  topic: string;
  kind: string;
  run_id: string;
  status: string;
  execution_id: string | null;
  started_at: string | null;
  finished_at: string | null;
  last_seq: number;
  progress: number | null;
}

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '—';
  return clock(d);
}

/** 24-hour wall-clock time, the same everywhere in the dashboard. */
export function clock(d: Date): string {
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
}

export function formatDuration(start: string | null | undefined, end: string | null | undefined, now: number): string {
  if (!start) return '—';
  const s = new Date(start).getTime();
  const e = end ? new Date(end).getTime() : now;
  const secs = Math.max(0, (e - s) / 1000);
  if (secs < 60) return `${secs.toFixed(1)} s`;
  const m = Math.floor(secs / 60);
  if (m < 60) return `${m} min ${Math.round(secs % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
