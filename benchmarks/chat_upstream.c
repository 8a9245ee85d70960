/*
 * chat_upstream.c — the chat benchmark's fake OpenAI-compatible streaming server, in C.
 *
 * Build:  gcc -O2 -Wall -Wextra -o chat_upstream benchmarks/chat_upstream.c
 * Run:    ./chat_upstream --port 9100 --rate 50 --tokens 250 --streams 1000
 *
 * The twin of benchmarks/chat_upstream.py (same flags, same bytes on the wire, same
 * schedule, same startup line), for when pacing tens of thousands of tokens per second
 * from Python costs too much CPU: the Python upstream spends ~16-20 µs of CPU per token
 * and shares its core with the load client, so at 50,000 tokens/s it saturates that core
 * and distorts the latency it is meant to measure. Here a token costs one send() (with
 * MSG_NOSIGNAL) plus its share of an epoll wake-up: about 9.5 µs on a 2-vCPU VM (1000
 * streams, 42k tokens/s), nearly all of it in the kernel, as a loopback send() also runs
 * the receiver's TCP input and wakes it. Single thread, Linux epoll, nothing beyond libc.
 * Keep the two files in step when either changes.
 *
 * Differences, none visible to a client that waits for each answer before the next
 * request: every token's timestamp is read just before its own write (Python reads one
 * per scheduler pass), and a request pipelined behind a stream or a /go on the same
 * connection is answered after it (Python would write it into the middle of the stream).
 *
 * Behaviour (see chat_upstream.py for the reference):
 *  - HTTP/1.1 keep-alive on 127.0.0.1:PORT (backlog 4096, RLIMIT_NOFILE raised to the
 *    hard limit). A request is a head up to CRLFCRLF plus `content-length` body bytes;
 *    several requests may share a read or span reads; pipelined requests are answered in
 *    order (a connection's next request waits until its stream or its /go is answered).
 *  - POST .../chat/completions: with "stream": true in the body, the SSE head is written
 *    at once and the stream is held; otherwise the non-streamed JSON answer.
 *  - Held streams get no token until GET /go, which waits (at most 30 s, without blocking
 *    anything else) until --streams streams are held, then starts them: t0 = now + 1 s,
 *    stream i of N gets token k at t0 + i/N·period + k·period (period = 1 / --rate), and
 *    answers {"started": N}. A stream arriving after /go starts at once.
 *  - Stream number `index` (arrival order) has answer_tokens(tokens, index, streams)
 *    tokens: max(1, int(tokens * (0.8 + 0.4 * (index % n) / n))), n = max(1, streams).
 *  - Each token is one chunk holding one SSE event whose content is "ts=<ns> ", ns being
 *    the CLOCK_REALTIME time taken right before its write; after the last one, the
 *    finish_reason "stop" event and "data: [DONE]" in one chunk, then "0\r\n\r\n".
 *  - Tokens come from a binary min-heap keyed by due time (CLOCK_MONOTONIC); the loop
 *    sleeps in epoll_pwait2 (nanosecond timeout; timerfd with absolute times where that
 *    system call is missing) until the next due time and writes every due token in one
 *    pass. A stream whose connection is gone is counted lost and dropped. The timer
 *    slack (TIMER_SLACK_NS, 50 µs) trades precision for CPU: tokens go out ~30 µs late
 *    at the median, <100 µs at p99; 1 ns slack costs ~70% more CPU per token (more
 *    wake-ups), 200 µs saves ~30%.
 *  - GET .../models: the model list; GET /stats: {"streams", "sent", "lost",
 *    "late_max_ms"}; anything else: 404 JSON.
 *  - Writes that would block are kept per connection and flushed on EPOLLOUT, in order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#define SETTLE_NS 1000000000.0 /* between /go and the first token (chat_upstream.SETTLE_S) */
#define GO_WAIT_NS 30000000000LL /* /go waits at most this long for --streams streams */
#define READ_SIZE 65536
#define MAX_REQUEST (64 << 20) /* a larger unanswered request closes the connection */
#define MAX_EVENTS 1024
#define TIMER_SLACK_NS 50000 /* how late the kernel may end a sleep (its default) */
#define MAX_SLEEP_NS 50000000LL

static const char CHUNK_PREFIX[] =
    "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,"
    "\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ts=";
static const char CHUNK_SUFFIX[] = " \"},\"finish_reason\":null}]}\n\n";
static const char END[] =
    "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,"
    "\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
    "data: [DONE]\n\n";
static const char HEAD[] =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    "transfer-encoding: chunked\r\n\r\n";
/* json.dumps() of chat_upstream.py's answers (its default ", " and ": " separators) */
static const char COMPLETION_JSON[] =
    "{\"id\": \"chatcmpl-bench\", \"object\": \"chat.completion\", \"model\": \"bench\", "
    "\"choices\": [{\"index\": 0, \"message\": {\"role\": \"assistant\", \"content\": \"ok\"}, "
    "\"finish_reason\": \"stop\"}], \"usage\": {\"prompt_tokens\": 1, \"completion_tokens\": 1}}";
static const char MODELS_JSON[] =
    "{\"object\": \"list\", \"data\": [{\"id\": \"bench\", \"object\": \"model\"}]}";
static const char NOT_FOUND_JSON[] = "{\"error\": {\"message\": \"not found\"}}";

enum busy { IDLE = 0, STREAMING, AWAITING_GO };

struct conn {
    int fd;            /* -1 once closed */
    int closed;
    enum busy busy;    /* a stream (held or scheduled) or a /go is pending: requests wait */
    int want_out;      /* EPOLLOUT registered */
    int in_resume, in_dead;
    char *in;          /* received, unparsed bytes: in[in_off .. in_len) */
    size_t in_off, in_len, in_cap;
    char *out;         /* bytes a write could not take yet: out[out_off .. out_len) */
    size_t out_off, out_len, out_cap;
    /* the stream, while busy == STREAMING */
    double due;        /* CLOCK_MONOTONIC ns of the next token */
    uint64_t seq;      /* heap tie-break: arrival order */
    long left;
    struct conn *next_resume, *next_dead;
};

static struct {
    double period_ns;
    long tokens;
    long expected;
    int started, all_held;
    long streams, sent, lost;
    double late_max_ns;
    struct conn **held;
    size_t held_n, held_cap;
    struct conn **heap;
    size_t heap_n, heap_cap;
    struct { struct conn *c; int64_t deadline; } *goq; /* /go requests waiting, FIFO */
    size_t goq_head, goq_n, goq_cap;
    struct conn *resume, *dead;
    int epfd, lfd, tfd, spare_fd;
    int use_pwait2;
    int64_t timer_armed; /* timerfd mode: the absolute time armed, -1 none */
} up;

static char LISTEN_TAG, TIMER_TAG;

/* ------------------------------------------------------------------ helpers */

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) {
        perror("realloc");
        exit(1);
    }
    return q;
}

static void grow(void **buf, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return;
    size_t cap2 = *cap ? *cap : 16;
    while (cap2 < need) cap2 *= 2;
    *buf = xrealloc(*buf, cap2 * item);
    *cap = cap2;
}

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* chat_upstream.answer_tokens, with the same float arithmetic */
static long answer_tokens(long tokens, long index, long streams) {
    long n = streams > 1 ? streams : 1;
    double t = (double)tokens * (0.8 + 0.4 * (double)(index % n) / (double)n);
    long k = (long)t;
    return k > 1 ? k : 1;
}

/* ------------------------------------------------------------------ connections */

static void set_events(struct conn *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(up.epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = out;
}

static void maybe_free(struct conn *c) {
    if (c->closed && c->busy == IDLE && !c->in_dead) {
        c->in_dead = 1;
        c->next_dead = up.dead;
        up.dead = c;
    }
}

static void conn_close(struct conn *c) {
    if (c->closed) return;
    c->closed = 1;
    close(c->fd);
    c->fd = -1;
    maybe_free(c);
}

/* The stream or /go that held the connection is over: free it, or parse what waits. */
static void conn_unbusy(struct conn *c) {
    c->busy = IDLE;
    if (c->closed) {
        maybe_free(c);
    } else if (!c->in_resume) {
        c->in_resume = 1;
        c->next_resume = up.resume;
        up.resume = c;
    }
}

static void out_append(struct conn *c, const char *p, size_t n) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap && c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    grow((void **)&c->out, &c->out_cap, c->out_len + n, 1);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

/* Write in order: straight to the socket unless older bytes still wait. */
static void conn_send(struct conn *c, const char *p, size_t n) {
    if (c->closed) return;
    if (c->out_len > c->out_off) {
        out_append(c, p, n);
        return;
    }
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_close(c);
            return;
        }
        w = 0;
    }
    if ((size_t)w < n) {
        out_append(c, p + w, n - (size_t)w);
        if (!c->want_out) set_events(c, 1);
    }
}

static void conn_flush(struct conn *c) {
    while (c->out_len > c->out_off) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_close(c);
            return;
        }
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    if (c->out_cap > READ_SIZE) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    if (c->want_out) set_events(c, 0);
}

static void send_json(struct conn *c, const char *status, const char *body) {
    char buf[1024];
    size_t blen = strlen(body);
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %zu\r\n\r\n%s",
                     status, blen, body);
    if (n > 0 && (size_t)n < sizeof buf) conn_send(c, buf, (size_t)n);
}

/* ------------------------------------------------------------------ the token heap */

static int before(const struct conn *a, const struct conn *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(struct conn *c) {
    grow((void **)&up.heap, &up.heap_cap, up.heap_n + 1, sizeof *up.heap);
    size_t i = up.heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(c, up.heap[p])) break;
        up.heap[i] = up.heap[p];
        i = p;
    }
    up.heap[i] = c;
}

static struct conn *heap_pop(void) {
    struct conn *top = up.heap[0], *last = up.heap[--up.heap_n];
    size_t i = 0, n = up.heap_n;
    for (;;) {
        size_t l = 2 * i + 1, m;
        if (l >= n) break;
        m = (l + 1 < n && before(up.heap[l + 1], up.heap[l])) ? l + 1 : l;
        if (!before(up.heap[m], last)) break;
        up.heap[i] = up.heap[m];
        i = m;
    }
    if (n) up.heap[i] = last;
    return top;
}

static void schedule(struct conn *c, double due) {
    c->due = due;
    heap_push(c);
}

/* A token: one chunk, one SSE event, one write. */
static void write_token(struct conn *c) {
    char buf[sizeof CHUNK_PREFIX + sizeof CHUNK_SUFFIX + 64];
    char digits[24];
    int nd = 0;
    int64_t ns = wall_ns();
    uint64_t v = ns < 0 ? (uint64_t)(-ns) : (uint64_t)ns;
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (ns < 0) digits[nd++] = '-';
    size_t payload = sizeof CHUNK_PREFIX - 1 + (size_t)nd + sizeof CHUNK_SUFFIX - 1;
    char hex[16];
    int nh = 0;
    do {
        hex[nh++] = "0123456789abcdef"[payload & 15];
        payload >>= 4;
    } while (payload);
    size_t n = 0;
    while (nh) buf[n++] = hex[--nh];
    buf[n++] = '\r';
    buf[n++] = '\n';
    memcpy(buf + n, CHUNK_PREFIX, sizeof CHUNK_PREFIX - 1);
    n += sizeof CHUNK_PREFIX - 1;
    while (nd) buf[n++] = digits[--nd];
    memcpy(buf + n, CHUNK_SUFFIX, sizeof CHUNK_SUFFIX - 1);
    n += sizeof CHUNK_SUFFIX - 1;
    buf[n++] = '\r';
    buf[n++] = '\n';
    conn_send(c, buf, n);
}

static void write_end(struct conn *c) {
    char buf[sizeof END + 32];
    int n = snprintf(buf, sizeof buf, "%zx\r\n%s\r\n0\r\n\r\n", sizeof END - 1, END);
    conn_send(c, buf, (size_t)n);
}

/* One pass of chat_upstream.Upstream.run: every token due by now. */
static void run_due(void) {
    if (!up.heap_n) return;
    double now = (double)mono_ns();
    while (up.heap_n && up.heap[0]->due <= now) {
        struct conn *c = heap_pop();
        double late = now - c->due;
        if (late > up.late_max_ns) up.late_max_ns = late;
        if (c->closed) {
            up.lost++;
            c->busy = IDLE;
            maybe_free(c);
            continue;
        }
        write_token(c);
        up.sent++;
        if (--c->left > 0) {
            schedule(c, c->due + up.period_ns);
        } else {
            write_end(c);
            conn_unbusy(c);
        }
    }
}

static void add_stream(struct conn *c) {
    conn_send(c, HEAD, sizeof HEAD - 1);
    c->left = answer_tokens(up.tokens, up.streams, up.expected);
    c->seq = (uint64_t)up.streams;
    up.streams++;
    c->busy = STREAMING;
    if (up.started) {
        schedule(c, (double)mono_ns());
    } else {
        grow((void **)&up.held, &up.held_cap, up.held_n + 1, sizeof *up.held);
        up.held[up.held_n++] = c;
        if ((long)up.held_n >= up.expected) up.all_held = 1;
    }
}

static long go(void) {
    if (up.started) return 0;
    up.started = 1;
    double t0 = (double)mono_ns() + SETTLE_NS;
    size_t n = up.held_n ? up.held_n : 1;
    for (size_t i = 0; i < up.held_n; i++)
        schedule(up.held[i], t0 + (double)i / (double)n * up.period_ns);
    long count = (long)up.held_n;
    up.held_n = 0;
    return count;
}

/* Answer the /go requests whose wait is over: every stream held, or 30 s gone. */
static void drain_go(void) {
    if (!up.goq_n) return;
    int64_t now = mono_ns();
    while (up.goq_n) {
        struct conn *c = up.goq[up.goq_head].c;
        if (!up.all_held && up.goq[up.goq_head].deadline > now) break;
        up.goq_head++;
        up.goq_n--;
        char body[64];
        snprintf(body, sizeof body, "{\"started\": %ld}", go());
        send_json(c, "200 OK", body);
        conn_unbusy(c);
    }
    if (!up.goq_n) up.goq_head = 0;
}

/* ------------------------------------------------------------------ requests */

static int ends_with(const char *s, size_t n, const char *suffix) {
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

static int starts_with(const char *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

static int is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\f' || ch == '\v';
}

/* request.get("stream") of the JSON body, as a substring check: "stream" : true */
static int wants_stream(const char *b, size_t n) {
    static const char key[] = "\"stream\"";
    const char *end = b + n, *p = b;
    while ((p = memmem(p, (size_t)(end - p), key, sizeof key - 1)) != NULL) {
        const char *q = p + sizeof key - 1;
        while (q < end && is_space(*q)) q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && is_space(*q)) q++;
            if (end - q >= 4 && memcmp(q, "true", 4) == 0) return 1;
        }
        p += 1;
    }
    return 0;
}

static void stats(struct conn *c) {
    char late[64], body[256];
    snprintf(late, sizeof late, "%.3f", up.late_max_ns / 1e6);
    size_t k = strlen(late); /* Python's repr of round(x, 3): no trailing zeros, one kept */
    while (k > 0 && late[k - 1] == '0' && late[k - 2] != '.') late[--k] = '\0';
    snprintf(body, sizeof body, "{\"streams\": %ld, \"sent\": %ld, \"lost\": %ld, \"late_max_ms\": %s}",
             up.streams, up.sent, up.lost, late);
    send_json(c, "200 OK", body);
}

static void handle(struct conn *c, const char *method, size_t mlen, const char *path, size_t plen,
                   const char *body, size_t blen) {
    if (ends_with(path, plen, "/chat/completions") && mlen == 4 && memcmp(method, "POST", 4) == 0) {
        if (wants_stream(body, blen))
            add_stream(c);
        else
            send_json(c, "200 OK", COMPLETION_JSON);
    } else if (ends_with(path, plen, "/models")) {
        send_json(c, "200 OK", MODELS_JSON);
    } else if (starts_with(path, plen, "/go")) {
        grow((void **)&up.goq, &up.goq_cap, up.goq_head + up.goq_n + 1, sizeof *up.goq);
        up.goq[up.goq_head + up.goq_n].c = c;
        up.goq[up.goq_head + up.goq_n].deadline = mono_ns() + GO_WAIT_NS;
        up.goq_n++;
        c->busy = AWAITING_GO;
    } else if (starts_with(path, plen, "/stats")) {
        stats(c);
    } else {
        send_json(c, "404 Not Found", NOT_FOUND_JSON);
    }
}

/* Parse and answer complete requests, in order, while the connection is free. */
static void process_input(struct conn *c) {
    while (!c->closed && c->busy == IDLE && c->in_len > c->in_off) {
        char *buf = c->in + c->in_off;
        size_t avail = c->in_len - c->in_off;
        char *hend = memmem(buf, avail, "\r\n\r\n", 4);
        if (!hend) {
            if (avail > MAX_REQUEST) conn_close(c);
            return;
        }
        size_t head_len = (size_t)(hend - buf);
        /* request line: method SP path [SP ...]; without a space, Python's ("GET", "/") */
        char *line_end = memmem(buf, head_len, "\r\n", 2);
        size_t line_len = line_end ? (size_t)(line_end - buf) : head_len;
        const char *method = "GET", *path = "/";
        size_t mlen = 3, plen = 1;
        char *sp = memchr(buf, ' ', line_len);
        if (sp) {
            method = buf;
            mlen = (size_t)(sp - buf);
            path = sp + 1;
            char *sp2 = memchr(path, ' ', line_len - mlen - 1);
            plen = sp2 ? (size_t)(sp2 - path) : line_len - mlen - 1;
        }
        /* headers: the last content-length wins, as in the Python loop */
        long long length = 0;
        char *p = line_end ? line_end + 2 : buf + head_len;
        char *hstop = buf + head_len;
        while (p < hstop) {
            char *eol = memmem(p, (size_t)(hstop - p), "\r\n", 2);
            if (!eol) eol = hstop;
            char *colon = memchr(p, ':', (size_t)(eol - p));
            char *ns = p, *ne = colon ? colon : eol;
            while (ns < ne && is_space(*ns)) ns++;
            while (ne > ns && is_space(ne[-1])) ne--;
            if (ne - ns == 14 && strncasecmp(ns, "content-length", 14) == 0) {
                char *vs = colon ? colon + 1 : eol, *ve = eol;
                while (vs < ve && is_space(*vs)) vs++;
                while (ve > vs && is_space(ve[-1])) ve--;
                char *q = vs;
                if (q < ve && (*q == '+' || *q == '-')) q++;
                if (q == ve) { /* int("") raises: the Python protocol drops the connection */
                    conn_close(c);
                    return;
                }
                long long v = 0;
                for (; q < ve; q++) {
                    if (*q < '0' || *q > '9' || v > (long long)MAX_REQUEST) {
                        conn_close(c);
                        return;
                    }
                    v = v * 10 + (*q - '0');
                }
                if (*vs == '-' && v) { /* negative: refuse */
                    conn_close(c);
                    return;
                }
                length = v;
            }
            p = eol + 2;
        }
        size_t total = head_len + 4 + (size_t)length;
        if (avail < total) {
            if (total > MAX_REQUEST) conn_close(c);
            return;
        }
        c->in_off += total;
        handle(c, method, mlen, path, plen, hend + 4, (size_t)length);
    }
    if (c->in_off == c->in_len) {
        c->in_off = c->in_len = 0;
        if (c->in_cap > READ_SIZE) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
    }
}

static void conn_read(struct conn *c) {
    static char buf[READ_SIZE];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        conn_close(c);
        return;
    }
    if (n == 0) { /* the peer is done: what is still queued goes out, then close */
        conn_flush(c);
        conn_close(c);
        return;
    }
    if (c->in_off && c->in_len + (size_t)n > c->in_cap) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    grow((void **)&c->in, &c->in_cap, c->in_len + (size_t)n, 1);
    memcpy(c->in + c->in_len, buf, (size_t)n);
    c->in_len += (size_t)n;
    if (c->busy == IDLE) process_input(c);
    else if (c->in_len - c->in_off > MAX_REQUEST) conn_close(c);
}

static void accept_all(void) {
    for (;;) {
        int fd = accept4(up.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if ((errno == EMFILE || errno == ENFILE) && up.spare_fd >= 0) {
                /* out of descriptors: refuse this one rather than spin on it */
                close(up.spare_fd);
                fd = accept(up.lfd, NULL, NULL);
                if (fd >= 0) close(fd);
                up.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                fprintf(stderr, "chat_upstream: out of file descriptors, connection refused\n");
                continue;
            }
            return; /* EAGAIN, or an error for which there is nothing to do */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(up.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

/* ------------------------------------------------------------------ main loop */

static int64_t next_deadline(void) {
    int64_t d = -1;
    if (up.heap_n) {
        double due = up.heap[0]->due;
        d = due > 9.2e18 ? INT64_MAX : (int64_t)due + (due > (double)(int64_t)due);
    }
    if (up.goq_n && (d < 0 || up.goq[up.goq_head].deadline < d)) d = up.goq[up.goq_head].deadline;
    return d;
}

static int wait_events(struct epoll_event *evs) {
    int64_t deadline = next_deadline();
#if defined(SYS_epoll_pwait2) && defined(__LP64__)
    if (up.use_pwait2) {
        struct timespec ts, *tp = NULL;
        if (deadline >= 0) {
            /* the kernel lets a sleep of T end up to max(T / 1000, timer slack) late:
               sleep at most 50 ms at a time to stay within the 50 µs slack */
            int64_t rel = deadline - mono_ns();
            if (rel < 0) rel = 0;
            if (rel > MAX_SLEEP_NS) rel = MAX_SLEEP_NS;
            ts.tv_sec = rel / 1000000000LL;
            ts.tv_nsec = rel % 1000000000LL;
            tp = &ts;
        }
        int n = (int)syscall(SYS_epoll_pwait2, up.epfd, evs, MAX_EVENTS, tp, NULL, 0);
        if (n >= 0 || errno != ENOSYS) return n;
        up.use_pwait2 = 0; /* kernel older than 5.11: timerfd from now on */
    }
#endif
    if (up.tfd < 0) {
        up.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (up.tfd < 0) {
            perror("timerfd_create");
            exit(1);
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &TIMER_TAG};
        epoll_ctl(up.epfd, EPOLL_CTL_ADD, up.tfd, &ev);
    }
    int timeout = -1;
    if (deadline >= 0 && deadline <= mono_ns()) {
        timeout = 0;
    } else if (deadline != up.timer_armed) {
        struct itimerspec its = {0};
        if (deadline >= 0) {
            its.it_value.tv_sec = deadline / 1000000000LL;
            its.it_value.tv_nsec = deadline % 1000000000LL;
        }
        timerfd_settime(up.tfd, TFD_TIMER_ABSTIME, &its, NULL);
        up.timer_armed = deadline;
    }
    return epoll_wait(up.epfd, evs, MAX_EVENTS, timeout);
}

static void usage(FILE *f) {
    fprintf(f, "usage: chat_upstream [-h] [--port PORT] [--rate RATE] [--tokens TOKENS] "
               "[--streams STREAMS]\n");
}

static void bad_args(const char *msg, const char *arg) {
    usage(stderr);
    fprintf(stderr, "chat_upstream: error: %s%s\n", msg, arg);
    exit(2);
}

int main(int argc, char **argv) {
    long port = 9100;
    double rate = 50.0;
    up.tokens = 250;
    up.expected = 0;
    static const char *names[] = {"--port", "--rate", "--tokens", "--streams"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            printf("\nA fake OpenAI-compatible streaming server for the chat benchmark (C twin of "
                   "chat_upstream.py).\n\noptions:\n  -h, --help         show this help message and exit\n"
                   "  --port PORT\n  --rate RATE        tokens per second per stream\n"
                   "  --tokens TOKENS    tokens per answer\n"
                   "  --streams STREAMS  GET /go waits for this many\n");
            return 0;
        }
        const char *eq = strchr(a, '=');
        size_t alen = eq ? (size_t)(eq - a) : strlen(a);
        int which = -1;
        for (int k = 0; k < 4 && alen > 2; k++) { /* argparse accepts unique prefixes */
            if (strncmp(a, names[k], alen) == 0) {
                if (which >= 0) bad_args("ambiguous option: ", a);
                which = k;
                if (strlen(names[k]) == alen) break;
            }
        }
        if (which < 0) bad_args("unrecognized arguments: ", a);
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val) bad_args("expected one argument: ", names[which]);
        char *endp;
        errno = 0;
        if (which == 1) {
            rate = strtod(val, &endp);
        } else {
            long v = strtol(val, &endp, 10);
            if (which == 0) port = v;
            else if (which == 2) up.tokens = v;
            else up.expected = v;
        }
        if (endp == val || *endp || errno) bad_args("invalid value: ", val);
    }
    if (!(rate > 0)) bad_args("--rate must be positive: ", "");
    if (port < 0 || port > 65535) bad_args("invalid port", "");
    up.period_ns = 1e9 / rate;

    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0); /* whatever the parent's was */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    up.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    up.tfd = -1;
    up.timer_armed = -1;
    up.use_pwait2 = 1;

    up.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (up.lfd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(up.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(up.lfd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "chat_upstream: cannot bind 127.0.0.1:%ld: %s\n", port, strerror(errno));
        return 1;
    }
    if (listen(up.lfd, 4096) < 0) {
        perror("listen");
        return 1;
    }
    up.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (up.epfd < 0) {
        perror("epoll_create1");
        return 1;
    }
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &LISTEN_TAG};
    epoll_ctl(up.epfd, EPOLL_CTL_ADD, up.lfd, &lev);

    printf("fake upstream on http://127.0.0.1:%ld/v1 (%g tok/s, %ld tokens)\n", port, rate, up.tokens);
    fflush(stdout);

    static struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = wait_events(evs);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &LISTEN_TAG) {
                accept_all();
            } else if (tag == &TIMER_TAG) {
                uint64_t expirations;
                if (read(up.tfd, &expirations, sizeof expirations) < 0) { /* EAGAIN: fine */
                }
                up.timer_armed = -1;
            } else {
                struct conn *c = tag;
                uint32_t e = evs[i].events;
                if (!c->closed && (e & EPOLLOUT)) conn_flush(c);
                if (!c->closed && (e & (EPOLLIN | EPOLLHUP | EPOLLERR))) conn_read(c);
            }
        }
        run_due();
        /* answered /go requests and finished streams free their connections' next
           requests, which may hold streams (and so release /go) in turn */
        for (;;) {
            drain_go();
            if (!up.resume) break;
            while (up.resume) {
                struct conn *c = up.resume;
                up.resume = c->next_resume;
                c->in_resume = 0;
                process_input(c);
            }
        }
        while (up.dead) {
            struct conn *c = up.dead;
            up.dead = c->next_dead;
            free(c->in);
            free(c->out);
            free(c);
        }
    }
}
