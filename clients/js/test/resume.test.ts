import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import type { AgentcastEvent, ConnectionState } from '../src/index.js';
import { freePort, makeClient, Signal, startServer, type Server } from './support.js';

const dirs: string[] = [];
const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

// One restart, two topics: a run topic the store keeps (resumed: every seq once,
// recovered, the same epoch) and a topic nothing keeps (reset: recovered false, a new
// epoch, onHistoryLost, numbering from 1 again).
it('follows the demo across a server restart (SIGTERM mid-run, SQLite store): no gap, no duplicate, recovered; a topic no store keeps is reset', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentcast-js-'));
  dirs.push(dir);
  const port = await freePort();
  const env = { AGENTCAST_STORE_URL: `sqlite:///${join(dir, 'runs.db')}` };
  const first = await startServer({ args: ['--demo'], env, port });
  servers.push(first);
  const client = makeClient(first.url);
  const events: AgentcastEvent[] = [];
  const subscribedInfo: Array<{ seq: number; epoch: string; recovered: boolean }> = [];
  const states: Array<{ s: ConnectionState; code?: number }> = [];
  let historyLost = 0;
  const signal = new Signal();
  client.onStateChange((s, detail) => {
    states.push({ s, ...(detail?.code !== undefined ? { code: detail.code } : {}) });
    signal.notify();
  });
  const sub = client.subscribe(
    'workflow:demo',
    {
      onEvent: (ev) => (events.push(ev), signal.notify()),
      onSubscribed: (info) => (subscribedInfo.push(info), signal.notify()),
      onHistoryLost: () => historyLost++,
    },
    { since: 0 },
  );
  const board: AgentcastEvent[] = [];
  const boardInfos: Array<{ recovered: boolean; epoch: string }> = [];
  let boardLost = 0;
  const boardSub = client.subscribe('board:reset', {
    onEvent: (ev) => (board.push(ev), signal.notify()),
    onSubscribed: (i) => (boardInfos.push(i), signal.notify()),
    onHistoryLost: () => (boardLost++, signal.notify()),
  });
  client.connect();
  try {
    await signal.wait(() => boardInfos.length === 1, 'subscribed to board:reset');
    for (let i = 0; i < 3; i++) await client.publish('board:reset', 'note', { i });
    await signal.wait(() => board.length === 3, 'three board events');
    // in the middle of a run: started, some node running, not complete
    await signal.wait(
      () => events.some((e) => e.type === 'node_status') && events[events.length - 1]?.type !== 'workflow_complete',
      'the middle of a run',
      15_000,
    );
    const cut = events.length;
    await first.stop('SIGTERM');
    await signal.wait(() => client.state === 'reconnecting', 'reconnecting');
    // the server closed with 1001 (server shutting down): a reconnectable code
    expect(states.some((x) => x.s === 'reconnecting' && x.code === 1001)).toBe(true);
    const second = await startServer({ args: ['--demo'], env, port });
    servers.push(second);
    await signal.wait(
      () => events.slice(cut).filter((e) => e.type === 'workflow_start').length >= 1 && subscribedInfo.length >= 2,
      'the next run after the restart',
      20_000,
    );
    // the board topic started a new life: recovered false, a new epoch, seq 1 again
    await signal.wait(() => boardInfos.length === 2, 'the board resubscription');
    expect(boardInfos[1]?.recovered).toBe(false);
    expect(boardInfos[1]?.epoch).not.toBe(boardInfos[0]?.epoch);
    expect(boardLost).toBe(1);
    expect(boardSub.recovered).toBe(false);
    const ack = await client.publish('board:reset', 'note', { i: 'new' });
    expect(ack.seq).toBe(1);
    await signal.wait(() => board.length === 4, 'the new life of the topic');
    expect(board[3]?.seq).toBe(1);
  } finally {
    client.close();
  }
  const seqs = events.map((e) => e.seq);
  expect(seqs).toEqual(seqs.map((_, i) => i + 1)); // every seq once, in order
  expect(historyLost).toBe(0);
  expect(subscribedInfo.every((i) => i.recovered)).toBe(true);
  expect(subscribedInfo[1]?.epoch).toBe(subscribedInfo[0]?.epoch); // run topics are durable
  expect(sub.recovered).toBe(true);
  // the interrupted run ended (success: false) before the next one started
  const kinds = events.map((e) => e.type);
  const interrupted = kinds.indexOf('workflow_complete');
  expect(interrupted).toBeGreaterThan(0);
  expect(events[interrupted]?.data.success).toBe(false);
  expect(kinds.indexOf('workflow_start', 1)).toBeGreaterThan(interrupted);
});
