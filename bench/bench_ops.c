/*
 * bench_ops.c -- operations: what compaction gives back and costs, what
 * a writer and a reader see while it runs, and durable puts (KVIDX_SYNC)
 * from 1, 2 and 8 threads against LMDB's default durable commit, beside
 * the raw fdatasync cost of the filesystem the data lives on. One run.
 *
 *   bench_ops [--n N] [--seed X] [--secs S] [--parts fsync,sync,compact]
 *             [--dir D] [--timeout S] [--json]
 *
 * Contents
 *   1. options and constants
 *   2. failure: every error names the part and the phase, then exits
 *   3. keys, values, latencies
 *   4. engines: kvidx and LMDB helpers
 *   5. metrics: the rows of the table, what a child sends back
 *   6. part fsync: fdatasync of a 4 KiB write, 1, 2, 8 threads
 *   7. part sync: durable puts, 1, 2, 8 threads, kvidx and LMDB
 *   8. part compact: space, time, writer and reader latency
 *   9. the table, JSON
 *  10. children, signals, main
 *
 * Every part runs in its own forked child (its heap, threads and open
 * files are its own; a hang is killed by the parent's alarm), in this
 * order: fsync; sync, alternating kvidx and LMDB at 1, 2, 8 threads;
 * compact last (it frees hundreds of MB, which the filesystem discards).
 * Every value read is compared with the bytes expected (values derive
 * from key and version); a wrong one aborts the whole run. All data lives
 * under --dir and is removed at the end, also after a failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>

#include "kvidx.h"
#define BENCH_PROG "bench_ops"
#define BENCH_FILES
#include "bench.h"

/* ==== 1. options and constants ========================================= */

#define VLEN 100               /* every value: 100 bytes (a kvidx slot holds up to 256) */
#define NTHR 3                 /* thread counts of the sync and fsync parts: */
static const int g_thr[NTHR] = {1, 2, 8};
#define SYNC_CAP 1000000u      /* puts per thread per sync run at most: bounds a fast disk */
#define FSYNC_SECS 1.0         /* per fsync configuration */
#define FS_BLOCK 4096          /* bytes per write in the fsync part */
#define WRITER_PERIOD_NS 50000u /* the writer under compaction: a put every 50 us (20k/s) */
#define READER_PERIOD_NS 50000u /* the reader under compaction: READER_BURST gets every 50 us */
#define READER_BURST 8         /* (160k gets/s): paced, so neither thread keeps a CPU */
#define SETTLE_NS 100000000ull /* the writer and reader run 100 ms before and after kvidx_compact */
#define SLOW_PUT_NS 1000000ull /* a put slower than 1 ms is counted as one that waited */
#define LAT_CAP (4u << 20)     /* latencies kept per thread for percentiles (the max sees all) */
#define SY_LAT_CAP (1u << 18)  /* the same, per sync thread */
#define LMDB_MAPSIZE (16ull << 30) /* sparse: 8 threads x SYNC_CAP puts fit */
#define PATH_CAP BENCH_PATH_CAP

static uint64_t g_n = 1000000;  /* keys loaded in the compact part */
static uint64_t g_seed = 42;
static double g_secs = 2.5;     /* per sync run (engine, threads) */
static unsigned g_timeout = 600; /* the whole run, seconds */
static int g_json;
static const char *g_dir = "bench/data/ops";
static int g_parts[3] = {1, 1, 1}; /* fsync, sync, compact: run this part */

/* ==== 2. failure ======================================================== */

/* bench_fail (bench.h): "bench_ops: PART PHASE: message", then exit (a
 * child: _exit, from any of its threads). g_bench_part is the part (a
 * sync run: its engine), g_bench_phase the phase. */

/* ==== 3. keys, values, latencies ========================================= */

/* Distinct by construction: seed*C + i are distinct, and bench_mix is a
 * bijection of uint64. The compact part uses i < n; sync thread t uses
 * i = (t+1) << 40 | j, so no two threads (nor parts) share a key. */
static uint64_t key_at(uint64_t i) { return bench_mix(g_seed * 0x100000001B3ull + i); }

/* The VLEN-byte value of (key, version): the first VLEN bytes of
 * bench_make_val's, so every byte depends on both. */
static void make_val(uint64_t key, uint32_t ver, uint8_t *v) {
    uint8_t full[BENCH_VLEN];
    bench_make_val(key, ver, full);
    memcpy(v, full, VLEN);
}

static int val_is(const void *p, size_t len, uint64_t key, uint32_t ver) {
    uint8_t v[VLEN];
    make_val(key, ver, v);
    return len == VLEN && !memcmp(p, v, VLEN);
}

static uint64_t rnd(uint64_t *s) { return bench_mix((*s)++); }

static void sleep_until(uint64_t ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
}

static void sleep_ns(uint64_t ns) { sleep_until(bench_now_ns() + ns); }

/* One thread's latencies: the first LAT_CAP kept for percentiles, the
 * maximum and the slow count over all. */
typedef struct lat {
    uint64_t *v;
    size_t n, cap;
    uint64_t all, max, slow, slow_ns;
} lat;

static void lat_init(lat *l, size_t cap) {
    memset(l, 0, sizeof *l);
    l->cap = cap;
    l->v = bench_xmalloc(l->cap * sizeof *l->v);
}

static void lat_add(lat *l, uint64_t ns) {
    l->all++;
    if (ns > l->max) l->max = ns;
    if (ns >= SLOW_PUT_NS) l->slow++, l->slow_ns += ns;
    if (l->n < l->cap) l->v[l->n++] = ns;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The p-quantile (0..1) of the kept latencies, nearest rank; sorts them. */
static double lat_q(lat *l, double p) {
    size_t r;
    if (!l->n) return -1;
    qsort(l->v, l->n, sizeof *l->v, cmp_u64);
    r = (size_t)(p * (double)l->n);
    if (r >= l->n) r = l->n - 1;
    return (double)l->v[r];
}

/* ==== 4. engines ========================================================== */

static void kv_check(int rc, const char *what) {
    if (rc) bench_fail("%s: %s", what, kvidx_strerror(rc));
}

/* Defaults (8 shards, background sync every 1000 ms) but no background
 * compaction: the compact part calls kvidx_compact itself. */
static kvidx *kv_open(const char *dir, uint32_t flags) {
    kvidx_options o;
    kvidx *db;
    kvidx_options_init(&o);
    o.flags |= flags;
    o.compact_pct = 0;
    kv_check(kvidx_open(dir, &o, &db), "kvidx_open");
    return db;
}

static void kv_close(kvidx *db) { kv_check(kvidx_close(db), "kvidx_close"); }

static void kv_stat(kvidx *db, kvidx_stats *st) {
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    kv_check(kvidx_stat(db, st), "kvidx_stat");
}

static void kv_put(kvidx *db, uint64_t key, uint32_t ver) {
    uint8_t v[VLEN];
    make_val(key, ver, v);
    kv_check(kvidx_put(db, key, v, VLEN), "kvidx_put");
}

/* key holds version ver (0: is absent); fails otherwise. */
static void kv_expect(kvidx *db, uint64_t key, uint32_t ver) {
    uint8_t buf[KVIDX_VALUE_MAX];
    size_t len;
    int rc = kvidx_get(db, key, buf, sizeof buf, &len);
    if (rc == KVIDX_NOTFOUND) {
        if (ver) bench_fail("key %016" PRIx64 ": missing (expected version %u)", key, ver);
        return;
    }
    kv_check(rc, "kvidx_get");
    if (!ver) bench_fail("key %016" PRIx64 ": present, expected deleted", key);
    if (!val_is(buf, len, key, ver)) bench_fail("key %016" PRIx64 ": wrong value (expected version %u)", key, ver);
}

static void lm_check(int rc, const char *what) {
    if (rc) bench_fail("%s: %s", what, mdb_strerror(rc));
}

/* LMDB's defaults: flags 0, so every commit is durable (fdatasync of the
 * data file, then the meta page written O_DSYNC). */
static MDB_env *lm_open(const char *dir, MDB_dbi *dbi) {
    MDB_env *env;
    MDB_txn *t;
    if (mkdir(dir, 0755) && errno != EEXIST) bench_fail("mkdir %s: %s", dir, strerror(errno));
    lm_check(mdb_env_create(&env), "mdb_env_create");
    lm_check(mdb_env_set_mapsize(env, (size_t)LMDB_MAPSIZE), "mdb_env_set_mapsize");
    lm_check(mdb_env_open(env, dir, 0, 0644), "mdb_env_open");
    lm_check(mdb_txn_begin(env, NULL, 0, &t), "mdb_txn_begin");
    lm_check(mdb_dbi_open(t, NULL, 0, dbi), "mdb_dbi_open");
    lm_check(mdb_txn_commit(t), "mdb_txn_commit");
    return env;
}

/* LMDB compares keys as bytes: big-endian makes byte order numeric. */
static void be_put(uint8_t *p, uint64_t x) {
    int i;
    for (i = 7; i >= 0; i--) {
        p[i] = (uint8_t)x;
        x >>= 8;
    }
}

/* ==== 5. metrics: the rows of the table, what a child sends back ========= */

enum {
    /* fsync */
    M_FS_1T, M_FS_1T_US, M_FS_APPEND_US, M_FS_2T, M_FS_8T,
    /* sync */
    M_SY_1T, M_SY_1T_PER, M_SY_2T, M_SY_2T_PER, M_SY_8T, M_SY_8T_PER, M_SY_SCALE2, M_SY_SCALE8,
    /* compact, alone */
    M_LOAD, M_GARBAGE, M_DISK_BEFORE, M_DISK_AFTER, M_CP_TIME, M_CP_RATE, M_CP_FREED, M_CP_HOLD,
    /* compact, under a writer and a reader */
    M_L_TIME, M_L_HOLD, M_L_PUTS, M_L_PUT_RATE, M_L_SLOW, M_L_STALLED, M_L_PUT_P50, M_L_PUT_P99, M_L_PUT_P999,
    M_L_PUT_MAX, M_L_GETS, M_L_GET_P50, M_L_GET_P99, M_L_GET_P999, M_L_GET_MAX, M_L_GET_MAX_OUT,
    M_COUNT
};

enum { S_FSYNC, S_SYNC, S_COMPACT, S_LOADED, S_COUNT };

static const struct metric {
    const char *name, *unit;
    int better;   /* 1 higher, -1 lower, 0 informational */
    int decimals;
    int section;
} g_metrics[M_COUNT] = {
    {"fdatasync-1t", "syncs/s", 1, 0, S_FSYNC},
    {"fdatasync-1t-mean", "us", -1, 1, S_FSYNC},
    {"fdatasync-append", "us", -1, 1, S_FSYNC},
    {"fdatasync-2t", "syncs/s", 1, 0, S_FSYNC},
    {"fdatasync-8t", "syncs/s", 1, 0, S_FSYNC},
    {"sync-1t", "puts/s", 1, 0, S_SYNC},
    {"sync-1t-per-thr", "puts/s", 1, 0, S_SYNC},
    {"sync-2t", "puts/s", 1, 0, S_SYNC},
    {"sync-2t-per-thr", "puts/s", 1, 0, S_SYNC},
    {"sync-8t", "puts/s", 1, 0, S_SYNC},
    {"sync-8t-per-thr", "puts/s", 1, 0, S_SYNC},
    {"scaling-2t/1t", "x", 1, 2, S_SYNC},
    {"scaling-8t/1t", "x", 1, 2, S_SYNC},
    {"load", "puts/s", 1, 0, S_COMPACT},
    {"garbage-before", "%", 0, 1, S_COMPACT},
    {"disk-before", "B/rec", -1, 1, S_COMPACT},
    {"disk-after", "B/rec", -1, 1, S_COMPACT},
    {"compact-time", "s", -1, 3, S_COMPACT},
    {"compact-live", "MB/s", 1, 1, S_COMPACT},
    {"compact-freed", "MB/s", 1, 1, S_COMPACT},
    {"compact-ms-max", "ms", -1, 0, S_COMPACT},
    {"compact-time", "s", -1, 3, S_LOADED},
    {"compact-ms-max", "ms", -1, 0, S_LOADED},
    {"puts", "count", 0, 0, S_LOADED},
    {"put-rate", "puts/s", 1, 0, S_LOADED},
    {"puts>=1ms", "count", -1, 0, S_LOADED},
    {"puts>=1ms-total", "s", -1, 3, S_LOADED},
    {"put-p50", "us", -1, 1, S_LOADED},
    {"put-p99", "us", -1, 1, S_LOADED},
    {"put-p99.9", "us", -1, 1, S_LOADED},
    {"put-max", "us", -1, 1, S_LOADED},
    {"gets", "count", 0, 0, S_LOADED},
    {"get-p50", "ns", -1, 0, S_LOADED},
    {"get-p99", "ns", -1, 0, S_LOADED},
    {"get-p99.9", "ns", -1, 0, S_LOADED},
    {"get-max", "ns", -1, 0, S_LOADED},
    {"get-max-outside", "ns", -1, 0, S_LOADED},
};

/* What a child sends back: a = kvidx (or the one value), b = the peer
 * (LMDB; a fresh load in the compact part); -1 = not measured here. */
typedef struct result {
    double a[M_COUNT], b[M_COUNT];
} result;

static void progress(double v, const char *unit) {
    fprintf(stderr, "bench_ops: %-7s %-22s %14.*f %s\n", g_bench_part, g_bench_phase, v < 100 ? 3 : 0, v, unit);
}

static double rate(uint64_t ops, double secs) { return (double)ops / (secs > 0 ? secs : 1e-9); }

/* What every thread of a timed run (the fsync and sync parts) starts with. */
typedef struct run_thr {
    pthread_t th;
    int id;
    pthread_barrier_t *bar; /* every thread waits here, then runs to g_deadline */
    uint64_t count;         /* operations done */
    double secs;            /* from the barrier to the end of its last operation */
} run_thr;

static uint64_t g_deadline; /* set before the barrier the threads wait at */

/* Starts fn on the nthr threads at t (elem bytes apart, each beginning
 * with a run_thr; the rest set by the caller), lets them go together with
 * the deadline secs (+ 20 ms) away, joins them. Returns the operations per
 * second of all, over the longest thread's time; *total: the operations. */
static double run_threads(void *t, size_t elem, int nthr, void *(*fn)(void *), double secs, uint64_t *total) {
    pthread_barrier_t bar;
    double longest = 0;
    int i;
    *total = 0;
    pthread_barrier_init(&bar, NULL, (unsigned)nthr + 1);
    for (i = 0; i < nthr; i++) {
        run_thr *r = (run_thr *)((char *)t + (size_t)i * elem);
        r->id = i, r->bar = &bar;
        if (pthread_create(&r->th, NULL, fn, r)) bench_fail("pthread_create");
    }
    __atomic_store_n(&g_deadline, bench_now_ns() + (uint64_t)(secs * 1e9) + 20000000ull, __ATOMIC_SEQ_CST);
    pthread_barrier_wait(&bar);
    for (i = 0; i < nthr; i++) {
        run_thr *r = (run_thr *)((char *)t + (size_t)i * elem);
        pthread_join(r->th, NULL);
        *total += r->count;
        if (r->secs > longest) longest = r->secs;
    }
    pthread_barrier_destroy(&bar);
    return rate(*total, longest);
}

/* ==== 6. part fsync ======================================================= */

typedef struct fs_thr {
    run_thr rt;
    int append;
} fs_thr;

static void *fs_main(void *arg) {
    fs_thr *t = arg;
    char path[PATH_CAP], name[32];
    uint8_t *buf;
    uint64_t t0, off = 0;
    int fd;
    snprintf(name, sizeof name, "fsync-%d", t->rt.id);
    bench_path_join(path, g_dir, name);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) bench_fail("open %s: %s", path, strerror(errno));
    if (posix_memalign((void **)&buf, FS_BLOCK, FS_BLOCK)) bench_fail("out of memory");
    memset(buf, 0xA5, FS_BLOCK);
    /* The block is allocated and written once before timing: in place,
     * each sync then writes one data block and no metadata. */
    if (pwrite(fd, buf, FS_BLOCK, 0) != FS_BLOCK || fdatasync(fd)) bench_fail("%s: %s", path, strerror(errno));
    if (t->append) off = FS_BLOCK;
    pthread_barrier_wait(t->rt.bar);
    t0 = bench_now_ns();
    while (bench_now_ns() < g_deadline) {
        buf[0] = (uint8_t)t->rt.count;
        if (pwrite(fd, buf, FS_BLOCK, (off_t)off) != FS_BLOCK) bench_fail("pwrite %s: %s", path, strerror(errno));
        if (fdatasync(fd)) bench_fail("fdatasync %s: %s", path, strerror(errno));
        t->rt.count++;
        if (t->append) off += FS_BLOCK;
    }
    t->rt.secs = (double)(bench_now_ns() - t0) * 1e-9;
    close(fd);
    if (unlink(path)) bench_fail("unlink %s: %s", path, strerror(errno));
    free(buf);
    return NULL;
}

/* nthr threads, each writing FS_BLOCK bytes to its own file and
 * fdatasync'ing it, for FSYNC_SECS; returns the syncs/s of all. */
static double fs_run(int nthr, int append) {
    fs_thr t[8];
    uint64_t total;
    int i;
    for (i = 0; i < nthr; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].append = append;
    }
    return run_threads(t, sizeof *t, nthr, fs_main, FSYNC_SECS, &total);
}

static void part_fsync(result *r) {
    double x;
    g_bench_phase = "fdatasync-1t";
    x = fs_run(1, 0);
    r->a[M_FS_1T] = x, r->a[M_FS_1T_US] = 1e6 / x;
    progress(x, "syncs/s");
    g_bench_phase = "fdatasync-append";
    r->a[M_FS_APPEND_US] = 1e6 / fs_run(1, 1);
    progress(r->a[M_FS_APPEND_US], "us");
    g_bench_phase = "fdatasync-2t";
    r->a[M_FS_2T] = fs_run(2, 0);
    progress(r->a[M_FS_2T], "syncs/s");
    g_bench_phase = "fdatasync-8t";
    r->a[M_FS_8T] = fs_run(8, 0);
    progress(r->a[M_FS_8T], "syncs/s");
}

/* ==== 7. part sync ======================================================== */

/* One writer of a sync run: keys (t+1) << 40 | j, j = 0, 1, ..., version
 * 1, one durable put (kvidx KVIDX_SYNC / one LMDB write txn) each, until
 * the deadline or SYNC_CAP. */
typedef struct sy_thr {
    run_thr rt;
    kvidx *db;
    MDB_env *env;
    MDB_dbi dbi;
    lat l;
} sy_thr;

static uint64_t sy_key(int t, uint64_t j) { return key_at(((uint64_t)(t + 1) << 40) | j); }

static void *sy_main(void *arg) {
    sy_thr *t = arg;
    uint8_t v[VLEN], kb[8];
    uint64_t t0, dl;
    pthread_barrier_wait(t->rt.bar);
    dl = __atomic_load_n(&g_deadline, __ATOMIC_SEQ_CST);
    t0 = bench_now_ns();
    while (t->rt.count < SYNC_CAP && bench_now_ns() < dl) {
        uint64_t key = sy_key(t->rt.id, t->rt.count), p0 = bench_now_ns();
        make_val(key, 1, v);
        if (t->db) {
            kv_check(kvidx_put(t->db, key, v, VLEN), "kvidx_put (KVIDX_SYNC)");
        } else {
            MDB_txn *txn;
            MDB_val k, d;
            be_put(kb, key);
            k.mv_data = kb, k.mv_size = 8, d.mv_data = v, d.mv_size = VLEN;
            lm_check(mdb_txn_begin(t->env, NULL, 0, &txn), "mdb_txn_begin");
            lm_check(mdb_put(txn, t->dbi, &k, &d, 0), "mdb_put");
            lm_check(mdb_txn_commit(txn), "mdb_txn_commit");
        }
        lat_add(&t->l, bench_now_ns() - p0);
        t->rt.count++;
    }
    t->rt.secs = (double)(bench_now_ns() - t0) * 1e-9;
    return NULL;
}

/* Untimed, after a reopen: every key each thread wrote holds its value
 * and nothing else is there. */
static void sy_verify_kvidx(const char *dir, const sy_thr *t, int nthr, uint64_t total) {
    kvidx *db = kv_open(dir, 0);
    kvidx_stats st;
    uint64_t j;
    int i;
    for (i = 0; i < nthr; i++)
        for (j = 0; j < t[i].rt.count; j++) kv_expect(db, sy_key(i, j), 1);
    kv_stat(db, &st);
    if (st.keys != total) bench_fail("%" PRIu64 " keys after reopen, %" PRIu64 " written", st.keys, total);
    kv_close(db);
}

static void sy_verify_lmdb(const char *dir, const sy_thr *t, int nthr, uint64_t total) {
    MDB_dbi dbi;
    MDB_env *env = lm_open(dir, &dbi);
    MDB_txn *txn;
    MDB_stat ms;
    uint8_t kb[8];
    uint64_t j;
    int i;
    lm_check(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), "mdb_txn_begin (read)");
    for (i = 0; i < nthr; i++)
        for (j = 0; j < t[i].rt.count; j++) {
            uint64_t key = sy_key(i, j);
            MDB_val k, d;
            be_put(kb, key);
            k.mv_data = kb, k.mv_size = 8;
            if (mdb_get(txn, dbi, &k, &d)) bench_fail("key %016" PRIx64 ": missing after reopen", key);
            if (!val_is(d.mv_data, d.mv_size, key, 1)) bench_fail("key %016" PRIx64 ": wrong value", key);
        }
    lm_check(mdb_stat(txn, dbi, &ms), "mdb_stat");
    if ((uint64_t)ms.ms_entries != total)
        bench_fail("%zu entries after reopen, %" PRIu64 " written", ms.ms_entries, total);
    mdb_txn_abort(txn);
    mdb_env_close(env);
}

/* One sync run: engine lmdb (0 = kvidx), nthr threads, g_secs; fresh
 * directory, verified after a reopen, removed. */
static void part_sync(result *r, int lmdb, int ti) {
    static const int m_total[NTHR] = {M_SY_1T, M_SY_2T, M_SY_8T}, m_per[NTHR] = {M_SY_1T_PER, M_SY_2T_PER, M_SY_8T_PER};
    int nthr = g_thr[ti], i;
    char dir[PATH_CAP], name[32];
    sy_thr t[8];
    kvidx *db = NULL;
    MDB_env *env = NULL;
    MDB_dbi dbi = 0;
    uint64_t total;
    double x;
    static char ph[32];
    snprintf(name, sizeof name, "sync-%s-%d", lmdb ? "lmdb" : "kvidx", nthr);
    bench_path_join(dir, g_dir, name);
    bench_rm_tree(dir);
    snprintf(ph, sizeof ph, "sync-%dt", nthr);
    g_bench_phase = ph;
    if (lmdb) env = lm_open(dir, &dbi);
    else db = kv_open(dir, KVIDX_CREATE | KVIDX_SYNC);
    for (i = 0; i < nthr; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].db = db, t[i].env = env, t[i].dbi = dbi;
        lat_init(&t[i].l, SY_LAT_CAP);
    }
    x = run_threads(t, sizeof *t, nthr, sy_main, g_secs, &total);
    progress(x, "puts/s");
    {   /* every thread's put latencies together: stderr only */
        lat all;
        lat_init(&all, (size_t)nthr * SY_LAT_CAP);
        for (i = 0; i < nthr; i++) {
            size_t k;
            for (k = 0; k < t[i].l.n; k++) lat_add(&all, t[i].l.v[k]);
            if (t[i].l.max > all.max) all.max = t[i].l.max;
            free(t[i].l.v);
        }
        fprintf(stderr, "bench_ops: %-7s %-22s put latency p50 %.0f us, p99 %.0f us, max %.0f us; thread puts",
                g_bench_part, g_bench_phase, lat_q(&all, 0.5) / 1e3, lat_q(&all, 0.99) / 1e3, (double)all.max / 1e3);
        for (i = 0; i < nthr; i++) fprintf(stderr, " %" PRIu64, t[i].rt.count);
        fputc('\n', stderr);
        free(all.v);
    }
    if (lmdb) r->b[m_total[ti]] = x, r->b[m_per[ti]] = x / nthr;
    else r->a[m_total[ti]] = x, r->a[m_per[ti]] = x / nthr;
    if (lmdb) mdb_env_close(env);
    else kv_close(db);
    g_bench_phase = "verify";
    if (lmdb) sy_verify_lmdb(dir, t, nthr, total);
    else sy_verify_kvidx(dir, t, nthr, total);
    bench_rm_tree(dir);
}

/* ==== 8. part compact ===================================================== */

/* The workload on key indices i < n: load version 1; overwrite the even
 * ones (version 2); delete those = 1 mod 4. 3/4 stay live: i = 0 and 2
 * mod 4 at version 2, i = 3 mod 4 at version 1. Then, before the loaded
 * compaction (stage 2): i = 0 mod 4 overwritten again (version 3), and
 * the writer overwrites i = 4j + 2 for j < wdone (version 3). */
static uint32_t expect_ver(uint64_t i, int stage, uint64_t wdone) {
    switch (i & 3) {
    case 1: return 0;
    case 3: return 1;
    case 0: return stage >= 2 ? 3 : 2;
    default: return stage >= 2 && (i >> 2) < wdone ? 3 : 2;
    }
}

static uint64_t live_count(void) {
    uint64_t i, c = 0;
    for (i = 0; i < g_n; i++) c += (i & 3) != 1;
    return c;
}

/* Untimed: every index holds what expect_ver says; the key count matches. */
static void cp_verify(kvidx *db, int stage, uint64_t wdone) {
    kvidx_stats st;
    uint64_t i;
    for (i = 0; i < g_n; i++) kv_expect(db, key_at(i), expect_ver(i, stage, wdone));
    kv_stat(db, &st);
    if (st.keys != live_count()) bench_fail("%" PRIu64 " keys, expected %" PRIu64, st.keys, live_count());
}

/* Disk bytes per live key after sync, close and reopen (so the section
 * buffers are trimmed the same way for every database measured). */
static kvidx *cp_reopen(kvidx *db, const char *dir, kvidx_stats *st) {
    kv_check(kvidx_sync(db), "kvidx_sync");
    kv_close(db);
    db = kv_open(dir, 0);
    kv_stat(db, st);
    return db;
}

static double per_rec(const kvidx_stats *st) { return (double)st->disk_bytes / (double)(st->keys ? st->keys : 1); }

/* stderr: the files of a database (after what) as kvidx_stat sees them. */
static void cp_files(const char *what, const kvidx_stats *st) {
    fprintf(stderr, "bench_ops: compact  %s: key logs %" PRIu64 " value logs %" PRIu64 " buffers %" PRIu64
                    " list logs %" PRIu64 " snapshots %" PRIu64 " (st_size), disk %" PRIu64 " (blocks)\n",
            what, st->key_log_bytes, st->value_log_bytes, st->buffer_bytes, st->list_log_bytes,
            st->list_snapshot_bytes, st->disk_bytes);
}

/* The writer and the reader under the loaded compaction. */
static kvidx *g_cdb;
static int g_go, g_stop;      /* start / stop flags */
static uint64_t g_wdone;      /* the writer's puts that returned (release: its puts happen before) */
static int g_in_cp;           /* kvidx_compact is running (set around the call) */
static lat g_wlat, g_rlat;
static uint64_t g_rmax_out;   /* the reader's longest get that started while no compaction ran */

static void *cp_writer(void *arg) {
    uint64_t j = 0, next;
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1ul); /* sleep to the microsecond, not the default 50 us slack */
    while (!__atomic_load_n(&g_go, __ATOMIC_ACQUIRE)) sleep_ns(100000);
    next = bench_now_ns();
    while (!__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE) && 4 * j + 2 < g_n) {
        uint8_t v[VLEN];
        uint64_t key = key_at(4 * j + 2), t0, t1;
        make_val(key, 3, v);
        t0 = bench_now_ns();
        kv_check(kvidx_put(g_cdb, key, v, VLEN), "kvidx_put (writer)");
        t1 = bench_now_ns();
        lat_add(&g_wlat, t1 - t0);
        __atomic_store_n(&g_wdone, ++j, __ATOMIC_RELEASE);
        next += WRITER_PERIOD_NS;
        if (next > t1) sleep_until(next);
        else if (t1 - next > 1000000) next = t1; /* after a long wait: no burst to catch up */
    }
    return NULL;
}

static void *cp_reader(void *arg) {
    uint64_t s = g_seed ^ 0x5EEDull, next, now;
    uint8_t buf[KVIDX_VALUE_MAX];
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1ul);
    while (!__atomic_load_n(&g_go, __ATOMIC_ACQUIRE)) sleep_ns(100000);
    next = bench_now_ns();
    while (!__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE)) {
        int b;
        for (b = 0; b < READER_BURST; b++) {
            uint64_t i = rnd(&s) % g_n, key = key_at(i), t0, t1;
            uint64_t wd = __atomic_load_n(&g_wdone, __ATOMIC_ACQUIRE);
            uint32_t want = expect_ver(i, 2, wd);
            int in_cp = __atomic_load_n(&g_in_cp, __ATOMIC_RELAXED);
            size_t len;
            int rc;
            t0 = bench_now_ns();
            rc = kvidx_get(g_cdb, key, buf, sizeof buf, &len);
            t1 = bench_now_ns();
            lat_add(&g_rlat, t1 - t0);
            if (!in_cp && t1 - t0 > g_rmax_out) g_rmax_out = t1 - t0;
            if (rc == KVIDX_NOTFOUND) {
                if (want) bench_fail("reader: key %016" PRIx64 ": missing during compaction", key);
                continue;
            }
            kv_check(rc, "kvidx_get (reader)");
            /* not yet acknowledged to this reader: the writer's new version or the old one */
            if (!want || !(val_is(buf, len, key, want) || ((i & 3) == 2 && want == 2 && val_is(buf, len, key, 3))))
                bench_fail("reader: key %016" PRIx64 ": wrong value during compaction (expected version %u)", key,
                           want);
        }
        next += READER_PERIOD_NS;
        now = bench_now_ns();
        if (next > now) sleep_until(next);
        else if (now - next > 1000000) next = now;
    }
    return NULL;
}

/* Load, overwrite, delete; disk per live key before, after kvidx_compact
 * and for a fresh load of the same live set; then a second compaction
 * under a paced writer and reader. */
static void part_compact(result *r) {
    char dir[PATH_CAP], fdir[PATH_CAP];
    kvidx *db, *fdb;
    kvidx_stats st0, st1, st2, sf;
    uint64_t i, t0, live = live_count(), wdone;
    double secs;
    pthread_t wt, rt;

    bench_path_join(dir, g_dir, "compact");
    bench_path_join(fdir, g_dir, "fresh");
    bench_rm_tree(dir);
    bench_rm_tree(fdir);
    db = kv_open(dir, KVIDX_CREATE);
    g_bench_phase = "load";
    t0 = bench_now_ns();
    for (i = 0; i < g_n; i++) kv_put(db, key_at(i), 1);
    r->a[M_LOAD] = rate(g_n, (double)(bench_now_ns() - t0) * 1e-9);
    progress(r->a[M_LOAD], "puts/s");
    g_bench_phase = "overwrite+delete";
    for (i = 0; i < g_n; i += 2) kv_put(db, key_at(i), 2);
    for (i = 1; i < g_n; i += 4) kv_check(kvidx_delete(db, key_at(i)), "kvidx_delete");
    db = cp_reopen(db, dir, &st0);
    if (st0.keys != live) bench_fail("%" PRIu64 " keys, expected %" PRIu64, st0.keys, live);
    r->a[M_GARBAGE] = 100.0 * (double)st0.garbage_bytes / (double)(st0.live_bytes + st0.garbage_bytes);
    r->a[M_DISK_BEFORE] = per_rec(&st0);
    progress(r->a[M_DISK_BEFORE], "B/rec before");

    g_bench_phase = "compact";
    t0 = bench_now_ns();
    kv_check(kvidx_compact(db), "kvidx_compact");
    secs = (double)(bench_now_ns() - t0) * 1e-9;
    kv_stat(db, &st1);
    if (st1.compactions != st0.shards)
        bench_fail("%" PRIu64 " shard compactions, expected %u", st1.compactions, st0.shards);
    r->a[M_CP_TIME] = secs;
    r->a[M_CP_RATE] = (double)st0.live_bytes / secs / 1e6;
    r->a[M_CP_FREED] = st0.disk_bytes > st1.disk_bytes ? (double)(st0.disk_bytes - st1.disk_bytes) / secs / 1e6 : 0;
    r->a[M_CP_HOLD] = (double)st1.compact_ms_max;
    progress(secs, "s");
    fprintf(stderr, "bench_ops: compact  live_bytes %" PRIu64 " garbage_bytes %" PRIu64 " disk %" PRIu64
                    " -> %" PRIu64 " (open handle), compact_ms_max %" PRIu64 "\n",
            st0.live_bytes, st0.garbage_bytes, st0.disk_bytes, st1.disk_bytes, st1.compact_ms_max);
    db = cp_reopen(db, dir, &st2);
    r->a[M_DISK_AFTER] = per_rec(&st2);
    progress(r->a[M_DISK_AFTER], "B/rec after");
    cp_files("after reopen", &st2);
    g_bench_phase = "verify";
    cp_verify(db, 1, 0);

    g_bench_phase = "fresh";
    fdb = kv_open(fdir, KVIDX_CREATE);
    for (i = 0; i < g_n; i++) {
        uint32_t ver = expect_ver(i, 1, 0);
        if (ver) kv_put(fdb, key_at(i), ver);
    }
    fdb = cp_reopen(fdb, fdir, &sf);
    r->b[M_DISK_BEFORE] = r->b[M_DISK_AFTER] = per_rec(&sf);
    progress(per_rec(&sf), "B/rec fresh");
    cp_files("fresh", &sf);
    cp_verify(fdb, 1, 0);
    kv_close(fdb);
    bench_rm_tree(fdir);

    g_bench_phase = "overwrite (loaded)";
    for (i = 0; i < g_n; i += 4) kv_put(db, key_at(i), 3);
    kv_check(kvidx_sync(db), "kvidx_sync");
    g_bench_phase = "compact (loaded)";
    lat_init(&g_wlat, LAT_CAP);
    lat_init(&g_rlat, LAT_CAP);
    g_cdb = db;
    if (pthread_create(&wt, NULL, cp_writer, NULL) || pthread_create(&rt, NULL, cp_reader, NULL))
        bench_fail("pthread_create");
    __atomic_store_n(&g_go, 1, __ATOMIC_RELEASE);
    sleep_ns(SETTLE_NS);
    __atomic_store_n(&g_in_cp, 1, __ATOMIC_RELAXED);
    t0 = bench_now_ns();
    kv_check(kvidx_compact(db), "kvidx_compact");
    secs = (double)(bench_now_ns() - t0) * 1e-9;
    __atomic_store_n(&g_in_cp, 0, __ATOMIC_RELAXED);
    sleep_ns(SETTLE_NS);
    __atomic_store_n(&g_stop, 1, __ATOMIC_RELEASE);
    pthread_join(wt, NULL);
    pthread_join(rt, NULL);
    kv_stat(db, &st1);
    if (st1.compactions != st0.shards)
        bench_fail("%" PRIu64 " shard compactions, expected %u", st1.compactions, st0.shards);
    wdone = g_wdone;
    r->a[M_L_TIME] = secs;
    r->a[M_L_HOLD] = (double)st1.compact_ms_max;
    r->a[M_L_PUTS] = (double)g_wlat.all;
    r->a[M_L_PUT_RATE] = rate(g_wlat.all, secs + 2 * SETTLE_NS * 1e-9);
    r->a[M_L_SLOW] = (double)g_wlat.slow;
    r->a[M_L_STALLED] = (double)g_wlat.slow_ns * 1e-9;
    r->a[M_L_PUT_P50] = lat_q(&g_wlat, 0.50) / 1e3;
    r->a[M_L_PUT_P99] = lat_q(&g_wlat, 0.99) / 1e3;
    r->a[M_L_PUT_P999] = lat_q(&g_wlat, 0.999) / 1e3;
    r->a[M_L_PUT_MAX] = (double)g_wlat.max / 1e3;
    r->a[M_L_GETS] = (double)g_rlat.all;
    r->a[M_L_GET_P50] = lat_q(&g_rlat, 0.50);
    r->a[M_L_GET_P99] = lat_q(&g_rlat, 0.99);
    r->a[M_L_GET_P999] = lat_q(&g_rlat, 0.999);
    r->a[M_L_GET_MAX] = (double)g_rlat.max;
    r->a[M_L_GET_MAX_OUT] = (double)g_rmax_out;
    progress(secs, "s");
    fprintf(stderr, "bench_ops: compact  loaded: %" PRIu64 " puts (max %.1f us, %" PRIu64 " >= 1 ms), %" PRIu64
                    " gets (max %" PRIu64 " ns), compact_ms_max %" PRIu64 "\n",
            g_wlat.all, (double)g_wlat.max / 1e3, g_wlat.slow, g_rlat.all, g_rlat.max, st1.compact_ms_max);
    g_bench_phase = "verify (loaded)";
    kv_close(db);
    db = kv_open(dir, 0);
    cp_verify(db, 2, wdone);
    kv_close(db);
    bench_rm_tree(dir);
    free(g_wlat.v);
    free(g_rlat.v);
}

/* ==== 9. the table, JSON ==================================================== */

static result g_res;
static char g_ver_lmdb[64], g_cpu[256], g_kernel[256], g_fs[512], g_load[128];

static void read_env(void) {
    int a, b, c;
    char line[512];
    FILE *f;
    mdb_version(&a, &b, &c);
    snprintf(g_ver_lmdb, sizeof g_ver_lmdb, "%d.%d.%d", a, b, c);
    bench_read_kernel(g_kernel, sizeof g_kernel);
    bench_read_cpu(g_cpu, sizeof g_cpu);
    snprintf(g_load, sizeof g_load, "unknown");
    if ((f = fopen("/proc/loadavg", "r"))) {
        if (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(g_load, sizeof g_load, "%.100s", line);
        }
        fclose(f);
    }
    bench_read_fs(g_dir, g_fs, sizeof g_fs);
}

/* a / b of metric m, or -1. */
static double ratio(int m) {
    double a = g_res.a[m], b = g_res.b[m];
    return a >= 0 && b > 0 ? a / b : -1;
}

/* The scaling rows, from the sync rows. */
static void derive(void) {
    double *v[2] = {g_res.a, g_res.b};
    int k;
    for (k = 0; k < 2; k++) {
        double one = v[k][M_SY_1T];
        if (one <= 0) continue;
        if (v[k][M_SY_2T] >= 0) v[k][M_SY_SCALE2] = v[k][M_SY_2T] / one;
        if (v[k][M_SY_8T] >= 0) v[k][M_SY_SCALE8] = v[k][M_SY_8T] / one;
    }
}

static const char *const g_cols[S_COUNT][3] = {
    {"value", "", ""},
    {"kvidx", "lmdb", "kvidx/lmdb"},
    {"kvidx", "fresh load", "kvidx/fresh"},
    {"kvidx", "", ""},
};

static void print_section_head(int s) {
    switch (s) {
    case S_FSYNC:
        printf("-- fsync floor: a %d-byte pwrite + fdatasync, each thread its own file, %.1f s per row --\n",
               FS_BLOCK, FSYNC_SECS);
        break;
    case S_SYNC:
        printf("-- durable puts of %d-byte values, one put per durable commit, each thread its own keys, %.1f s "
               "per run --\n",
               VLEN, g_secs);
        break;
    case S_COMPACT:
        printf("-- compaction alone: %" PRIu64 " keys loaded, the even ones overwritten, 1 mod 4 deleted: %" PRIu64
               " live; 8 shards --\n",
               g_n, live_count());
        break;
    default:
        printf("-- compaction under load: %" PRIu64 " more overwrites, then kvidx_compact while 1 writer puts "
               "(every %u us) and 1 reader gets (%d every %u us) --\n",
               (g_n + 3) / 4, WRITER_PERIOD_NS / 1000, READER_BURST, READER_PERIOD_NS / 1000);
    }
    printf("%-18s %-8s %-6s %14s", "metric", "unit", "better", g_cols[s][0]);
    if (g_cols[s][1][0]) printf(" %14s %14s", g_cols[s][1], g_cols[s][2]);
    printf("\n");
}

static void print_table(void) {
    char b1[64], b2[64], b3[64];
    int m, s = -1;
    printf("bench_ops: kvidx %s | LMDB %s\n", kvidx_version(), g_ver_lmdb);
    printf("values %d bytes, seed %" PRIu64 ", one run (a forked process per part and per sync run; kvidx and LMDB "
           "alternating)\n",
           VLEN, g_seed);
    printf("nproc %ld | CPU %s | kernel %s | data dir %s on %s | loadavg at start %s\n\n",
           sysconf(_SC_NPROCESSORS_ONLN), g_cpu, g_kernel, g_dir, g_fs, g_load);
    for (m = 0; m < M_COUNT; m++) {
        const struct metric *mt = &g_metrics[m];
        double q = ratio(m);
        if (mt->section != s) {
            if (s >= 0) printf("\n");
            s = mt->section;
            print_section_head(s);
        }
        printf("%-18s %-8s %-6s %14s", mt->name, mt->unit, mt->better > 0 ? "higher" : mt->better < 0 ? "lower" : "-",
               bench_fmt_num(b1, sizeof b1, g_res.a[m], mt->decimals));
        if (g_cols[s][1][0])
            printf(" %14s %14s", bench_fmt_num(b2, sizeof b2, g_res.b[m], mt->decimals),
                   bench_fmt_num(b3, sizeof b3, q, 2));
        printf("\n");
    }
    printf("\nLegend\n");
    printf(
        "  ratio = kvidx / peer. better=higher (puts/s, syncs/s, MB/s, x): > 1 favours kvidx; better=lower\n"
        "  (B/rec, s, ms, us, ns): < 1 favours kvidx. Values are %d bytes made from (key, version); every value\n"
        "  read is compared with the bytes expected, and a mismatch aborts the run.\n"
        "  fsync floor: what the filesystem under --dir charges for durability, whoever asks. -1t: one thread\n"
        "  rewrites one allocated 4 KiB block and fdatasyncs, for %.1f s (-mean: 1 / that rate); -append: the\n"
        "  file grows by 4 KiB each time (a journal commit per sync); -2t, -8t: 2 and 8 threads, each its own\n"
        "  file, all syncs per second together.\n"
        "  durable puts: kvidx opened with KVIDX_SYNC (kvidx_options_init defaults, compact_pct 0): a put returns\n"
        "  after its shard's buffer, key log and list log are fdatasync'ed, and writers of one shard that wait\n"
        "  together share one sync (group commit). LMDB %s with its default flags (no MDB_NOSYNC, no\n"
        "  MDB_NOMETASYNC): one write txn per put, commit = fdatasync of the data file + the meta page written\n"
        "  O_DSYNC; LMDB runs one write txn at a time. Keys: each thread its own random uint64 keys (LMDB: 8-byte\n"
        "  big-endian); a fresh directory per run, %.1f s (at most %u puts a thread); puts/s = all puts / the\n"
        "  longest thread's time; per-thr = that / threads; scaling = N threads / 1 thread, same engine. After\n"
        "  each run, untimed: close, reopen, read back every key written (kvidx also counts keys, LMDB entries).\n"
        "  compaction alone: kvidx defaults (8 shards, background sync every 1000 ms) but compact_pct 0. Load %" PRIu64
        "\n"
        "  random keys (version 1), overwrite the even indices (version 2), delete indices 1 mod 4 (one\n"
        "  op each). disk-*: kvidx_stat disk_bytes / keys after kvidx_sync, close and reopen (so every\n"
        "  database's section buffers are trimmed alike): before and after kvidx_compact; the fresh load column\n"
        "  is a new database loaded with exactly the live set (same keys, same versions, index order) -- its\n"
        "  kvidx/fresh on disk-after is the space goal (<= 1.10). garbage-before: garbage_bytes / (live_bytes +\n"
        "  garbage_bytes). compact-time: the kvidx_compact call (all shards, one after another, durable when it\n"
        "  returns); compact-live: live_bytes before it (32 B a key record + 256 B a value slot: what it\n"
        "  writes) / time; compact-freed: disk_bytes before - after, same open handle / time (MB = 10^6 B);\n"
        "  compact-ms-max: kvidx_stat's compact_ms_max, the longest one shard's writers were held.\n"
        "  compaction under load: on the same database (reopened, verified), the indices 0 mod 4 overwritten\n"
        "  again (version 3), then a writer overwrites indices 2 mod 4 (version 3, every shard) paced at a put\n"
        "  every %u us, and a reader gets uniform random indices (%d every %u us), from %.0f ms before\n"
        "  kvidx_compact to %.0f ms after it. The API does not say which shard a key is in, so the writer's\n"
        "  figures are over all its puts: a put to the shard being rewritten waits for that shard's whole\n"
        "  rewrite (put-max ~ compact-ms-max); puts>=1ms counts those, -total adds up their time; put-rate =\n"
        "  puts / (compact-time + %.1f s), against the %.0f a second the pacing asks for. get-*: every get of\n"
        "  the window; get-max-outside: the longest of those that started while kvidx_compact was not running\n"
        "  (the %.0f ms before and after): what this machine does to a thread anyway. Each get is checked:\n"
        "  deleted keys absent, keys the writer had acknowledged at version 3, the others at their version\n"
        "  (or 3, if in flight). Afterwards, untimed: close, reopen, every index read back.\n",
        VLEN, FSYNC_SECS, g_ver_lmdb, g_secs, SYNC_CAP, g_n, WRITER_PERIOD_NS / 1000, READER_BURST,
        READER_PERIOD_NS / 1000, SETTLE_NS / 1e6, SETTLE_NS / 1e6, 2 * SETTLE_NS / 1e9, 1e9 / WRITER_PERIOD_NS,
        SETTLE_NS / 1e6);
}

static void print_json(void) {
    static const char *const sec[S_COUNT] = {"fsync", "sync", "compact", "compact-loaded"};
    int m;
    printf("{\n  \"bench\": \"bench_ops\",\n  \"versions\": {\"kvidx\": ");
    bench_json_str(kvidx_version());
    bench_json_field("lmdb", g_ver_lmdb);
    printf("},\n  \"seed\": %" PRIu64 ", \"n\": %" PRIu64 ", \"value_bytes\": %d, \"sync_secs\": %.2f,\n  ", g_seed,
           g_n, VLEN, g_secs);
    bench_json_machine(g_cpu, g_kernel);
    bench_json_field("dir", g_dir);
    bench_json_field("fs", g_fs);
    bench_json_field("loadavg", g_load);
    printf(",\n  \"metrics\": [");
    for (m = 0; m < M_COUNT; m++) {
        const struct metric *mt = &g_metrics[m];
        int s = mt->section;
        printf("%s\n    {\"section\": \"%s\", \"name\": \"%s\", \"unit\": \"%s\", \"better\": \"%s\", \"%s\": ",
               m ? "," : "", sec[s], mt->name, mt->unit, mt->better > 0 ? "higher" : mt->better < 0 ? "lower" : "-",
               g_cols[s][0]);
        bench_json_num(g_res.a[m], mt->decimals);
        if (g_cols[s][1][0]) {
            printf(", \"%s\": ", g_cols[s][1]);
            bench_json_num(g_res.b[m], mt->decimals);
            printf(", \"%s\": ", g_cols[s][2]);
            bench_json_num(ratio(m), 4);
        }
        printf("}");
    }
    printf("\n  ]\n}\n");
}

/* ==== 10. children, signals, main ============================================ */

enum { P_FSYNC, P_SYNC, P_COMPACT };

/* What run_child's child runs: part p (sync: engine lmdb, thread index ti). */
typedef struct child_arg {
    int p, lmdb, ti;
} child_arg;

static void child_main(void *out, void *arg) {
    const child_arg *c = arg;
    result *r = out;
    int m;
    for (m = 0; m < M_COUNT; m++) r->a[m] = r->b[m] = -1;
    g_bench_part = c->p == P_FSYNC ? "fsync" : c->p == P_COMPACT ? "compact" : c->lmdb ? "lmdb" : "kvidx";
    if (c->p == P_FSYNC) part_fsync(r);
    else if (c->p == P_SYNC) part_sync(r, c->lmdb, c->ti);
    else part_compact(r);
}

/* Runs part p (sync: engine lmdb, thread index ti) in a forked child; its
 * result comes back through a pipe and is merged into g_res. Returns 0,
 * or -1 when the child failed (it said why). */
static int run_child(int p, int lmdb, int ti) {
    child_arg c;
    result out;
    int m;
    c.p = p, c.lmdb = lmdb, c.ti = ti;
    if (bench_run_child(child_main, &c, &out, sizeof out)) return -1;
    for (m = 0; m < M_COUNT; m++) {
        if (out.a[m] >= 0) g_res.a[m] = out.a[m];
        if (out.b[m] >= 0) g_res.b[m] = out.b[m];
    }
    return 0;
}

/* Removes what the parts create under --dir (a child that failed leaves
 * its files), then --dir itself if that leaves it empty: --dir may name a
 * directory holding other things. */
static void remove_data(void) {
    static const char *const names[] = {"compact", "fresh", "sync-kvidx-1", "sync-kvidx-2", "sync-kvidx-8",
                                        "sync-lmdb-1", "sync-lmdb-2", "sync-lmdb-8"};
    char p[PATH_CAP], name[32];
    unsigned i;
    for (i = 0; i < sizeof names / sizeof *names; i++) {
        bench_path_join(p, g_dir, names[i]);
        bench_rm_tree(p);
    }
    for (i = 0; i < 8; i++) {
        snprintf(name, sizeof name, "fsync-%u", i);
        bench_path_join(p, g_dir, name);
        bench_rm_tree(p);
    }
    rmdir(g_dir);
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--n N] [--seed X] [--secs S] [--parts fsync,sync,compact] [--dir D]\n"
            "          [--timeout S] [--json]\n"
            "  --n N        keys loaded in the compaction part (default 1000000)\n"
            "  --seed X     key seed (default 42)\n"
            "  --secs S     length of each durable-put run (engine x threads; default 2.5)\n"
            "  --parts      comma-separated subset of fsync, sync, compact (default all three)\n"
            "  --dir D      data directory, removed at the end (default bench/data/ops)\n"
            "  --timeout S  the whole run is killed after S seconds (default 600)\n"
            "  --json       print one JSON object on stdout instead of the table\n",
            argv0);
    exit(2);
}

static const char *part_name(int p) {
    static const char *const names[3] = {"fsync", "sync", "compact"};
    return names[p];
}

static void parse_parts(const char *list) { bench_parse_list("--parts", list, part_name, 3, "part", g_parts); }

int main(int argc, char **argv) {
    static const bench_opt opts[] = {
        {"--json", BENCH_OPT_FLAG, &g_json, NULL},
        {"--n", BENCH_OPT_U64, &g_n, NULL},
        {"--seed", BENCH_OPT_U64, &g_seed, NULL},
        {"--secs", BENCH_OPT_DOUBLE, &g_secs, NULL},
        {"--timeout", BENCH_OPT_UINT, &g_timeout, NULL},
        {"--dir", BENCH_OPT_STR, &g_dir, NULL},
        {"--parts", BENCH_OPT_FN, NULL, parse_parts},
        {NULL, 0, NULL, NULL},
    };
    int m, ti, lmdb, failed = 0;
    double t0 = bench_now_s();

    bench_parse_opts(argc, argv, opts, usage);
    if (g_n < 1000 || g_n > 100000000) bench_fail("--n must be in 1000..100000000");
    if (!(g_secs > 0 && g_secs <= 600)) bench_fail("--secs must be in (0, 600]");
    if (g_timeout < 10) bench_fail("--timeout must be >= 10");

    bench_arm(g_timeout);

    for (m = 0; m < M_COUNT; m++) g_res.a[m] = g_res.b[m] = -1;
    bench_mkdir_p(g_dir);
    read_env();
    fprintf(stderr, "bench_ops: kvidx %s, LMDB %s; n %" PRIu64 ", sync runs %.1f s, dir %s on %s, loadavg %s\n",
            kvidx_version(), g_ver_lmdb, g_n, g_secs, g_dir, g_fs, g_load);

    /* Parts in order; sync runs alternate engines so that load from
     * elsewhere falls on both alike. */
    if (g_parts[P_FSYNC] && run_child(P_FSYNC, 0, 0)) failed = 1;
    for (ti = 0; g_parts[P_SYNC] && !failed && ti < NTHR; ti++)
        for (lmdb = 0; !failed && lmdb < 2; lmdb++)
            if (run_child(P_SYNC, lmdb, ti)) failed = 1;
    if (g_parts[P_COMPACT] && !failed && run_child(P_COMPACT, 0, 0)) failed = 1;

    remove_data();
    if (failed) {
        if (g_bench_stopped) fprintf(stderr, "bench_ops: stopped by the signal; data removed\n");
        else fprintf(stderr, "bench_ops: a part failed (see above); run stopped, data removed\n");
        return bench_failed_status();
    }
    derive();
    if (g_json) print_json();
    else print_table();
    fprintf(stderr, "bench_ops: done in %.1f s\n", bench_now_s() - t0);
    return 0;
}
