// @vitest-environment jsdom
// The documentation's examples (clients/js/README.md, docs/clients.md) as generated into
// test/examples/ by `npm run gen` (`gen:check` fails when they are stale; `npm test`'s tsc
// type-checks them): each runs here against `agentcast serve --demo`.
import { render, waitFor } from '@testing-library/react';
import { createElement, type ComponentType } from 'react';
import { beforeAll, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { demoServer, UNIT } from './support.js';

beforeAll(() => {
  process.env.AGENTCAST_EXAMPLE_URL = demoServer().url;
});

it('README example 1: follow a run (Node, the `ws` package)', async () => {
  const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
  try {
    await import('./examples/readme-1.js');
    const printed = log.mock.calls.map((args) => args.map(String).join(' '));
    expect(printed).toContain('connection: open ');
    expect(printed.at(-1)).toBe('connection: closed ');
    const listing = printed.at(-2) ?? '';
    const lines = listing.split('\n');
    expect(lines.at(-1)).toMatch(/^\d+ workflow_complete$/);
    const seqs = lines.map((l) => Number(l.split(' ')[0]));
    expect(seqs).toEqual(seqs.map((_, i) => (seqs[0] ?? 0) + i)); // consecutive, no duplicate
  } finally {
    log.mockRestore();
  }
});

it('README example 2: the React component, in a page (jsdom)', async () => {
  // the example uses the page's WebSocket: here the `ws` package (jsdom's global one is
  // Node's undici WebSocket, which cannot dispatch jsdom's events)
  vi.stubGlobal('WebSocket', WebSocket);
  const { App } = (await import('./examples/readme-2.js')) as { App: ComponentType };
  const view = render(createElement(App));
  await waitFor(() => expect(view.getByTestId('status').textContent).toMatch(/^live · \d+%$/), { timeout: 10_000 * UNIT });
  await waitFor(() => expect(view.container.querySelectorAll('li')).toHaveLength(4), { timeout: 10_000 * UNIT });
  view.unmount();
});

it('docs/clients.md example 1: a chat answer, streamed', async () => {
  const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
  try {
    await import('./examples/clients-1.js');
    const printed = log.mock.calls.map((args) => args.map(String).join(' '));
    const partials = printed.filter((l) => l.startsWith('so far: '));
    expect(partials.length).toBeGreaterThan(1);
    const last = printed.at(-1) ?? '';
    expect(last.startsWith('complete ')).toBe(true);
    expect(last.slice('complete '.length).startsWith(partials.at(-1)?.slice('so far: '.length) ?? '?')).toBe(true);
  } finally {
    log.mockRestore();
  }
});
