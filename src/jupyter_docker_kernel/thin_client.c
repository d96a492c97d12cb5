/* The argv launcher's thin client of the resident helper, compiled (issue 17).
 *
 * Speaks exactly thin.py's protocol with helper.py (whose docstring describes the wire):
 * one JSON request line, byte for byte what thin.request_for() + thin._dumps() make for
 * the same argv and environment; then one byte per forwarded signal; then the helper's
 * "E <text>" lines go to stderr and "X <code>" is our exit code; EOF after "A" is
 * LOST_EXIT. A Python process costs 8-9 MiB RSS per kernel before it does anything; this
 * costs about a quarter of that, and starts in about a millisecond.
 *
 * Who runs it: kernel.json's argv, written by `setup` (thin_client.py builds it):
 *
 *     BINARY N PYTHON-ARGV(N items) LAUNCHER-ARGS...
 *
 * e.g. `thin-client-... 4 /usr/bin/python3 -I -m jupyter_docker_kernel.launcher -f CF`.
 * When no helper listens it starts one as thin.connect_or_spawn does (the same lock, the
 * same command: PYTHON-ARGV's interpreter, isolated as it is, running the helper module),
 * so no kernel keeps a Python client of its own, the first after an idle exit included.
 * Whenever it cannot serve the kernel through a helper (none could be started, the
 * runtime base is not the usual one, a refusal, an argv only the full launcher parses,
 * JUPYTER_DOCKER_KERNEL_NO_HELPER=1, the package upgraded under us), it execs
 * PYTHON-ARGV LAUNCHER-ARGS, the command the kernelspec would otherwise run, in this same
 * process (same pid: the client's liveness polling and signals still reach the kernel's
 * process), which runs the kernel in-process as before.
 *
 * Unless JUPYTER_DOCKER_KERNEL_HANDOVER=0, it asks the helper to hand the session over
 * ("handover": true): a helper that can answers `H` with the session's descriptors, and
 * from then on this process relays, watches and ends the kernel by itself
 * (thin_handover.c, with thin_relay.c: #included below, one compilation unit), so no
 * Python process lives while the kernel runs (docs/design/issue17/c-relay.md).
 *
 * Only libc. The package's version, PROTOCOL, install path and thin.ENV_PREFIXES /
 * ENV_NAMES come from thin_client_config.h, which thin_client.py generates from thin.py
 * at build time, so a helper of another release retires for this client as for a Python
 * one. */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "thin_client_config.h"

extern char **environ;

static const char *const env_prefixes[] = {JDK_ENV_PREFIXES};
static const char *const env_names[] = {JDK_ENV_NAMES};
static const int forwarded[] = {JDK_FORWARDED};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- a growing byte buffer --------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static void put(buf_t *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *data = realloc(b->data, cap);
        if (!data) _exit(JDK_LOST_EXIT); /* out of memory before anything started */
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

/* thin._dumps of a str: '"' and '\\' escaped, control characters (and DEL) as \u00xx,
 * every other byte as it is (non-ASCII stays UTF-8). */
static void put_json_str(buf_t *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            put(b, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            char esc[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
            put(b, esc, 6);
        } else {
            put(b, (const char *)p, 1);
        }
    }
    put(b, "\"", 1);
}

/* ---- what thin.py computes --------------------------------------------------------- */

/* The value of NAME in the environment as os.environ has it (the first entry wins). */
static const char *env_get(const char *name) {
    size_t n = strlen(name);
    for (char **e = environ; *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

/* Python's str.isspace for the ASCII range (thin.engine_host's lstrip). */
static int py_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

/* thin.engine_host: the top-level "engine_host" string of the settings JSON, found by a
 * scan; into out (malloc'd), "" when absent or null. */
static char *engine_host(const char *text) {
    static const char key[] = "\"engine_host\"";
    const char *at = strstr(text, key);
    while (at && at > text && at[-1] == '\\') at = strstr(at + 1, key);
    if (!at) return strdup("");
    const char *rest = at + strlen(key);
    while (py_space(*rest)) rest++;
    if (*rest != ':') return strdup("");
    rest++;
    while (py_space(*rest)) rest++;
    if (*rest != '"') return strdup("");
    const char *end = strchr(rest + 1, '"');
    if (!end) return strdup("");
    return strndup(rest + 1, (size_t)(end - rest - 1));
}

/* posixpath.normpath of an absolute path (thin.request_for's os.path.abspath). */
static char *normpath(const char *path) {
    size_t n = strlen(path);
    int initial = path[0] == '/';
    if (initial && path[1] == '/' && path[2] != '/') initial = 2;
    char *out = malloc(n + 3), *copy = strdup(path);
    const char **comps = malloc((n / 2 + 2) * sizeof(*comps));
    if (!out || !copy || !comps) _exit(JDK_LOST_EXIT);
    size_t k = 0;
    for (char *save = NULL, *c = strtok_r(copy, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0) continue;
        if (strcmp(c, "..") != 0 || (!initial && k == 0) || (k > 0 && strcmp(comps[k - 1], "..") == 0))
            comps[k++] = c;
        else if (k > 0)
            k--;
    }
    size_t len = 0;
    for (int i = 0; i < initial; i++) out[len++] = '/';
    for (size_t i = 0; i < k; i++) {
        if (i) out[len++] = '/';
        size_t m = strlen(comps[i]);
        memcpy(out + len, comps[i], m);
        len += m;
    }
    if (len == 0) out[len++] = '.';
    out[len] = 0;
    free(copy);
    free(comps);
    return out;
}

/* os.path.join(a, b) for a relative b. */
static char *join(const char *a, const char *b) {
    size_t n = strlen(a);
    char *out = malloc(n + strlen(b) + 2);
    if (!out) _exit(JDK_LOST_EXIT);
    strcpy(out, a);
    if (n == 0 || a[n - 1] != '/') strcat(out, "/");
    strcat(out, b);
    return out;
}

/* thin.client_env's choice: a name with one of ENV_PREFIXES, or one of ENV_NAMES, and
 * never the settings variable (a kernel's settings are sent once, as `settings`). */
static int env_selected(const char *name, size_t n) {
    if (n == strlen(JDK_SETTINGS_ENV) && strncmp(name, JDK_SETTINGS_ENV, n) == 0) return 0;
    for (size_t i = 0; i < COUNT(env_prefixes); i++) {
        size_t m = strlen(env_prefixes[i]);
        if (n >= m && strncmp(name, env_prefixes[i], m) == 0) return 1;
    }
    for (size_t i = 0; i < COUNT(env_names); i++)
        if (n == strlen(env_names[i]) && strncmp(name, env_names[i], n) == 0) return 1;
    return 0;
}

/* The "env" object: in os.environ's order, which is environ's with the first of a
 * repeated name winning; entries without "=" are not in os.environ at all. */
static void put_env(buf_t *b) {
    int first = 1;
    put(b, "{", 1);
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        size_t n = (size_t)(eq - *e);
        if (!env_selected(*e, n)) continue;
        int repeated = 0;
        for (char **f = environ; f < e && !repeated; f++)
            repeated = strncmp(*f, *e, n + 1) == 0;
        if (repeated) continue;
        if (!first) put(b, ", ", 2);
        first = 0;
        char *name = strndup(*e, n);
        if (!name) _exit(JDK_LOST_EXIT);
        put_json_str(b, name);
        free(name);
        put(b, ": ", 2);
        put_json_str(b, eq + 1);
    }
    put(b, "}", 1);
}

/* thin.parse_argv: 1 and the settings, connection file and debug for the usual forms;
 * 0 for anything else (the full launcher parses it and prints its usage). */
static int parse_argv(int argc, char **argv, const char **settings, const char **connection, int *debug) {
    *settings = *connection = "";
    *debug = 0;
    for (int i = 0; i < argc; i++) {
        const char *opt = argv[i], *eq = strchr(opt, '=');
        size_t n = eq ? (size_t)(eq - opt) : strlen(opt);
        int is_settings = n == 10 && strncmp(opt, "--settings", n) == 0;
        int is_connection = (n == 2 && strncmp(opt, "-f", n) == 0) ||
                            (n == 17 && strncmp(opt, "--connection-file", n) == 0);
        if (is_settings || is_connection) {
            const char *value = eq ? eq + 1 : NULL;
            if (!value) {
                if (i + 1 >= argc) return 0;
                value = argv[++i];
            }
            if (is_settings)
                *settings = value;
            else
                *connection = value;
        } else if (strcmp(opt, "--debug") == 0) {
            *debug = 1;
        } else if (opt[0] == '-') {
            return 0;
        }
    }
    if (!**settings) {
        const char *from_env = env_get(JDK_SETTINGS_ENV);
        *settings = from_env ? from_env : "";
    }
    if (!**settings || !**connection) return 0;
    const char *debug_env = env_get("JUPYTER_DOCKER_KERNEL_DEBUG");
    *debug = *debug || (debug_env && *debug_env);
    return 1;
}

/* thin.request_for + thin._dumps: the one request line (without its "\n"); 0 when the
 * cwd cannot be had (thin.main falls back then). */
static int request_for(buf_t *b, const char *settings, const char *connection, int debug, int handover,
                       char **engine) {
    char *cwd = getcwd(NULL, 0);
    if (!cwd) return 0;
    char *host = engine_host(settings);
    const char *command = env_get("JUPYTER_DOCKER_KERNEL_ENGINE");
    const char *docker_host = env_get("DOCKER_HOST");
    buf_t key = {0};
    puts_(&key, command ? command : "docker");
    put(&key, " ", 1);
    puts_(&key, *host ? host : docker_host ? docker_host : "");
    free(host);
    *engine = key.data;

    char pid[24], version[24];
    snprintf(pid, sizeof pid, "%ld", (long)getppid());
    snprintf(version, sizeof version, "%d", JDK_PROTOCOL);
    puts_(b, "{\"v\": ");
    puts_(b, version);
    puts_(b, ", \"version\": ");
    put_json_str(b, JDK_VERSION);
    puts_(b, ", \"kind\": \"kernel\", \"engine\": ");
    put_json_str(b, *engine);
    puts_(b, ", \"settings\": ");
    put_json_str(b, settings);
    puts_(b, ", \"connection_file\": ");
    if (*connection) {
        char *joined = connection[0] == '/' ? strdup(connection) : join(cwd, connection);
        char *absolute = normpath(joined);
        put_json_str(b, absolute);
        free(absolute);
        free(joined);
    } else {
        put_json_str(b, "");
    }
    puts_(b, ", \"cwd\": ");
    put_json_str(b, cwd);
    puts_(b, ", \"client_pid\": ");
    puts_(b, pid);
    puts_(b, ", \"env\": ");
    put_env(b);
    puts_(b, debug ? ", \"debug\": true" : ", \"debug\": false");
    puts_(b, handover ? ", \"handover\": true}" : "}");
    free(cwd);
    return 1;
}

/* thin.private_base: the runtime base dir (made 0700 when missing), or NULL when it is
 * not ours and private (the Python launcher knows the other places). */
static char *private_base(void) {
    uid_t uid = getuid();
    const char *xdg = env_get("XDG_RUNTIME_DIR");
    struct stat st;
    char *base;
    if (xdg && *xdg && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode) && access(xdg, W_OK) == 0) {
        base = join(xdg, "jupyter-docker-kernel");
    } else {
        const char *tmp = env_get("TMPDIR");
        if (!tmp || !*tmp) tmp = env_get("TEMP");
        if (!tmp || !*tmp) tmp = env_get("TMP");
        char name[64];
        snprintf(name, sizeof name, "jupyter-docker-kernel-%ld", (long)uid);
        base = join(tmp && *tmp ? tmp : "/tmp", name);
    }
    mkdir(base, 0700); /* there already (ours or not: checked next), or cannot be made */
    if (lstat(base, &st) != 0 || (st.st_mode & 0170777) != 0040700 || st.st_uid != uid) {
        free(base);
        return NULL;
    }
    return base;
}

/* thin.socket_name: helper-<FNV-1a 64 of "ENGINE\0INSTALL">.sock, joined to the base. */
static char *socket_path(const char *base, const char *engine) {
    uint64_t digest = 0xCBF29CE484222325ULL;
    static const char install[] = JDK_INSTALL;
    for (const unsigned char *p = (const unsigned char *)engine; *p; p++)
        digest = (digest ^ *p) * 0x100000001B3ULL;
    digest *= 0x100000001B3ULL; /* the "\0" separator: digest ^ 0 is digest */
    for (size_t i = 0; i < sizeof install - 1; i++)
        digest = (digest ^ (unsigned char)install[i]) * 0x100000001B3ULL;
    char name[64];
    snprintf(name, sizeof name, "%s%016llx.sock", JDK_HELPER_PREFIX, (unsigned long long)digest);
    return join(base, name);
}

/* thin._connect: through /proc/self/fd (a socket path is limited to 107 bytes; the opened
 * inode is not a symlink), and only to a peer of our own uid. -1: nobody listens. */
static int connect_helper(const char *path) {
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d", fd);
    int ok = sock >= 0 && connect(sock, (struct sockaddr *)&addr, sizeof addr) == 0;
    close(fd);
    struct ucred cred;
    socklen_t len = sizeof cred;
    ok = ok && getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.uid == getuid();
    if (!ok) {
        if (sock >= 0) close(sock);
        return -1;
    }
    return sock;
}

/* thin.spawn_detached: the helper in a new session, fully detached (double fork), stdio
 * on /dev/null, no inherited descriptors (the spawn lock's among them), without the
 * kernel's settings and JPY_* in its environment. */
static void spawn_detached(char *const argv[]) {
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (fork() != 0) _exit(0);
        int null = open("/dev/null", O_RDWR);
        for (int fd = 0; fd < 3; fd++) dup2(null, fd);
#ifdef SYS_close_range
        if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
            for (int fd = 3; fd < (1 << 16); fd++) close(fd);
        if (chdir("/") != 0) _exit(127);
        umask(077);
        size_t n = 0, k = 0;
        while (environ[n]) n++;
        char **env = malloc((n + 1) * sizeof(*env));
        if (!env) _exit(127);
        size_t settings = strlen(JDK_SETTINGS_ENV);
        for (size_t i = 0; i < n; i++) {
            const char *e = environ[i];
            if (strncmp(e, "JPY_", 4) == 0) continue;
            if (strncmp(e, JDK_SETTINGS_ENV, settings) == 0 && e[settings] == '=') continue;
            env[k++] = environ[i];
        }
        env[k] = NULL;
        execve(argv[0], argv, env);
        _exit(127);
    }
    if (pid > 0)
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* thin.connect_or_spawn's slow path: under an exclusive flock on the lock file, connect
 * again (another client may just have started one), else start the helper as thin.py
 * would (thin.spawn_argv: isolated like the launcher command) and wait up to SPAWN_WAIT
 * for it to listen. -1: no helper; the caller execs the Python launcher. */
static int spawn_helper(const char *path, const char *base, const char *engine, char **python, int count) {
    char *lock = strdup(path);
    if (!lock) return -1;
    strcpy(lock + strlen(lock) - strlen(".sock"), ".lock");
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(lock);
    if (fd < 0) return -1;
    int sock = -1;
    while (flock(fd, LOCK_EX) < 0)
        if (errno != EINTR) goto done;
    sock = connect_helper(path);
    if (sock >= 0) goto done;
    int isolated = count >= 2 && strcmp(python[1], "-I") == 0;
    char *argv[] = {python[0], isolated ? "-I" : "-c", isolated ? "-m" : JDK_HELPER_CODE,
                    isolated ? JDK_HELPER_MODULE : "--base", isolated ? "--base" : (char *)base,
                    isolated ? (char *)base : "--engine", isolated ? "--engine" : (char *)engine,
                    isolated ? (char *)engine : NULL, NULL};
    spawn_detached(argv);
    double deadline = now() + JDK_SPAWN_WAIT, delay = 0.002;
    while (now() < deadline) {
        struct timespec ts = {0, (long)(delay * 1e9)};
        nanosleep(&ts, NULL);
        delay = delay * 2 < 0.05 ? delay * 2 : 0.05;
        sock = connect_helper(path);
        if (sock >= 0) break;
    }
done:
    close(fd); /* releases the flock */
    return sock;
}

static int send_all(int sock, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(sock, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        data += n;
        len -= (size_t)n;
    }
    return 1;
}

/* ---- the hand-over (issue 17): the relay and the loop that serve a handed-over kernel */

#if !__has_include("thin_relay.c") || !__has_include("thin_relay.h") || !__has_include("thin_handover.c")
#error "thin_relay.h, thin_relay.c and thin_handover.c must be next to thin_client.c (one compilation unit)"
#endif
#include "thin_relay.c"
#include "thin_handover.c"

/* ---- the session ------------------------------------------------------------------- */

static int session_sock = -1;

/* Each forwarded signal's number, as one byte, in arrival order (thin.py's wakeup fd). */
static void forward(int signum) {
    int saved = errno;
    unsigned char byte = (unsigned char)signum;
    while (send(session_sock, &byte, 1, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
    errno = saved;
}

/* thin._session: E lines to stderr until X; EOF first is LOST_EXIT with a message. */
static int session(int sock, buf_t *buf, const char *helper_pid) {
    session_sock = sock;
    struct sigaction sa = {.sa_handler = forward, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < COUNT(forwarded); i++) sigaddset(&sa.sa_mask, forwarded[i]);
    for (size_t i = 0; i < COUNT(forwarded); i++) sigaction(forwarded[i], &sa, NULL);
    size_t start = 0;
    for (;;) {
        char *nl;
        while ((nl = memchr(buf->data + start, '\n', buf->len - start)) != NULL) {
            char *line = buf->data + start;
            size_t len = (size_t)(nl - line);
            start += len + 1;
            if (len && line[0] == 'X') {
                /* int(code) if code.lstrip(b"-").isdigit() else LOST_EXIT */
                char *p = line + (len > 2 ? 2 : len), *end = nl;
                while (p < end && py_space(*p)) p++;
                while (end > p && py_space(end[-1])) end--;
                char *digits = p;
                int negative = 0;
                if (digits < end && *digits == '-') negative = 1, digits++;
                if (digits == end) return JDK_LOST_EXIT;
                long long code = 0;
                for (char *d = digits; d < end; d++) {
                    if (*d < '0' || *d > '9') return JDK_LOST_EXIT;
                    code = code * 10 + (*d - '0');
                    if (code > 1000000000LL) code = 1000000000LL;
                }
                return (int)(negative ? -code : code);
            }
            if (len && line[0] == 'H') {
                /* `H <n>\n` + n bytes of fields: the session is ours from here on */
                char *end = NULL;
                long long want = len > 2 ? strtoll(line + 2, &end, 10) : -1;
                if (want < 0 || want > (1 << 20) || end != nl) return JDK_LOST_EXIT;
                if (buf->len - start < (size_t)want) {
                    start -= len + 1; /* not all of it yet: read on */
                    break;
                }
                jdk_handover(sock, buf->data + start, (size_t)want, buf->data + start + want,
                             buf->len - start - (size_t)want);
            }
            if (len && line[0] == 'E') {
                size_t skip = len > 2 ? 2 : len;
                /* nobody reads our stderr any more: the kernel still runs */
                if (write(2, line + skip, len - skip) < 0 || write(2, "\n", 1) < 0) {
                }
            }
        }
        if (start) { /* keep only the unfinished line */
            memmove(buf->data, buf->data + start, buf->len - start);
            buf->len -= start;
            start = 0;
        }
        char chunk[65536];
        ssize_t n = recv_keep(sock, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            char msg[512];
            snprintf(msg, sizeof msg,
                     "jupyter-docker-kernel: the resident helper (pid %s) went away before this "
                     "kernel ended; its container ends with it. Restart the kernel; the helper's "
                     "log is helper-*.log in the runtime directory (`jupyter-docker-kernel "
                     "doctor` shows where).\n",
                     helper_pid);
            if (write(2, msg, strlen(msg)) < 0) {
            }
            return JDK_LOST_EXIT;
        }
        put(buf, chunk, (size_t)n);
    }
}

/* thin._first_line: send the request, read the helper's first line into line (what came
 * after it stays in rest). 0: EOF or an error before a whole line. */
static int first_line(int sock, const buf_t *request, buf_t *line, buf_t *rest) {
    if (!send_all(sock, request->data, request->len)) return 0;
    line->len = 0;
    for (;;) {
        char *nl = line->len ? memchr(line->data, '\n', line->len) : NULL;
        if (nl) {
            size_t at = (size_t)(nl - line->data);
            rest->len = 0;
            put(rest, nl + 1, line->len - at - 1);
            line->len = at;
            line->data[at] = 0;
            return 1;
        }
        char chunk[4096];
        ssize_t n = recv_keep(sock, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        put(line, chunk, (size_t)n);
    }
}

/* ---- main -------------------------------------------------------------------------- */

static char **fallback_argv;
static struct sigaction sigint_before;

/* Run the Python launcher in this process: what the kernelspec runs without us. */
static int fallback(void) {
    sigaction(SIGINT, &sigint_before, NULL); /* as we got it: SIG_IGN survives exec */
    if (!fallback_argv) return 2;
    execv(fallback_argv[0], fallback_argv);
    char msg[512];
    snprintf(msg, sizeof msg, "jupyter-docker-kernel: cannot run %s: %s. Run `jupyter-docker-kernel doctor`.\n",
             fallback_argv[0], strerror(errno));
    if (write(2, msg, strlen(msg)) < 0) {
    }
    return 127;
}

/* Whether the package this binary was built for is still the one installed: after an
 * upgrade the Python launcher (the new version) serves the kernel, and `setup` or
 * `doctor --fix` builds a new binary. */
static int package_unchanged(void) {
    struct stat st;
    return stat(JDK_STAMP_PATH, &st) == 0 && (long long)st.st_size == JDK_STAMP_SIZE &&
           (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec == JDK_STAMP_MTIME_NS;
}

int main(int argc, char **argv) {
    if (argc >= 1 && strcmp(argv[0], JDK_WATCH_NAME) == 0) /* a hand-over's watcher */
        return jdk_watch_main(argc, argv);
    sigaction(SIGINT, NULL, &sigint_before);
    char *end = NULL;
    long n = argc > 1 ? strtol(argv[1], &end, 10) : -1;
    if (argc < 2 || !end || *end || n < 1 || n > argc - 2) {
        static const char usage[] =
            "usage: thin-client N PYTHON-ARGV... LAUNCHER-ARGS...\n"
            "Written into kernel.json by `jupyter-docker-kernel setup`; not run by hand.\n";
        if (write(2, usage, sizeof usage - 1) < 0) {
        }
        return 2;
    }
    fallback_argv = argv + 2;
    const char *settings, *connection, *no_helper = env_get(JDK_NO_HELPER_ENV);
    int debug;
    if (!parse_argv(argc - 2 - (int)n, argv + 2 + n, &settings, &connection, &debug) ||
        (no_helper && strcmp(no_helper, "1") == 0) || !package_unchanged())
        return fallback();
    buf_t request = {0};
    char *engine = NULL;
    const char *handover = env_get(JDK_HANDOVER_ENV);
    jdk_python = fallback_argv;
    jdk_python_count = (int)n;
    if (!request_for(&request, settings, connection, debug, !(handover && strcmp(handover, "0") == 0), &engine))
        return fallback();
    put(&request, "\n", 1);
    char *base = private_base();
    if (!base) return fallback();
    /* As thin.run: until a kernel exists, an interrupt has nothing to reach. */
    signal(SIGINT, SIG_IGN);
    char *path = socket_path(base, engine);
    buf_t line = {0}, rest = {0};
    for (int attempt = 0; attempt < 3; attempt++) {
        int sock = connect_helper(path);
        if (sock < 0) sock = spawn_helper(path, base, engine, fallback_argv, (int)n);
        if (sock < 0) return fallback(); /* no helper: the launcher runs it in-process */
        if (!first_line(sock, &request, &line, &rest) || line.len == 0) {
            close(sock); /* EOF: the helper was retiring as we connected */
            continue;
        }
        if (line.data[0] == 'A') {
            free(request.data);
            put(&rest, "", 0);
            return session(sock, &rest, line.len > 2 ? line.data + 2 : "");
        }
        close(sock);
        if (strcmp(line.data, "R retiring") != 0) break; /* refused for good */
    }
    return fallback();
}
