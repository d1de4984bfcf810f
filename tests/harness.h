/*
 * harness.h -- the kvidx test harness: one header, no dependencies.
 *
 *   int main(void) {
 *       t_init("test_api");            prints the seed (KVIDX_SEED overrides)
 *       T_RUN(test_put_get);           a test case: passes when no CHECK fails
 *       return t_done();               prints "N passed, N failed"
 *   }
 *
 * CHECK(cond) records a failure with file, line and seed and goes on;
 * REQUIRE(cond) also returns from the test case. Scratch directories live
 * under $KVIDX_TEST_DIR (default tests/tmp), one per name, emptied first.
 */
#ifndef KVIDX_HARNESS_H
#define KVIDX_HARNESS_H

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* SAN_SLOW: sanitizer builds run about 3x (ASan) to 15x (TSan) slower;
 * tests divide their larger loops by it so that each program stays at a
 * few seconds. */
#if defined(__SANITIZE_THREAD__)
#define SAN_SLOW 8
#elif defined(__SANITIZE_ADDRESS__)
#define SAN_SLOW 2
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SAN_SLOW 8
#elif __has_feature(address_sanitizer)
#define SAN_SLOW 2
#endif
#endif
#ifndef SAN_SLOW
#define SAN_SLOW 1
#endif

static int t_cases_passed, t_cases_failed, t_case_failures;
static uint64_t t_seed, t_rng;
static const char *t_prog = "test";

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            t_case_failures++;                                                \
            fprintf(stderr, "%s:%d: CHECK(%s) failed [%s seed %" PRIu64 "]\n", \
                    __FILE__, __LINE__, #cond, t_prog, t_seed);               \
        }                                                                     \
    } while (0)

#define REQUIRE(cond)                                                         \
    do {                                                                      \
        if (!(cond)) {                                                        \
            t_case_failures++;                                                \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed [%s seed %" PRIu64 "]\n", \
                    __FILE__, __LINE__, #cond, t_prog, t_seed);               \
            return;                                                           \
        }                                                                     \
    } while (0)

/* CHECK_RC(expr, want): expr must return want; prints both codes' names. */
#define CHECK_RC(expr, want)                                                  \
    do {                                                                      \
        int t_rc_ = (expr), t_want_ = (want);                                 \
        if (t_rc_ != t_want_) {                                               \
            t_case_failures++;                                                \
            fprintf(stderr, "%s:%d: %s returned %d (%s), want %d (%s) [%s seed %" PRIu64 "]\n", \
                    __FILE__, __LINE__, #expr, t_rc_, kvidx_strerror(t_rc_),  \
                    t_want_, kvidx_strerror(t_want_), t_prog, t_seed);        \
        }                                                                     \
    } while (0)

#define T_RUN(fn)                                                             \
    do {                                                                      \
        t_case_failures = 0;                                                  \
        fn();                                                                 \
        if (t_case_failures) {                                                \
            t_cases_failed++;                                                 \
            fprintf(stderr, "FAIL %s\n", #fn);                                \
        } else {                                                              \
            t_cases_passed++;                                                 \
            printf("ok   %s\n", #fn);                                         \
        }                                                                     \
        fflush(stdout);                                                       \
    } while (0)

/* splitmix64: small, fast, and every seed gives a full-period stream. */
static inline uint64_t t_rand(void) {
    uint64_t z = (t_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t t_below(uint64_t n) { return n ? t_rand() % n : 0; }

/* The splitmix64 finalizer: a stateless 64-bit mix, for values a test
 * derives from (key, version) and must recompute. */
static inline uint64_t t_mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Watchdog: t_watchdog(name, secs) arms SIGALRM; if the case is still
 * running after secs, the program prints the case and exits 3, so a
 * deadlock fails the run instead of hanging it. t_on_timeout, if set,
 * runs first (async-signal-safe code only: e.g. kill a child). */
static const char *t_case_name = "?";
static void (*t_on_timeout)(void);

static void t_alarm(int sig) {
    static const char m[] = ": timeout (deadlock or runaway) in ";
    ssize_t r;
    (void)sig;
    if (t_on_timeout) t_on_timeout();
    r = write(2, t_prog, strlen(t_prog));
    r = write(2, m, sizeof m - 1);
    r = write(2, t_case_name, strlen(t_case_name));
    r = write(2, "\n", 1);
    (void)r;
    _exit(3);
}

static inline void t_watchdog(const char *name, unsigned secs) {
    signal(SIGALRM, t_alarm);
    t_case_name = name;
    alarm(secs);
}

static inline void t_init(const char *prog) {
    const char *s = getenv("KVIDX_SEED");
    t_prog = prog;
    t_seed = s && *s ? strtoull(s, NULL, 0)
                     : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    t_rng = t_seed;
    printf("%s: seed %" PRIu64 " (set KVIDX_SEED to replay)\n", prog, t_seed);
    fflush(stdout);
}

static inline int t_done(void) {
    printf("%s: %d passed, %d failed\n", t_prog, t_cases_passed, t_cases_failed);
    return t_cases_failed ? 1 : 0;
}

/* The child process of a crash test, if any: the watchdog kills it
 * (t_on_timeout = t_kill_child) so that no child outlives the test. */
static volatile pid_t t_child;
static inline void t_kill_child(void) {
    if (t_child > 0) kill(t_child, SIGKILL);
}

/* Milliseconds on the monotonic clock. */
static inline uint64_t t_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Sleeps ms milliseconds, signals or not. */
static inline void t_sleep_ms(unsigned ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* kvidx_stat into a zeroed *st of this build's size. */
static inline int t_stat(kvidx *db, kvidx_stats *st) {
    memset(st, 0, sizeof *st);
    st->size = (uint32_t)sizeof *st;
    return kvidx_stat(db, st);
}

/* Removes path and everything under it (best effort, no symlink following
 * concerns: test directories only). */
static inline void t_rmrf(const char *path) {
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "t_rmrf: %s failed\n", path);
}

/* A fresh, non-existent path for a database named name; the parent exists.
 * Returns a static buffer per call slot (4 slots in rotation). */
static inline const char *t_dir(const char *name) {
    static char bufs[4][4096];
    static int k;
    char *p = bufs[k++ & 3];
    const char *base = getenv("KVIDX_TEST_DIR");
    if (!base || !*base) base = "tests/tmp";
    mkdir(base, 0755);
    snprintf(p, 4096, "%s/%s.%ld", base, name, (long)getpid());
    t_rmrf(p);
    return p;
}

#endif /* KVIDX_HARNESS_H */
