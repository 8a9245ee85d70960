import { useCallback, useEffect, useRef, useState } from 'react';
import { api } from '../api';
import { useChat } from '@agentcast/client/react';
import { useSession } from '../context';

interface Conversation {
  id: string;
  title: string;
  updated_at: string;
  message_count: number;
  generating: boolean;
}

export function ChatView({ conversation }: { conversation?: string }) {
  const [list, setList] = useState<Conversation[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [first, setFirst] = useState<{ cid: string; text: string } | null>(null);
  const [showList, setShowList] = useState(!conversation);

  const reload = useCallback(async () => {
    try {
      const page = await api<{ conversations: Conversation[] }>('/api/conversations?limit=50');
      setList(page.conversations);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }, []);
  useEffect(() => {
    reload();
    const t = setInterval(reload, 5000);
    return () => clearInterval(t);
  }, [reload]);
  useEffect(() => setShowList(!conversation), [conversation]);

  const start = async (text: string) => {
    const conv = await api<Conversation>('/api/conversations', {
      method: 'POST',
      body: { title: text.slice(0, 60) || 'New conversation' },
    });
    setFirst({ cid: conv.id, text });
    location.hash = `#/chat/${encodeURIComponent(conv.id)}`;
    reload();
  };

  return (
    <section className="page chat-page">
      <div className={`chat-layout ${showList ? 'show-list' : 'show-thread'}`}>
        <aside className="card chat-list">
          <div className="card-head">
            <h2>Conversations</h2>
            <a className="btn small" href="#/chat" data-testid="new-chat">
              New
            </a>
          </div>
          {error ? <div className="notice error">{error}</div> : null}
          <ul>
            {list.length === 0 ? <li className="muted small pad">No conversations yet.</li> : null}
            {list.map((c) => (
              <li key={c.id}>
                <a href={`#/chat/${encodeURIComponent(c.id)}`} className={c.id === conversation ? 'active' : ''}>
                  <span className="conv-title">{c.title}</span>
                  <span className="muted small">
                    {c.message_count} {c.message_count === 1 ? 'message' : 'messages'}{c.generating ? ' · answering' : ''}
                  </span>
                </a>
              </li>
            ))}
          </ul>
        </aside>
        <div className="chat-main">
          {conversation ? (
            <Thread
              key={conversation}
              cid={conversation}
              title={list.find((c) => c.id === conversation)?.title ?? ''}
              initial={first?.cid === conversation ? first.text : null}
              onSent={() => setFirst(null)}
              onChange={reload}
            />
          ) : (
            <div className="card thread">
              <div className="thread-empty">
                <h1>Ask an agent</h1>
                <p className="muted">Answers stream in as they are written; stop one at any time.</p>
              </div>
              <Composer onSend={start} generating={false} onStop={() => undefined} />
            </div>
          )}
        </div>
      </div>
    </section>
  );
}

function Thread({ cid, title, initial, onSent, onChange }: { cid: string; title: string; initial: string | null; onSent(): void; onChange(): void }) {
  const { client } = useSession();
  // the conversation as the client folds it: snapshot, messages, the answer being written
  // (resumed mid-stream after a reconnection), older pages
  const chat = useChat(cid, { client });
  const [error, setError] = useState<string | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  /** A chat:send is on its way (not stored yet): the answer's placeholder shows already. */
  const [sending, setSending] = useState(false);
  const sentInitial = useRef(false);
  const bottom = useRef<HTMLDivElement>(null);
  const stickBottom = useRef(true);

  const fail = (err: unknown) => setError(err instanceof Error ? err.message : String(err));
  const sendNow = chat.send;
  const send = useCallback(
    async (text: string) => {
      setError(null);
      stickBottom.current = true;
      setSending(true);
      try {
        await sendNow(text);
        onChange();
      } catch (err) {
        fail(err);
      } finally {
        setSending(false);
      }
    },
    [sendNow, onChange],
  );

  useEffect(() => {
    // the first message of a new conversation, once its topic is subscribed (useChat's
    // effect ran first: its subscribe goes out before this command, on the same socket)
    if (!initial || sentInitial.current) return;
    sentInitial.current = true;
    onSent();
    setSending(true);
    client
      .command({ type: 'chat:send', data: { message: initial, conversation_id: cid } })
      .then(() => onChange())
      .catch(fail)
      .finally(() => setSending(false));
  }, [client, cid, initial]);

  const { messages: stored, streaming: s, hasMore } = chat.state;
  const streaming = s !== null && !s.done ? s : sending ? { text: '', position: null } : null;
  // the conversation list (message counts, "answering") follows what this thread sees: a
  // message stored, an answer started or ended, rather than the list's 5 s poll alone
  const listChanged = useRef(onChange);
  listChanged.current = onChange;
  const answering = s !== null && !s.done;
  useEffect(() => {
    listChanged.current();
  }, [stored.length, answering]);
  useEffect(() => {
    if (stickBottom.current) bottom.current?.scrollIntoView({ block: 'end' });
  }, [stored.length, streaming?.text]);

  const older = async () => {
    setLoadingOlder(true);
    stickBottom.current = false;
    try {
      await chat.loadOlder(10);
    } catch (err) {
      fail(err);
    } finally {
      setLoadingOlder(false);
    }
  };

  const stop = async () => {
    try {
      await chat.stop();
    } catch (err) {
      fail(err);
    }
  };

  const messages = stored;
  const shownError = error ?? chat.error?.message ?? null;
  const generating = streaming !== null;
  return (
    <div className="card thread" data-testid="thread">
      <div className="card-head thread-head">
        <a className="back only-phone" href="#/chat">
          ←
        </a>
        <h2 className="thread-title">{title || 'Conversation'}</h2>
      </div>
      <div className="messages" data-testid="messages">
        {hasMore ? (
          <button className="btn ghost small older" onClick={older} disabled={loadingOlder} data-testid="older">
            {loadingOlder ? 'Loading…' : 'Load older messages'}
          </button>
        ) : null}
        {messages.map((m) => (
          <div key={m.id} className={`msg msg-${m.role} msg-${m.status}`} data-id={m.id} data-role={m.role} data-status={m.status}>
            <div className="bubble">
              {m.content || <span className="muted">(empty)</span>}
              {m.status !== 'complete' ? <div className="msg-note">{m.status === 'cancelled' ? 'stopped' : m.error ?? m.status}</div> : null}
            </div>
          </div>
        ))}
        {streaming ? (
          <div className="msg msg-assistant streaming" data-testid="streaming">
            <div className="bubble">
              {streaming.position ? (
                <span className="muted" data-testid="queue-position">
                  Waiting in queue · position {streaming.position}
                </span>
              ) : streaming.text ? (
                <>
                  {streaming.text}
                  <span className="caret" />
                </>
              ) : (
                <span className="typing">
                  <i />
                  <i />
                  <i />
                </span>
              )}
            </div>
          </div>
        ) : null}
        <div ref={bottom} />
      </div>
      {shownError ? <div className="notice error">{shownError}</div> : null}
      <Composer onSend={send} generating={generating} onStop={stop} />
    </div>
  );
}

function Composer({ onSend, generating, onStop }: { onSend(text: string): void; generating: boolean; onStop(): void }) {
  const [text, setText] = useState('');
  const submit = () => {
    const t = text.trim();
    if (!t || generating) return;
    setText('');
    onSend(t);
  };
  return (
    <form
      className="composer"
      onSubmit={(e) => {
        e.preventDefault();
        submit();
      }}
    >
      <textarea
        rows={1}
        value={text}
        placeholder="Message the agent…"
        onChange={(e) => setText(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === 'Enter' && !e.shiftKey) {
            e.preventDefault();
            submit();
          }
        }}
        data-testid="composer"
      />
      {generating ? (
        <button type="button" className="btn danger" onClick={onStop} data-testid="stop">
          Stop
        </button>
      ) : (
        <button type="submit" className="btn primary" disabled={!text.trim()} data-testid="send">
          Send
        </button>
      )}
    </form>
  );
}
