/*
 * test_compact.c -- kvidx_compact: against a model through many rounds and
 * reopens; the space it gives back; a process death at every system call
 * of a compaction; an I/O error at every system call of one; and readers,
 * scanners, list readers and writers running through compactions.
 *
 * Includes kvidx.c itself (built with -DKVIDX_TEST) to reach the fault
 * hook. KVIDX_SEED replays a run.
 */
#ifndef KVIDX_TEST
#define KVIDX_TEST
#endif
#define KVIDX_COMPACT_MIN ((uint64_t)1 << 20) /* background compaction of small shards */
#include "../kvidx.c"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>

#include "harness.h"

/* ---- values that check themselves ---------------------------------------
 * The value of (key, ver): its length and bytes follow from both, and the
 * first 12 bytes (when it has them) hold key and ver, so a reader that
 * knows neither can still tell a value from a torn or foreign one. */

static size_t val_of(uint64_t key, uint32_t ver, uint8_t *out) {
    uint64_t x = t_mix64(key ^ ((uint64_t)ver << 40));
    size_t len = ver % 7 == 0 ? (size_t)(x % 12) : 12 + (size_t)(x % (KVIDX_VALUE_MAX - 11)), i;
    for (i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        out[i] = (uint8_t)x;
    }
    if (len >= 12) memcpy(out, &key, 8), memcpy(out + 8, &ver, 4);
    return len;
}

/* A value read for key: returns its version if it is a whole value of
 * (key, v) for some v >= 1 (short values: v is not known, 0 is returned
 * when the bytes match no version <= maxver), else -1. */
static int64_t val_check(uint64_t key, const uint8_t *b, size_t len, uint32_t maxver) {
    uint8_t want[KVIDX_VALUE_MAX];
    uint32_t v;
    if (len >= 12) {
        uint64_t k;
        memcpy(&k, b, 8), memcpy(&v, b + 8, 4);
        if (k != key || v == 0) return -1;
        return val_of(key, v, want) == len && !memcmp(want, b, len) ? (int64_t)v : -1;
    }
    for (v = 1; v <= maxver; v++)
        if (val_of(key, v, want) == len && !memcmp(want, b, len)) return (int64_t)v;
    return -1;
}

static kvidx_options opts(uint32_t shards) {
    kvidx_options o;
    kvidx_options_init(&o);
    o.shards = shards;
    o.sync_interval_ms = 0;
    return o;
}

/* ---- the model ------------------------------------------------------------ */

#define NKEYS 6000u
#define NLISTS 40u
#define LIST_SPAN 3000u

typedef struct model {
    uint32_t ver[NKEYS]; /* 0: absent */
    uint8_t in[NLISTS][LIST_SPAN]; /* list k holds id i*7+k when in[k][i] */
} model;

static uint64_t key_of(uint32_t i) { return t_mix64(i) % 1000000007u; } /* spread, stable */

/* The m_ functions make one change in db and in the model; with db NULL
 * in the model only (replaying what a child process did). */
static int m_put(kvidx *db, model *m, uint32_t i) {
    uint8_t v[KVIDX_VALUE_MAX];
    uint32_t ver = m->ver[i] + 1;
    size_t len = val_of(key_of(i), ver, v);
    int rc = db ? kvidx_put(db, key_of(i), v, len) : KVIDX_OK;
    if (rc == KVIDX_OK) m->ver[i] = ver;
    return rc;
}

static int m_del(kvidx *db, model *m, uint32_t i) {
    int rc = db ? kvidx_delete(db, key_of(i)) : m->ver[i] ? KVIDX_OK : KVIDX_NOTFOUND;
    if (rc == KVIDX_OK || rc == KVIDX_NOTFOUND) {
        if ((rc == KVIDX_OK) != (m->ver[i] != 0)) return -100;
        m->ver[i] = 0;
        return KVIDX_OK;
    }
    return rc;
}

static int m_list(kvidx *db, model *m, uint32_t k, int add, const uint32_t *at, size_t n) {
    uint64_t ids[16];
    size_t i, ch = 0, want = 0;
    int rc;
    for (i = 0; i < n; i++) ids[i] = (uint64_t)at[i] * 7 + k;
    if (!db) rc = KVIDX_OK, ch = SIZE_MAX;
    else if (add) rc = kvidx_list_add(db, 1000000 + k, ids, n, &ch);
    else rc = kvidx_list_remove(db, 1000000 + k, ids, n, &ch);
    if (rc != KVIDX_OK && rc != KVIDX_NOTFOUND) return rc;
    for (i = 0; i < n; i++) {
        size_t j, dup = 0;
        for (j = 0; j < i; j++) dup |= at[j] == at[i];
        if (dup) continue;
        want += add ? !m->in[k][at[i]] : m->in[k][at[i]];
        m->in[k][at[i]] = (uint8_t)add;
    }
    return ch == want || ch == SIZE_MAX ? KVIDX_OK : -101;
}

/* One random operation; returns its result (KVIDX_OK when it matched). */
static int m_step(kvidx *db, model *m) {
    uint32_t r = (uint32_t)t_below(100);
    if (r < 55) return m_put(db, m, (uint32_t)t_below(NKEYS));
    if (r < 70) return m_del(db, m, (uint32_t)t_below(NKEYS));
    {
        uint32_t at[16];
        size_t n = 1 + t_below(r < 90 ? 16 : 4), i;
        for (i = 0; i < n; i++) at[i] = (uint32_t)t_below(LIST_SPAN);
        return m_list(db, m, (uint32_t)t_below(NLISTS), r < 90, at, n);
    }
}

typedef struct scan_ck {
    const model *m;
    uint64_t prev, seen, bad;
    int first;
} scan_ck;

static int scan_cb(void *ud, uint64_t key, const void *val, size_t len) {
    scan_ck *c = ud;
    c->bad += !c->first && key <= c->prev;
    c->first = 0, c->prev = key, c->seen++;
    c->bad += val_check(key, val, len, UINT32_MAX >> 8) < 0;
    return 0;
}

/* Every key, every list, and the scan order agree with the model;
 * returns the number of disagreements. */
static uint64_t m_verify(kvidx *db, const model *m) {
    uint64_t bad = 0, live = 0, out[LIST_SPAN + 1];
    uint32_t i, k;
    scan_ck c = {m, 0, 0, 0, 1};
    for (i = 0; i < NKEYS; i++) {
        uint8_t want[KVIDX_VALUE_MAX], got[KVIDX_VALUE_MAX];
        size_t len = 0, wl;
        int rc = kvidx_get(db, key_of(i), got, sizeof got, &len);
        if (!m->ver[i]) {
            bad += rc != KVIDX_NOTFOUND;
            continue;
        }
        live++;
        wl = val_of(key_of(i), m->ver[i], want);
        bad += rc != KVIDX_OK || len != wl || memcmp(got, want, wl);
    }
    bad += kvidx_scan(db, 0, UINT64_MAX, scan_cb, &c) != KVIDX_OK;
    bad += c.bad + (c.seen != live);
    for (k = 0; k < NLISTS; k++) {
        size_t n = 0, j = 0;
        int rc = kvidx_list_get(db, 1000000 + k, 0, out, LIST_SPAN + 1, &n);
        for (i = 0; i < LIST_SPAN; i++)
            if (m->in[k][i]) bad += j >= n || out[j++] != (uint64_t)i * 7 + k;
        bad += j != n || (j == 0 ? rc != KVIDX_NOTFOUND : rc != KVIDX_OK);
    }
    return bad;
}

/* Files in dir whose generation is not the shard's only one: every shard
 * must have exactly one generation of files (k, v, b, l; ls optional). */
static int one_gen_each(const char *dir, uint32_t shards) {
    DIR *d = opendir(dir);
    struct dirent *de;
    uint32_t gen[64] = {0}, id, g;
    int bad = 0;
    if (!d) return 0;
    while ((de = readdir(d))) {
        if (sscanf(de->d_name, "s%4u.%u.", &id, &g) != 2 || id >= shards) continue;
        if (strstr(de->d_name, ".tmp")) bad++;
        if (!gen[id]) gen[id] = g;
        else bad += gen[id] != g;
    }
    closedir(d);
    return bad == 0;
}

/* A log sink for kvidx_check_report: lines go to stderr with a prefix. */
typedef struct report_t {
    unsigned lines;
} report_t;
static void rep_line(void *ud, const char *msg) {
    ((report_t *)ud)->lines++;
    fprintf(stderr, "  check: %s\n", msg);
}

/* ---- 1. against the model ------------------------------------------------- */

static void test_model_rounds(void) {
    const char *dir = t_dir("cp_model");
    kvidx_options o = opts(4);
    kvidx *db;
    model *m = calloc(1, sizeof *m);
    unsigned round, rounds = 12;
    uint64_t bad = 0, steps = 6000 / SAN_SLOW, i;
    kvidx_stats st;
    t_watchdog("test_model_rounds", 300);
    t_rmrf(dir);
    REQUIRE(m && kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (round = 0; round < rounds; round++) {
        for (i = 0; i < steps; i++) bad += m_step(db, m) != KVIDX_OK;
        REQUIRE(bad == 0);
        CHECK_RC(kvidx_compact(db), KVIDX_OK);
        bad += m_verify(db, m);
        REQUIRE(t_stat(db, &st) == KVIDX_OK);
        CHECK(st.garbage_records == 0 && st.garbage_slots == 0);
        CHECK(st.list_log_bytes == 4 * LS_LOG_HDR);
        if (round % 3 == 2) { /* and from the files */
            CHECK_RC(kvidx_close(db), KVIDX_OK);
            CHECK(one_gen_each(dir, 4));
            REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
            bad += m_verify(db, m);
        }
        if (round == 5) { /* a compaction with nothing to reclaim changes nothing */
            CHECK_RC(kvidx_compact(db), KVIDX_OK);
            bad += m_verify(db, m);
        }
    }
    CHECK(bad == 0);
    CHECK(db->sh[0].gen > 10);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK(m_verify(db, m) == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    /* Read-only handles and empty databases. */
    o.flags = KVIDX_RDONLY;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_compact(db), KVIDX_ERDONLY);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK_RC(kvidx_compact(NULL), KVIDX_EINVAL);
    t_rmrf(dir);
    o = opts(2);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_compact(db), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 5, "x", 1), KVIDX_OK);
    {
        /* lists that all went away: the list log goes on from the last
         * sequence number, which the (empty) snapshot must carry */
        uint64_t id = 9, c = 0;
        CHECK_RC(kvidx_list_add(db, 5, &id, 1, NULL), KVIDX_OK);
        CHECK_RC(kvidx_list_delete(db, 5), KVIDX_OK);
        CHECK_RC(kvidx_compact(db), KVIDX_OK);
        CHECK_RC(kvidx_list_add(db, 5, &id, 1, NULL), KVIDX_OK);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        CHECK(kvidx_list_count(db, 5, &c) == KVIDX_OK && c == 1);
    }
    {
        char b[4];
        size_t n;
        CHECK(kvidx_get(db, 5, b, sizeof b, &n) == KVIDX_OK && n == 1 && b[0] == 'x');
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(m);
    t_rmrf(dir);
}

/* ---- 2. the space it gives back -------------------------------------------- */

static uint64_t dir_blocks(kvidx *db) {
    kvidx_stats st;
    return t_stat(db, &st) == KVIDX_OK ? st.disk_bytes : 0;
}

/* n values of 200 bytes; then half of them overwritten and a quarter
 * deleted; compacted, the database takes within 10% of the bytes on disk
 * per live value of a fresh database loaded with the same live values
 * (values, key records, buffer; lists aside). */
static void test_space(void) {
    const char *dir = t_dir("cp_space"), *dir2 = t_dir("cp_space_fresh");
    kvidx_options o = opts(1);
    kvidx *db, *fresh;
    uint64_t n = 300000 / SAN_SLOW, i, live = 0, before, compacted, after, ref;
    uint8_t v[200];
    t_watchdog("test_space", 300);
    t_rmrf(dir), t_rmrf(dir2);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < n; i++) {
        memset(v, (int)(i & 0xFF), sizeof v);
        REQUIRE(kvidx_put(db, i, v, sizeof v) == KVIDX_OK);
    }
    for (i = 0; i < n; i += 2) REQUIRE(kvidx_put(db, i, v, sizeof v) == KVIDX_OK);
    for (i = 1; i < n; i += 4) REQUIRE(kvidx_delete(db, i) == KVIDX_OK);
    before = dir_blocks(db);
    REQUIRE(kvidx_compact(db) == KVIDX_OK);
    compacted = dir_blocks(db); /* the compaction trims its new buffer as close does */
    REQUIRE(kvidx_close(db) == KVIDX_OK); /* close trims the buffer, as for the fresh one */
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    after = dir_blocks(db);
    REQUIRE(kvidx_open(dir2, &o, &fresh) == KVIDX_OK);
    for (i = 0; i < n; i++)
        if (i % 4 != 1) {
            REQUIRE(kvidx_put(fresh, i, v, sizeof v) == KVIDX_OK);
            live++;
        }
    REQUIRE(kvidx_close(fresh) == KVIDX_OK);
    REQUIRE(kvidx_open(dir2, &o, &fresh) == KVIDX_OK);
    ref = dir_blocks(fresh);
    printf("  %" PRIu64 " live of %" PRIu64 " written: %.1f B/live value before, %.1f after, %.1f fresh\n",
           live, n + n / 2, (double)before / (double)live, (double)after / (double)live,
           (double)ref / (double)live);
    CHECK(after * 10 <= ref * 11);
    CHECK(after < before);
    CHECK(compacted <= after + 65536);
    CHECK_RC(kvidx_close(fresh), KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir), t_rmrf(dir2);
}

/* ---- 3. death at every system call, 4. an error at every system call ----- */

static int g_call, g_at, g_mode, g_errno; /* g_mode 1: _exit at call g_at; 2: fail it */
static int fault_at(os_op op, const char *what) {
    (void)op, (void)what;
    if (++g_call != g_at) return 0;
    if (g_mode == 1) _exit(0);
    return g_errno;
}

/* Loads the model's first state into dir (closed cleanly). */
static int load_base(const char *dir, model *m, uint32_t shards) {
    kvidx_options o = opts(shards);
    kvidx *db;
    uint64_t i;
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) return -1;
    for (i = 0; i < 3000; i++)
        if (m_step(db, m) != KVIDX_OK) return -1;
    return kvidx_close(db) == KVIDX_OK ? 0 : -1;
}

/* The child: opens, makes more changes (in the page cache only), then
 * compacts with the process dying at OS call `at`. Exits 7 when the
 * compaction finished before that call. */
static void child_compact(const char *dir, model *m, uint32_t shards, int at, uint64_t seed) {
    kvidx_options o = opts(shards);
    kvidx *db;
    uint64_t i;
    t_rng = seed;
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) _exit(3);
    for (i = 0; i < 500; i++)
        if (m_step(db, m) != KVIDX_OK) _exit(4);
    g_call = 0, g_at = at, g_mode = 1;
    os_fault_hook = fault_at;
    if (kvidx_compact(db) != KVIDX_OK) _exit(5);
    _exit(7);
}

static void test_death_at_every_call(void) {
    const char *dir = t_dir("cp_death");
    model *base = calloc(1, sizeof *base), *m = calloc(1, sizeof *m);
    uint64_t seed;
    int at, done = 0, bad = 0, tried = 0;
    t_watchdog("test_death_at_every_call", 600);
    t_on_timeout = t_kill_child;
    t_rmrf(dir);
    REQUIRE(base && m && load_base(dir, base, 2) == 0);
    seed = t_rand();
    for (at = 1; !done && at < 400; at++) {
        kvidx_options o = opts(2);
        kvidx *db;
        pid_t pid;
        int st = 0;
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s.run' && cp -a '%s' '%s.run'", dir, dir, dir);
        REQUIRE(system(cmd) == 0);
        memcpy(m, base, sizeof *m);
        {
            char run[4200];
            snprintf(run, sizeof run, "%s.run", dir);
            pid = fork();
            if (pid == 0) child_compact(run, m, 2, at, seed);
            t_child = pid;
            REQUIRE(pid > 0 && waitpid(pid, &st, 0) == pid);
            t_child = 0;
            REQUIRE(WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 7));
            done = WEXITSTATUS(st) == 7;
            /* the model after the child's changes: replay them here */
            {
                uint64_t save = t_rng, i;
                t_rng = seed;
                REQUIRE(kvidx_open(run, &o, &db) == KVIDX_OK);
                for (i = 0; i < 500; i++) (void)m_step(NULL, m);
                t_rng = save;
                if (m_verify(db, m)) {
                    bad++;
                    fprintf(stderr, "  death at call %d: the database differs from the model\n", at);
                }
                CHECK_RC(kvidx_close(db), KVIDX_OK);
                if (!one_gen_each(run, 2)) {
                    bad++;
                    fprintf(stderr, "  death at call %d: files of two generations after reopen\n", at);
                }
            }
            tried++;
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", run);
            REQUIRE(system(cmd) == 0);
        }
    }
    printf("  compaction of 2 shards killed at each of its first %d OS calls, then finished\n", tried - 1);
    CHECK(done && tried > 20);
    CHECK(bad == 0);
    t_on_timeout = NULL;
    free(base), free(m);
    t_rmrf(dir);
}

/* An error (EIO or ENOSPC) at each OS call of a compaction: it returns an
 * error or OK; reads keep working and agree with the model; later writes
 * work or fail with the shard's error; after a reopen everything written
 * that returned OK is there. */
static void test_error_at_every_call(void) {
    const char *dir = t_dir("cp_error");
    model *m = calloc(1, sizeof *m);
    int at, done = 0, bad = 0, tried = 0, errs = 0, pass;
    t_watchdog("test_error_at_every_call", 600);
    for (pass = 0; pass < 2; pass++) {
        done = 0;
        for (at = 1; !done && at < 400; at++) {
            kvidx_options o = opts(2);
            kvidx *db;
            uint64_t i;
            int rc;
            t_rmrf(dir);
            memset(m, 0, sizeof *m);
            REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
            for (i = 0; i < 2000; i++) REQUIRE(m_step(db, m) == KVIDX_OK);
            g_call = 0, g_at = at, g_mode = 2, g_errno = pass ? ENOSPC : EIO;
            os_fault_hook = fault_at;
            rc = kvidx_compact(db);
            os_fault_hook = NULL;
            done = g_call < at;
            errs += rc != KVIDX_OK;
            if (rc != KVIDX_OK && rc != KVIDX_EIO && rc != KVIDX_EFULL && rc != KVIDX_ENOMEM) bad++;
            bad += m_verify(db, m) != 0;
            for (i = 0; i < 300; i++) { /* writes: done, or refused with the shard's error */
                rc = m_step(db, m);
                if (rc != KVIDX_OK && rc != KVIDX_EIO) bad++;
            }
            bad += m_verify(db, m) != 0;
            kvidx_close(db); /* may report the sticky error */
            REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
            if (m_verify(db, m)) {
                bad++;
                fprintf(stderr, "  %s at call %d: the reopened database differs from the model\n",
                        pass ? "ENOSPC" : "EIO", at);
            }
            CHECK_RC(kvidx_close(db), KVIDX_OK);
            bad += !one_gen_each(dir, 2);
            tried++;
        }
        CHECK(done);
    }
    printf("  %d compactions with an error injected at one OS call (%d returned an error)\n", tried, errs);
    CHECK(errs > 10);
    CHECK(bad == 0);
    free(m);
    t_rmrf(dir);
}

/* ---- 5. readers and writers through compactions ----------------------------- */

#define CC_KEYS 4000u

typedef struct cc {
    kvidx *db;
    int stop;              /* atomic */
    uint64_t reads, scans, pages, writes, compactions, bad;  /* atomic adds */
    uint32_t seed;
} cc;

static void *cc_reader(void *arg) {
    cc *c = arg;
    uint64_t x = c->seed, n = 0, bad = 0;
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        uint8_t b[KVIDX_VALUE_MAX];
        size_t len;
        uint64_t key;
        int rc;
        x = t_mix64(x);
        key = x % CC_KEYS;
        rc = kvidx_get(c->db, key, b, sizeof b, &len);
        if (rc == KVIDX_OK) bad += val_check(key, b, len, 1u << 20) < 0;
        else bad += rc != KVIDX_NOTFOUND;
        n++;
    }
    __atomic_fetch_add(&c->reads, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
    return NULL;
}

typedef struct cc_scan {
    uint64_t prev, bad;
    int first;
} cc_scan;

static int cc_scan_cb(void *ud, uint64_t key, const void *val, size_t len) {
    cc_scan *s = ud;
    s->bad += !s->first && key <= s->prev;
    s->bad += val_check(key, val, len, 1u << 20) < 0;
    s->first = 0, s->prev = key;
    return 0;
}

static void *cc_scanner(void *arg) {
    cc *c = arg;
    uint64_t n = 0, bad = 0, pages = 0;
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        cc_scan s = {0, 0, 1};
        uint64_t out[64], from = 0, prev = 0;
        size_t got = 0, i;
        int rc, first = 1;
        bad += kvidx_scan(c->db, 0, UINT64_MAX, cc_scan_cb, &s) != KVIDX_OK;
        bad += s.bad;
        n++;
        /* page through list 7: ascending, no duplicates, ids of the list */
        while ((rc = kvidx_list_get(c->db, 7, from, out, 64, &got)) == KVIDX_OK && got) {
            for (i = 0; i < got; i++) {
                bad += (!first && out[i] <= prev) || out[i] % 3 != 1;
                first = 0, prev = out[i];
            }
            pages++;
            if (got < 64) break;
            from = out[got - 1] + 1;
        }
        bad += rc != KVIDX_OK && rc != KVIDX_NOTFOUND;
    }
    __atomic_fetch_add(&c->scans, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->pages, pages, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
    return NULL;
}

static void *cc_writer(void *arg) {
    cc *c = arg;
    uint64_t x = c->seed, n = 0, bad = 0;
    static uint32_t ver[CC_KEYS]; /* this writer's only */
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        uint8_t b[KVIDX_VALUE_MAX];
        uint64_t key, id;
        int rc;
        x = t_mix64(x);
        key = x % CC_KEYS;
        if (x % 10 < 7) {
            size_t len = val_of(key, ++ver[key], b);
            rc = kvidx_put(c->db, key, b, len);
        } else if (x % 10 < 8) {
            rc = kvidx_delete(c->db, key);
            if (rc == KVIDX_NOTFOUND) rc = KVIDX_OK;
        } else {
            id = (x >> 20) % 100000 * 3 + 1;
            rc = x % 10 < 9 ? kvidx_list_add(c->db, 7, &id, 1, NULL) : kvidx_list_remove(c->db, 7, &id, 1, NULL);
            if (rc == KVIDX_NOTFOUND) rc = KVIDX_OK;
        }
        bad += rc != KVIDX_OK;
        n++;
    }
    __atomic_fetch_add(&c->writes, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
    return NULL;
}

static void *cc_compactor(void *arg) {
    cc *c = arg;
    uint64_t n = 0, bad = 0;
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE) && n < 400) {
        bad += kvidx_compact(c->db) != KVIDX_OK;
        n++;
    }
    __atomic_fetch_add(&c->compactions, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
    return NULL;
}

static void test_concurrent(void) {
    const char *dir = t_dir("cp_conc");
    kvidx_options o = opts(2);
    cc c;
    pthread_t th[5];
    void *(*fn[5])(void *) = {cc_reader, cc_reader, cc_scanner, cc_writer, cc_compactor};
    int i;
    uint64_t k;
    t_watchdog("test_concurrent", 300);
    t_rmrf(dir);
    memset(&c, 0, sizeof c);
    c.seed = (uint32_t)t_rand();
    REQUIRE(kvidx_open(dir, &o, &c.db) == KVIDX_OK);
    for (k = 0; k < CC_KEYS; k++) {
        uint8_t b[KVIDX_VALUE_MAX];
        size_t len = val_of(k, 1u << 21, b); /* a version only the load writes */
        REQUIRE(kvidx_put(c.db, k, b, len) == KVIDX_OK);
    }
    for (i = 0; i < 5; i++) REQUIRE(pthread_create(&th[i], NULL, fn[i], &c) == 0);
    t_sleep_ms(2000);
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELEASE);
    for (i = 0; i < 5; i++) pthread_join(th[i], NULL);
    printf("  2 s: %" PRIu64 " compactions, %" PRIu64 " gets, %" PRIu64 " scans, %" PRIu64
           " list pages, %" PRIu64 " writes\n",
           c.compactions, c.reads, c.scans, c.pages, c.writes);
    CHECK(c.bad == 0);
    CHECK(c.compactions >= 2 && c.writes >= 100 && c.reads >= 1000);
    CHECK_RC(kvidx_close(c.db), KVIDX_OK);
    CHECK(one_gen_each(dir, 2));
    t_rmrf(dir);
}

/* ---- 6. background compaction and the stats ----------------------------------- */

/* compact_pct = 50: once half a shard is garbage, the handle's thread
 * compacts it; 0: never. The per-shard stats add up to the totals. */
static void test_background(void) {
    const char *dir = t_dir("cp_bg");
    kvidx_options o = opts(2);
    kvidx *db;
    kvidx_stats st, sh;
    uint64_t i, r, keys = 0, garbage = 0, waited = 0, wrong = 0;
    uint8_t v[200];
    unsigned j;
    t_watchdog("test_background", 120);
    t_rmrf(dir);
    o.compact_pct = 100;
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_EINVAL);
    o.compact_pct = 0, o.sync_interval_ms = 20;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (r = 0; r < 3; r++)
        for (i = 0; i < 20000; i++) {
            memset(v, (int)(i + r), sizeof v);
            REQUIRE(kvidx_put(db, i, v, sizeof v) == KVIDX_OK);
        }
    t_sleep_ms(200);
    REQUIRE(t_stat(db, &st) == KVIDX_OK);
    CHECK(st.compactions == 0 && st.garbage_bytes > st.live_bytes);
    CHECK(st.shard == UINT64_MAX && st.live_bytes == st.keys * 32 + (st.slots - st.garbage_slots) * 256);
    for (j = 0; j < 2; j++) {
        memset(&sh, 0, sizeof sh);
        sh.size = sizeof sh;
        REQUIRE(kvidx_stat_shard(db, j, &sh) == KVIDX_OK);
        CHECK(sh.shard == j && sh.shards == 2);
        keys += sh.keys, garbage += sh.garbage_bytes;
    }
    CHECK(keys == st.keys && garbage == st.garbage_bytes);
    CHECK_RC(kvidx_stat_shard(db, 2, &sh), KVIDX_EINVAL);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    o.compact_pct = 50;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    do {
        t_sleep_ms(50);
        waited += 50;
        REQUIRE(t_stat(db, &st) == KVIDX_OK);
    } while (st.compactions < 2 && waited < 20000);
    printf("  both shards compacted in the background after %" PRIu64 " ms (longest hold %" PRIu64 " ms)\n",
           waited, st.compact_ms_max);
    CHECK(st.compactions >= 2 && st.garbage_bytes == 0);
    for (i = 0; i < 20000; i++) {
        uint8_t b[256];
        size_t n;
        memset(v, (int)(i + 2), sizeof v);
        if (kvidx_get(db, i, b, sizeof b, &n) != KVIDX_OK || n != sizeof v || memcmp(b, v, n)) wrong++;
    }
    CHECK(wrong == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK(one_gen_each(dir, 2));
    t_rmrf(dir);
}

/* ---- 8. allocation failures in puts --------------------------------------------
 * Every allocation a put makes (the tables' and trees' growth, a new
 * key section's mapping is not an allocation) failed in turn: the put
 * returns KVIDX_ENOMEM and stores nothing; the same put then succeeds.
 * (Open: test_recovery; list writes: test_lists_wb; compaction: every
 * OS call of it, allocations included, in test_error_at_every_call.) */

static int g_alloc_at, g_allocs;
static int fail_alloc(os_op op, const char *what) {
    (void)what;
    if (op != OS_MALLOC) return 0;
    return ++g_allocs == g_alloc_at ? ENOMEM : 0;
}

static void test_put_alloc_failures(void) {
    const char *dir = t_dir("cp_putalloc");
    kvidx_options o = opts(2);
    kvidx *db;
    uint64_t k, bad = 0, failures = 0, n = 20000 / SAN_SLOW;
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (k = 0; k < n; k++) {
        uint8_t v[16], b[16];
        size_t len;
        int rc;
        memset(v, (int)k, sizeof v);
        for (g_alloc_at = 1;; g_alloc_at++) {
            g_allocs = 0;
            os_fault_hook = fail_alloc;
            rc = kvidx_put(db, k * 7919, v, sizeof v);
            os_fault_hook = NULL;
            if (rc == KVIDX_OK) break;
            failures++;
            bad += rc != KVIDX_ENOMEM || kvidx_get(db, k * 7919, b, sizeof b, &len) != KVIDX_NOTFOUND;
            if (g_alloc_at > 50) {
                bad++;
                break;
            }
        }
        bad += kvidx_get(db, k * 7919, b, sizeof b, &len) != KVIDX_OK || len != sizeof v || memcmp(b, v, len);
    }
    printf("  %" PRIu64 " puts of new keys, %" PRIu64 " failed allocations, each an ENOMEM that stored nothing\n",
           n, failures);
    CHECK(failures > 10);
    CHECK(bad == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_check(dir) == KVIDX_ELOCKED ? KVIDX_OK : KVIDX_EIO, KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK_RC(kvidx_check(dir), KVIDX_OK);
    t_rmrf(dir);
}

/* ---- 9. group commit --------------------------------------------------------------
 * KVIDX_SYNC writers of one shard share syncs: 8 threads make fewer
 * fdatasync calls a put than one thread does (which makes 2: the buffer
 * and the key log), and every put is there after a reopen. */

static uint64_t g_syncs; /* atomic */
static void count_syncs(const os_event *ev) {
    if (ev->op == OS_SYNC && ev->fd >= 0) __atomic_fetch_add(&g_syncs, 1, __ATOMIC_RELAXED);
}

typedef struct gc_arg {
    kvidx *db;
    uint64_t base, n, bad;
} gc_arg;

static void *gc_writer(void *arg) {
    gc_arg *a = arg;
    uint64_t i;
    for (i = 0; i < a->n; i++) {
        uint64_t k = a->base + i;
        a->bad += kvidx_put(a->db, k, &k, sizeof k) != KVIDX_OK;
    }
    return NULL;
}

static double gc_run(const char *dir, unsigned threads, uint64_t per) {
    kvidx_options o = opts(1);
    kvidx *db;
    gc_arg a[8];
    pthread_t th[8];
    unsigned t;
    uint64_t bad = 0, k;
    o.flags |= KVIDX_SYNC, o.compact_pct = 0;
    t_rmrf(dir);
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) return -1;
    __atomic_store_n(&g_syncs, 0, __ATOMIC_RELAXED);
    os_trace_hook = count_syncs;
    for (t = 0; t < threads; t++) {
        a[t].db = db, a[t].base = (uint64_t)t << 32, a[t].n = per, a[t].bad = 0;
        if (pthread_create(&th[t], NULL, gc_writer, &a[t])) return -1;
    }
    for (t = 0; t < threads; t++) pthread_join(th[t], NULL), bad += a[t].bad;
    os_trace_hook = NULL;
    kvidx_close(db);
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) return -1;
    for (t = 0; t < threads; t++)
        for (k = 0; k < per; k++) {
            uint64_t key = ((uint64_t)t << 32) + k, v = 0;
            size_t len;
            bad += kvidx_get(db, key, &v, sizeof v, &len) != KVIDX_OK || v != key;
        }
    kvidx_close(db);
    return bad ? -1 : (double)__atomic_load_n(&g_syncs, __ATOMIC_RELAXED) / (double)(threads * per);
}

static void test_group_commit(void) {
    const char *dir = t_dir("cp_gc");
    uint64_t per = 300 / (SAN_SLOW > 2 ? 3 : 1);
    double one = gc_run(dir, 1, per * 2), eight = gc_run(dir, 8, per);
    printf("  KVIDX_SYNC puts, one shard: %.2f fdatasync a put from 1 thread, %.2f from 8\n", one, eight);
    CHECK(one > 0 && eight > 0);
    CHECK(one <= 2.05);      /* the buffer and the key log; no list log */
    CHECK(eight < one);      /* shared */
    t_rmrf(dir);
}

/* ---- 7. backup under writers ------------------------------------------------ */

#define BK_KEYS 3000u

typedef struct bkw {
    kvidx *db;
    int stop;         /* atomic */
    uint32_t rounds;  /* atomic: rounds completed (every key written with ver = round) */
    uint64_t bad;
} bkw;

/* Writes waves: round r puts (k, r) for k = 0, 1, ... in order and adds
 * id r to list 5; so at any moment ver(0) >= ver(1) >= ... >= ver(0) - 1. */
static void *bk_writer(void *arg) {
    bkw *w = arg;
    uint32_t r;
    for (r = 1; !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) && r < 100000; r++) {
        uint64_t k, id = r;
        for (k = 0; k < BK_KEYS; k++) {
            uint8_t v[KVIDX_VALUE_MAX];
            size_t len = val_of(k, r, v);
            if (len < 12) len = 12, memcpy(v, &k, 8), memcpy(v + 8, &r, 4); /* every version told apart */
            w->bad += kvidx_put(w->db, k, v, len) != KVIDX_OK;
        }
        w->bad += kvidx_list_add(w->db, 5, &id, 1, NULL) != KVIDX_OK;
        __atomic_store_n(&w->rounds, r, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* The copy is one cut of the waves, taken no earlier than round `from`
 * had finished and no later than round `to`: versions never rise along
 * the key order and differ by at most one; list 5 holds the ids of the
 * rounds finished at the cut (ver of the last key), or one more (the cut
 * fell between that round's add and the next round's last put). */
static uint64_t bk_verify(const char *dir, uint32_t from, uint32_t to) {
    kvidx_options o = opts(4);
    kvidx *db;
    uint64_t k, bad = 0, n = 0, c = 0;
    int64_t first = -1, prev = -1;
    o.flags = KVIDX_RDONLY;
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) return 1;
    for (k = 0; k < BK_KEYS; k++) {
        uint8_t b[KVIDX_VALUE_MAX];
        size_t len;
        int64_t v = -1;
        if (kvidx_get(db, k, b, sizeof b, &len) == KVIDX_OK && len >= 12) {
            uint32_t ver;
            memcpy(&ver, b + 8, 4);
            v = val_check(k, b, len, 0) == (int64_t)ver || (len == 12 && !memcmp(b, &k, 8)) ? (int64_t)ver : -1;
        }
        if (v < 0 && k == 0) v = 0;
        if (first < 0) first = v;
        if (v < (int64_t)from || v > (int64_t)to + 1 || (prev >= 0 && v > prev) || v < first - 1) {
            if (!bad) fprintf(stderr, "  backup: key %" PRIu64 " at version %" PRId64 " (first key %" PRId64
                              ", previous %" PRId64 ", rounds %u..%u)\n", k, v, first, prev, from, to);
            bad++;
        }
        prev = v;
    }
    if (kvidx_list_count(db, 5, &c) != KVIDX_OK) c = 0;
    n = (uint64_t)prev; /* rounds finished at the cut: their ids are all in */
    if (c != n && c != n + 1) { /* the cut may fall between round n's last put and its add */
        fprintf(stderr, "  backup: list of %" PRIu64 " ids, last key at version %" PRIu64 "\n", c, n);
        bad++;
    }
    kvidx_close(db);
    return bad;
}

static void test_backup(void) {
    const char *dir = t_dir("cp_bk"), *copy = t_dir("cp_bk_copy"), *copy2 = t_dir("cp_bk_copy2");
    kvidx_options o = opts(4);
    bkw w;
    pthread_t th;
    uint32_t from, to, i;
    report_t rep;
    t_watchdog("test_backup", 300);
    t_rmrf(dir), t_rmrf(copy), t_rmrf(copy2);
    memset(&w, 0, sizeof w);
    o.compact_pct = 50, o.sync_interval_ms = 50; /* background compactions wait for backups */
    REQUIRE(kvidx_open(dir, &o, &w.db) == KVIDX_OK);
    REQUIRE(pthread_create(&th, NULL, bk_writer, &w) == 0);
    for (i = 0; i < 3; i++) {
        while (__atomic_load_n(&w.rounds, __ATOMIC_ACQUIRE) < 2 + 2 * i) t_sleep_ms(5);
        from = __atomic_load_n(&w.rounds, __ATOMIC_ACQUIRE);
        t_rmrf(copy);
        CHECK_RC(kvidx_backup(w.db, copy), KVIDX_OK);
        to = __atomic_load_n(&w.rounds, __ATOMIC_ACQUIRE);
        CHECK_RC(kvidx_check_report(copy, rep_line, &rep), KVIDX_OK);
        CHECK(bk_verify(copy, from, to) == 0);
    }
    __atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    CHECK(w.bad == 0);
    CHECK_RC(kvidx_backup(w.db, copy), KVIDX_EINVAL); /* not empty */
    CHECK_RC(kvidx_backup(w.db, NULL), KVIDX_EINVAL);
    CHECK_RC(kvidx_close(w.db), KVIDX_OK);
    /* a read-only handle backs up too; the copy of the copy is the same */
    o = opts(4);
    o.flags = KVIDX_RDONLY;
    REQUIRE(kvidx_open(copy, &o, &w.db) == KVIDX_OK);
    CHECK_RC(kvidx_backup(w.db, copy2), KVIDX_OK);
    CHECK_RC(kvidx_close(w.db), KVIDX_OK);
    CHECK_RC(kvidx_check(copy2), KVIDX_OK);
    t_rmrf(dir), t_rmrf(copy), t_rmrf(copy2);
}

int main(void) {
    t_init("test_compact");
    T_RUN(test_model_rounds);
    T_RUN(test_space);
    T_RUN(test_death_at_every_call);
    T_RUN(test_error_at_every_call);
    T_RUN(test_concurrent);
    T_RUN(test_background);
    T_RUN(test_backup);
    T_RUN(test_put_alloc_failures);
    T_RUN(test_group_commit);
    alarm(0);
    return t_done();
}
