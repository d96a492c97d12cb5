/* The C client's relay after a hand-over (issue 17): the interface between thin_relay.c
 * (the five channels and their meters) and thin_handover.c (the loop and everything else).
 * See docs/design/issue17/c-relay.md, "Build plan". Both are #included by thin_client.c
 * (one compilation unit); nothing here is a public API. */
#ifndef JDK_THIN_RELAY_H
#define JDK_THIN_RELAY_H

#include <stdint.h>
#include <sys/epoll.h>

/* Every epoll registration's data.ptr points at a struct whose FIRST member is a
 * jdk_watch_t: the loop calls w->on_event(w, events) for each ready descriptor. */
typedef struct jdk_watch jdk_watch_t;
struct jdk_watch {
    void (*on_event)(jdk_watch_t *self, uint32_t events);
};

/* Provided by thin_handover.c: the loop's epoll descriptor, the clock, and log lines in
 * helper.LOG_FORMAT on stderr (level 'I', 'W' or 'E'). */
extern int jdk_epoll;
double jdk_now(void); /* CLOCK_MONOTONIC seconds */
void jdk_log(char level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define JDK_CHANNELS 5 /* shell, iopub, stdin, control, hb: endpoints.CHANNELS */

typedef struct jdk_relay jdk_relay_t;

/* Serve the five listeners (already listening; ownership passes to the relay) and connect
 * each accepted host connection to the kernel's socket NAMES[i] in the directory dir_fd
 * (O_PATH). The relay registers its descriptors with jdk_epoll. */
jdk_relay_t *jdk_relay_new(const int listeners[JDK_CHANNELS], int dir_fd,
                           const char *const names[JDK_CHANNELS], long long max_message,
                           long long output_budget);

/* Timers (kernel-side connect retries): the loop calls jdk_relay_tick at least by
 * jdk_relay_next_deadline() (a jdk_now() value; < 0: none). */
void jdk_relay_tick(jdk_relay_t *r, double now);
double jdk_relay_next_deadline(const jdk_relay_t *r);

/* "" until the kernel exceeded a budget or spoke an unmeterable protocol; then
 * relay.violated's text ("budget exceeded: the kernel sent more than N bytes of output in
 * all on iopub"), set once; the relay has dropped every connection (and goes on
 * accepting, as relay.py does, until closed). The loop checks it after each event. */
const char *jdk_relay_violation(const jdk_relay_t *r);

/* Counters, as relay.Relay's: raw bytes each way, output charged against the budget. */
long long jdk_relay_bytes_to_host(const jdk_relay_t *r);
long long jdk_relay_bytes_to_kernel(const jdk_relay_t *r);
long long jdk_relay_output_charged(const jdk_relay_t *r);

/* The shell chunks that named execute_request, concatenated (relay.requests joined). */
const char *jdk_relay_execute(const jdk_relay_t *r, size_t *len);

/* The end: close every relayed connection and every listener but iopub's; returns the
 * iopub listener (still listening, for finish.py's announcement) and sets *iopub_lost to
 * the number of iopub host connections closed (relay.iopub_lost's meaning). */
int jdk_relay_close(jdk_relay_t *r, int *iopub_lost);

#endif
