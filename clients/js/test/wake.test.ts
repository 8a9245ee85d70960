// @vitest-environment jsdom
// Reconnecting at once when the network comes back or the page becomes visible, and the
// heartbeat that replaces a connection whose server stopped answering. One server for all
// three (each server start costs seconds).
import { afterEach, expect, it } from 'vitest';
import { freePort, makeClient, Signal, startServer, type Server } from './support.js';

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.proc.kill('SIGCONT');
    await s.stop();
  }
});

it('reconnects at once on `online` and on visibilitychange to visible; the heartbeat drops a dead connection', async () => {
  const port = await freePort();
  // a backoff of a minute: only the events can bring the connection back within the test
  const client = makeClient(`http://127.0.0.1:${port}`, {
    reconnect: { initialMs: 60_000, maxMs: 60_000, jitter: 0 },
    heartbeatMs: 300,
  });
  const signal = new Signal();
  const states: string[] = [];
  client.onStateChange((s) => (states.push(s), signal.notify()));
  let subscribed = 0;
  client.subscribe('board:wake', { onSubscribed: () => (subscribed++, signal.notify()) });
  client.connect(); // nobody listens on the port yet
  try {
    await signal.wait(() => client.state === 'reconnecting', 'reconnecting');
    const server = await startServer({ port });
    servers.push(server);
    window.dispatchEvent(new Event('online'));
    await signal.wait(() => client.state === 'open' && subscribed === 1, 'open after `online`', 5_000);

    // the server freezes: the socket stays open and nothing answers; the heartbeat gives up
    server.proc.kill('SIGSTOP');
    await signal.wait(() => client.state === 'reconnecting', 'the heartbeat giving up', 5_000);
    server.proc.kill('SIGCONT');
    Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
    await signal.wait(() => client.state === 'open' && subscribed === 2, 'open and resubscribed after visibilitychange', 10_000);
    expect(states).toEqual(['connecting', 'reconnecting', 'open', 'reconnecting', 'open']);
  } finally {
    client.dispose();
  }
});
