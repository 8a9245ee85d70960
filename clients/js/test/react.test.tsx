// @vitest-environment jsdom
import { act, cleanup, render, renderHook, waitFor } from '@testing-library/react';
import { createElement, StrictMode, type ReactNode } from 'react';
import { afterEach, describe, expect, it } from 'vitest';
import { acquireRunStore, releaseRunStore, type AgentcastClient, type RunView } from '../src/index.js';
import { AgentcastProvider, useChat, useExecution, useWorkflowRun, type WorkflowRunResult } from '../src/react.js';
import { demoServer, makeClient, UNIT } from './support.js';

const timeout = (ms: number) => ({ timeout: ms * UNIT, interval: 20 });
const clients: AgentcastClient[] = [];
function wrapperFor(client: AgentcastClient) {
  clients.push(client);
  return ({ children }: { children?: ReactNode }) => createElement(AgentcastProvider, { client }, children);
}
afterEach(() => {
  cleanup();
  for (const c of clients.splice(0)) c.close();
});

describe('hooks against `agentcast serve --demo`', () => {
  // chat snapshots hold 2 messages there (AGENTCAST_CHAT_HISTORY_LIMIT): paging is needed
  const server = demoServer();

  it('useWorkflowRun: a whole run executed while watching, then the same state for a late joiner (snapshot)', async () => {
    const client = makeClient(server.url);
    const wrapper = wrapperFor(client);
    const id = `js-hook-${Date.now()}`;
    const { result } = renderHook(() => useWorkflowRun(id), { wrapper });
    await waitFor(() => expect(result.current.recovered).toBe(true), timeout(10_000));
    // every state the hook's store went through (React may render a burst of them once)
    const store = acquireRunStore(client, `workflow:${id}`);
    const views: RunView[] = [];
    const off = store.subscribe(() => views.push(store.getSnapshot()));
    expect(result.current.isConnected).toBe(true);
    expect(result.current.connectionState).toBe('open');
    const r = await fetch(`${server.url}/api/workflows/${id}/execute`, { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
    expect(r.status).toBe(202);
    await waitFor(() => expect(result.current.status).toBe('completed'), timeout(10_000));
    const done = result.current;
    expect(done.progress).toBe(100);
    expect(Object.keys(done.nodeStatuses).sort()).toEqual(['analyze', 'fetch', 'report', 'summarize']);
    expect(Object.values(done.nodeStatuses).every((n) => n.status === 'completed')).toBe(true);
    expect(done.nodeStatuses.report?.result).toMatchObject({ node: 'report' });
    expect(done.executionOrder).toEqual(['fetch', 'analyze', 'summarize', 'report']);
    off();
    releaseRunStore(client, `workflow:${id}`);
    expect(views.some((v) => v.run.nodes.fetch?.status === 'running')).toBe(true);
    expect(views.some((v) => v.edgeFlows.length > 0)).toBe(true);
    expect(views.at(-1)?.seq).toBe(done.seq);
    expect(done.seq).toBeGreaterThan(10);
    // a second client joining after the end gets the final state from the snapshot
    const late = renderHook(() => useWorkflowRun(id), { wrapper: wrapperFor(makeClient(server.url)) });
    await waitFor(() => expect(late.result.current.status).toBe('completed'), timeout(10_000));
    expect(late.result.current.nodeStatuses).toEqual(done.nodeStatuses);
    expect(late.result.current.progress).toBe(100);
    expect(late.result.current.seq).toBe(done.seq);
    expect(late.result.current.edgeFlows).toEqual([]);
  });

  it('useWorkflowRun keeps its state across a lost connection and goes on', async () => {
    const client = makeClient(server.url);
    const seen: WorkflowRunResult[] = [];
    const { result } = renderHook(
      () => {
        const r = useWorkflowRun('demo');
        seen.push(r);
        return r;
      },
      { wrapper: wrapperFor(client) },
    );
    await waitFor(() => expect(Object.keys(result.current.nodeStatuses).length).toBe(4), timeout(10_000));
    const before = result.current.seq;
    const from = seen.length;
    act(() => (client as unknown as { ws: { terminate(): void } }).ws.terminate());
    await waitFor(() => expect(seen.slice(from).some((r) => r.connectionState === 'reconnecting')).toBe(true), timeout(5_000));
    await waitFor(() => expect(result.current.isConnected).toBe(true), timeout(5_000));
    // the state was kept through the reconnection: never reset, seq never went back
    for (const r of seen.slice(from)) {
      expect(Object.keys(r.nodeStatuses)).toHaveLength(4);
      expect(r.seq).toBeGreaterThanOrEqual(before);
    }
    expect(result.current.recovered).toBe(true);
    const resumed = result.current.seq;
    await waitFor(() => expect(result.current.seq).toBeGreaterThan(resumed + 2), timeout(10_000));
  });

  it('useExecution: the demo team execution, agents, steps and results', async () => {
    const { result } = renderHook(() => useExecution('demo'), { wrapper: wrapperFor(makeClient(server.url)) });
    await waitFor(() => expect(result.current.results.length).toBeGreaterThan(0), timeout(15_000));
    const r = result.current;
    expect(r.isConnected).toBe(true);
    expect(r.steps.map((s) => s.agentId)).toEqual(expect.arrayContaining(['researcher']));
    expect(r.results[0]).toMatchObject({ agent_id: expect.any(String) });
    expect(r.totalSteps).toBe(3);
  });

  it('useChat: sends, streams, stops, and pages older history', async () => {
    const client = makeClient(server.url);
    const wrapper = wrapperFor(client);
    client.connect();
    const conv = await client.createConversation();
    const statuses: string[] = [];
    const { result, unmount } = renderHook(
      () => {
        const r = useChat(conv.id);
        statuses.push(r.status);
        return r;
      },
      { wrapper },
    );
    await waitFor(() => expect(result.current.isConnected).toBe(true), timeout(5_000));
    await act(() => result.current.send('Which jobs failed tonight?').then(() => undefined));
    await waitFor(() => expect(result.current.messages.filter((m) => m.role === 'assistant' && m.status === 'complete')).toHaveLength(1), timeout(15_000));
    expect(statuses).toContain('streaming');
    expect(result.current.status).toBe('ready');
    // the second answer is stopped mid-stream
    await act(() => result.current.send('Tell me more about each of them, please.').then(() => undefined));
    await waitFor(() => {
      const last = result.current.messages.at(-1);
      expect(last?.status).toBe('streaming');
      expect(last?.content.length).toBeGreaterThan(0);
    }, timeout(10_000));
    let stopped = false;
    await act(async () => {
      stopped = await result.current.stop();
    });
    expect(stopped).toBe(true);
    await waitFor(() => expect(result.current.messages.at(-1)?.status).toBe('cancelled'), timeout(10_000));
    expect(result.current.status).toBe('ready');
    expect(result.current.messages).toHaveLength(4);
    unmount();
    // a new view of the conversation: the snapshot holds the latest 2 (chat_history_limit), then paging
    const again = renderHook(() => useChat(conv.id), { wrapper });
    await waitFor(() => expect(again.result.current.messages).toHaveLength(2), timeout(5_000));
    expect(again.result.current.hasMore).toBe(true);
    let more = true;
    await act(async () => {
      more = await again.result.current.loadOlder();
    });
    expect(more).toBe(false);
    expect(again.result.current.messages.map((m) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant']);
  });

  it('renders in a component tree with a provider, under StrictMode, two components sharing a topic', async () => {
    const client = makeClient(server.url);
    function Progress({ testId }: { testId: string }) {
      const { progress, isConnected, nodeStatuses } = useWorkflowRun('demo');
      return createElement('p', { 'data-testid': testId }, `${isConnected ? 'on' : 'off'} ${Object.keys(nodeStatuses).length} ${progress}`);
    }
    // StrictMode mounts, unmounts and mounts every effect again: subscribe, unsubscribe, subscribe
    const view = render(
      createElement(
        StrictMode,
        null,
        createElement(AgentcastProvider, { client }, createElement(Progress, { testId: 'a' }), createElement(Progress, { testId: 'b' })),
      ),
    );
    clients.push(client);
    await waitFor(() => expect(view.getByTestId('a').textContent).toMatch(/^on 4 /), timeout(10_000));
    await waitFor(() => expect(view.getByTestId('b').textContent).toBe(view.getByTestId('a').textContent), timeout(10_000));
  });
});
