/*
 * test_faults.c -- an error at every OS call of the maintenance paths a
 * plain workload does not reach: a section flush, list snapshots (small
 * thresholds here, so that writes, open and close take them), a backup
 * and a compaction. Each call returns OK or an error; the handle keeps
 * serving reads that agree with the model; after a reopen the database
 * passes kvidx_check and holds every write that returned OK (no power cut
 * here: test_powercut has those).
 *
 * Includes kvidx.c (built with -DKVIDX_TEST) for the fault hook.
 * KVIDX_SEED replays a run.
 */
#ifndef KVIDX_TEST
#define KVIDX_TEST
#endif
#define KVIDX_LS_SNAP_MIN ((uint64_t)2048)
#define KVIDX_LS_SNAP_AUTO ((uint64_t)8192)
#include "../kvidx.c"

#include "harness.h"

static int g_call, g_at, g_err;
static int fail_at(os_op op, const char *what) {
    (void)what;
    if (op == OS_MALLOC && g_err != ENOMEM) return 0;
    return ++g_call == g_at ? (op == OS_MALLOC ? ENOMEM : g_err) : 0;
}

static kvidx_options opts(void) {
    kvidx_options o;
    kvidx_options_init(&o);
    o.shards = 2;
    o.sync_interval_ms = 0;
    o.compact_pct = 0;
    return o;
}

static void val(uint64_t k, uint32_t ver, uint8_t *v) {
    uint64_t x = t_mix64(k * 977 + ver);
    memcpy(v, &x, 8), memcpy(v + 8, &k, 8);
}

/* The model: key k -> version (0 absent); list k -> ids 0..63 bitmap. */
#define NK 400u
#define NL 6u
typedef struct model {
    uint32_t ver[NK];
    uint64_t ids[NL];
} model;

static int same(kvidx *db, const model *m) {
    uint64_t k, out[65];
    for (k = 0; k < NK; k++) {
        uint8_t want[16], got[16];
        size_t len;
        int rc = kvidx_get(db, k, got, sizeof got, &len);
        if (!m->ver[k] ? rc != KVIDX_NOTFOUND : rc != KVIDX_OK || len != 16 || (val(k, m->ver[k], want), memcmp(got, want, 16)))
            return 0;
    }
    for (k = 0; k < NL; k++) {
        size_t n = 0, i, j = 0;
        int rc = kvidx_list_get(db, 500 + k, 0, out, 65, &n);
        for (i = 0; i < 64; i++)
            if ((m->ids[k] >> i) & 1) {
                if (j >= n || out[j++] != i) return 0;
            }
        if (j != n || (n == 0) != (rc == KVIDX_NOTFOUND)) return 0;
    }
    return 1;
}

/* Random writes; each that returns OK goes into the model. */
static void writes(kvidx *db, model *m, unsigned n) {
    unsigned i;
    for (i = 0; i < n; i++) {
        uint64_t k = t_below(NK);
        if (t_below(3)) {
            uint8_t v[16];
            val(k, m->ver[k] + 1, v);
            if (kvidx_put(db, k, v, 16) == KVIDX_OK) m->ver[k]++;
        } else {
            uint64_t l = t_below(NL), ids[4], j, mask = 0;
            int add = t_below(3) != 0, rc;
            for (j = 0; j < 4; j++) ids[j] = t_below(64), mask |= UINT64_C(1) << ids[j];
            rc = add ? kvidx_list_add(db, 500 + l, ids, 4, NULL) : kvidx_list_remove(db, 500 + l, ids, 4, NULL);
            if (rc == KVIDX_OK) m->ids[l] = add ? m->ids[l] | mask : m->ids[l] & ~mask;
        }
    }
}

/* One maintenance step under test, with the fault armed. */
enum { M_SNAPSHOTS, M_BACKUP, M_COMPACT, M_FLUSH };
static const char *const mname[] = {"list snapshots (writes, close, open)", "backup", "compaction", "section flush"};

/* Runs maintenance step `what` on db (model m): returns the step's code
 * (writes and puts fold their errors into *errors). */
static int run_step(unsigned what, kvidx *db, model *m, const char *copy, unsigned *errors) {
    int rc = KVIDX_OK, step;
    switch (what) {
    case M_SNAPSHOTS: writes(db, m, 400); break; /* the log passes 8 KiB: snapshots */
    case M_BACKUP: rc = kvidx_backup(db, copy); break;
    case M_COMPACT: rc = kvidx_compact(db); break;
    default: {
        uint8_t v[16];
        uint64_t k = 0;
        for (step = 0; step < 3; step++, k++) { /* shard 0's keys: the second put flushes */
            while ((ck_key(k) & 1) != 0) k++;
            val(k, m->ver[k] + 1, v);
            if (kvidx_put(db, k, v, 16) == KVIDX_OK) m->ver[k]++;
            else ++*errors;
        }
    }
    }
    return rc;
}

static void test_every_call(void) {
    const char *dir = t_dir("fl_db"), *copy = t_dir("fl_copy"), *base = t_dir("fl_base");
    static const int errs[] = {EIO, ENOSPC, ENOMEM, EIO | OS_SHORT};
    model *m = calloc(1, sizeof *m), *b = calloc(1, sizeof *b);
    unsigned what, e, bad = 0, runs = 0, errors = 0, calls[4] = {0, 0, 0, 0};
    char cmd[13000];
    t_watchdog("test_every_call", 1200);
    /* Under ThreadSanitizer (SAN_SLOW 8) the flush case is left out: its
     * 65,535-value shard is replayed and checked twice a run, minutes
     * there; these paths are single-threaded, TSan has nothing to find. */
    for (what = M_SNAPSHOTS; what <= (SAN_SLOW > 2 ? M_COMPACT : M_FLUSH); what++) {
        /* the base: a database with lists and values, closed */
        kvidx_options o = opts();
        kvidx *db;
        t_rmrf(base);
        memset(b, 0, sizeof *b);
        REQUIRE(kvidx_open(base, &o, &db) == KVIDX_OK);
        writes(db, b, 600);
        if (what == M_FLUSH) { /* shard 0's buffer one slot short of full (keys past the model's) */
            uint64_t k = 100000;
            uint8_t v[16];
            while (db->sh[0].next_slot < VS_SEC_N - 1) {
                if ((ck_key(k) & 1) == 0) {
                    val(k, 1, v);
                    REQUIRE(kvidx_put(db, k, v, 16) == KVIDX_OK);
                }
                k++;
            }
        }
        REQUIRE(kvidx_close(db) == KVIDX_OK);
        { /* a dry run counts the OS calls of open, step and close */
            model dry;
            snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' && cp -a '%s' '%s'", dir, copy, base, dir);
            REQUIRE(system(cmd) == 0);
            memcpy(&dry, b, sizeof dry);
            g_call = 0, g_at = -1, g_err = EIO;
            os_fault_hook = fail_at;
            REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
            REQUIRE(run_step(what, db, &dry, copy, &errors) == KVIDX_OK);
            kvidx_close(db);
            os_fault_hook = NULL;
            calls[what] = (unsigned)g_call;
        }
        for (e = 0; e < sizeof errs / sizeof *errs; e++) {
            int at, done = 0;
            /* 32 points (sanitizers: fewer) spread over the OS calls of the
             * dry run, from a random offset: across seeds, every call */
            unsigned stride = calls[what] / (32u / SAN_SLOW) + 1u;
            for (at = 1 + (int)t_below(stride); !done && at <= (int)calls[what]; at += (int)stride) {
                int rc;
                snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' && cp -a '%s' '%s'", dir, copy, base, dir);
                REQUIRE(system(cmd) == 0);
                memcpy(m, b, sizeof *m);
                g_call = 0, g_at = at, g_err = errs[e];
                os_fault_hook = fail_at;
                rc = kvidx_open(dir, &o, &db);
                if (rc != KVIDX_OK) { /* the open itself met the fault (its snapshot, say) */
                    os_fault_hook = NULL;
                    bad += rc == KVIDX_ECORRUPT;
                    errors++;
                    goto reopen;
                }
                rc = run_step(what, db, m, copy, &errors);
                os_fault_hook = NULL;
                done = g_call < at;
                if (rc != KVIDX_OK) {
                    errors++;
                    bad += rc != KVIDX_EIO && rc != KVIDX_EFULL && rc != KVIDX_ENOMEM;
                }
                if (!same(db, m)) { /* reads agree with what returned OK */
                    bad++;
                    fprintf(stderr, "  %s, error %d at call %d: reads differ from the model\n", mname[what],
                            errs[e] & ~OS_SHORT, at);
                }
                if (what == M_BACKUP && rc == KVIDX_OK) {
                    bad += kvidx_check(copy) != KVIDX_OK;
                    {
                        kvidx *c;
                        kvidx_options ro = opts();
                        ro.flags = KVIDX_RDONLY;
                        if (kvidx_open(copy, &ro, &c) == KVIDX_OK) bad += !same(c, m), kvidx_close(c);
                        else bad++;
                    }
                }
                os_fault_hook = fail_at; /* close may meet the fault too (its snapshot, its syncs) */
                kvidx_close(db);
                os_fault_hook = NULL;
            reopen:
                rc = kvidx_open(dir, &o, &db);
                if (rc != KVIDX_OK || !same(db, m)) {
                    bad++;
                    fprintf(stderr, "  %s, error %d%s at call %d: reopen %s\n", mname[what], errs[e] & ~OS_SHORT,
                            errs[e] & OS_SHORT ? " (short write)" : "", at,
                            rc ? kvidx_strerror(rc) : "differs from the model");
                }
                if (rc == KVIDX_OK) kvidx_close(db);
                if (kvidx_check(dir) != KVIDX_OK) {
                    bad++;
                    fprintf(stderr, "  %s, error at call %d: kvidx_check fails after reopen\n", mname[what], at);
                }
                runs++;
            }
        }
    }
    printf("  %u runs, an error at one OS call each (EIO, ENOSPC, ENOMEM, short write) of open + list "
           "snapshots (%u calls) / backup (%u) / compaction (%u) / section flush (%u) + close: %u errors returned\n",
           runs, calls[0], calls[1], calls[2], calls[3], errors);
    CHECK(bad == 0);
    free(m), free(b);
    t_rmrf(dir), t_rmrf(copy), t_rmrf(base);
}

/* ---- the protocol layer under allocation failure ---------------------- */

typedef struct sink {
    char *p;
    size_t n, cap;
} sink;

static ptrdiff_t sink_write(void *ctx, const void *b, size_t len) {
    sink *k = ctx;
    if (k->n + len > k->cap) {
        k->cap = (k->n + len) * 2;
        k->p = realloc(k->p, k->cap);
        if (!k->p) abort();
    }
    memcpy(k->p + k->n, b, len);
    k->n += len;
    return (ptrdiff_t)len;
}

static int g_mallocs, g_malloc_at;
static int fail_malloc_at(os_op op, const char *what) {
    (void)what;
    return op == OS_MALLOC && ++g_mallocs == g_malloc_at ? ENOMEM : 0;
}

/* One run of a script of requests in three feeds (the second ends inside
 * a request) on a fresh session over a reset database. Returns the
 * session's first non-OK code (KVIDX_OK if none); *out gets the replies. */
static int proto_script(kvidx *db, sink *out) {
    static const char *const feeds[] = {
        "SET 1 a\r\n*3\r\n$3\r\nSET\r\n$1\r\n2\r\n$3\r\nbcd\r\nSADD 5 3 1 2\r\nGET 1\r\nMGET 1 2 3\r\n",
        "SMEMBERS 5\r\nSCAN 0 COUNT 10\r\nset \"x y\" 'z'\r\nINCR 3\r\nSINTER 5 5\r\n*2\r\n$3\r\nGET",
        "\r\n$1\r\n2\r\nSSCAN 5 0\r\nDBSIZE\r\nCLIENT SETNAME n\r\nCLIENT GETNAME\r\nSMISMEMBER 5 1 4\r\nDEL 5\r\n"};
    kvidx_transport t = {NULL, NULL, sink_write, 0};
    kvidx_session *s;
    int rc, i;
    uint64_t k;
    for (k = 1; k <= 3; k++) kvidx_delete(db, k);
    kvidx_delete(db, XXH3_64bits("x y", 3));
    kvidx_list_delete(db, 5);
    out->n = 0;
    t.ctx = out;
    if ((rc = kvidx_session_open(db, &t, &s))) return rc;
    for (i = 0; i < 3; i++) {
        rc = kvidx_session_feed(s, feeds[i], strlen(feeds[i]));
        if (rc) {
            /* a dead session refuses the rest and writes nothing more */
            size_t n = out->n;
            CHECK(kvidx_session_feed(s, "PING\r\n", 6) == rc);
            CHECK(out->n == n);
            break;
        }
    }
    kvidx_session_close(s);
    return rc;
}

/* Every allocation a session makes (its buffers, argument arrays, the
 * lists and values it reads and writes) fails in turn: each run ends
 * with KVIDX_OK or KVIDX_ENOMEM (the replies of a feed that ended the
 * session before its failure may or may not have been written), its
 * replies agree with a faultless run up to the first "out of memory"
 * error reply or the end of what it wrote, nothing leaks (ASan), and afterwards the same script gives the
 * faultless replies again. */
static void test_protocol_alloc(void) {
    static const char oom[] = "-ERR kvidx: out of memory\r\n";
    const char *dir = t_dir("faults_proto");
    kvidx_options o = opts();
    kvidx *db;
    sink ref = {NULL, 0, 0}, got = {NULL, 0, 0};
    int at, runs = 0, enomem = 0, replies = 0;
    t_watchdog("test_protocol_alloc", 120);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK(proto_script(db, &ref) == KVIDX_OK);
    REQUIRE(ref.n > 0);
    for (at = 1;; at++) {
        int rc;
        const char *e;
        size_t agree;
        g_mallocs = 0, g_malloc_at = at;
        os_fault_hook = fail_malloc_at;
        rc = proto_script(db, &got);
        os_fault_hook = NULL;
        runs++;
        CHECK(rc == KVIDX_OK || rc == KVIDX_ENOMEM);
        e = got.n ? memmem(got.p, got.n, oom, sizeof oom - 1) : NULL;
        agree = e ? (size_t)(e - got.p) : got.n;
        CHECK(agree <= ref.n && (!agree || memcmp(got.p, ref.p, agree) == 0));
        if (!e && rc == KVIDX_OK) CHECK(got.n == ref.n);
        enomem += rc == KVIDX_ENOMEM;
        replies += e != NULL;
        if (g_mallocs < at) break; /* this run met no failure: every allocation was tried */
    }
    CHECK(proto_script(db, &got) == KVIDX_OK);
    CHECK(got.n == ref.n && memcmp(got.p, ref.p, ref.n) == 0);
    printf("  %d runs: %d ended the session with KVIDX_ENOMEM, %d answered an out-of-memory error\n", runs - 1,
           enomem, replies);
    CHECK(enomem > 0 && replies > 0);
    CHECK(kvidx_close(db) == KVIDX_OK);
    free(ref.p), free(got.p);
    t_rmrf(dir);
}

int main(void) {
    t_init("test_faults");
    T_RUN(test_every_call);
    T_RUN(test_protocol_alloc);
    alarm(0);
    return t_done();
}
