// One `agentcast serve --demo` shared by the test files that need no server of their own
// (each start costs seconds of Python imports): the offline agent paced at 20 words/s (an
// answer takes a second or two, time to stop it) and snapshots of 2 messages (paging).
import type { TestProject } from 'vitest/node';
import { startServer, type Server } from './support.js';

declare module 'vitest' {
  export interface ProvidedContext {
    demoUrl: string;
  }
}

let server: Server | undefined;

export async function setup(project: TestProject): Promise<void> {
  server = await startServer({
    args: ['--demo'],
    env: { AGENTCAST_OFFLINE_TOKENS_PER_SECOND: '20', AGENTCAST_CHAT_HISTORY_LIMIT: '2' },
  });
  project.provide('demoUrl', server.url);
}

export async function teardown(): Promise<void> {
  await server?.stop();
}
