import { useCallback, useEffect, useRef, useState } from 'react';
import { api } from '../api';
import type { LiveEvent } from '@agentcast/client';
import { useSession } from '../context';

interface Message {
  id: number;
  role: string;
  content: string;
  status: string;
  created_at?: string;
  error?: string;
  reply_to?: number;
}

interface Conversation {
  id: string;
  title: string;
  updated_at: string;
  message_count: number;
  generating: boolean;
}

interface Streaming {
  reply_to: number | null;
  index: number;
  text: string;
  position: number | null;
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
                    {c.message_count} messages{c.generating ? ' · answering' : ''}
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

function Thread({ cid, initial, onSent, onChange }: { cid: string; initial: string | null; onSent(): void; onChange(): void }) {
  const { client } = useSession();
  const [messages, setMessages] = useState<Message[]>([]);
  const [title, setTitle] = useState('');
  const [hasMore, setHasMore] = useState(false);
  const [before, setBefore] = useState<number | null>(null);
  const [streaming, setStreaming] = useState<Streaming | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const sentInitial = useRef(false);
  /** A chat:send is on its way: a snapshot without an answer must not hide its placeholder. */
  const sending = useRef(false);
  const bottom = useRef<HTMLDivElement>(null);
  const stickBottom = useRef(true);

  const upsert = (list: Message[], m: Message) => {
    const i = list.findIndex((x) => x.id === m.id);
    if (i >= 0) {
      const next = list.slice();
      next[i] = m;
      return next;
    }
    return [...list, m].sort((a, b) => a.id - b.id);
  };

  const send = useCallback(
    async (text: string) => {
      setError(null);
      stickBottom.current = true;
      setStreaming({ reply_to: null, index: 0, text: '', position: null });
      sending.current = true;
      try {
        await client.command({ type: 'chat:send', data: { message: text, conversation_id: cid } });
        onChange();
      } catch (err) {
        sending.current = false;
        setStreaming(null);
        setError(err instanceof Error ? err.message : String(err));
      }
    },
    [client, cid, onChange],
  );

  useEffect(() => {
    const sub = client.subscribe(`chat:${cid}`, {
      onSnapshot: (data: any) => {
        setMessages(data.messages ?? []);
        setTitle(data.conversation?.title ?? '');
        setHasMore(!!data.has_more);
        setBefore(data.before ?? null);
        const s = data.streaming;
        const next = s ? { reply_to: s.reply_to ?? null, index: s.index ?? 0, text: s.text ?? '', position: s.position ?? null } : null;
        setStreaming((cur) => (next === null && sending.current ? cur : next));
      },
      onSubscribed: () => {
        if (initial && !sentInitial.current) {
          sentInitial.current = true;
          onSent();
          send(initial);
        }
      },
      onEvent: (ev: LiveEvent) => {
        const d = ev.data ?? {};
        if (ev.type === 'chat:message') {
          setMessages((list) => upsert(list, d as Message));
          if (d.role === 'assistant') {
            sending.current = false;
            setStreaming((s) => (s && (s.reply_to === null || s.reply_to === d.reply_to) ? null : s));
          }
        } else if (ev.type === 'chat:queued') {
          setStreaming((s) => ({ reply_to: d.reply_to ?? s?.reply_to ?? null, index: s?.index ?? 0, text: s?.text ?? '', position: d.position ?? null }));
        } else if (ev.type === 'chat:streaming') {
          setStreaming((s) => {
            const cur = s && (s.reply_to === null || s.reply_to === d.reply_to) ? s : { reply_to: d.reply_to, index: 0, text: '', position: null };
            if (d.done) return { ...cur, reply_to: d.reply_to, position: null };
            if (d.index < cur.index) return cur; // a chunk already shown
            return { reply_to: d.reply_to, index: d.index + 1, text: cur.text + (d.chunk ?? ''), position: null };
          });
        }
      },
      onRefused: (err) => setError(err.message),
    });
    return () => sub.unsubscribe();
  }, [client, cid]);

  useEffect(() => {
    if (stickBottom.current) bottom.current?.scrollIntoView({ block: 'end' });
  }, [messages.length, streaming?.text]);

  const older = async () => {
    setLoadingOlder(true);
    stickBottom.current = false;
    try {
      // the client resolves with the whole reply frame: the page is its `data`
      const { data: page } = await client.command<{ data: { messages: Message[]; has_more: boolean; before: number | null } }>({
        type: 'chat:history',
        data: { conversation_id: cid, before: before ?? undefined, limit: 10 },
      });
      setMessages((list) => page.messages.reduce(upsert, list));
      setHasMore(page.has_more);
      setBefore(page.before);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setLoadingOlder(false);
    }
  };

  const stop = async () => {
    try {
      await client.command({ type: 'chat:cancel', data: { conversation_id: cid } });
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

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
      {error ? <div className="notice error">{error}</div> : null}
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
