import { describe, expect, it } from 'vitest';
import { AgentcastError, type AgentcastEvent, type ConnectionState } from '../src/index.js';
import { demoServer, makeClient, Signal } from './support.js';

describe('against `agentcast serve --demo`', () => {
  const server = demoServer();

  it('connects, subscribes and receives a whole demo run in seq order', async () => {
    const client = makeClient(server.url);
    const states: ConnectionState[] = [];
    client.onStateChange((s) => states.push(s));
    const events: AgentcastEvent[] = [];
    const signal = new Signal();
    let subscribed: { seq: number; epoch: string; recovered: boolean } | undefined;
    client.connect();
    const sub = client.subscribe(
      'workflow:demo',
      {
        onEvent: (ev) => {
          events.push(ev);
          signal.notify();
        },
        onSubscribed: (info) => {
          subscribed = info;
          signal.notify();
        },
      },
      { since: 0 },
    );
    try {
      await signal.wait(() => subscribed !== undefined, 'subscribed');
      expect(subscribed?.recovered).toBe(true);
      expect(client.state).toBe('open');
      await signal.wait(() => events.some((e) => e.type === 'workflow_complete'), 'a complete run', 15_000);
      const seqs = events.map((e) => e.seq);
      expect(seqs).toEqual(seqs.map((_, i) => i + 1));
      expect(events[0]?.type).toBe('workflow_start');
      const first = events.slice(0, events.findIndex((e) => e.type === 'workflow_complete') + 1);
      expect(first.filter((e) => e.type === 'node_status')).toHaveLength(8);
      expect(first.filter((e) => e.type === 'edge_flow')).toHaveLength(4);
      expect(sub.seq).toBe(events[events.length - 1]?.seq);
      expect(sub.epoch).toBe(subscribed?.epoch);
      expect(states.slice(0, 2)).toEqual(['connecting', 'open']);
    } finally {
      client.close();
    }
    expect(client.state).toBe('closed');
  });

  it('answers commands, refuses bad ones with AgentcastError, and publishes', async () => {
    const client = makeClient(server.wsUrl);
    client.connect();
    try {
      const pong = await client.command({ type: 'ping' });
      expect(pong.type).toBe('pong');
      const err = await client.command({ type: 'subscribe', topic: 'bad topic' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentcastError);
      expect((err as AgentcastError).code).toBe('invalid_topic');
      const refused = new Signal();
      let refusal: AgentcastError | undefined;
      client.subscribe('no spaces allowed', { onRefused: (e) => ((refusal = e), refused.notify()) });
      await refused.wait(() => refusal !== undefined, 'refusal');
      expect(refusal?.code).toBe('invalid_topic');
      // publish: the ack's seq is the event's, and a subscriber sees it once
      const got: AgentcastEvent[] = [];
      const signal = new Signal();
      let live = false;
      client.subscribe('board:js', {
        onSubscribed: () => ((live = true), signal.notify()),
        onEvent: (ev) => (got.push(ev), signal.notify()),
      });
      await signal.wait(() => live, 'subscribed');
      const ack = await client.publish('board:js', 'note', { text: 'hello' });
      expect(ack.topic).toBe('board:js');
      await signal.wait(() => got.length === 1, 'the published event');
      expect(got[0]?.seq).toBe(ack.seq);
      expect(got[0]?.data).toEqual({ text: 'hello' });
      // subscribing again replaces the subscription: the first one gets nothing more
      const again: AgentcastEvent[] = [];
      let againLive = false;
      client.subscribe('board:js', {
        onSubscribed: () => ((againLive = true), signal.notify()),
        onEvent: (ev) => (again.push(ev), signal.notify()),
      });
      await signal.wait(() => againLive, 'subscribed again');
      const second = await client.publish('board:js', 'note', { text: 'again' });
      await signal.wait(() => again.length === 1, 'the event on the new subscription');
      expect(again[0]?.seq).toBe(second.seq);
      expect(got).toHaveLength(1);
    } finally {
      client.close();
    }
  });
});
