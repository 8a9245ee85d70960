// No server: the pure parts (URLs, close codes, backoff, the chat and run folds).
import { describe, expect, it } from 'vitest';
import {
  AgentcastError,
  applyChatEvent,
  applyRunEvent,
  backoffDelay,
  chatStateFromSnapshot,
  closeCodeOfStatus,
  emptyRunState,
  httpUrlOf,
  isAuthClose,
  reconnectable,
  wsUrlOf,
  type AgentcastEvent,
} from '../src/index.js';

const ev = (seq: number, type: string, data: Record<string, unknown>): AgentcastEvent => ({
  seq,
  type,
  data,
  topic: 'chat:c1',
  timestamp: `2026-12-06T00:00:${String(seq).padStart(2, '0')}.000000Z`,
});

describe('urls', () => {
  it('derives /ws from an http base and the base from a ws url', () => {
    expect(wsUrlOf('http://h:8000')).toBe('ws://h:8000/ws');
    expect(wsUrlOf('https://h/prefix/')).toBe('wss://h/prefix/ws');
    expect(wsUrlOf('ws://h:1/ws')).toBe('ws://h:1/ws');
    expect(httpUrlOf('wss://h:1/ws')).toBe('https://h:1');
    expect(httpUrlOf('ws://h:1/app/ws')).toBe('http://h:1/app');
    expect(() => wsUrlOf('ftp://h')).toThrow(TypeError);
  });
});

describe('close codes', () => {
  it('reconnects on 1001, 1006, 1011, 1012, 4000-4499 and stops on 4500-4999 and framing errors', () => {
    for (const c of [1000, 1001, 1006, 1011, 1012, 4000, 4001, 4002, 4003, 4499]) expect(reconnectable(c)).toBe(true);
    for (const c of [1002, 1007, 1008, 1009, 4500, 4501, 4503, 4508, 4529, 4530]) expect(reconnectable(c)).toBe(false);
    for (const c of [4500, 4501, 4503, 4508]) expect(isAuthClose(c)).toBe(true);
    for (const c of [4529, 4530, 1008]) expect(isAuthClose(c)).toBe(false);
    expect(closeCodeOfStatus(401)).toBe(4500);
    expect(closeCodeOfStatus(403)).toBe(4503);
    expect(closeCodeOfStatus(429)).toBeNull();
    expect(closeCodeOfStatus(503)).toBeNull();
    expect(closeCodeOfStatus(404)).toBe(1008);
  });
});

describe('backoff', () => {
  it('grows exponentially up to maxMs, with full jitter by default', () => {
    const opts = { initialMs: 100, maxMs: 1000 };
    expect([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, opts, () => 0.999999))).toEqual(
      [100, 200, 400, 800, 1000, 1000].map((d) => d * (1 - 0.999999)),
    );
    expect(backoffDelay(3, opts, () => 0)).toBe(800);
    expect(backoffDelay(3, { ...opts, jitter: 0.5 }, () => 1)).toBe(400);
    expect(backoffDelay(3, { ...opts, jitter: 0 }, () => 0.7)).toBe(800);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(2, opts);
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThanOrEqual(400);
    }
  });
});

describe('the chat fold', () => {
  const user = { id: 1, conversation_id: 'c1', role: 'user', content: 'hi', status: 'complete', created_at: 'x', tokens: { prompt: 1, completion: 0 } };
  const answer = { ...user, id: 2, role: 'assistant', content: 'Hello there', reply_to: 1 };

  it('applies a snapshot mid-stream, then events idempotently (no chunk twice)', () => {
    const snap = chatStateFromSnapshot(
      'c1',
      { messages: [user], has_more: false, before: null, streaming: { reply_to: 1, index: 2, text: 'Hello there', position: null } },
      5,
    );
    expect(snap.status).toBe('streaming');
    // chunk 1 is already in the text (index < streaming.index); chunk 2 is new
    let s = applyChatEvent(snap, ev(6, 'chat:streaming', { conversation_id: 'c1', reply_to: 1, index: 1, chunk: ' there', done: false }));
    expect(s.streaming?.text).toBe('Hello there');
    s = applyChatEvent(s, ev(7, 'chat:streaming', { conversation_id: 'c1', reply_to: 1, index: 2, chunk: '!', done: false }));
    expect(s.streaming?.text).toBe('Hello there!');
    s = applyChatEvent(s, ev(8, 'chat:streaming', { conversation_id: 'c1', reply_to: 1, index: 3, chunk: '', done: true, status: 'complete' }));
    s = applyChatEvent(s, ev(9, 'chat:message', { ...answer, content: 'Hello there!' }));
    expect(s.streaming).toBeNull();
    expect(s.status).toBe('ready');
    // a chat:message already there replaces it
    s = applyChatEvent(s, ev(9, 'chat:message', { ...answer, content: 'Hello there!' }));
    expect(s.messages.map((m) => m.id)).toEqual([1, 2]);
  });

  it('shows the queue position, then streaming', () => {
    let s = chatStateFromSnapshot('c1', { messages: [], has_more: false, before: null, streaming: null }, 0);
    s = applyChatEvent(s, ev(1, 'chat:message', user));
    expect(s.status).toBe('streaming'); // stored, the answer is on its way
    s = applyChatEvent(s, ev(2, 'chat:queued', { conversation_id: 'c1', reply_to: 1, position: 2 }));
    expect([s.status, s.queuePosition]).toEqual(['queued', 2]);
    s = applyChatEvent(s, ev(3, 'chat:streaming', { conversation_id: 'c1', reply_to: 1, index: 0, chunk: 'Hi', done: false }));
    expect([s.status, s.queuePosition, s.streaming?.text]).toEqual(['streaming', null, 'Hi']);
    s = applyChatEvent(s, ev(4, 'chat:message', { ...answer, status: 'error', error: 'upstream down' }));
    expect(s.status).toBe('error');
  });
});

describe('the run fold', () => {
  it('folds seed 004 events like the server and ignores seqs it has', () => {
    const topic = 'workflow:w';
    let s = emptyRunState(topic);
    const e = (seq: number, type: string, data: Record<string, unknown>) => ({ ...ev(seq, type, data), topic });
    s = applyRunEvent(
      s,
      e(1, 'workflow_start', { workflow_id: 'w', execution_id: 'x', execution_order: ['a', 'b'], total_nodes: 2, edges: [{ source: 'a', target: 'b' }] }),
    );
    expect(s.nodes).toEqual({ a: { status: 'pending' }, b: { status: 'pending' } });
    expect(s.graph_edges).toEqual([{ source: 'a', target: 'b' }]);
    s = applyRunEvent(s, e(2, 'node_status', { node_id: 'a', status: 'completed', result: { n: 1 } }));
    const same = applyRunEvent(s, e(2, 'node_status', { node_id: 'a', status: 'error' }));
    expect(same).toBe(s);
    s = applyRunEvent(s, e(3, 'progress', { progress: 50, current_node_id: 'b' }));
    s = applyRunEvent(s, { ...e(4, 'log', { level: 'warning', message: 'slow' }) });
    expect(s.logs.at(-1)).toMatchObject({ level: 'warning', message: 'slow', seq: 4 });
    s = applyRunEvent(s, e(5, 'workflow_complete', { success: true, execution_time: 1.5 }));
    expect([s.status, s.progress, s.current_node_id, s.nodes.a?.result]).toEqual(['completed', 100, 'b', { n: 1 }]);
    s = applyRunEvent(s, e(6, 'workflow_start', { execution_order: ['c'] }));
    expect([s.status, Object.keys(s.nodes), s.progress, s.graph_edges]).toEqual(['running', ['c'], 0, []]);
  });
});

describe('AgentcastError', () => {
  it('carries an error frame code, field and retry_after', () => {
    const err = AgentcastError.fromFrame({ type: 'error', data: { code: 'rate_limited', message: 'slow down', field: 'x', retry_after: 0.25 } });
    expect([err.code, err.message, err.field, err.retryAfter, err instanceof Error]).toEqual(['rate_limited', 'slow down', 'x', 0.25, true]);
  });
});

describe('typed events', () => {
  it('narrows events to the generated vocabularies', async () => {
    const { isWorkflowEvent, isExecutionEvent, isChatEvent } = await import('../src/index.js');
    const node: AgentcastEvent = {
      type: 'node_status',
      topic: 'workflow:w',
      seq: 1,
      timestamp: 't',
      data: { workflow_id: 'w', execution_id: 'x', node_id: 'n1', status: 'running' },
    };
    expect(isWorkflowEvent(node)).toBe(true);
    if (isWorkflowEvent(node) && node.type === 'node_status') {
      const status: 'pending' | 'running' | 'completed' | 'error' | 'skipped' | 'cancelled' = node.data.status; // typed
      expect([node.data.node_id, status]).toEqual(['n1', 'running']);
    }
    expect(isWorkflowEvent({ ...node, type: 'run_paused' })).toBe(false);
    expect(isWorkflowEvent({ ...node, topic: 'board:w' })).toBe(false);
    expect(isExecutionEvent({ ...node, topic: 'execution:e', type: 'status_update' })).toBe(true);
    expect(isChatEvent({ ...node, topic: 'chat:c', type: 'chat:streaming' })).toBe(true);
    expect(isChatEvent({ ...node, topic: 'chat:c', type: 'chat:accepted' })).toBe(false); // a reply
  });
});
