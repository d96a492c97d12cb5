/* The compiled client's five-channel relay after a hand-over (issue 17): a C port of
 * relay.py's Relay, its meters and its rules, driven by thin_handover.c's epoll loop
 * through thin_relay.h. #included by thin_client.c before thin_handover.c (one
 * compilation unit). docs/design/issue17/c-relay.md, "Build plan", says why it exists:
 * no Python process lives while a handed-over kernel runs.
 *
 * What it does, as relay.py does it (the constants are relay.py's):
 * - accepts on the five adopted listeners; at most JDK_MAX_CONNECTIONS live host
 *   connections per channel, one more closed at once and warned about once
 *   (relay.warn_refused's words);
 * - for each accepted host connection, connects to the kernel's socket NAME in the socket
 *   dir through its O_PATH descriptor (openat O_PATH|O_NOFOLLOW, S_ISSOCK checked,
 *   connected through /proc/self/fd: endpoints.connect_kernel_socket's pinning), retried
 *   1 ms -> 10 ms for up to JDK_KERNEL_SOCKET_WAIT; what the host sends meanwhile is kept
 *   up to JDK_PENDING_LIMIT (more closes it);
 * - copies bytes both ways with flow control (a side whose peer has more than
 *   JDK_QUEUE_HIGH queued is not read until that queue is under JDK_QUEUE_LOW: asyncio's
 *   default write-buffer limits), passes EOF on as a close after the peer's queue is
 *   flushed (asyncio's transport.close());
 * - meters every kernel-to-host stream with jdk_meter (relay.ZmtpMeter) and charges
 *   message bytes against the output budget (relay.Relay.charge: iopub's high-water mark,
 *   hb's echo slack, the rest in full); a violation drops every connection, is logged
 *   once and is reported through jdk_relay_violation; the loop stops the kernel;
 * - keeps the shell chunks that named execute_request (relay.requests) for the notice.
 *
 * Halves are freed only in jdk_relay_tick (or close), never inside an event callback:
 * an epoll batch may still hold events for a half another event closed. */

#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "thin_relay.h"

/* relay.py's MAX_CONNECTIONS, PENDING_LIMIT, KERNEL_SOCKET_WAIT and ECHO_SLACK. */
#define JDK_MAX_CONNECTIONS 64
#define JDK_PENDING_LIMIT (16 << 10)
#define JDK_KERNEL_SOCKET_WAIT 300.0
#define JDK_ECHO_SLACK 256
/* asyncio's write-buffer high and low water marks (the relay's flow control). */
#define JDK_QUEUE_HIGH (64 << 10)
#define JDK_QUEUE_LOW (16 << 10)
/* One read's size. */
#define JDK_CHUNK (64 << 10)
/* endpoints.CHANNELS' order; iopub and hb have rules of their own. */
enum { JDK_SHELL, JDK_IOPUB, JDK_STDIN, JDK_CONTROL, JDK_HB };
static const char *const jdk_channel_names[JDK_CHANNELS] = {"shell", "iopub", "stdin", "control", "hb"};

/* ---- relay.ZmtpMeter ------------------------------------------------------------------ */

#define JDK_GREETING 64
#define JDK_VERSION_AT 10

typedef struct {
    long long max_message;
    int greeting_left;
    unsigned char signature[JDK_VERSION_AT + 1];
    int signature_len;
    unsigned char header[9];
    int header_len;
    unsigned long long body_left;
    int command;
    unsigned __int128 message_size; /* a hostile frame's size may be up to 2**64 - 1 */
} jdk_meter_t;

static void jdk_meter_init(jdk_meter_t *m, long long max_message) {
    memset(m, 0, sizeof *m);
    m->max_message = max_message;
    m->greeting_left = JDK_GREETING;
}

/* Accounts for data; returns how many of its bytes belong to messages (frame headers and
 * bodies, not the greeting or ZMTP commands), or -1 with *why set (the text after "the
 * kernel sent ") and *label ("budget exceeded" or "protocol refused") before an
 * oversized frame or a greeting older than ZMTP 3 flows. */
static long long jdk_meter_feed(jdk_meter_t *m, const unsigned char *data, size_t len, char *why,
                                size_t why_size, const char **label) {
    size_t pos = 0;
    long long counted = 0;
    *label = "budget exceeded";
    while (pos < len) {
        if (m->greeting_left) {
            size_t step = (size_t)m->greeting_left < len - pos ? (size_t)m->greeting_left : len - pos;
            for (size_t i = 0; i < step && m->signature_len <= JDK_VERSION_AT; i++) {
                m->signature[m->signature_len++] = data[pos + i];
                const unsigned char *sig = m->signature;
                if (sig[0] != 0xFF || (m->signature_len > 9 && !(sig[9] & 0x01))) {
                    *label = "protocol refused";
                    snprintf(why, why_size,
                             "a greeting that is not ZMTP 3 (ZMTP 1.0, or not ZMTP at all); only ZMTP 3 can "
                             "be metered for --max-message");
                    return -1;
                }
                if (m->signature_len > JDK_VERSION_AT && sig[JDK_VERSION_AT] < 3) {
                    *label = "protocol refused";
                    snprintf(why, why_size,
                             "a greeting of ZMTP revision %d (ZMTP 2.0 sends 1); only ZMTP 3 can be metered "
                             "for --max-message",
                             sig[JDK_VERSION_AT]);
                    return -1;
                }
            }
            m->greeting_left -= (int)step;
            pos += step;
        } else if (m->body_left) {
            size_t step = m->body_left < len - pos ? (size_t)m->body_left : len - pos;
            m->body_left -= step;
            pos += step;
            if (!m->command) counted += (long long)step;
        } else {
            m->header[m->header_len++] = data[pos++];
            unsigned char flags = m->header[0];
            int need = flags & 0x02 ? 9 : 2;
            if (m->header_len < need) continue;
            unsigned long long size = 0;
            for (int i = 1; i < need; i++) size = size << 8 | m->header[i];
            m->header_len = 0;
            m->command = (flags & 0x04) != 0;
            if (m->command) { /* READY, PING, SUBSCRIBE...: not a message */
                if (size > (unsigned long long)m->max_message) {
                    snprintf(why, why_size, "a protocol command of %llu bytes", size);
                    return -1;
                }
            } else {
                counted += need;
                m->message_size += size; /* cannot wrap: at most max_message + 2**64 - 1 */
                if (m->message_size > (unsigned long long)m->max_message) {
                    char at_least[48], *p = at_least + sizeof at_least;
                    unsigned __int128 v = m->message_size;
                    *--p = 0;
                    do *--p = (char)('0' + (int)(v % 10)); while (v /= 10);
                    snprintf(why, why_size, "a message of more than %lld bytes (at least %s)", m->max_message, p);
                    return -1;
                }
                if (!(flags & 0x01)) m->message_size = 0; /* the message's last frame */
            }
            m->body_left = size;
        }
    }
    return counted;
}

/* ---- halves, pairs and the relay --------------------------------------------------------- */

typedef struct {
    char *data;
    size_t off, len, cap; /* bytes [off, len) wait */
} jdk_queue_t;

typedef struct jdk_half jdk_half_t;
struct jdk_half {
    jdk_watch_t watch; /* first: epoll's data.ptr */
    jdk_relay_t *relay;
    jdk_half_t *peer;
    jdk_half_t *next; /* every half of the relay, dead ones until the next tick */
    int channel;
    int to_host; /* the kernel side: what it reads flows to the host */
    int fd;
    uint32_t registered; /* the events epoll has for fd (0: not registered) */
    int dead;             /* fd closed; freed at the next tick */
    int closing;          /* close once out is written (asyncio's transport.close()) */
    int waiting;          /* a host side whose kernel side is not open yet */
    double retry_at, delay, give_up_at;
    jdk_queue_t out;     /* to write to fd */
    jdk_queue_t pending; /* a host side's bytes read before its kernel side opened */
    long long received;  /* raw bytes read on this connection */
    long long sent;      /* message bytes the kernel sent on it (kernel side) */
    long long base;      /* the channel's charge when it opened (kernel side) */
    jdk_meter_t meter;   /* kernel side */
    char *previous;      /* a shell host side's last chunk */
    size_t previous_len;
};

typedef struct {
    jdk_watch_t watch;
    jdk_relay_t *relay;
    int channel;
    int fd;
    double paused_until; /* > 0: out of descriptors or memory, unwatched until then */
} jdk_listener_t;

/* After accept failed for want of descriptors or memory, the listener rests this long
 * (asyncio's accept_retry_delay): the backlog would wake the loop at once, for ever. */
#define JDK_ACCEPT_RETRY 1.0

struct jdk_relay {
    jdk_listener_t listeners[JDK_CHANNELS];
    int dir_fd;
    char *names[JDK_CHANNELS];
    long long max_message, output_budget;
    jdk_half_t *halves;
    int hosts[JDK_CHANNELS]; /* live host connections per channel */
    long long charged[JDK_CHANNELS];
    long long output_charged, bytes_to_host, bytes_to_kernel;
    int refusals, iopub_lost;
    char violation[512];
    char *execute;
    size_t execute_len;
};

static int jdk_queue_put(jdk_queue_t *q, const char *data, size_t len) {
    if (q->off && q->off == q->len) q->off = q->len = 0;
    if (q->len + len > q->cap) {
        if (q->off) { /* move what waits to the front first */
            memmove(q->data, q->data + q->off, q->len - q->off);
            q->len -= q->off;
            q->off = 0;
        }
        if (q->len + len > q->cap) {
            size_t cap = q->cap ? q->cap : 4096;
            while (cap < q->len + len) cap *= 2;
            char *grown = realloc(q->data, cap);
            if (!grown) return 0;
            q->data = grown;
            q->cap = cap;
        }
    }
    memcpy(q->data + q->len, data, len);
    q->len += len;
    return 1;
}

static size_t jdk_queued(const jdk_queue_t *q) { return q->len - q->off; }

static void jdk_queue_free(jdk_queue_t *q) {
    free(q->data);
    memset(q, 0, sizeof *q);
}

static void jdk_half_event(jdk_watch_t *self, uint32_t events);
static void jdk_half_drop(jdk_half_t *h);

/* What epoll should report for h: reading while it may (not closing, and its peer's queue
 * under the high-water mark, or not linked yet and under the pending limit), writing while
 * its queue is not empty. Not registered at all when it wants nothing, so that a hung-up
 * socket that is not being read does not wake the loop for ever. */
static void jdk_half_update(jdk_half_t *h) {
    if (h->dead) return;
    uint32_t want = 0;
    int readable = !h->closing;
    if (readable && h->peer && !h->peer->dead && jdk_queued(&h->peer->out) >= JDK_QUEUE_HIGH) readable = 0;
    if (readable) want |= EPOLLIN;
    if (jdk_queued(&h->out)) want |= EPOLLOUT;
    if (want == h->registered) return;
    struct epoll_event ev = {.events = want, .data.ptr = h};
    if (!want) {
        epoll_ctl(jdk_epoll, EPOLL_CTL_DEL, h->fd, NULL);
    } else if (epoll_ctl(jdk_epoll, h->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, h->fd, &ev) != 0) {
        /* Unwatched, it would stall and hold one of the channel's slots: closed instead. */
        jdk_log('E', "%s: cannot watch a relayed connection: %s", jdk_channel_names[h->channel], strerror(errno));
        jdk_half_drop(h);
        return;
    }
    h->registered = want;
}

static void jdk_half_close(jdk_half_t *h);

/* Closes h's descriptor now (what it had queued is dropped) and its peer once the peer's
 * queue is written: relay.py's connection_lost. */
static void jdk_half_drop(jdk_half_t *h) {
    if (h->dead) return;
    if (h->registered) epoll_ctl(jdk_epoll, EPOLL_CTL_DEL, h->fd, NULL);
    close(h->fd);
    h->fd = -1;
    h->registered = 0;
    h->dead = 1;
    if (!h->to_host) h->relay->hosts[h->channel]--;
    jdk_half_t *peer = h->peer;
    h->peer = NULL;
    if (peer) {
        peer->peer = NULL;
        jdk_half_close(peer);
    }
}

/* asyncio's transport.close(): stop reading, write what is queued, then drop. */
static void jdk_half_close(jdk_half_t *h) {
    if (h->dead) return;
    if (!jdk_queued(&h->out)) {
        jdk_half_drop(h);
        return;
    }
    h->closing = 1;
    jdk_half_update(h);
}

/* Writes what h has queued; drops it on an error, resumes its peer's reading below the
 * low-water mark. */
static void jdk_half_flush(jdk_half_t *h) {
    while (jdk_queued(&h->out)) {
        ssize_t n = write(h->fd, h->out.data + h->out.off, jdk_queued(&h->out));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
            jdk_half_drop(h);
            return;
        }
        h->out.off += (size_t)n;
    }
    if (!jdk_queued(&h->out)) {
        h->out.off = h->out.len = 0;
        if (h->out.cap > JDK_CHUNK) jdk_queue_free(&h->out); /* a burst's buffer goes back */
        if (h->closing) {
            jdk_half_drop(h);
            return;
        }
    }
    jdk_half_update(h);
    if (h->peer && jdk_queued(&h->out) < JDK_QUEUE_LOW) jdk_half_update(h->peer);
}

/* Hands data to h: written now if nothing waits, the rest queued (and h watched for
 * writing); the source stops being read while h's queue is over the high-water mark. */
static void jdk_half_send(jdk_half_t *h, const char *data, size_t len) {
    if (h->dead || h->closing) return;
    if (!jdk_queued(&h->out)) {
        while (len) {
            ssize_t n = write(h->fd, data, len);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (n <= 0) {
                jdk_half_drop(h);
                return;
            }
            data += n;
            len -= (size_t)n;
        }
    }
    if (len && !jdk_queue_put(&h->out, data, len)) {
        jdk_log('E', "%s: out of memory queueing relayed bytes; closing the connection",
                jdk_channel_names[h->channel]);
        jdk_half_drop(h);
        return;
    }
    jdk_half_update(h);
}

static jdk_half_t *jdk_half_new(jdk_relay_t *r, int channel, int to_host, int fd) {
    jdk_half_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->watch.on_event = jdk_half_event;
    h->relay = r;
    h->channel = channel;
    h->to_host = to_host;
    h->fd = fd;
    h->next = r->halves;
    r->halves = h;
    if (to_host) jdk_meter_init(&h->meter, r->max_message);
    return h;
}

/* relay.Relay.violated: the first violation's text, logged once; every relayed
 * connection dropped (a linked iopub host side counted as lost: its subscriber
 * reconnects for the notice). */
static void jdk_relay_violated(jdk_relay_t *r, int channel, const char *label, const char *why) {
    if (!r->violation[0]) {
        snprintf(r->violation, sizeof r->violation, "%s: the kernel sent %s on %s", label, why,
                 jdk_channel_names[channel]);
        jdk_log('E', "%s; stopping the kernel", r->violation);
    }
    /* Counted before any is dropped: a drop unlinks its peer. */
    for (jdk_half_t *h = r->halves; h; h = h->next)
        if (!h->dead && h->channel == JDK_IOPUB && !h->to_host && h->peer) r->iopub_lost++;
    for (jdk_half_t *h = r->halves; h; h = h->next)
        if (!h->dead) jdk_half_drop(h);
}

/* relay.Relay.charge: count `sent` message bytes the kernel sent on one connection;
 * 0 when the output budget is passed (the caller reports the violation). */
static int jdk_relay_charge(jdk_relay_t *r, jdk_half_t *k, long long sent) {
    long long before = k->sent, more;
    k->sent += sent;
    if (k->channel == JDK_IOPUB) {
        more = k->base + k->sent - r->charged[JDK_IOPUB];
        if (more < 0) more = 0;
    } else if (k->channel == JDK_HB) {
        long long echoed = (k->peer ? k->peer->received : 0) + JDK_ECHO_SLACK;
        long long now = k->sent > echoed ? k->sent - echoed : 0;
        long long then = before > echoed ? before - echoed : 0;
        more = now - then;
    } else {
        more = sent;
    }
    if (more > 0) {
        r->charged[k->channel] += more;
        r->output_charged += more;
        if (r->output_charged > r->output_budget) return 0;
    }
    return 1;
}

/* A shell chunk from a client: the last one naming execute_request is kept with the chunk
 * before it (the message's start may be there), as relay.requests. */
static void jdk_relay_watch_shell(jdk_relay_t *r, jdk_half_t *h, const char *data, size_t len) {
    static const char needle[] = "execute_request";
    if (memmem(data, len, needle, sizeof needle - 1)) {
        char *both = malloc(h->previous_len + len + 1);
        if (both) {
            if (h->previous_len) memcpy(both, h->previous, h->previous_len);
            memcpy(both + h->previous_len, data, len);
            free(r->execute);
            r->execute = both;
            r->execute_len = h->previous_len + len;
        }
    }
    char *copy = realloc(h->previous, len ? len : 1);
    if (copy) {
        memcpy(copy, data, len);
        h->previous = copy;
        h->previous_len = len;
    }
}

static void jdk_half_read(jdk_half_t *h) {
    jdk_relay_t *r = h->relay;
    static char chunk[JDK_CHUNK];
    ssize_t n = read(h->fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0) { /* an error: relay.py's connection_lost */
        jdk_half_drop(h);
        return;
    }
    if (n == 0) { /* EOF: relay.py's eof_received; both sides close once their queues are out */
        if (h->to_host && h->channel == JDK_IOPUB) r->iopub_lost++; /* the kernel went */
        jdk_half_t *peer = h->peer;
        h->peer = NULL;
        if (peer) {
            peer->peer = NULL;
            jdk_half_close(peer);
        }
        jdk_half_close(h);
        return;
    }
    h->received += n;
    if (h->to_host) {
        r->bytes_to_host += n;
        char why[256];
        const char *label;
        long long counted = jdk_meter_feed(&h->meter, (unsigned char *)chunk, (size_t)n, why, sizeof why, &label);
        if (counted < 0) {
            jdk_relay_violated(r, h->channel, label, why);
            return;
        }
        if (!jdk_relay_charge(r, h, counted)) {
            snprintf(why, sizeof why, "more than %lld bytes of output in all", r->output_budget);
            jdk_relay_violated(r, h->channel, "budget exceeded", why);
            return;
        }
    } else {
        r->bytes_to_kernel += n;
        if (h->channel == JDK_SHELL) jdk_relay_watch_shell(r, h, chunk, (size_t)n);
    }
    if (h->peer) {
        jdk_half_send(h->peer, chunk, (size_t)n);
        jdk_half_update(h); /* not read again while the peer's queue is over the mark */
        return;
    }
    if (h->waiting) { /* the kernel side is not open yet */
        if (jdk_queued(&h->pending) + (size_t)n > JDK_PENDING_LIMIT || !jdk_queue_put(&h->pending, chunk, (size_t)n))
            jdk_half_drop(h); /* more than a ZMTP peer sends before our greeting */
    }
}

static void jdk_half_event(jdk_watch_t *self, uint32_t events) {
    jdk_half_t *h = (jdk_half_t *)self;
    if (h->dead) return;
    if (events & EPOLLOUT) jdk_half_flush(h);
    if (h->dead) return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (h->registered & EPOLLIN)
            jdk_half_read(h);
        else if (!(h->registered & EPOLLOUT) || (events & (EPOLLERR | EPOLLHUP)))
            jdk_half_drop(h); /* not read, and hung up: its writes could only fail (EPIPE) */
    }
}

/* One attempt to open a waiting host side's kernel side (endpoints.connect_kernel_socket
 * through the socket dir's descriptor); returns 0 when it should be retried. */
static int jdk_relay_connect(jdk_relay_t *r, jdk_half_t *host) {
    const char *channel = jdk_channel_names[host->channel];
    int path_fd = openat(r->dir_fd, r->names[host->channel], O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (path_fd < 0) {
        if (errno == ENOENT) return 0;
        jdk_log('W', "%s: cannot reach the kernel's socket: %s", channel, strerror(errno));
        jdk_half_drop(host);
        return 1;
    }
    struct stat st;
    if (fstat(path_fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
        jdk_log('W', "%s: cannot reach the kernel's socket: %s is not a socket (replaced by the kernel?)", channel,
                r->names[host->channel]);
        close(path_fd);
        jdk_half_drop(host);
        return 1;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d", path_fd);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        jdk_log('W', "%s: cannot reach the kernel's socket: %s", channel, strerror(errno));
        close(path_fd);
        jdk_half_drop(host);
        return 1;
    }
    int rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    int err = errno;
    close(path_fd);
    if (rc != 0) {
        close(fd);
        if (err == ECONNREFUSED || err == EAGAIN || err == ENOENT) return 0; /* not bound (yet), or its backlog full */
        jdk_log('W', "%s: cannot reach the kernel's socket: %s", channel, strerror(err));
        jdk_half_drop(host);
        return 1;
    }
    jdk_half_t *kernel = jdk_half_new(r, host->channel, 1, fd);
    if (!kernel) {
        close(fd);
        jdk_half_drop(host);
        return 1;
    }
    kernel->base = r->charged[host->channel];
    kernel->peer = host;
    host->peer = kernel;
    host->waiting = 0;
    if (jdk_queued(&host->pending)) /* what waited for it (relay.py's linked()) */
        jdk_half_send(kernel, host->pending.data + host->pending.off, jdk_queued(&host->pending));
    jdk_queue_free(&host->pending);
    if (!kernel->dead) jdk_half_update(kernel);
    jdk_half_update(host);
    return 1;
}

static void jdk_listener_event(jdk_watch_t *self, uint32_t events) {
    (void)events;
    jdk_listener_t *l = (jdk_listener_t *)self;
    jdk_relay_t *r = l->relay;
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            int err = errno;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                if (!l->paused_until) /* once per pause */
                    jdk_log('W', "%s: cannot accept connections for now: %s; trying again in %g s",
                            jdk_channel_names[l->channel], strerror(err), JDK_ACCEPT_RETRY);
                epoll_ctl(jdk_epoll, EPOLL_CTL_DEL, l->fd, NULL);
                l->paused_until = jdk_now() + JDK_ACCEPT_RETRY;
                return;
            }
            jdk_log('W', "%s: accept failed: %s", jdk_channel_names[l->channel], strerror(err));
            return;
        }
        if (r->hosts[l->channel] >= JDK_MAX_CONNECTIONS) {
            if (++r->refusals == 1) /* relay.warn_refused's words */
                jdk_log('W',
                        "%s: more than %d connections at once; closing new ones. A Jupyter client holds one per "
                        "channel: someone else on this host may be connecting to the kernel's tcp ports (use "
                        "--KernelManager.transport=ipc, see docs/security.md)",
                        jdk_channel_names[l->channel], JDK_MAX_CONNECTIONS);
            close(fd);
            continue;
        }
        jdk_half_t *host = jdk_half_new(r, l->channel, 0, fd);
        if (!host) {
            close(fd);
            continue;
        }
        r->hosts[l->channel]++;
        host->waiting = 1;
        host->delay = 0.001;
        host->give_up_at = jdk_now() + JDK_KERNEL_SOCKET_WAIT;
        jdk_half_update(host);
        /* After a violation nothing more reaches the kernel: the connection waits, unlinked,
         * until the end closes it (relay.py's _open_kernel_side returns). */
        if (!r->violation[0] && !jdk_relay_connect(r, host)) host->retry_at = jdk_now() + host->delay;
    }
}

jdk_relay_t *jdk_relay_new(const int listeners[JDK_CHANNELS], int dir_fd, const char *const names[JDK_CHANNELS],
                           long long max_message, long long output_budget) {
    jdk_relay_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->dir_fd = dir_fd;
    r->max_message = max_message;
    r->output_budget = output_budget;
    for (int i = 0; i < JDK_CHANNELS; i++) {
        jdk_listener_t *l = &r->listeners[i];
        l->watch.on_event = jdk_listener_event;
        l->relay = r;
        l->channel = i;
        l->fd = listeners[i];
        r->names[i] = strdup(names[i]);
        int flags = fcntl(l->fd, F_GETFL);
        fcntl(l->fd, F_SETFL, flags | O_NONBLOCK);
        fcntl(l->fd, F_SETFD, FD_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
        if (!r->names[i] || epoll_ctl(jdk_epoll, EPOLL_CTL_ADD, l->fd, &ev) != 0) {
            jdk_log('E', "%s: cannot serve the listening socket: %s", jdk_channel_names[i], strerror(errno));
            return NULL; /* the caller refuses the hand-over and exits */
        }
    }
    return r;
}

static void jdk_half_free(jdk_half_t *h) {
    jdk_queue_free(&h->out);
    jdk_queue_free(&h->pending);
    free(h->previous);
    free(h);
}

void jdk_relay_tick(jdk_relay_t *r, double now) {
    for (int i = 0; i < JDK_CHANNELS; i++) {
        jdk_listener_t *l = &r->listeners[i];
        if (l->paused_until > 0 && now >= l->paused_until && l->fd >= 0) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
            if (epoll_ctl(jdk_epoll, EPOLL_CTL_ADD, l->fd, &ev) == 0)
                l->paused_until = 0;
            else
                l->paused_until = now + JDK_ACCEPT_RETRY;
        }
    }
    for (jdk_half_t **link = &r->halves; *link;) {
        jdk_half_t *h = *link;
        if (h->dead) {
            *link = h->next;
            jdk_half_free(h);
            continue;
        }
        if (h->waiting && !r->violation[0] && h->retry_at > 0 && now >= h->retry_at) {
            if (jdk_relay_connect(r, h)) {
                h->retry_at = 0;
            } else if (now > h->give_up_at) {
                h->retry_at = 0;
                jdk_half_drop(h);
            } else {
                h->delay = h->delay * 2 < 0.01 ? h->delay * 2 : 0.01; /* the kernel is usually ms away */
                h->retry_at = now + h->delay;
            }
        }
        link = &h->next;
    }
}

double jdk_relay_next_deadline(const jdk_relay_t *r) {
    double next = -1;
    for (int i = 0; i < JDK_CHANNELS; i++)
        if (r->listeners[i].paused_until > 0 && (next < 0 || r->listeners[i].paused_until < next))
            next = r->listeners[i].paused_until;
    if (r->violation[0]) return next; /* nothing more is connected to the kernel */
    for (const jdk_half_t *h = r->halves; h; h = h->next)
        if (!h->dead && h->waiting && h->retry_at > 0 && (next < 0 || h->retry_at < next)) next = h->retry_at;
    return next;
}

const char *jdk_relay_violation(const jdk_relay_t *r) { return r->violation; }
long long jdk_relay_bytes_to_host(const jdk_relay_t *r) { return r->bytes_to_host; }
long long jdk_relay_bytes_to_kernel(const jdk_relay_t *r) { return r->bytes_to_kernel; }
long long jdk_relay_output_charged(const jdk_relay_t *r) { return r->output_charged; }

const char *jdk_relay_execute(const jdk_relay_t *r, size_t *len) {
    *len = r->execute_len;
    return r->execute ? r->execute : "";
}

int jdk_relay_close(jdk_relay_t *r, int *iopub_lost) {
    /* The subscribers that will come back to finish.py's listener: those relayed now, and
     * those lost before (the kernel's EOF, a violation), some of which may already be back,
     * waiting unlinked: counted once, as relay.py serves a waiting one without counting. */
    int linked = 0, unlinked = 0;
    for (jdk_half_t *h = r->halves; h; h = h->next)
        if (!h->dead && !h->closing && !h->to_host && h->channel == JDK_IOPUB) *(h->peer ? &linked : &unlinked) += 1;
    int lost = linked + (r->iopub_lost > unlinked ? r->iopub_lost : unlinked);
    for (jdk_half_t *h = r->halves; h; h = h->next) {
        h->peer = NULL; /* no close-after-flush: everything goes now */
        if (!h->dead) jdk_half_drop(h);
    }
    while (r->halves) {
        jdk_half_t *h = r->halves;
        r->halves = h->next;
        jdk_half_free(h);
    }
    int iopub = -1;
    for (int i = 0; i < JDK_CHANNELS; i++) {
        jdk_listener_t *l = &r->listeners[i];
        if (l->fd < 0) continue;
        epoll_ctl(jdk_epoll, EPOLL_CTL_DEL, l->fd, NULL);
        if (i == JDK_IOPUB) {
            iopub = l->fd; /* still listening: finish.py announces on it */
        } else {
            /* relay.Relay.close unlinks an ipc endpoint's path (a tcp one has none). */
            struct sockaddr_un addr;
            socklen_t size = sizeof addr;
            if (getsockname(l->fd, (struct sockaddr *)&addr, &size) == 0 && addr.sun_family == AF_UNIX &&
                size > offsetof(struct sockaddr_un, sun_path) && addr.sun_path[0])
                unlink(addr.sun_path);
            close(l->fd);
        }
        l->fd = -1;
    }
    *iopub_lost = lost;
    return iopub;
}
