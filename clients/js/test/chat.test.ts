import { describe, expect, it } from 'vitest';
import { AgentcastError, type ChatState } from '../src/index.js';
import { demoServer, makeClient, Signal } from './support.js';

describe('chat against the built-in offline agent', () => {
  // the offline agent is paced at 20 words/s there: time to stop an answer
  const server = demoServer();

  it('sends, streams the answer chunk by chunk, and ends with the stored answer', async () => {
    const client = makeClient(server.url);
    client.connect();
    const conv = await client.createConversation({ title: 'js test' });
    const chat = client.chat(conv.id);
    const seen: ChatState[] = [];
    const signal = new Signal();
    chat.onChange((s) => (seen.push(s), signal.notify()));
    try {
      await signal.wait(() => seen.length > 0, 'the snapshot');
      const { messageId } = await chat.send('Which jobs failed tonight?');
      expect(messageId).toBeGreaterThan(0);
      await signal.wait(() => chat.state.messages.some((m) => m.role === 'assistant'), 'the answer', 15_000);
      const answer = chat.state.messages.find((m) => m.role === 'assistant');
      expect(answer?.status).toBe('complete');
      expect(answer?.reply_to).toBe(messageId);
      // it was streamed: states with a growing partial text, status streaming
      const partials = seen.filter((s) => s.status === 'streaming' && (s.streaming?.text.length ?? 0) > 0);
      expect(partials.length).toBeGreaterThan(2);
      const texts = partials.map((s) => s.streaming?.text ?? '');
      for (let i = 1; i < texts.length; i++) expect(texts[i]?.startsWith(texts[i - 1] ?? '')).toBe(true);
      expect(answer?.content.startsWith(texts[texts.length - 1] ?? '')).toBe(true);
      expect(chat.state.status).toBe('ready');
      expect(chat.state.streaming).toBeNull();
    } finally {
      chat.close();
      client.close();
    }
  });

  it('stops an answer mid-stream', async () => {
    const client = makeClient(server.url);
    client.connect();
    const conv = await client.createConversation();
    const chat = client.chat(conv.id);
    const signal = new Signal();
    chat.onChange(() => signal.notify());
    try {
      await chat.send('Tell me everything about the nightly batch.');
      await signal.wait(() => (chat.state.streaming?.text.length ?? 0) > 0, 'the first chunks');
      expect(await chat.stop()).toBe(true);
      await signal.wait(() => chat.state.messages.some((m) => m.role === 'assistant'), 'the cancelled answer');
      const answer = chat.state.messages.find((m) => m.role === 'assistant');
      expect(answer?.status).toBe('cancelled');
      expect(chat.state.status).toBe('ready');
      expect(await chat.stop()).toBe(false); // nothing runs any more
    } finally {
      chat.close();
      client.close();
    }
  });

  it('resumes an answer mid-stream in a second client (snapshot) and across a reconnection', async () => {
    const writer = makeClient(server.url);
    writer.connect();
    const conv = await writer.createConversation();
    const chat = writer.chat(conv.id);
    const signal = new Signal();
    chat.onChange(() => signal.notify());
    const reader = makeClient(server.url);
    try {
      await chat.send('Explain the whole schedule of tonight in detail.');
      await signal.wait(() => (chat.state.streaming?.text.length ?? 0) > 10, 'some chunks');
      // a late joiner: the snapshot brings the text so far, the events the rest, once each
      reader.connect();
      const late = reader.chat(conv.id);
      late.onChange(() => signal.notify());
      await signal.wait(() => late.state.seq > 0, 'the late snapshot');
      expect(late.state.status === 'streaming' || late.state.messages.some((m) => m.role === 'assistant')).toBe(true);
      await signal.wait(() => late.state.messages.some((m) => m.role === 'assistant'), 'the answer', 15_000);
      await signal.wait(() => chat.state.messages.some((m) => m.role === 'assistant'), 'the answer', 15_000);
      const full = chat.state.messages.find((m) => m.role === 'assistant')?.content;
      expect(late.state.messages.find((m) => m.role === 'assistant')?.content).toBe(full);
      late.close();
      // the next answer, with the writer's connection cut in the middle
      const streamed: string[] = [];
      chat.events.on('change', (s) => {
        if (s.streaming !== null) streamed.push(s.streaming.text);
      });
      await chat.send('And what about tomorrow night?');
      await signal.wait(() => (chat.state.streaming?.text.length ?? 0) > 5, 'the second answer streaming');
      // drop the socket as a network failure would (no close handshake from us)
      const ws = (writer as unknown as { ws: { terminate(): void } }).ws;
      ws.terminate();
      await signal.wait(() => chat.state.messages.filter((m) => m.role === 'assistant').length === 2, 'the second answer', 15_000);
      const second = chat.state.messages.filter((m) => m.role === 'assistant')[1];
      expect(second?.status).toBe('complete');
      const last = streamed.filter((t) => t.length > 0).at(-1) ?? '';
      expect(second?.content.startsWith(last)).toBe(true); // no chunk lost or repeated
    } finally {
      chat.close();
      writer.close();
      reader.close();
    }
  });

  it('rejects a send to a conversation that does not exist with not_found', async () => {
    const client = makeClient(server.url);
    client.connect();
    const chat = client.chat('0123456789abcdef0123456789abcdef');
    try {
      const err = await chat.send('hello?').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentcastError);
      expect((err as AgentcastError).code).toBe('not_found');
      expect(chat.state.status).toBe('error');
    } finally {
      chat.close();
      client.close();
    }
  });
});
