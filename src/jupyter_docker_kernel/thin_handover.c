/* The compiled client's side of the hand-over (issue 17; docs/design/issue17/c-relay.md,
 * "Build plan"): #included by thin_client.c after thin_relay.c (one compilation unit).
 *
 * When the client asked for it (thin.HANDOVER_ENV not 0), the helper ends its part of a
 * kernel's session with one `H <n>\n` + n bytes of key=value lines, and the session's
 * descriptors on the same sendmsg (the design's table: lifeline, exit watch, socket dir,
 * kept log, the five listeners). From then on this process alone serves the kernel, in
 * one epoll loop (handover_loop): the relay (thin_relay.c), the lifeline's output to our
 * stderr and the kept log (kernel_log.forward's rules), the socket-dir guard (socketdir.py's
 * rules), the lifetime, the Jupyter client's liveness and the signals the server sends us
 * (SIGINT: the engine's kill; SIGTERM/SIGHUP: a stop). When the container exited (the
 * exit watch readable) it writes what it knows next to the session's state file and execs
 * the Python finish (finish.py), which reads the exit code, announces, logs the exit line
 * and removes the container: no Python process lives while the kernel runs. */

#include <dirent.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/signalfd.h>

/* The descriptors of the H line, in the design's table order. */
enum { HO_LIFELINE, HO_EXIT, HO_DIR, HO_LOG, HO_LISTENERS, HO_FDS = HO_LISTENERS + JDK_CHANNELS };
/* What the supervisor said last (container.Container._said: kernel_log.TAIL_BYTES). */
#define HO_SAID 4096
/* The end reads the lifeline to EOF for at most this long once the container exited. */
#define HO_DRAIN_WAIT 5.0
/* An engine API call gives up after this long (a hung engine must not hang the relay). */
#define HO_ENGINE_WAIT 10.0
/* socketdir.MAX_CREATIONS_PER_NAME and POLL_INTERVAL. */
#define HO_CREATIONS_PER_NAME 4
#define HO_GUARD_POLL 0.1

int jdk_epoll = -1;

double jdk_now(void) { return now(); } /* thin_client.c's clock, for thin_relay.c */

/* All of data to fd; 0 when a write failed (for our stderr: nobody reads it any more,
 * and the kernel goes on). */
static int write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        data += n;
        len -= (size_t)n;
    }
    return 1;
}

/* helper.LOG_FORMAT: `[I 2026-12-03 09:55:22.661 DockerKernel] text` (local time, as
 * logging's asctime), so the server's log reads the same before and after the hand-over. */
void jdk_log(char level, const char *fmt, ...) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char line[4096];
    int n = snprintf(line, sizeof line, "[%c %04d-%02d-%02d %02d:%02d:%02d.%03ld DockerKernel] ", level,
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    write_all(2, line, len);
}

/* ---- receiving: bytes and the descriptors that came with them ----------------------- */

/* What SCM_RIGHTS brought on the helper connection, in arrival order (the H line's). */
static int rx_fds[2 * HO_FDS];
static int rx_count;

/* recv(2) on the helper connection that keeps the descriptors sent with the bytes: a
 * plain recv would close them, and one recv may read the `A` line and the `H` line's
 * bytes together. MSG_CMSG_CLOEXEC: none leaks into the finish's exec but the two it
 * means to pass. */
static ssize_t recv_keep(int sock, char *buf, size_t cap) {
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * 2 * HO_FDS)];
    } control;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (rx_count < (int)COUNT(rx_fds))
                rx_fds[rx_count++] = fd;
            else
                close(fd);
        }
    }
    return n;
}

/* ---- the handed-over session ------------------------------------------------------- */

/* PYTHON-ARGV of our argv (main sets it): the finish runs with its interpreter. */
static char **jdk_python;
static int jdk_python_count;

typedef struct {
    jdk_watch_t watch;
    int fd;
} ho_watch_t;

static struct {
    /* the H fields */
    char *name, *id, *state, *engine_socket, *api_prefix;
    char *kernel_sockets[JDK_CHANNELS];
    char **allowed;
    int n_allowed;
    long long max_message, output_budget, forward_limit, tail_keep, first_reply_bytes;
    double max_lifetime, deadline; /* deadline < 0: none */
    long client_pid;
    char *client_start;
    /* descriptors (-1: closed) */
    int lifeline, exit_fd, dir_fd, log_fd, listeners[JDK_CHANNELS];
    ho_watch_t helper_w, lifeline_w, exit_w, signal_w, guard_w;
    jdk_relay_t *relay;
    buf_t helper_in;
    /* what happened */
    char *reason;
    int stopping, exited, lifeline_eof, reply_sent, violation_seen;
    double interrupted_at; /* < 0: never */
    long long forwarded, log_size;
    char said[HO_SAID];
    size_t said_len;
    int guard_violated, guard_created, guard_polling;
    double next_second, next_poll;
    int watcher; /* the write end of the watcher's pipe (-1: none) */
} ho;

/* The value of KEY in the H fields (key=value lines), "" when absent (unknown keys are
 * ignored: a newer helper may say more). malloc'd. */
static char *ho_field(const char *fields, size_t len, const char *key) {
    size_t k = strlen(key);
    const char *p = fields, *end = fields + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        if ((size_t)(stop - p) > k && memcmp(p, key, k) == 0 && p[k] == '=')
            return strndup(p + k + 1, (size_t)(stop - p - (ptrdiff_t)k - 1));
        p = stop + 1;
    }
    return strdup("");
}

static long long ho_number(const char *fields, size_t len, const char *key, long long otherwise) {
    char *text = ho_field(fields, len, key), *end = NULL;
    long long value = strtoll(text, &end, 10);
    int ok = *text && end && !*end;
    free(text);
    return ok ? value : otherwise;
}

/* TEXT split at commas, into at most MAX malloc'd items; returns how many. */
static int ho_split(char *text, char **items, int max) {
    int n = 0;
    for (char *save = NULL, *item = strtok_r(text, ",", &save); item && n < max;
         item = strtok_r(NULL, ",", &save))
        items[n++] = strdup(item);
    return n;
}

/* ---- the engine API over its unix socket ------------------------------------------- */

/* One request, METHOD api_prefix/containers/<id or name>SUFFIX, on a new connection (no
 * state shared with anything else that talks to the engine); its HTTP status, or -1 when
 * the engine could not be reached or did not answer within HO_ENGINE_WAIT. */
static int engine_call(const char *method, const char *suffix) {
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int path_fd = -1;
    if (strlen(ho.engine_socket) < sizeof addr.sun_path) {
        strcpy(addr.sun_path, ho.engine_socket);
    } else { /* too long for sun_path: through /proc/self/fd, as connect_helper does */
        path_fd = open(ho.engine_socket, O_PATH | O_CLOEXEC);
        snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d", path_fd);
    }
    struct timeval tv = {.tv_sec = (time_t)HO_ENGINE_WAIT};
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int status = -1;
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) == 0) {
        char request[2048];
        int n = snprintf(request, sizeof request,
                         "%s %s/containers/%s%s HTTP/1.1\r\nHost: docker\r\n"
                         "User-Agent: jupyter-docker-kernel\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n",
                         method, ho.api_prefix, *ho.id ? ho.id : ho.name, suffix);
        char reply[512];
        size_t got = 0;
        double deadline = jdk_now() + HO_ENGINE_WAIT;
        if (n > 0 && (size_t)n < sizeof request && send_all(sock, request, (size_t)n)) {
            while (got < sizeof reply - 1 && !memchr(reply, '\n', got)) {
                double left = deadline - jdk_now();
                if (left <= 0) break;
                struct pollfd p = {.fd = sock, .events = POLLIN};
                int ready = poll(&p, 1, (int)(left * 1000) + 1);
                if (ready < 0 && errno == EINTR) continue;
                if (ready <= 0) break;
                ssize_t r = recv(sock, reply + got, sizeof reply - 1 - got, 0);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) break;
                got += (size_t)r;
            }
            reply[got] = 0;
            int code;
            if (strncmp(reply, "HTTP/1.", 7) == 0 && sscanf(reply + 8, " %d", &code) == 1) status = code;
        }
    }
    close(sock);
    if (path_fd >= 0) close(path_fd);
    return status;
}

/* Container.stop's rules: the first reason wins, the container is removed once. */
static void ho_stop(const char *reason) {
    if (ho.stopping) return;
    ho.stopping = 1;
    ho.reason = strdup(reason);
    jdk_log('I', "terminate: removing container %s", ho.name);
    int status = engine_call("DELETE", "?force=1");
    if (status == 404 || status == 409 || (status >= 200 && status < 300)) return;
    /* The engine did not remove it: closing our end of the lifeline makes the supervisor
     * end the kernel within its grace; finish.py removes the container afterwards. */
    jdk_log('W', "could not remove container %s through the engine (%s %d); ending its kernel through the "
            "lifeline", ho.name, status < 0 ? "no answer:" : "HTTP", status);
    if (ho.lifeline >= 0) shutdown(ho.lifeline, SHUT_WR);
}

/* Container.interrupt: SIGINT through the engine, its time kept for the exit line. */
static void ho_interrupt(void) {
    ho.interrupted_at = jdk_now();
    jdk_log('I', "interrupt: sending SIGINT to the kernel in %s (a user's interrupt, or the first step of a "
            "shutdown)", ho.name);
    int status = engine_call("POST", "/kill?signal=SIGINT");
    if (status < 200 || status >= 300)
        jdk_log('W', "could not interrupt the kernel in %s (engine: %d)", ho.name, status);
}

/* ---- the lifeline: the supervisor's and the kernel's output ------------------------ */

/* kernel_log.printable: C0 controls but tab, DEL, C1 controls in UTF-8 and U+2028/9 as
 * \xNN, byte by byte, so no kernel output can start a log line of its own. */
static void put_printable(buf_t *b, const unsigned char *s, size_t n) {
    char esc[5];
    for (size_t i = 0; i < n; i++) {
        size_t run = 0;
        if ((s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
            run = 1;
        else if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            run = 2;
        else if (s[i] == 0xe2 && i + 2 < n && s[i + 1] == 0x80 && (s[i + 2] == 0xa8 || s[i + 2] == 0xa9))
            run = 3;
        if (!run) {
            put(b, (const char *)s + i, 1);
            continue;
        }
        for (size_t j = 0; j < run; j++) {
            snprintf(esc, sizeof esc, "\\x%02x", s[i + j]);
            put(b, esc, 4);
        }
        i += run - 1;
    }
}

/* kernel_log.forward for one chunk: log_lines (`name| ` + printable, one line per line of
 * the chunk), at most forward_limit bytes in all, then one warning and nothing more. */
static void ho_forward(const char *chunk, size_t n) {
    if (ho.forwarded >= ho.forward_limit) return;
    buf_t lines = {0};
    const char *p = chunk, *end = chunk + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        puts_(&lines, ho.name);
        put(&lines, "| ", 2);
        put_printable(&lines, (const unsigned char *)p, (size_t)(stop - p));
        put(&lines, "\n", 1);
        p = stop + 1;
    }
    if (!lines.data) return;
    size_t len = lines.len;
    if ((long long)len > ho.forward_limit - ho.forwarded) len = (size_t)(ho.forward_limit - ho.forwarded);
    write_all(2, lines.data, len);
    if (len && lines.data[len - 1] != '\n') write_all(2, "\n", 1);
    ho.forwarded += (long long)len;
    free(lines.data);
    if (ho.forwarded >= ho.forward_limit)
        jdk_log('W', "kernel's own stdout/stderr exceeded %lld bytes; dropping the rest", ho.forward_limit);
}

static void ho_stop_keeping(const char *why) {
    jdk_log('W', "stopped keeping the kernel's output for `logs`: %s", why);
    close(ho.log_fd);
    ho.log_fd = -1;
}

/* KernelLog.write: append; past 2 * tail_keep bytes keep only the last tail_keep. The
 * descriptor is write-only (O_APPEND): the tail is read through /proc/self/fd. */
static void ho_keep(const char *chunk, size_t n) {
    if (ho.log_fd < 0) return;
    size_t left = n;
    while (left) {
        ssize_t w = write(ho.log_fd, chunk + (n - left), left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            ho_stop_keeping(strerror(errno));
            return;
        }
        left -= (size_t)w;
    }
    ho.log_size += (long long)n;
    if (ho.log_size <= 2 * ho.tail_keep) return;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", ho.log_fd);
    int in = open(path, O_RDONLY | O_CLOEXEC);
    char *tail = malloc((size_t)ho.tail_keep);
    ssize_t got = -1;
    if (in >= 0 && tail) got = pread(in, tail, (size_t)ho.tail_keep, ho.log_size - ho.tail_keep);
    if (in >= 0) close(in);
    if (got != ho.tail_keep || ftruncate(ho.log_fd, 0) != 0) {
        ho_stop_keeping(got < 0 ? strerror(errno) : "cannot cut it");
    } else {
        ho.log_size = 0;
        size_t done = 0;
        while (done < (size_t)got) {
            ssize_t w = write(ho.log_fd, tail + done, (size_t)got - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            done += (size_t)w;
        }
        ho.log_size = (long long)done;
    }
    free(tail);
}

static void ho_take(const char *chunk, size_t n) {
    if (n >= HO_SAID) {
        memcpy(ho.said, chunk + n - HO_SAID, HO_SAID);
        ho.said_len = HO_SAID;
    } else {
        size_t keep = ho.said_len + n > HO_SAID ? HO_SAID - n : ho.said_len;
        memmove(ho.said, ho.said + ho.said_len - keep, keep);
        memcpy(ho.said + keep, chunk, n);
        ho.said_len = keep + n;
    }
    ho_keep(chunk, n);
    ho_forward(chunk, n);
}

/* One read of the lifeline; 0 at EOF (or an error). */
static int ho_read_lifeline(void) {
    static char chunk[65536];
    ssize_t n = read(ho.lifeline, chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
    if (n <= 0) {
        epoll_ctl(jdk_epoll, EPOLL_CTL_DEL, ho.lifeline, NULL);
        ho.lifeline_eof = 1;
        return 0;
    }
    ho_take(chunk, (size_t)n);
    return 1;
}

static void on_lifeline(jdk_watch_t *self, uint32_t events) {
    (void)self;
    (void)events;
    ho_read_lifeline();
}

/* ---- the socket-dir guard (socketdir.SocketDirGuard's rules) ------------------------ */

/* socketdir._kind: 's'ocket, 'l'ink, 'g'one or 'o'ther, not following links. */
static char ho_kind(const char *name) {
    struct stat st;
    if (fstatat(ho.dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno == ENOENT ? 'g' : 'o';
    return S_ISSOCK(st.st_mode) ? 's' : S_ISLNK(st.st_mode) ? 'l' : 'o';
}

static int ho_socket_or_link(const char *name) {
    char kind = ho_kind(name);
    return kind == 's' || kind == 'l' || kind == 'g';
}

static int ho_allowed(const char *name) {
    for (int i = 0; i < ho.n_allowed; i++)
        if (strcmp(ho.allowed[i], name) == 0) return 1;
    return 0;
}

/* The reasons found in one look at the dir: the first three shown, the rest counted. */
typedef struct {
    buf_t shown;
    int count;
} reasons_t;

static void ho_reason(reasons_t *r, const char *what, const char *name) {
    if (r->count++ >= 3) return;
    if (r->shown.len) puts_(&r->shown, ", ");
    puts_(&r->shown, what);
    if (name) { /* Python's repr of a plain name: 'name' (unprintables escaped) */
        put(&r->shown, " '", 2);
        put_printable(&r->shown, (const unsigned char *)name, strlen(name));
        put(&r->shown, "'", 1);
    }
}

/* socketdir._check: unlink what is not our sockets, kill the kernel at once through the
 * API (every millisecond is more of the host's disk), then the stop. */
static void ho_guard_violated(reasons_t *r) {
    if (!r->count || ho.guard_violated) {
        free(r->shown.data);
        return;
    }
    ho.guard_violated = 1;
    int dir = openat(ho.dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dir >= 0 ? fdopendir(dir) : NULL;
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_type != DT_DIR && !ho_socket_or_link(e->d_name)) unlinkat(ho.dir_fd, e->d_name, 0);
    if (d)
        closedir(d);
    else if (dir >= 0)
        close(dir);
    buf_t text = {0};
    puts_(&text, "the kernel wrote to its socket dir, where only its sockets belong (");
    put(&text, r->shown.data, r->shown.len);
    if (r->count > 3) {
        char more[48];
        snprintf(more, sizeof more, " and %d more", r->count - 3);
        puts_(&text, more);
    }
    puts_(&text, ")");
    jdk_log('W', "stopping the kernel in %s: %s", ho.name, text.data);
    if (engine_call("POST", "/kill?signal=SIGKILL") < 0)
        jdk_log('W', "could not kill the kernel in %s through the engine", ho.name);
    ho_stop(text.data);
    free(text.data);
    free(r->shown.data);
}

/* socketdir._strangers: every entry that is not a socket or a link. */
static void ho_guard_list(void) {
    reasons_t r = {0};
    int dir = openat(ho.dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dir >= 0 ? fdopendir(dir) : NULL;
    for (struct dirent *e; d && (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (!ho_socket_or_link(e->d_name)) ho_reason(&r, "created", e->d_name);
    }
    if (d)
        closedir(d);
    else if (dir >= 0)
        close(dir);
    ho_guard_violated(&r);
}

/* socketdir._reasons for what inotify queued. */
static void on_guard(jdk_watch_t *self, uint32_t events) {
    (void)self;
    (void)events;
    char data[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n = read(ho.guard_w.fd, data, sizeof data);
    if (n <= 0) return;
    reasons_t r = {0};
    for (char *p = data; p + sizeof(struct inotify_event) <= data + n;) {
        struct inotify_event *ev = (struct inotify_event *)p;
        p += sizeof(struct inotify_event) + ev->len;
        const char *name = ev->len ? ev->name : "";
        if (ev->mask & IN_Q_OVERFLOW) {
            ho_reason(&r, "more events than the watch can queue", NULL);
        } else if (!*name) {
            continue; /* the dir itself (gVisor's gofer opens it) */
        } else if ((ev->mask & IN_CREATE) && !(ev->mask & IN_ISDIR) && ho_allowed(name) &&
                   ho_socket_or_link(name)) {
            /* each bind makes an inode: binding and renaming away in a loop fills the table */
            if (++ho.guard_created > HO_CREATIONS_PER_NAME * ho.n_allowed) {
                char what[64];
                snprintf(what, sizeof what, "bound %d sockets", ho.guard_created);
                ho_reason(&r, what, NULL);
            }
        } else if ((ev->mask & IN_MOVED_TO) && ho_socket_or_link(name)) {
            continue; /* one of its sockets renamed: no new inode (catalogue F09) */
        } else if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
            ho_reason(&r, "created", name);
        } else if (ho_kind(name) == 's') {
            continue; /* a socket holds no data (gVisor may report a bind as a write) */
        } else {
            ho_reason(&r, "wrote to", name);
        }
    }
    ho_guard_violated(&r);
}

/* ---- the Jupyter client, the helper connection, signals, the exit ------------------- */

/* rundir.alive: the client's /proc stat start time unchanged and not a zombie. */
static int ho_client_alive(void) {
    char path[64], stat[2048];
    snprintf(path, sizeof path, "/proc/%ld/stat", ho.client_pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (n <= 0) return 0;
    stat[n] = 0;
    char *p = strrchr(stat, ')');
    if (!p) return 0;
    char *fields[20], *save = NULL;
    int k = 0;
    for (char *f = strtok_r(p + 1, " \n", &save); f && k < 20; f = strtok_r(NULL, " \n", &save))
        fields[k++] = f;
    if (k < 20) return 0;
    return strcmp(fields[0], "Z") != 0 && strcmp(fields[0], "X") != 0 && strcmp(fields[19], ho.client_start) == 0;
}

static void ho_helper_lines(void);

/* After H the helper may still send E lines (the start line); its EOF is normal. */
static void on_helper(jdk_watch_t *self, uint32_t events) {
    (void)self;
    (void)events;
    char chunk[4096];
    ssize_t n = recv_keep(ho.helper_w.fd, chunk, sizeof chunk);
    while (rx_count) close(rx_fds[--rx_count]); /* nothing more is handed over */
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) {
        epoll_ctl(jdk_epoll, EPOLL_CTL_DEL, ho.helper_w.fd, NULL);
        close(ho.helper_w.fd);
        ho.helper_w.fd = -1;
        return;
    }
    put(&ho.helper_in, chunk, (size_t)n);
    ho_helper_lines();
}

/* The helper's whole lines so far: E lines to stderr (the server's log), others ignored. */
static void ho_helper_lines(void) {
    if (!ho.helper_in.data) return;
    char *line = ho.helper_in.data, *nl;
    while ((nl = memchr(line, '\n', ho.helper_in.len - (size_t)(line - ho.helper_in.data)))) {
        if (line[0] == 'E') {
            size_t skip = nl - line > 1 ? 2 : 1;
            write_all(2, line + skip, (size_t)(nl - line) + 1 - skip);
        }
        line = nl + 1;
    }
    size_t rest = ho.helper_in.len - (size_t)(line - ho.helper_in.data);
    memmove(ho.helper_in.data, line, rest);
    ho.helper_in.len = rest;
}

static void on_signal(jdk_watch_t *self, uint32_t events) {
    (void)self;
    (void)events;
    struct signalfd_siginfo info;
    while (read(ho.signal_w.fd, &info, sizeof info) == (ssize_t)sizeof info) {
        if (info.ssi_signo == SIGINT)
            ho_interrupt();
        else
            ho_stop("stopped by the Jupyter client");
    }
}

/* Readable: the container exited (or the engine went away). Only polled: finish.py reads
 * the response's body (the exit code). */
static void on_exit_watch(jdk_watch_t *self, uint32_t events) {
    (void)self;
    (void)events;
    epoll_ctl(jdk_epoll, EPOLL_CTL_DEL, ho.exit_fd, NULL);
    ho.exited = 1;
}

static void ho_watch(ho_watch_t *w, int fd, void (*on_event)(jdk_watch_t *, uint32_t)) {
    w->watch.on_event = on_event;
    w->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
    if (fd >= 0 && epoll_ctl(jdk_epoll, EPOLL_CTL_ADD, fd, &ev) != 0)
        jdk_log('E', "cannot watch descriptor %d: %s", fd, strerror(errno));
}

/* ---- the end ------------------------------------------------------------------------ */

/* base/NAME, 0600, never through a link; 0 when it could not be written. */
static int ho_write_file(const char *base, const char *name, const char *data, size_t len) {
    char *path = join(base, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    free(path);
    if (fd < 0) return 0;
    fchmod(fd, 0600);
    int ok = write_all(fd, data, len);
    return close(fd) == 0 && ok;
}

/* Execs PYTHON-ARGV's interpreter on finish.py: `--state STATE --end END`, or `--state
 * STATE --lost` (end NULL: the client was killed). Returns only if the exec failed. */
static void jdk_exec_finish(const char *state, const char *end) {
    int isolated = jdk_python_count >= 2 && strcmp(jdk_python[1], "-I") == 0;
    char *argv[10];
    int i = 0;
    argv[i++] = jdk_python[0];
    if (isolated) {
        argv[i++] = "-I";
        argv[i++] = "-m";
        argv[i++] = JDK_FINISH_MODULE;
    } else {
        argv[i++] = "-c";
        argv[i++] = JDK_FINISH_CODE;
    }
    argv[i++] = "--state";
    argv[i++] = (char *)state;
    argv[i++] = end ? "--end" : "--lost";
    if (end) argv[i++] = (char *)end;
    argv[i] = NULL;
    execv(argv[0], argv);
}

/* The argv[0] the watcher runs under (main recognises it): `WATCH_NAME STATE PYTHON-ARGV...`. */
#define JDK_WATCH_NAME "jupyter-docker-kernel-watch"

/* The watcher's whole life (main, when argv[0] is JDK_WATCH_NAME): descriptor 3 is the
 * read end of the client's pipe. A byte means the client ends the kernel itself (it is
 * about to exec the finish): nothing to do. EOF without one means the client died (a
 * SIGKILL, as jupyter_client's kill sends): the lifeline closed with it and the kernel
 * is ending; the finish in --lost mode removes the container (gVisor and Podman keep
 * theirs) and the runtime dir now, not at the next start's sweep. */
static int jdk_watch_main(int argc, char **argv) {
    char byte;
    ssize_t n;
    do n = read(3, &byte, 1);
    while (n < 0 && errno == EINTR);
    if (n == 1 || argc < 3) return 0;
    close(3);
    jdk_python = argv + 2;
    jdk_python_count = argc - 2;
    jdk_exec_finish(argv[1], NULL);
    char msg[512];
    snprintf(msg, sizeof msg,
             "jupyter-docker-kernel: cannot run %s to clean up after a killed kernel client: %s; "
             "`jupyter-docker-kernel gc` removes what it left.\n",
             argv[2], strerror(errno));
    write_all(2, msg, strlen(msg));
    return 1;
}

/* At the hand-over: the one process besides us that outlives a SIGKILL of ours (in a
 * session of its own: jupyter_client kills our process group), this binary re-exec'd
 * small (about 0.1 MiB: no relay, no buffers), holding nothing of the kernel's but the
 * read end of a pipe whose write end only we hold. Double-forked: never our zombie. */
static void ho_spawn_watcher(void) {
    ho.watcher = -1;
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) goto failed;
    pid_t child = fork();
    if (child < 0) {
        close(p[0]);
        close(p[1]);
        goto failed;
    }
    if (child == 0) {
        setsid();
        if (fork() != 0) _exit(0);
        if (dup2(p[0], 3) < 0) _exit(1);
        fcntl(3, F_SETFD, 0);
        /* The lifeline, the listeners...: not ours (holding the lifeline would keep the
         * kernel alive after the client's death). One by one where close_range is missing. */
        if (syscall(SYS_close_range, 4U, ~0U, 0) != 0) {
            struct rlimit rl;
            long max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (1 << 20) ? (long)rl.rlim_cur : 1 << 20;
            for (long fd = 4; fd < max; fd++) close((int)fd);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGINT, SIG_IGN); /* a terminal's Ctrl-C is the server's, not ours */
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_IGN);
        char *argv[3 + 64];
        int i = 0;
        argv[i++] = JDK_WATCH_NAME;
        argv[i++] = ho.state;
        for (int k = 0; k < jdk_python_count && k < 64; k++) argv[i++] = jdk_python[k];
        argv[i] = NULL;
        execv("/proc/self/exe", argv);
        _exit(1);
    }
    close(p[0]);
    waitpid(child, NULL, 0);
    ho.watcher = p[1];
    return;
failed:
    jdk_log('W', "could not start the watcher of kernel %s (%s): if this client is killed, its container "
            "and runtime dir stay until the next start's sweep or `jupyter-docker-kernel gc`",
            ho.name, strerror(errno));
}

/* Section 3 of the build plan: the lifeline to EOF, the relay closed, what finish.py needs
 * written next to the state file, then finish.py in this process (exit_fd and the iopub
 * listener the only descriptors it inherits besides stdio). */
static void __attribute__((noreturn)) ho_end(sigset_t *blocked) {
    double until = jdk_now() + HO_DRAIN_WAIT;
    while (!ho.lifeline_eof) {
        double left = until - jdk_now();
        struct pollfd p = {.fd = ho.lifeline, .events = POLLIN};
        int ready = left > 0 ? poll(&p, 1, (int)(left * 1000) + 1) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0 || !ho_read_lifeline()) break;
    }
    int iopub_lost = 0, iopub = jdk_relay_close(ho.relay, &iopub_lost);
    char *base = strdup(ho.state);
    char *slash = strrchr(base, '/');
    if (slash) *slash = 0;
    buf_t end = {0};
    char line[256];
    puts_(&end, "reason=");
    for (const char *p = ho.reason ? ho.reason : ""; *p; p++) put(&end, *p == '\n' ? " " : p, 1);
    snprintf(line, sizeof line, "\nstopping=%d\n", ho.stopping);
    puts_(&end, line);
    if (ho.interrupted_at < 0)
        snprintf(line, sizeof line, "interrupted_ago=-1\n");
    else
        snprintf(line, sizeof line, "interrupted_ago=%.3f\n", jdk_now() - ho.interrupted_at);
    puts_(&end, line);
    snprintf(line, sizeof line, "bytes_to_host=%lld\nbytes_to_kernel=%lld\noutput_charged=%lld\niopub_lost=%d\n",
             jdk_relay_bytes_to_host(ho.relay), jdk_relay_bytes_to_kernel(ho.relay),
             jdk_relay_output_charged(ho.relay), iopub_lost);
    puts_(&end, line);
    snprintf(line, sizeof line, "exit_fd=%d\niopub_fd=%d\n", ho.exit_fd, iopub);
    puts_(&end, line);
    size_t execute_len = 0;
    const char *execute = jdk_relay_execute(ho.relay, &execute_len);
    if (!ho_write_file(base, "said", ho.said, ho.said_len) ||
        !ho_write_file(base, "execute", execute, execute_len) ||
        !ho_write_file(base, "handover-end", end.data, end.len))
        jdk_log('E', "cannot write the kernel's end into %s: %s", base, strerror(errno));
    char *end_path = join(base, "handover-end");
    /* The two the finish reads: FD_CLOEXEC off on these only. */
    fcntl(ho.exit_fd, F_SETFD, 0);
    if (iopub >= 0) fcntl(iopub, F_SETFD, 0);
    /* The finish's signals as a fresh process's; an interrupt has nothing to reach now. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, blocked, NULL);
    if (ho.watcher >= 0) /* the end is ours: the watcher leaves (the pipe closes at exec) */
        write_all(ho.watcher, "F", 1);
    jdk_exec_finish(ho.state, end_path);
    char msg[1024];
    snprintf(msg, sizeof msg,
             "jupyter-docker-kernel: cannot run %s for the end of the kernel in %s: %s; its container "
             "and runtime dir are left to `jupyter-docker-kernel gc`.\n",
             jdk_python[0], ho.name, strerror(errno));
    write_all(2, msg, strlen(msg));
    _exit(JDK_LOST_EXIT);
}

/* ---- the hand-over ------------------------------------------------------------------ */

static void __attribute__((noreturn)) ho_refuse(const char *why) {
    char msg[512];
    snprintf(msg, sizeof msg,
             "jupyter-docker-kernel: the resident helper's hand-over is not usable (%s); the kernel "
             "ends with this client. Restart the kernel.\n",
             why);
    write_all(2, msg, strlen(msg));
    _exit(JDK_LOST_EXIT); /* the lifeline closes with us: the supervisor ends the kernel */
}

/* The H line's fields (n bytes) arrived on sock, with rx_fds; REST is what followed them
 * (E lines). Serves the kernel until its container exited, then execs the finish. */
static void __attribute__((noreturn)) jdk_handover(int sock, const char *fields, size_t n, const char *rest,
                                                   size_t rest_len) {
    /* Our signals from now on (not forwarded to the helper): read in the loop. Blocked
     * before their handlers go, so none is lost or kills us in between. */
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGHUP);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_IGN); /* a relayed peer or our stderr gone is an error, not our death */

    if (rx_count < HO_FDS) ho_refuse("too few descriptors");
    while (rx_count > HO_FDS) close(rx_fds[--rx_count]);
    memset(&ho, 0, sizeof ho);
    ho.lifeline = rx_fds[HO_LIFELINE];
    ho.exit_fd = rx_fds[HO_EXIT];
    ho.dir_fd = rx_fds[HO_DIR];
    ho.log_fd = rx_fds[HO_LOG];
    for (int i = 0; i < JDK_CHANNELS; i++) ho.listeners[i] = rx_fds[HO_LISTENERS + i];
    rx_count = 0;

    ho.name = ho_field(fields, n, "name");
    ho.id = ho_field(fields, n, "id");
    ho.state = ho_field(fields, n, "state");
    ho.engine_socket = ho_field(fields, n, "engine_socket");
    ho.api_prefix = ho_field(fields, n, "api_prefix");
    ho.client_start = ho_field(fields, n, "client_start");
    ho.client_pid = (long)ho_number(fields, n, "client_pid", 0);
    ho.max_message = ho_number(fields, n, "max_message", 0);
    ho.output_budget = ho_number(fields, n, "output_budget", 0);
    ho.forward_limit = ho_number(fields, n, "forward_limit", 4 << 20);
    ho.tail_keep = ho_number(fields, n, "tail_keep", 64 << 10);
    ho.first_reply_bytes = ho_number(fields, n, "first_reply_bytes", 0);
    char *text = ho_field(fields, n, "max_lifetime");
    ho.max_lifetime = strtod(text, NULL);
    free(text);
    text = ho_field(fields, n, "lifetime_left");
    char *after = NULL;
    double left = strtod(text, &after);
    ho.deadline = *text && !*after && left == left && left < 1e15 ? jdk_now() + left : -1;
    free(text);
    text = ho_field(fields, n, "kernel_sockets");
    int names = ho_split(text, ho.kernel_sockets, JDK_CHANNELS);
    free(text);
    text = ho_field(fields, n, "allowed");
    ho.allowed = calloc(64, sizeof(char *));
    ho.n_allowed = ho.allowed ? ho_split(text, ho.allowed, 64) : 0;
    free(text);
    if (!*ho.name || !*ho.state || ho.state[0] != '/' || !*ho.engine_socket || names != JDK_CHANNELS ||
        ho.tail_keep <= 0 || ho.forward_limit < 0)
        ho_refuse("a field is missing");
    struct stat st;
    if (fstat(ho.dir_fd, &st) != 0 || !S_ISDIR(st.st_mode)) ho_refuse("the socket dir is not a directory");
    if (fstat(ho.log_fd, &st) != 0 || !S_ISREG(st.st_mode)) { /* /dev/null: no log kept */
        close(ho.log_fd);
        ho.log_fd = -1;
    } else {
        ho.log_size = st.st_size;
    }
    ho.interrupted_at = -1;
    int flags = fcntl(ho.lifeline, F_GETFL);
    fcntl(ho.lifeline, F_SETFL, flags | O_NONBLOCK);

    jdk_epoll = epoll_create1(EPOLL_CLOEXEC);
    if (jdk_epoll < 0) ho_refuse(strerror(errno));
    ho_watch(&ho.helper_w, sock, on_helper);
    ho_watch(&ho.lifeline_w, ho.lifeline, on_lifeline);
    ho_watch(&ho.exit_w, ho.exit_fd, on_exit_watch);
    ho_watch(&ho.signal_w, signalfd(-1, &blocked, SFD_CLOEXEC | SFD_NONBLOCK), on_signal);
    ho.guard_w.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ho.guard_w.fd >= 0) {
        char dir[64];
        snprintf(dir, sizeof dir, "/proc/self/fd/%d", ho.dir_fd);
        if (inotify_add_watch(ho.guard_w.fd, dir, IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
            close(ho.guard_w.fd);
            ho.guard_w.fd = -1;
        }
    }
    if (ho.guard_w.fd >= 0) {
        ho_watch(&ho.guard_w, ho.guard_w.fd, on_guard);
    } else {
        ho.guard_polling = 1;
        jdk_log('W', "cannot watch the socket dir of %s with inotify; listing it every %.1f s instead (files a "
                "kernel opens and unlinks there in between are not seen)", ho.name, HO_GUARD_POLL);
    }
    const char *kernel_names[JDK_CHANNELS];
    for (int i = 0; i < JDK_CHANNELS; i++) kernel_names[i] = ho.kernel_sockets[i];
    ho.relay = jdk_relay_new(ho.listeners, ho.dir_fd, kernel_names, ho.max_message, ho.output_budget);
    if (!ho.relay) ho_refuse("the relay could not start");
    ho_spawn_watcher();
    ho_guard_list(); /* what was there before the watch began counts too */
    if (rest_len) { /* E lines that came with the H line */
        put(&ho.helper_in, rest, rest_len);
        ho_helper_lines();
    }

    ho.next_second = jdk_now() + 1;
    ho.next_poll = jdk_now() + HO_GUARD_POLL;
    while (!ho.exited) {
        double now = jdk_now();
        jdk_relay_tick(ho.relay, now);
        if (now >= ho.next_second) {
            ho.next_second = now + 1;
            /* No start time for a known pid: the helper could not read it, so the Jupyter
             * client was gone before the hand-over (killed during the start). */
            if (ho.client_pid > 1 && (!*ho.client_start || !ho_client_alive()))
                ho_stop("the Jupyter client went away");
        }
        if (ho.deadline >= 0 && now >= ho.deadline) {
            char why[96];
            snprintf(why, sizeof why, "maximum lifetime of %g s reached", ho.max_lifetime);
            ho_stop(why);
            ho.deadline = -1;
        }
        if (ho.guard_polling && now >= ho.next_poll) {
            ho.next_poll = now + HO_GUARD_POLL;
            ho_guard_list();
        }
        double wake = ho.next_second;
        double relay_at = jdk_relay_next_deadline(ho.relay);
        if (relay_at >= 0 && relay_at < wake) wake = relay_at;
        if (ho.deadline >= 0 && ho.deadline < wake) wake = ho.deadline;
        if (ho.guard_polling && ho.next_poll < wake) wake = ho.next_poll;
        double wait = (wake - jdk_now()) * 1000;
        int timeout = wait <= 0 ? 0 : (int)wait + 1;
        struct epoll_event events[32];
        int ready = epoll_wait(jdk_epoll, events, 32, timeout);
        for (int i = 0; i < ready; i++) {
            jdk_watch_t *w = events[i].data.ptr;
            w->on_event(w, events[i].events);
        }
        const char *violation = jdk_relay_violation(ho.relay);
        if (!ho.violation_seen && violation && *violation) {
            ho.violation_seen = 1;
            ho_stop(violation);
        }
        /* The refill's gate (container.FIRST_REPLY_BYTES): once, while the helper listens. */
        if (!ho.reply_sent && ho.helper_w.fd >= 0 &&
            jdk_relay_bytes_to_host(ho.relay) >= ho.first_reply_bytes) {
            ho.reply_sent = 1;
            send_all(ho.helper_w.fd, "R", 1);
        }
    }
    ho_end(&blocked);
}
