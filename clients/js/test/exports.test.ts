// The public API, pinned (as tests/unit/test_exported_members.py pins the Python one):
// removing or renaming an export is a breaking change; adding one updates this list.
import { expect, it } from 'vitest';
import * as core from '../src/index.js';
import * as react from '../src/react.js';

it('exports exactly the documented runtime names', () => {
  expect(Object.keys(core).sort()).toEqual(
    [
      'AUTH_CLOSE_CODES',
      'AgentcastClient',
      'AgentcastError',
      'CHAT_EVENT_TYPES',
      'CommandError',
      'EXECUTION_EVENT_TYPES',
      'WORKFLOW_EVENT_TYPES',
      'isChatEvent',
      'isExecutionEvent',
      'isWorkflowEvent',
      'ChatSession',
      'CloseCode',
      'RunStore',
      'TERMINAL_CLOSE_CODES',
      'TERMINAL_STATUSES',
      'acquireChatSession',
      'acquireRunStore',
      'applyChatEvent',
      'applyRunEvent',
      'backoffDelay',
      'chatStateFromSnapshot',
      'closeCodeOfStatus',
      'emptyChatState',
      'emptyRunState',
      'fetchTicket',
      'httpUrlOf',
      'isAuthClose',
      'jwtExpiry',
      'reconnectable',
      'releaseChatSession',
      'releaseRunStore',
      'runStateFromSnapshot',
      'wsUrlOf',
    ].sort(),
  );
  expect(Object.keys(react).sort()).toEqual(
    ['AgentcastProvider', 'useAgentcastClient', 'useChat', 'useConnectionState', 'useExecution', 'useWorkflowRun'].sort(),
  );
});

it('keeps the agreed client surface', () => {
  const proto = core.AgentcastClient.prototype;
  for (const m of ['connect', 'close', 'dispose', 'onStateChange', 'onFrame', 'subscribe', 'command', 'publish', 'chat', 'createConversation', 'http', 'refreshAuth']) {
    expect(typeof (proto as unknown as Record<string, unknown>)[m]).toBe('function');
  }
  expect(Object.getOwnPropertyDescriptor(proto, 'state')?.get).toBeTypeOf('function');
});

it('keeps every framework out of the core: only src/react.ts imports react', async () => {
  const { readdirSync, readFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const dir = join(import.meta.dirname, '..', 'src');
  const files = readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  const importing = files.filter((f) => /from ['"]react(\/|['"])/.test(readFileSync(join(dir, f), 'utf8')));
  expect(importing).toEqual(['react.ts']);
});
