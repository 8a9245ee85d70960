// The built package in a real browser (Debian's chromium, driven by playwright-core; no
// browser download): dist/ served as ES modules by a page of its own origin, the server's
// Origin allow-list naming it. What only a browser shows: a refused handshake reaches the
// page as a bare error and close 1006, so the client must find out over HTTP that the
// token is refused (state `unauthorized`, no retry loop), and the token travels as the
// subprotocol `bearer.<token>`.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server as HttpServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, hs256, startServer, UNIT, type Server } from './support.js';

const CHROMIUM = process.env.AGENTCAST_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const required = process.env.AGENTCAST_REQUIRE_SERVICES === '1';
const SECRET = 'js-browser-tests-' + 'z'.repeat(40);
const root = join(import.meta.dirname, '..');

if (CHROMIUM === undefined && required) {
  throw new Error('AGENTCAST_REQUIRE_SERVICES=1 but no chromium (apt-get install chromium, or set AGENTCAST_CHROMIUM)');
}

describe.skipIf(CHROMIUM === undefined)('in headless Chromium', () => {
  let server: Server;
  let web: HttpServer;
  let origin: string;
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')]);
    const webPort = await freePort();
    origin = `http://127.0.0.1:${webPort}`;
    web = createServer((req, res) => {
      const path = normalize(decodeURIComponent((req.url ?? '/').split('?')[0] ?? '/'));
      if (path === '/') {
        res.writeHead(200, { 'Content-Type': 'text/html' }).end('<!doctype html><title>agentcast</title><body></body>');
        return;
      }
      const file = join(root, path);
      if (!path.startsWith('/dist/') || !existsSync(file)) {
        res.writeHead(404).end();
        return;
      }
      const type = extname(file) === '.js' ? 'text/javascript' : 'application/octet-stream';
      res.writeHead(200, { 'Content-Type': type }).end(readFileSync(file));
    });
    await new Promise<void>((r) => web.listen(webPort, '127.0.0.1', r));
    server = await startServer({ env: { AGENTCAST_JWT_SECRET: SECRET, AGENTCAST_ORIGINS: origin } });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
    page = await browser.newPage();
    await page.goto(origin);
  });
  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    await new Promise((r) => web?.close(r));
  });

  /** Run a scenario in the page with the client imported from dist/; its result. */
  function inPage<T>(fn: string, args: Record<string, unknown>): Promise<T> {
    // a string, so that vitest does not rewrite the page's import()
    const script = `(async () => { const mod = await import('/dist/index.js'); return (${fn})(mod, ${JSON.stringify(args)}); })()`;
    return page.evaluate(script) as Promise<T>;
  }

  it('connects with a token (subprotocol), subscribes and gets a published event', async () => {
    const token = hs256(SECRET, { sub: 'alice', topics: ['board:alice:*'], scope: 'publish' });
    const result = await inPage<{ states: string[]; got: { seq: number; data: unknown } }>(
      `async (mod, { url, token, timeout }) => {
        const client = new mod.AgentcastClient({ url, token: () => token });
        const states = [];
        client.onStateChange((s) => states.push(s));
        const got = new Promise((resolve, reject) => {
          setTimeout(() => reject(new Error('no event; states: ' + states.join(','))), timeout);
          client.subscribe('board:alice:inbox', {
            onSubscribed: () => client.publish('board:alice:inbox', 'note', { from: 'page' }).catch(reject),
            onEvent: (ev) => resolve({ seq: ev.seq, data: ev.data }),
            onRefused: reject,
          });
        });
        client.connect();
        const ev = await got;
        client.close();
        return { states, got: ev };
      }`,
      { url: server.url, token, timeout: 10_000 * UNIT },
    );
    expect(result.got).toEqual({ seq: 1, data: { from: 'page' } });
    expect(result.states).toEqual(['connecting', 'open', 'closed']);
  });

  it('a refused token: state unauthorized (4500) without a retry loop, though the browser hides the 401', async () => {
    const bad = hs256('not-the-secret-' + 'q'.repeat(40), { sub: 'alice' });
    const result = await inPage<{ states: Array<[string, number | null]> }>(
      `async (mod, { url, token, timeout }) => {
        const client = new mod.AgentcastClient({ url, token, reconnect: { initialMs: 50, maxMs: 200 } });
        const states = [];
        const done = new Promise((resolve, reject) => {
          setTimeout(() => reject(new Error('states: ' + JSON.stringify(states))), timeout);
          client.onStateChange((s, d) => {
            states.push([s, d?.code ?? null]);
            if (s === 'unauthorized') resolve();
          });
        });
        client.connect();
        await done;
        client.close();
        return { states };
      }`,
      { url: server.url, token: bad, timeout: 10_000 * UNIT },
    );
    expect(result.states).toEqual([
      ['connecting', null],
      ['unauthorized', 4500],
      ['closed', null],
    ]);
  });
});
