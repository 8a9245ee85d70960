/**
 * A real `agentcast serve` process per test (`${AGENTCAST_PYTHON:-python} -m agentcast.cli
 * serve --port <free>`), helpers to wait on conditions with bounded timeouts, and HS256
 * tokens for servers started with `AGENTCAST_JWT_SECRET`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject } from 'vitest';
import WebSocket from 'ws';
import { AgentcastClient, type ClientOptions } from '../src/index.js';

/** Scales every timeout of the tests (AGENTCAST_TEST_UNIT, as the Python tests' UNIT). */
export const UNIT = Number(process.env.AGENTCAST_TEST_UNIT ?? '1');

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface Server {
  port: number;
  url: string;
  wsUrl: string;
  proc: ChildProcess;
  output(): string;
  /** SIGTERM (or `signal`), and wait for the process to exit. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Start `agentcast serve` on `port` (a free one by default) and wait until /healthz answers. */
export async function startServer(opts: { args?: string[]; env?: Record<string, string>; port?: number } = {}): Promise<Server> {
  const port = opts.port ?? (await freePort());
  const python = process.env.AGENTCAST_PYTHON ?? 'python';
  let out = '';
  // its own working directory: the default run store (sqlite:///agentcast.db) lands there
  const cwd = mkdtempSync(join(tmpdir(), 'agentcast-js-serve-'));
  const proc = spawn(python, ['-m', 'agentcast.cli', 'serve', '--port', String(port), ...(opts.args ?? [])], {
    cwd,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => {
      rmSync(cwd, { recursive: true, force: true });
      resolve(code);
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000 * UNIT; // Python's imports are slow on a loaded machine
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`agentcast serve exited (${proc.exitCode}):\n${out}`);
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.status === 200) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`agentcast serve did not become healthy:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50)); // polling the port: the process exposes no event
  }
  return {
    port,
    url,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    proc,
    output: () => out,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000 * UNIT);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/**
 * Something to wait on: `wait(pred)` resolves once `pred()` holds, checked now and at
 * every `notify()`; rejects after `ms` (scaled by UNIT) with `what` in the message.
 */
export class Signal {
  private waiters = new Set<() => void>();
  notify(): void {
    for (const w of [...this.waiters]) w();
  }
  wait(pred: () => boolean, what = 'condition', ms = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        let ok = false;
        try {
          ok = pred();
        } catch (err) {
          cleanup();
          reject(err);
          return;
        }
        if (ok) {
          cleanup();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${ms * UNIT} ms waiting for ${what}`));
      }, ms * UNIT);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }
}

/** A client on the `ws` package with short reconnection delays. */
export function makeClient(url: string, opts: Partial<ClientOptions> = {}): AgentcastClient {
  return new AgentcastClient({
    url,
    WebSocket: WebSocket as unknown as typeof globalThis.WebSocket,
    reconnect: { initialMs: 50, maxMs: 500 },
    ...opts,
  });
}

/** An HS256 JWT (as the server's `jwt_secret` verifies it). */
export function hs256(secret: string, claims: Record<string, unknown>): string {
  const b64 = (v: string | Buffer) => Buffer.from(v).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64(JSON.stringify({ iat: now, exp: now + 3600, ...claims }));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** The shared `agentcast serve --demo` of test/global-setup.ts. */
export function demoServer(): { url: string; wsUrl: string } {
  const url = inject('demoUrl');
  return { url, wsUrl: url.replace(/^http/, 'ws') + '/ws' };
}
