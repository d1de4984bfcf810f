/*
 * test_concurrency.c -- black-box threaded tests of kvidx: concurrent
 * readers and writers on one handle, read-your-writes across threads,
 * scans whose callback blocks, many threads and handles, close after a
 * stress. Uses only the public API, POSIX and pthreads.
 *
 *   cc -std=c99 -D_GNU_SOURCE -Wall -Wextra -Wpedantic -Werror -O1 -g -I. \
 *      tests/test_concurrency.c kvidx.c -o test_concurrency -lpthread
 *
 * Every value the tests write encodes (key, version) and a checksum, so a
 * reader can tell a torn value, a value of another key ("foreign") and a
 * value older than one whose put had returned before the read started
 * ("stale"). Threads record failures in a global counter (printing the
 * first few); the main thread CHECKs it.
 *
 * Bounded time: every phase has a wall-clock budget and an op budget, so
 * a sanitizer build (10x slower) does less work in about the same time;
 * checks that need a given amount of work (a buffer section flushed) are
 * made only when the counts show it was done. A watchdog turns a deadlock
 * into a failure. KVIDX_SEED replays the choices (not the interleavings);
 * KVIDX_TEST_DIR moves the scratch directories; KVIDX_TEST_SCALE (default
 * 1) divides the op budgets and the minimum op counts.
 */
#include "../kvidx.h"
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>

static uint64_t g_scale = 1;

/* A deadlock fails the run instead of hanging it (harness watchdog);
 * generous: sanitizer builds are slow, only a hang hits this. */
static void guard(const char *name) { t_watchdog(name, 120); }

/* ---- failures recorded by any thread ------------------------------------ */

static uint64_t g_fails;   /* atomic: failures in the current case */
static uint64_t g_printed; /* atomic: failure lines printed in the current case */

static void fails_reset(void) {
    __atomic_store_n(&g_fails, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_printed, 0, __ATOMIC_SEQ_CST);
}

static uint64_t fails(void) { return __atomic_load_n(&g_fails, __ATOMIC_SEQ_CST); }

static void tfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void tfail(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    __atomic_fetch_add(&g_fails, 1, __ATOMIC_SEQ_CST);
    if (__atomic_fetch_add(&g_printed, 1, __ATOMIC_SEQ_CST) >= 20) return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "  %s: %s [seed %" PRIu64 "]\n", t_case_name, buf, t_seed);
}

/* ---- time, randomness ---------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A thread's own generator (t_rand is the main thread's). */
typedef struct {
    uint64_t s;
} rng;

static uint64_t rnext(rng *r) { return t_mix64(r->s += 0x632BE59BD9B4E019ull); }
static uint64_t rbelow(rng *r, uint64_t n) { return n ? rnext(r) % n : 0; }

/* ---- values: key, version, deterministic body, checksum ------------------ */

#define VMIN 24 /* key 8 + version 8 + hash 8 */

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return t_mix64(h);
}

/* Writes the value of (key, ver) into b; returns its length, VMIN..256. */
static size_t enc_value(uint8_t *b, uint64_t key, uint64_t ver) {
    uint64_t seed = t_mix64(key * 0x100000001B3ull ^ t_mix64(ver)), x = 0;
    size_t len = VMIN + (size_t)(seed % (KVIDX_VALUE_MAX - VMIN + 1)), i;
    put64(b, key);
    put64(b + 8, ver);
    for (i = 16; i < len - 8; i++) {
        if (((i - 16) & 7) == 0) x = t_mix64(seed + i);
        b[i] = (uint8_t)(x >> (8 * ((i - 16) & 7)));
    }
    put64(b + len - 8, hash_bytes(b, len - 8));
    return len;
}

enum { V_OK, V_TORN, V_FOREIGN };
static const char *const v_name[] = {"ok", "torn", "foreign"};

/* Checks that b (len bytes) is a whole value of key; *ver gets its version. */
static int val_check(uint64_t key, const void *val, size_t len, uint64_t *ver) {
    const uint8_t *b = val;
    uint8_t exp[KVIDX_VALUE_MAX];
    if (len < VMIN || len > KVIDX_VALUE_MAX || !b) return V_TORN;
    if (get64(b + len - 8) != hash_bytes(b, len - 8)) return V_TORN;
    if (get64(b) != key) return V_FOREIGN;
    *ver = get64(b + 8);
    if (*ver == 0 || enc_value(exp, key, *ver) != len || memcmp(exp, b, len) != 0) return V_TORN;
    return V_OK;
}

static int put_ver(kvidx *db, uint64_t key, uint64_t ver) {
    uint8_t b[KVIDX_VALUE_MAX];
    size_t len = enc_value(b, key, ver);
    return kvidx_put(db, key, b, len);
}

/* Quiescent check: key holds exactly version ver (0: absent). 1 if so. */
static int has_ver(kvidx *db, uint64_t key, uint64_t ver) {
    uint8_t b[KVIDX_VALUE_MAX];
    size_t len = 9999;
    uint64_t got = 0;
    int rc = kvidx_get(db, key, b, sizeof b, &len), v;
    if (!ver) {
        if (rc == KVIDX_NOTFOUND && len == 0) return 1;
        tfail("get %" PRIu64 ": rc %d len %zu, want NOTFOUND", key, rc, len);
        return 0;
    }
    if (rc != KVIDX_OK) {
        tfail("get %" PRIu64 ": rc %d (%s), want version %" PRIu64, key, rc, kvidx_strerror(rc),
              ver);
        return 0;
    }
    v = val_check(key, b, len, &got);
    if (v != V_OK || got != ver) {
        tfail("get %" PRIu64 ": %s value, version %" PRIu64 " want %" PRIu64, key, v_name[v], got,
              ver);
        return 0;
    }
    return 1;
}

/* Background compaction off: these tests count slots and flushes
 * (test_compact runs readers and writers through compactions). */
static int g_compact_pct = 0;

static kvidx *xopen(const char *dir, uint32_t shards) {
    kvidx_options o;
    kvidx *db = NULL;
    int rc;
    kvidx_options_init(&o);
    o.shards = shards;
    o.compact_pct = (uint32_t)g_compact_pct;
    rc = kvidx_open(dir, &o, &db);
    if (rc != KVIDX_OK) {
        tfail("open %s (shards %u): %d %s", dir, shards, rc, kvidx_strerror(rc));
        return NULL;
    }
    return db;
}

static int xcreate(pthread_t *t, void *(*fn)(void *), void *arg) {
    int rc = pthread_create(t, NULL, fn, arg);
    if (rc) tfail("pthread_create: %d", rc);
    return rc == 0;
}

/* ======================================================================
 * The stress: writers owning disjoint keys, readers checking every value
 * against what was acknowledged before the read started.
 * ====================================================================== */

#define NWRITERS 2
#define NREADERS 3

typedef struct {
    kvidx *db;
    uint64_t nkeys;
    /* per key, atomics: */
    uint64_t *acked;   /* (version << 1) | deleted of the last op that returned; 0: none */
    uint64_t *started; /* version of the last op started (stored before the call) */
    uint64_t *maxdel;  /* version of the last delete started (stored before the call) */
    /* per key, owned by its writer: */
    uint64_t *ver;
    uint8_t *present;
    double t0, deadline;
    double pace;         /* seconds the put budget is spread over, at least */
    uint64_t put_budget; /* per writer */
    int stop;            /* atomic: readers leave */
    int writers_left;    /* atomic */
    /* One shard only: keys [0, ncold) are "cold", written only by the
     * puts right after a 65536-slot section boundary, once per section,
     * never deleted, and read all the time: when a full section is
     * flushed, readers are copying values from its first slots, which the
     * next puts overwrite. 0: no cold keys. */
    uint64_t ncold;
    uint64_t tickets; /* atomic: puts begun, prefill included = slot order */
    /* atomic counters */
    uint64_t puts, dels, gets, get_hits, scans, scan_keys, cold_puts;
    uint64_t hit_time; /* writers that stopped on the time budget */
} stress;

#define SECTION 65536 /* value slots per buffer section */
#define COLD_SLOTS 32 /* puts after a boundary that go to cold keys */

static int cold_ticket(const stress *st, uint64_t t) {
    return st->ncold && t % SECTION < COLD_SLOTS;
}

typedef struct {
    stress *st;
    unsigned id;
    uint64_t seed;
} worker;

static void *stress_writer(void *p) {
    worker *w = p;
    stress *st = w->st;
    rng r = {w->seed};
    uint64_t puts = 0, dels = 0, n = 0, half = (st->nkeys - st->ncold) / NWRITERS, cold = 0;
    for (;; n++) {
        uint64_t k, v;
        int rc, del;
        if (puts >= st->put_budget) break;
        if ((n & 63) == 0) {
            double t = now_s();
            if (t > st->deadline) {
                __atomic_fetch_add(&st->hit_time, 1, __ATOMIC_RELAXED);
                break;
            }
            /* ahead of the pace: let the readers run (so that a fast
             * machine still overlaps reads and writes for a while) */
            while ((double)puts > (double)st->put_budget * (t - st->t0) / st->pace + 256 &&
                   t < st->deadline) {
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
                t = now_s();
            }
        }
        k = st->ncold + rbelow(&r, half) * NWRITERS + w->id;
        del = st->present[k] && rbelow(&r, 16) == 0;
        if (!del && cold_ticket(st, __atomic_fetch_add(&st->tickets, 1, __ATOMIC_RELAXED))) {
            k = cold++ % (st->ncold / NWRITERS) * NWRITERS + w->id;
            __atomic_fetch_add(&st->cold_puts, 1, __ATOMIC_RELAXED);
        }
        v = ++st->ver[k];
        __atomic_store_n(&st->started[k], v, __ATOMIC_RELEASE);
        if (del) {
            __atomic_store_n(&st->maxdel[k], v, __ATOMIC_RELEASE);
            rc = kvidx_delete(st->db, k);
            if (rc != KVIDX_OK) {
                tfail("writer %u: delete %" PRIu64 " (present): %d %s", w->id, k, rc,
                      kvidx_strerror(rc));
                break;
            }
            st->present[k] = 0;
            __atomic_store_n(&st->acked[k], v << 1 | 1, __ATOMIC_RELEASE);
            dels++;
        } else {
            rc = put_ver(st->db, k, v);
            if (rc != KVIDX_OK) {
                tfail("writer %u: put %" PRIu64 ": %d %s", w->id, k, rc, kvidx_strerror(rc));
                break;
            }
            st->present[k] = 1;
            __atomic_store_n(&st->acked[k], v << 1, __ATOMIC_RELEASE);
            puts++;
        }
    }
    __atomic_fetch_add(&st->puts, puts, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->dels, dels, __ATOMIC_RELAXED);
    if (__atomic_sub_fetch(&st->writers_left, 1, __ATOMIC_SEQ_CST) == 0)
        __atomic_store_n(&st->stop, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* One get of key k, checked against the state acknowledged before it. */
static void stress_get(stress *st, uint64_t k, rng *r, unsigned id) {
    uint8_t b[KVIDX_VALUE_MAX + 8];
    size_t len = 9999, cap = rbelow(r, 32) == 0 ? 30 : sizeof b;
    uint64_t a, av, got = 0;
    int rc, v;
    if (k >= st->nkeys) { /* never written */
        rc = kvidx_get(st->db, k, b, cap, &len);
        if (rc != KVIDX_NOTFOUND || len != 0)
            tfail("reader %u: get %" PRIu64 " (never written): rc %d len %zu", id, k, rc, len);
        return;
    }
    a = __atomic_load_n(&st->acked[k], __ATOMIC_ACQUIRE), av = a >> 1;
    rc = kvidx_get(st->db, k, b, cap, &len);
    if (rc == KVIDX_OK) {
        uint64_t hi = __atomic_load_n(&st->started[k], __ATOMIC_ACQUIRE);
        __atomic_fetch_add(&st->get_hits, 1, __ATOMIC_RELAXED);
        v = val_check(k, b, len, &got);
        if (v != V_OK)
            tfail("reader %u: get %" PRIu64 ": %s value (len %zu)", id, k, v_name[v], len);
        else if (got < av || (got == av && (a & 1)))
            tfail("reader %u: get %" PRIu64 ": stale after ack: version %" PRIu64
                  ", acked %" PRIu64 "%s", id, k, got, av, a & 1 ? " (delete)" : "");
        else if (got > hi)
            tfail("reader %u: get %" PRIu64 ": version %" PRIu64 " from the future (started %" PRIu64
                  ")", id, k, got, hi);
    } else if (rc == KVIDX_NOTFOUND) {
        uint64_t d = __atomic_load_n(&st->maxdel[k], __ATOMIC_ACQUIRE);
        if (len != 0) tfail("reader %u: get %" PRIu64 ": NOTFOUND with len %zu", id, k, len);
        if (a != 0 && !(a & 1) && d <= av)
            tfail("reader %u: get %" PRIu64 ": NOTFOUND (stale after ack): acked put %" PRIu64
                  ", last delete started %" PRIu64, id, k, av, d);
    } else if (rc == KVIDX_ETOOBIG && cap < KVIDX_VALUE_MAX) {
        if (len <= cap || len > KVIDX_VALUE_MAX)
            tfail("reader %u: get %" PRIu64 " cap %zu: ETOOBIG with len %zu", id, k, cap, len);
    } else {
        tfail("reader %u: get %" PRIu64 ": rc %d (%s)", id, k, rc, kvidx_strerror(rc));
    }
}

typedef struct {
    stress *st;
    unsigned id;
    uint64_t from, to;   /* the scan's range */
    uint64_t lo, hi;     /* its part of [0, nkeys), hi exclusive */
    uint64_t *snap;      /* acked[k] before the scan, k in [lo, hi) */
    uint8_t *seen;
    uint64_t n, stop_after, prev;
} sscan;

static int stress_scan_fn(void *ud, uint64_t key, const void *val, size_t len) {
    sscan *c = ud;
    stress *st = c->st;
    uint64_t got = 0, a, hi;
    int v;
    if (key < c->from || key > c->to)
        tfail("reader %u: scan [%" PRIu64 ",%" PRIu64 "] visited %" PRIu64 " out of range", c->id,
              c->from, c->to, key);
    if (c->n && key <= c->prev)
        tfail("reader %u: scan: key %" PRIu64 " after %" PRIu64 " (not ascending)", c->id, key,
              c->prev);
    c->prev = key;
    c->n++;
    if (key >= st->nkeys) {
        tfail("reader %u: scan visited key %" PRIu64 ", never written", c->id, key);
        return 0;
    }
    v = val_check(key, val, len, &got);
    if (v != V_OK) {
        tfail("reader %u: scan: key %" PRIu64 ": %s value (len %zu)", c->id, key, v_name[v], len);
    } else if (key >= c->lo && key < c->hi) {
        a = c->snap[key - c->lo];
        hi = __atomic_load_n(&st->started[key], __ATOMIC_ACQUIRE);
        c->seen[key - c->lo] = 1;
        if (got < (a >> 1) || (got == (a >> 1) && (a & 1)))
            tfail("reader %u: scan: key %" PRIu64 ": stale after ack: version %" PRIu64
                  ", acked %" PRIu64, c->id, key, got, a >> 1);
        else if (got > hi)
            tfail("reader %u: scan: key %" PRIu64 ": version %" PRIu64 " from the future",
                  c->id, key, got);
    }
    return c->stop_after && c->n >= c->stop_after;
}

static void stress_scan(stress *st, rng *r, unsigned id, uint64_t *snap, uint8_t *seen) {
    sscan c;
    uint64_t k, pick = rbelow(r, 16);
    int rc;
    memset(&c, 0, sizeof c);
    c.st = st, c.id = id, c.snap = snap, c.seen = seen;
    if (pick == 0) {
        c.from = 0, c.to = UINT64_MAX;
    } else if (pick == 1) {
        c.from = st->nkeys + rbelow(r, 100), c.to = c.from + rbelow(r, 1000);
    } else {
        c.from = rbelow(r, st->nkeys + 32);
        c.to = c.from + rbelow(r, 300);
    }
    if (rbelow(r, 8) == 0) c.stop_after = 1 + rbelow(r, 20);
    c.lo = c.from < st->nkeys ? c.from : st->nkeys;
    c.hi = c.to < st->nkeys ? c.to + 1 : st->nkeys;
    for (k = c.lo; k < c.hi; k++) {
        snap[k - c.lo] = __atomic_load_n(&st->acked[k], __ATOMIC_ACQUIRE);
        seen[k - c.lo] = 0;
    }
    rc = kvidx_scan(st->db, c.from, c.to, stress_scan_fn, &c);
    if (rc != KVIDX_OK) tfail("reader %u: scan: rc %d (%s)", id, rc, kvidx_strerror(rc));
    if (c.stop_after && c.n > c.stop_after)
        tfail("reader %u: scan went on after its callback stopped it (%" PRIu64 " > %" PRIu64 ")",
              id, c.n, c.stop_after);
    if (!c.stop_after && rc == KVIDX_OK)
        for (k = c.lo; k < c.hi; k++) {
            uint64_t a = snap[k - c.lo], d;
            if (!a || (a & 1) || seen[k - c.lo]) continue;
            /* live at the start; no delete started since: live all along */
            d = __atomic_load_n(&st->maxdel[k], __ATOMIC_ACQUIRE);
            if (d < (a >> 1))
                tfail("reader %u: scan [%" PRIu64 ",%" PRIu64 "] missed key %" PRIu64
                      " (live all along, version >= %" PRIu64 ")", id, c.from, c.to, k, a >> 1);
        }
    __atomic_fetch_add(&st->scans, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->scan_keys, c.n, __ATOMIC_RELAXED);
}

/* Readers 0..NREADERS-2 mostly get; the last one mostly scans. */
static void *stress_reader(void *p) {
    worker *w = p;
    stress *st = w->st;
    rng r = {w->seed};
    uint64_t gets = 0, n;
    uint64_t *snap = malloc(st->nkeys * sizeof *snap);
    uint8_t *seen = malloc(st->nkeys);
    int scanner = w->id == NREADERS - 1;
    if (!snap || !seen) {
        tfail("reader %u: out of memory", w->id);
        free(snap);
        free(seen);
        return NULL;
    }
    for (n = 0; !__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE); n++) {
        if (scanner ? rbelow(&r, 4) != 0 : rbelow(&r, 64) == 0) {
            stress_scan(st, &r, w->id, snap, seen);
        } else {
            /* reader 1 mostly reads the cold keys (see stress.ncold) */
            uint64_t k = w->id == 1 && st->ncold && rbelow(&r, 4) ? rbelow(&r, st->ncold)
                                                                 : rbelow(&r, st->nkeys + 8);
            stress_get(st, k, &r, w->id);
            gets++;
        }
        /* Readers pause now and then, reader 0 rarely, the others often:
         * with more threads than CPUs, a writer waiting for readers to
         * leave yields its CPU to a reader, and with every reader spinning
         * the puts on one shard of a 2-CPU machine drop ~100x (to 10-30k
         * a second), too few to fill a buffer section in the time budget. */
        if ((n & (w->id == 0 ? 255 : 15)) == 0) {
            struct timespec ts = {0, 1000};
            nanosleep(&ts, NULL);
        }
    }
    __atomic_fetch_add(&st->gets, gets, __ATOMIC_RELAXED);
    free(snap);
    free(seen);
    return NULL;
}

static int stress_init(stress *st, kvidx *db, uint64_t nkeys) {
    memset(st, 0, sizeof *st);
    st->db = db;
    st->nkeys = nkeys;
    st->acked = calloc(nkeys, sizeof *st->acked);
    st->started = calloc(nkeys, sizeof *st->started);
    st->maxdel = calloc(nkeys, sizeof *st->maxdel);
    st->ver = calloc(nkeys, sizeof *st->ver);
    st->present = calloc(nkeys, 1);
    return st->acked && st->started && st->maxdel && st->ver && st->present;
}

static void stress_free(stress *st) {
    free(st->acked);
    free(st->started);
    free(st->maxdel);
    free(st->ver);
    free(st->present);
}

/* Runs NWRITERS writers and NREADERS readers until the writers are done:
 * put_budget puts each, spread over pace seconds at least, or secs
 * seconds have passed. Returns when all have joined. */
static void stress_run(stress *st, double pace, double secs, uint64_t put_budget) {
    pthread_t wt[NWRITERS], rt[NREADERS];
    worker ww[NWRITERS], rw[NREADERS];
    int wok[NWRITERS], rok[NREADERS];
    unsigned i;
    st->t0 = now_s();
    st->deadline = st->t0 + secs;
    st->pace = pace;
    st->put_budget = put_budget;
    st->writers_left = NWRITERS;
    for (i = 0; i < NREADERS; i++) {
        rw[i].st = st, rw[i].id = i, rw[i].seed = t_rand();
        rok[i] = xcreate(&rt[i], stress_reader, &rw[i]);
    }
    for (i = 0; i < NWRITERS; i++) {
        ww[i].st = st, ww[i].id = i, ww[i].seed = t_rand();
        wok[i] = xcreate(&wt[i], stress_writer, &ww[i]);
        if (!wok[i]) __atomic_sub_fetch(&st->writers_left, 1, __ATOMIC_SEQ_CST);
    }
    for (i = 0; i < NWRITERS; i++)
        if (wok[i]) pthread_join(wt[i], NULL);
    __atomic_store_n(&st->stop, 1, __ATOMIC_RELEASE);
    for (i = 0; i < NREADERS; i++)
        if (rok[i]) pthread_join(rt[i], NULL);
}

/* Before the threads: n puts over the lower half of the keys in turn
 * (the cold ones at section boundaries), acknowledged like a writer's. Brings the buffer sections near full
 * cheaply, so that even a slow (sanitizer) build flushes them while
 * readers run; the upper half stays absent, so the maps still grow under
 * the readers. */
static int stress_prefill(stress *st, uint64_t n) {
    uint64_t i, cold = 0;
    for (i = 0; i < n; i++) {
        uint64_t t = __atomic_fetch_add(&st->tickets, 1, __ATOMIC_RELAXED);
        uint64_t k = cold_ticket(st, t) ? cold++ % st->ncold
                                        : st->ncold + i % (st->nkeys / 2 - st->ncold);
        uint64_t v = ++st->ver[k];
        int rc = put_ver(st->db, k, v);
        if (rc != KVIDX_OK) {
            tfail("prefill: put %" PRIu64 ": %d %s", k, rc, kvidx_strerror(rc));
            return 0;
        }
        st->present[k] = 1;
        st->started[k] = v;
        st->acked[k] = v << 1;
    }
    return 1;
}

/* After the threads: every key holds exactly its last acknowledged state. */
static void stress_verify_quiet(stress *st, kvidx *db) {
    uint64_t k, live = 0, bad = 0;
    kvidx_stats s;
    for (k = 0; k < st->nkeys && bad < 5; k++) {
        uint64_t a = st->acked[k];
        if (a && !(a & 1)) live++;
        if (!has_ver(db, k, (a & 1) ? 0 : a >> 1)) bad++;
    }
    CHECK(bad == 0);
    CHECK_RC(t_stat(db, &s), KVIDX_OK);
    if (bad == 0) CHECK(s.keys == live);
}

/* One stress on a new database. prefill: puts done first (see
 * stress_prefill); when they and the threads' puts pass 65536 per shard
 * for sure, a buffer section was flushed while readers ran. */
static void stress_case(uint32_t shards, uint64_t nkeys, double pace, double secs,
                        uint64_t puts_total, uint64_t prefill) {
    const char *dir = t_dir(shards == 1 ? "conc_stress1" : "conc_stress");
    kvidx *db = xopen(dir, shards);
    stress st;
    kvidx_stats s;
    double t0;
    uint64_t min_ops = 2000 / g_scale;
    REQUIRE(db != NULL);
    if (!stress_init(&st, db, nkeys)) {
        CHECK(!"out of memory");
        stress_free(&st);
        kvidx_close(db);
        return;
    }
    if (shards == 1) st.ncold = 64;
    if (!stress_prefill(&st, prefill)) {
        CHECK(fails() == 0);
        stress_free(&st);
        kvidx_close(db);
        return;
    }
    t0 = now_s();
    stress_run(&st, pace, secs, puts_total / g_scale / NWRITERS);
    t0 = now_s() - t0;
    CHECK_RC(t_stat(db, &s), KVIDX_OK);
    printf("  shards %u: %" PRIu64 " puts first, then %.2f s%s: %" PRIu64 " puts, %" PRIu64
           " deletes, %" PRIu64 " gets (%" PRIu64 " hits), %" PRIu64 " scans (%" PRIu64
           " keys); %" PRIu64 " flushes, %" PRIu64 " cold puts\n", shards, prefill, t0,
           st.hit_time ? " (time budget)" : "", st.puts, st.dels, st.gets, st.get_hits,
           st.scans, st.scan_keys, s.flushes, st.cold_puts);
    CHECK(fails() == 0);
    CHECK(st.puts >= min_ops);
    CHECK(st.dels >= min_ops / 32);
    CHECK(st.gets >= min_ops);
    CHECK(st.get_hits >= min_ops / 2);
    CHECK(st.scans >= 10);
    CHECK(st.scan_keys >= 100);
    CHECK(s.puts == prefill + st.puts && s.deletes == st.dels);
    /* every put takes a value slot: past shards * 65536 puts, some shard
     * filled its section (a fresh database starts at slot 0) */
    if (prefill + st.puts > (uint64_t)shards * 65536) CHECK(s.flushes >= 1);
    /* and a plain build (KVIDX_TEST_SCALE unset) always gets that far
     * with one shard */
    if (g_scale == 1 && shards == 1) CHECK(s.flushes >= 1);
    /* well over 65536 puts per shard on average: every shard flushed
     * (the keys spread evenly over the shards) */
    if ((prefill + st.puts) / shards >= 80000) CHECK(s.flushes >= shards);
    if (st.hit_time && g_scale == 1) printf("  warning: time budget hit before the put budget\n");
    if (s.flushes == 0) printf("  (no buffer flush within the time budget)\n");
    stress_verify_quiet(&st, db);
    CHECK(fails() == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    stress_free(&st);
    t_rmrf(dir);
}

static void test_stress_readers_writers(void) {
    guard(__func__);
    fails_reset();
    /* 4 shards: 56000 puts each first, then the threads' puts flush them
     * all (in a plain build; about 40000 more are needed per shard) */
    stress_case(4, 2048, 1.0, 1.6, 160000, 4 * 56000);
    /* one shard: both writers contend on it. 61440 puts first, so that the
     * threads' first 4096 puts fill the 65536-slot buffer section even in
     * a sanitizer build; their 150k puts (plain build) fill two more. All
     * three are flushed while readers copy values out of the buffer. */
    stress_case(1, 2048, 1.2, 2.5, 150000, 61440);
}

/* ======================================================================
 * Read your writes across threads: a ping-pong where each round one
 * thread writes and hands the round to the other, which reads at once.
 * ====================================================================== */

#define RYW_KEYS 4096
#define RYW_NOISE_BASE (1ull << 40)

typedef struct {
    kvidx *db;
    uint64_t turn;  /* atomic: the round whose write is done and may be read */
    int stop;       /* atomic */
    double deadline;
    uint64_t rounds_max;
    uint64_t seed;
    uint64_t ver[RYW_KEYS]; /* handed over with turn */
    uint8_t present[RYW_KEYS];
    uint64_t rounds_done, scans_checked, dels; /* atomic */
    int noise_stop;
    uint64_t noise_ops;
} ryw;

typedef struct {
    ryw *x;
    unsigned id;
} ryw_arg;

/* What round r does: its key (an index into the model; the key itself is
 * spread over the key space and so over the shards) and its op. */
static size_t ryw_idx(const ryw *x, uint64_t r) {
    return (size_t)(t_mix64(x->seed ^ r * 0x9E3779B97F4A7C15ull) % RYW_KEYS);
}
static uint64_t ryw_keyof(size_t i) { return (uint64_t)i * 7919 % 1000003; }
static int ryw_is_del(const ryw *x, uint64_t r) { return t_mix64(x->seed + r) % 8 == 0; }
static int ryw_by_scan(const ryw *x, uint64_t r) { return t_mix64(x->seed - r) % 8 == 0; }
typedef struct {
    uint64_t key, n, ver;
    int v;
} one_scan;

static int one_scan_fn(void *ud, uint64_t key, const void *val, size_t len) {
    one_scan *o = ud;
    o->n++;
    o->v = key == o->key ? val_check(key, val, len, &o->ver) : V_FOREIGN;
    return 0;
}

/* Reads round r's key (just handed over) and checks it holds exactly what
 * the other thread wrote. */
static void ryw_check(ryw *x, uint64_t r, unsigned id) {
    size_t i = ryw_idx(x, r);
    uint64_t k = ryw_keyof(i);
    uint64_t want = x->present[i] ? x->ver[i] : 0;
    if (ryw_by_scan(x, r)) {
        one_scan o;
        int rc;
        memset(&o, 0, sizeof o);
        o.key = k;
        rc = kvidx_scan(x->db, k, k, one_scan_fn, &o);
        if (rc != KVIDX_OK || o.n != (want ? 1u : 0u) || (want && (o.v != V_OK || o.ver != want)))
            tfail("thread %u round %" PRIu64 ": scan [%" PRIu64 "]: rc %d, %" PRIu64
                  " keys, %s, version %" PRIu64 "; want version %" PRIu64 " (0: absent)",
                  id, r, k, rc, o.n, v_name[o.v], o.ver, want);
        __atomic_fetch_add(&x->scans_checked, 1, __ATOMIC_RELAXED);
    } else {
        uint8_t b[KVIDX_VALUE_MAX];
        size_t len = 9999;
        uint64_t got = 0;
        int rc = kvidx_get(x->db, k, b, sizeof b, &len), v = V_OK;
        if (want == 0 ? rc != KVIDX_NOTFOUND
                      : rc != KVIDX_OK || (v = val_check(k, b, len, &got)) != V_OK || got != want)
            tfail("thread %u round %" PRIu64 ": get %" PRIu64 ": rc %d, %s, version %" PRIu64
                  "; want version %" PRIu64 " (0: absent)", id, r, k, rc, v_name[v], got, want);
    }
}

/* Writes round r: a put of a new version, or a delete. */
static int ryw_write(ryw *x, uint64_t r, unsigned id) {
    size_t i = ryw_idx(x, r);
    uint64_t k = ryw_keyof(i);
    int rc;
    if (x->present[i] && ryw_is_del(x, r)) {
        rc = kvidx_delete(x->db, k);
        x->present[i] = 0;
        __atomic_fetch_add(&x->dels, 1, __ATOMIC_RELAXED);
    } else {
        x->ver[i] = r + 1;
        rc = put_ver(x->db, k, r + 1);
        x->present[i] = 1;
    }
    if (rc != KVIDX_OK) tfail("thread %u round %" PRIu64 ": write %" PRIu64 ": %d", id, r, k, rc);
    return rc == KVIDX_OK;
}

/* Waits until turn reaches want; 0 when told to stop or stuck. */
static int ryw_wait(ryw *x, uint64_t want, unsigned id) {
    unsigned spins = 0;
    double limit = 0;
    while (__atomic_load_n(&x->turn, __ATOMIC_ACQUIRE) < want) {
        if (__atomic_load_n(&x->stop, __ATOMIC_ACQUIRE)) return 0;
        if (++spins >= 32) {
            sched_yield();
            if ((spins & 1023) == 0) {
                double t = now_s();
                if (!limit) limit = t + 20;
                else if (t > limit) {
                    tfail("thread %u: hand-off of round %" PRIu64 " stuck", id, want - 1);
                    __atomic_store_n(&x->stop, 1, __ATOMIC_RELEASE);
                    return 0;
                }
            }
        }
    }
    return 1;
}

/* Thread id writes the rounds r with r % 2 == id, reads the others. */
static void *ryw_thread(void *p) {
    ryw_arg *a = p;
    ryw *x = a->x;
    uint64_t r = a->id;
    if (a->id == 1 && !ryw_wait(x, 1, a->id)) return NULL;
    for (;; r += 2) {
        if (r > 0) ryw_check(x, r - 1, a->id); /* the other's write, handed over just now */
        if (r >= x->rounds_max || ((r & 63) < 2 && now_s() > x->deadline) ||
            __atomic_load_n(&x->stop, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&x->rounds_done, r, __ATOMIC_RELAXED);
            __atomic_store_n(&x->stop, 1, __ATOMIC_RELEASE);
            break;
        }
        if (!ryw_write(x, r, a->id)) {
            __atomic_store_n(&x->stop, 1, __ATOMIC_RELEASE);
            break;
        }
        __atomic_store_n(&x->turn, r + 1, __ATOMIC_RELEASE); /* hand over */
        if (!ryw_wait(x, r + 2, a->id)) break;
    }
    return NULL;
}

/* Keeps the shards' writers busy on other keys meanwhile. */
static void *ryw_noise(void *p) {
    ryw *x = p;
    rng r = {x->seed ^ 0xABCDEFull};
    uint64_t n = 0;
    while (!__atomic_load_n(&x->noise_stop, __ATOMIC_ACQUIRE)) {
        uint64_t k = RYW_NOISE_BASE + rbelow(&r, 4096);
        int rc = rbelow(&r, 8) ? put_ver(x->db, k, ++n) : kvidx_delete(x->db, k);
        if (rc != KVIDX_OK && rc != KVIDX_NOTFOUND) {
            tfail("noise writer: %" PRIu64 ": %d", k, rc);
            break;
        }
        if ((n & 7) == 0) sched_yield();
    }
    __atomic_store_n(&x->noise_ops, n, __ATOMIC_RELAXED);
    return NULL;
}

static void test_read_your_writes_across_threads(void) {
    const char *dir = t_dir("conc_ryw");
    kvidx *db;
    ryw *x = calloc(1, sizeof *x);
    pthread_t t[2], nt;
    ryw_arg a[2];
    int ok[2], nok;
    unsigned i;
    double t0;
    guard(__func__);
    fails_reset();
    REQUIRE(x != NULL);
    db = xopen(dir, 8);
    if (!db) {
        free(x);
        REQUIRE(db != NULL);
    }
    x->db = db;
    x->seed = t_rand();
    x->rounds_max = 100000 / g_scale;
    t0 = now_s();
    x->deadline = t0 + 1.5;
    nok = xcreate(&nt, ryw_noise, x);
    for (i = 0; i < 2; i++) {
        a[i].x = x, a[i].id = i;
        ok[i] = xcreate(&t[i], ryw_thread, &a[i]);
    }
    if (!ok[0] || !ok[1]) __atomic_store_n(&x->stop, 1, __ATOMIC_RELEASE);
    for (i = 0; i < 2; i++)
        if (ok[i]) pthread_join(t[i], NULL);
    __atomic_store_n(&x->noise_stop, 1, __ATOMIC_RELEASE);
    if (nok) pthread_join(nt, NULL);
    t0 = now_s() - t0;
    printf("  %.2f s: %" PRIu64 " rounds (%" PRIu64 " deletes, %" PRIu64
           " checked by scan), %" PRIu64 " noise writes\n",
           t0, x->rounds_done, x->dels, x->scans_checked, x->noise_ops);
    CHECK(fails() == 0);
    /* A progress floor, not a speed claim: a stuck or starved thread does
     * a handful of rounds; a slow machine (TSan on 2 shared CPUs: 832 in
     * 1.5 s) still does hundreds. */
    CHECK(x->rounds_done >= 200 / g_scale);
    CHECK(x->dels >= 1 && x->scans_checked >= 1);
    /* quiescent: the model is the store */
    for (i = 0; i < RYW_KEYS && fails() == 0; i++)
        has_ver(db, ryw_keyof(i), x->present[i] ? x->ver[i] : 0);
    CHECK(fails() == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(x);
    t_rmrf(dir);
}

/* ======================================================================
 * A scan whose callback blocks must not block writers or readers.
 * ====================================================================== */

#define SS_KEYS 4000
#define SS_NEW 500
#define SS_CB_BASE (1ull << 50)

typedef struct {
    kvidx *db;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int in_cb;     /* under mu: the callback is blocked on its first key */
    int released;  /* under mu */
    int timed_out; /* under mu: the callback gave up waiting */
    uint64_t first, prev, n, bad, cb_writes;
    uint8_t first_val[KVIDX_VALUE_MAX];
    size_t first_len;
    const void *first_ptr;
    uint8_t seen[SS_KEYS];
    int rc;
} slow;

static int slow_fn(void *ud, uint64_t key, const void *val, size_t len) {
    slow *s = ud;
    uint64_t ver = 0;
    int v;
    if (s->n == 0) {
        struct timespec ts;
        s->first = key;
        s->first_len = len;
        s->first_ptr = val;
        if (len <= KVIDX_VALUE_MAX) memcpy(s->first_val, val, len);
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 10; /* safety: never hang the test */
        pthread_mutex_lock(&s->mu);
        s->in_cb = 1;
        pthread_cond_broadcast(&s->cv);
        while (!s->released && !s->timed_out)
            if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0 && !s->released)
                s->timed_out = 1;
        pthread_mutex_unlock(&s->mu);
        /* the value stays valid for the whole call, though the key was
         * overwritten many times meanwhile */
        if (len != s->first_len || memcmp(val, s->first_val, len) != 0) {
            s->bad++;
            tfail("slow scan: first value changed under the blocked callback");
        }
    } else if (key <= s->prev) {
        s->bad++;
        tfail("slow scan: key %" PRIu64 " after %" PRIu64 " (not ascending)", key, s->prev);
    }
    s->prev = key;
    s->n++;
    v = val_check(key, val, len, &ver);
    if (v != V_OK) {
        s->bad++;
        tfail("slow scan: key %" PRIu64 ": %s value", key, v_name[v]);
    }
    if (key < SS_KEYS) s->seen[key] = 1;
    /* the callback may write to the same handle: a key ahead of the cursor
     * (not after a timeout: a library that blocks writers during callbacks
     * would deadlock here instead of failing the checks) */
    if (s->n % 256 == 0 && !s->timed_out) {
        uint64_t k = SS_CB_BASE + s->n;
        int rc = put_ver(s->db, k, s->n);
        if (rc != KVIDX_OK || !has_ver(s->db, k, s->n)) {
            s->bad++;
            tfail("slow scan: put %" PRIu64 " from the callback: %d", k, rc);
        }
        s->cb_writes++;
    }
    return 0;
}

static void *slow_thread(void *p) {
    slow *s = p;
    s->rc = kvidx_scan(s->db, 0, UINT64_MAX, slow_fn, s);
    return NULL;
}

static void test_slow_scan_does_not_block_writers(void) {
    const char *dir = t_dir("conc_slow");
    kvidx *db = xopen(dir, 8);
    slow *s = calloc(1, sizeof *s);
    uint64_t ver[SS_KEYS + SS_NEW], k;
    uint8_t present[SS_KEYS + SS_NEW], deleted[SS_KEYS];
    pthread_t th;
    int started, rc, in_cb, timed_out, released;
    unsigned i, puts = 0, dels = 0, gets = 0, ok_ops = 0;
    double t0, el;
    struct timespec ts;
    guard(__func__);
    fails_reset();
    if (!db || !s) {
        free(s);
        kvidx_close(db);
        REQUIRE(!"open or calloc failed");
    }
    memset(ver, 0, sizeof ver);
    memset(present, 0, sizeof present);
    memset(deleted, 0, sizeof deleted);
    for (k = 0; k < SS_KEYS; k++) {
        CHECK_RC(put_ver(db, k, 1), KVIDX_OK);
        ver[k] = 1, present[k] = 1;
    }
    s->db = db;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    started = xcreate(&th, slow_thread, s);
    if (!started) goto out;
    /* wait for the scan to block in its callback on the first key */
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20;
    pthread_mutex_lock(&s->mu);
    while (!s->in_cb && pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0) {}
    in_cb = s->in_cb;
    pthread_mutex_unlock(&s->mu);
    CHECK(in_cb);

    /* While it is blocked: 2000 puts (10 of them to the key the callback
     * holds), 100 deletes, 500 gets, over all shards. */
    t0 = now_s();
    for (i = 0; i < 2000; i++) {
        k = i < 10 ? 0 : i < 10 + SS_NEW ? SS_KEYS + (i - 10) : t_below(SS_KEYS);
        rc = put_ver(db, k, ++ver[k]);
        CHECK_RC(rc, KVIDX_OK);
        present[k] = 1;
        ok_ops += rc == KVIDX_OK;
        puts++;
        if (i % 20 == 19) { /* interleave the deletes */
            do k = 1 + t_below(SS_KEYS - 1);
            while (!present[k]);
            rc = kvidx_delete(db, k);
            CHECK_RC(rc, KVIDX_OK);
            present[k] = 0, ver[k]++, deleted[k] = 1;
            ok_ops += rc == KVIDX_OK;
            dels++;
        }
        if (i % 4 == 3) {
            k = t_below(SS_KEYS + SS_NEW);
            ok_ops += has_ver(db, k, present[k] ? ver[k] : 0);
            gets++;
        }
    }
    el = now_s() - t0;
    pthread_mutex_lock(&s->mu);
    in_cb = s->in_cb, timed_out = s->timed_out, released = s->released;
    pthread_mutex_unlock(&s->mu);
    printf("  %u puts, %u deletes, %u gets in %.3f s while the scan callback was blocked\n", puts,
           dels, gets, el);
    CHECK(puts == 2000 && dels == 100 && gets == 500);
    CHECK(ok_ops == puts + dels + gets);
    /* all done without the scan's cooperation: it is still blocked */
    CHECK(in_cb && !timed_out && !released);

    pthread_mutex_lock(&s->mu);
    s->released = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(th, NULL);
    CHECK_RC(s->rc, KVIDX_OK);
    CHECK(s->first == 0);
    CHECK(s->bad == 0);
    CHECK(s->n >= SS_KEYS - 100);
    CHECK(s->cb_writes >= 1);
    /* keys live for the whole scan (never deleted) were all visited */
    for (k = 1, i = 0; k < SS_KEYS; k++)
        if (!deleted[k] && !s->seen[k] && i++ < 5) {
            CHECK(!"slow scan missed a key live all along");
            fprintf(stderr, "  missed key %" PRIu64 "\n", k);
        }
    /* and the writes done meanwhile are all there */
    for (k = 0; k < SS_KEYS + SS_NEW && fails() == 0; k++) has_ver(db, k, present[k] ? ver[k] : 0);
out:
    CHECK(fails() == 0);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* ======================================================================
 * Many threads, many handles, in waves: 8 threads share a handle, 8 more
 * each have their own; each thread owns its keys and checks every result
 * against its own model. Threads exit and new ones start between waves.
 * ====================================================================== */

#define T4_N 8
#define T4_K 256
#define T4_WAVES 3

typedef struct {
    uint64_t ver[T4_K];
    uint8_t present[T4_K];
} model4;

typedef struct {
    kvidx *db;       /* the shared handle, or NULL: open dir */
    const char *dir; /* own database */
    unsigned slot, wave;
    model4 *m;
    uint64_t seed, budget, ops;
    double deadline;
} t4arg;

static uint64_t t4_key(unsigned slot, uint64_t k) { return k * T4_N + slot; }

typedef struct {
    t4arg *a;
    uint64_t from, to, n_own, prev, n;
    int bad;
} t4scan;

static int t4_scan_fn(void *ud, uint64_t key, const void *val, size_t len) {
    t4scan *c = ud;
    uint64_t ver = 0;
    int v = val_check(key, val, len, &ver);
    if ((c->n && key <= c->prev) || key < c->from || key > c->to || v != V_OK) {
        if (!c->bad++)
            tfail("slot %u: scan [%" PRIu64 ",%" PRIu64 "]: key %" PRIu64 " after %" PRIu64
                  ", %s value", c->a->slot, c->from, c->to, key, c->prev, v_name[v]);
    } else if (key % T4_N == c->a->slot) {
        uint64_t k = key / T4_N;
        if (k >= T4_K || !c->a->m->present[k] || c->a->m->ver[k] != ver) {
            if (!c->bad++)
                tfail("slot %u: scan: own key %" PRIu64 " version %" PRIu64 ", model %s %" PRIu64,
                      c->a->slot, key, ver,
                      k < T4_K && c->a->m->present[k] ? "has" : "says absent",
                      k < T4_K ? c->a->m->ver[k] : 0);
        }
        c->n_own++;
    }
    c->prev = key;
    c->n++;
    return 0;
}

/* Scans [from, to]: own keys must be exactly the model's. */
static void t4_scan(kvidx *db, t4arg *a, uint64_t from, uint64_t to) {
    t4scan c;
    uint64_t k, want = 0;
    int rc;
    memset(&c, 0, sizeof c);
    c.a = a, c.from = from, c.to = to;
    rc = kvidx_scan(db, from, to, t4_scan_fn, &c);
    for (k = 0; k < T4_K; k++) {
        uint64_t key = t4_key(a->slot, k);
        want += a->m->present[k] && key >= from && key <= to;
    }
    if (rc != KVIDX_OK || c.n_own != want)
        tfail("slot %u wave %u: scan [%" PRIu64 ",%" PRIu64 "]: rc %d, %" PRIu64
              " own keys, model has %" PRIu64, a->slot, a->wave, from, to, rc, c.n_own, want);
}

static void t4_verify_all(kvidx *db, t4arg *a) {
    uint64_t k;
    for (k = 0; k < T4_K; k++)
        if (!has_ver(db, t4_key(a->slot, k), a->m->present[k] ? a->m->ver[k] : 0)) break;
    t4_scan(db, a, 0, UINT64_MAX);
}

static void *t4_thread(void *p) {
    t4arg *a = p;
    model4 *m = a->m;
    rng r = {a->seed};
    kvidx *db = a->db;
    uint64_t n;
    int rc;
    if (!db && !(db = xopen(a->dir, 1u << (a->slot % 4)))) return NULL;
    t4_verify_all(db, a); /* what the previous waves left */
    for (n = 0; n < a->budget; n++) {
        uint64_t k = rbelow(&r, T4_K), key = t4_key(a->slot, k), op = rbelow(&r, 10);
        if ((n & 31) == 0 && now_s() > a->deadline) break;
        if (op < 5) {
            rc = put_ver(db, key, m->ver[k] + 1);
            if (rc != KVIDX_OK) tfail("slot %u: put %" PRIu64 ": %d", a->slot, key, rc);
            m->ver[k]++, m->present[k] = 1;
        } else if (op < 6) {
            rc = kvidx_delete(db, key);
            if (rc != (m->present[k] ? KVIDX_OK : KVIDX_NOTFOUND))
                tfail("slot %u: delete %" PRIu64 ": %d, model %s", a->slot, key, rc,
                      m->present[k] ? "present" : "absent");
            m->present[k] = 0;
        } else if (op < 9) {
            has_ver(db, key, m->present[k] ? m->ver[k] : 0);
        } else {
            uint64_t from = t4_key(0, k), span = rbelow(&r, 64 * T4_N);
            t4_scan(db, a, from, from + span);
        }
    }
    a->ops = n;
    t4_verify_all(db, a);
    if (!a->db && (rc = kvidx_close(db)) != KVIDX_OK) tfail("slot %u: close: %d", a->slot, rc);
    return NULL;
}

static void test_many_threads_many_handles(void) {
    char *shdir = strdup(t_dir("conc_many_shared")); /* t_dir's buffers rotate */
    char *owndir[T4_N];
    model4 *ms = calloc(2 * T4_N, sizeof *ms);
    t4arg a[2 * T4_N];
    pthread_t th[2 * T4_N];
    int ok[2 * T4_N];
    kvidx *db = shdir ? xopen(shdir, 8) : NULL;
    unsigned w, i;
    uint64_t ops[T4_WAVES] = {0}, k, live = 0, cnt;
    double t0 = now_s();
    kvidx_stats st;
    guard(__func__);
    fails_reset();
    if (!ms || !db) {
        free(ms);
        free(shdir);
        kvidx_close(db);
        REQUIRE(!"open or calloc failed");
    }
    for (i = 0; i < T4_N; i++) {
        char name[64];
        snprintf(name, sizeof name, "conc_many_own%u", i);
        owndir[i] = strdup(t_dir(name));
        if (!owndir[i]) {
            while (i-- > 0) free(owndir[i]);
            free(ms);
            kvidx_close(db);
            t_rmrf(shdir);
            free(shdir);
            REQUIRE(!"strdup failed");
        }
    }
    for (w = 0; w < T4_WAVES; w++) {
        for (i = 0; i < 2 * T4_N; i++) {
            memset(&a[i], 0, sizeof a[i]);
            a[i].db = i < T4_N ? db : NULL;
            a[i].dir = i < T4_N ? NULL : owndir[i - T4_N];
            a[i].slot = i % T4_N;
            a[i].wave = w;
            a[i].m = &ms[i];
            a[i].seed = t_rand();
            a[i].budget = 20000 / g_scale;
            a[i].deadline = now_s() + 0.6;
        }
        for (i = 0; i < 2 * T4_N; i++) ok[i] = xcreate(&th[i], t4_thread, &a[i]);
        for (i = 0; i < 2 * T4_N; i++)
            if (ok[i]) {
                pthread_join(th[i], NULL);
                ops[w] += a[i].ops;
            }
    }
    printf("  %u waves of %u threads: %" PRIu64 ", %" PRIu64 ", %" PRIu64 " ops, %.2f s\n",
           T4_WAVES, 2 * T4_N, ops[0], ops[1], ops[T4_WAVES - 1], now_s() - t0);
    CHECK(fails() == 0);
    /* progress in every wave (a floor, not a speed claim: TSan on 2 busy
     * CPUs did 1472 in a wave) */
    for (w = 0; w < T4_WAVES; w++) CHECK(ops[w] >= 2 * T4_N * 10 / g_scale);

    /* after the waves, from the main thread: reads see everything, writes
     * complete, on the shared handle and on each own one */
    for (i = 0; i < T4_N; i++) {
        t4_verify_all(db, &a[i]);
        for (k = 0; k < T4_K; k++) live += ms[i].present[k];
    }
    CHECK_RC(t_stat(db, &st), KVIDX_OK);
    CHECK(st.keys == live);
    /* new keys, none of them slot 0's (the scan below checks slot 0's) */
    for (k = 0; k < 1000; k++) CHECK_RC(put_ver(db, (1ull << 33) + 8 * k + 1, k + 1), KVIDX_OK);
    for (k = 0; k < 1000 && fails() == 0; k += 7) has_ver(db, (1ull << 33) + 8 * k + 1, k + 1);
    cnt = 0;
    {
        t4scan c; /* count everything, check the order and the values */
        memset(&c, 0, sizeof c);
        c.a = &a[0], c.from = 0, c.to = UINT64_MAX;
        CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, t4_scan_fn, &c), KVIDX_OK);
        cnt = c.n;
    }
    CHECK(cnt == live + 1000);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    for (i = T4_N; i < 2 * T4_N; i++) {
        kvidx *o = xopen(owndir[i - T4_N], 0);
        if (!o) continue;
        t4_verify_all(o, &a[i]);
        CHECK_RC(put_ver(o, 1ull << 40, 1), KVIDX_OK);
        has_ver(o, 1ull << 40, 1);
        CHECK_RC(kvidx_close(o), KVIDX_OK);
        t_rmrf(owndir[i - T4_N]);
    }
    for (i = 0; i < T4_N; i++) free(owndir[i]);
    CHECK(fails() == 0);
    free(ms);
    t_rmrf(shdir);
    free(shdir);
}

/* ======================================================================
 * Close after a stress: the last acknowledged state of every key survives
 * close and reopen.
 * ====================================================================== */

static void test_close_after_threads(void) {
    const char *dir = t_dir("conc_close");
    kvidx *db = xopen(dir, 2);
    stress st;
    kvidx_stats s;
    uint64_t k, bad = 0, prefill = 120000, flushes = 0;
    guard(__func__);
    fails_reset();
    REQUIRE(db != NULL);
    /* 2 shards, ~60000 puts each first: the threads' puts flush sections,
     * so what survives lives both in the value logs and in the buffers */
    if (!stress_init(&st, db, 4096) || !stress_prefill(&st, prefill)) {
        CHECK(!"out of memory or prefill failed");
        stress_free(&st);
        kvidx_close(db);
        return;
    }
    stress_run(&st, 0.6, 1.2, 60000 / g_scale / NWRITERS);
    CHECK_RC(t_stat(db, &s), KVIDX_OK);
    flushes = s.flushes;
    printf("  %" PRIu64 " puts first, then %" PRIu64 " puts, %" PRIu64 " deletes, %" PRIu64
           " gets, %" PRIu64 " scans, %" PRIu64 " flushes; then close\n", prefill, st.puts,
           st.dels, st.gets, st.scans, flushes);
    CHECK(fails() == 0);
    CHECK(st.puts >= 1000 / g_scale && st.dels >= 1);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(dir, 0);
    if (!db) {
        stress_free(&st);
        REQUIRE(db != NULL);
    }
    for (k = 0; k < st.nkeys && bad < 5; k++) {
        uint64_t a = st.acked[k];
        bad += !has_ver(db, k, (a & 1) ? 0 : a >> 1);
    }
    CHECK(bad == 0);
    CHECK_RC(t_stat(db, &s), KVIDX_OK);
    CHECK(s.shards == 2);
    CHECK(s.slots == prefill + st.puts);
    st.db = db;
    stress_verify_quiet(&st, db); /* also checks the live key count */
    CHECK(fails() == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    stress_free(&st);
    t_rmrf(dir);
}

int main(void) {
    const char *s = getenv("KVIDX_TEST_SCALE");
    if (s && atoi(s) > 1) g_scale = (uint64_t)atoi(s);
    t_init("test_concurrency");
    T_RUN(test_stress_readers_writers);
    T_RUN(test_read_your_writes_across_threads);
    T_RUN(test_slow_scan_does_not_block_writers);
    T_RUN(test_many_threads_many_handles);
    T_RUN(test_close_after_threads);
    alarm(0);
    return t_done();
}
