import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchTicket, type ConnectionState } from '../src/index.js';
import WebSocket from 'ws';
import { hs256, makeClient, Signal, startServer, type Server } from './support.js';

const SECRET = 'js-client-tests-' + 'x'.repeat(40);

describe('with JWT authentication', () => {
  let server: Server;
  beforeAll(async () => {
    server = await startServer({ env: { AGENTCAST_JWT_SECRET: SECRET, AGENTCAST_AUTH_TIMEOUT: '1', AGENTCAST_AUTH_EXPIRY_GRACE: '0.5' } });
  });
  afterAll(async () => {
    await server?.stop();
  });

  function watch(client: ReturnType<typeof makeClient>) {
    const signal = new Signal();
    const states: Array<{ s: ConnectionState; code?: number }> = [];
    client.onStateChange((s, d) => {
      states.push({ s, ...(d?.code !== undefined ? { code: d.code } : {}) });
      signal.notify();
    });
    return { signal, states };
  }

  it('connects with a token as the bearer subprotocol', async () => {
    const token = hs256(SECRET, { sub: 'alice', topics: ['board:alice:*'] });
    const client = makeClient(server.url, { token: async () => token });
    const { signal } = watch(client);
    client.connect();
    try {
      await signal.wait(() => client.state === 'open', 'open');
      const pong = await client.command({ type: 'ping' });
      expect(pong.type).toBe('pong');
      let ok = false;
      client.subscribe('board:alice:inbox', { onSubscribed: () => ((ok = true), signal.notify()) });
      await signal.wait(() => ok, 'subscribed');
      // a topic the token does not grant: refused, the connection stays open
      let refusal: { code: string } | undefined;
      client.subscribe('board:bob:inbox', { onRefused: (e) => ((refusal = e), signal.notify()) });
      await signal.wait(() => refusal !== undefined, 'the refusal');
      expect(refusal?.code).toBe('forbidden');
      expect(client.state).toBe('open');
    } finally {
      client.close();
    }
  });

  it('refreshes a short-lived token before it expires (auth:refresh), and without it the server closes 4501', async () => {
    let issued = 0;
    const signal = new Signal();
    const shortLived = () => {
      issued++;
      signal.notify();
      return hs256(SECRET, { sub: 'alice', exp: Math.floor(Date.now() / 1000) + 2 });
    };
    const client = makeClient(server.url, { token: shortLived });
    const { states } = watch(client);
    client.onStateChange(() => signal.notify());
    client.connect();
    try {
      // the first token, then two refreshes: the connection outlives several expiries
      await signal.wait(() => issued >= 3, 'two refreshes', 10_000);
      expect((await client.command({ type: 'ping' })).type).toBe('pong');
      expect(states.map((x) => x.s)).toEqual(['connecting', 'open']);
    } finally {
      client.close();
    }
    const stale = makeClient(server.url, { token: shortLived, refreshToken: false });
    const watched = watch(stale);
    stale.connect();
    try {
      await watched.signal.wait(() => stale.state === 'unauthorized', 'the expiry close', 10_000);
      expect(watched.states.at(-1)?.code).toBe(4501);
    } finally {
      stale.close();
    }
  });

  it('connects with a single-use ticket', async () => {
    const token = hs256(SECRET, { sub: 'alice' });
    let tickets = 0;
    const client = makeClient(server.url, { ticket: () => (tickets++, fetchTicket(server.url, token)) });
    const { signal } = watch(client);
    client.connect();
    try {
      await signal.wait(() => client.state === 'open', 'open');
      expect((await client.command({ type: 'ping' })).type).toBe('pong');
      expect(tickets).toBe(1);
    } finally {
      client.close();
    }
  });

  it.each([
    ['a token signed with another secret', hs256('another-secret-' + 'y'.repeat(40), { sub: 'alice' })],
    ['an expired token', hs256(SECRET, { sub: 'alice', exp: Math.floor(Date.now() / 1000) - 3600 })],
  ])('stops in state unauthorized on %s, without a retry loop', async (_what, token) => {
    const client = makeClient(server.url, { token });
    const { signal, states } = watch(client);
    client.connect();
    try {
      await signal.wait(() => client.state === 'unauthorized', 'unauthorized');
      expect(states.at(-1)?.code).toBe(4500);
      expect(states.map((x) => x.s)).toEqual(['connecting', 'unauthorized']);
      const err = await client.command({ type: 'ping' }).catch((e: unknown) => e);
      expect((err as { code?: string }).code).toBe('unauthorized');
    } finally {
      client.close();
    }
  });

  it('tells a refused handshake from a lost connection without the HTTP status, as in a browser', async () => {
    // browsers report a refused handshake as an error without its status, then close 1006
    const base = Object.getOwnPropertyDescriptor(WebSocket.prototype, 'onerror');
    class BrowserLikeWebSocket extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        Object.defineProperty(this, 'onerror', {
          set(fn: ((ev: Event) => void) | null) {
            base?.set?.call(this, fn === null ? null : () => fn(new Event('error')));
          },
          get() {
            return base?.get?.call(this);
          },
        });
      }
    }
    const client = makeClient(server.url, {
      token: hs256('another-secret-' + 'y'.repeat(40), { sub: 'alice' }),
      WebSocket: BrowserLikeWebSocket as unknown as typeof globalThis.WebSocket,
    });
    const { signal, states } = watch(client);
    client.connect();
    try {
      await signal.wait(() => client.state === 'unauthorized', 'unauthorized');
      expect(states.map((x) => x.s)).toEqual(['connecting', 'unauthorized']);
      expect(states.at(-1)?.code).toBe(4500);
    } finally {
      client.close();
    }
  });

  it('stops unauthorized when the ticket endpoint refuses the token', async () => {
    const client = makeClient(server.url, { ticket: () => fetchTicket(server.url, 'not-a-token') });
    const { signal, states } = watch(client);
    client.connect();
    try {
      await signal.wait(() => client.state === 'unauthorized', 'unauthorized');
      expect(states.map((x) => x.s)).toEqual(['connecting', 'unauthorized']);
    } finally {
      client.close();
    }
  });

  it('stops unauthorized with no credentials after the first-message deadline (4508)', async () => {
    const client = makeClient(server.url, { heartbeatMs: 0 });
    const { signal, states } = watch(client);
    client.connect();
    try {
      await signal.wait(() => client.state === 'unauthorized', 'unauthorized', 15_000);
      expect(states.at(-1)?.code).toBe(4508);
    } finally {
      client.close();
    }
  });
});
