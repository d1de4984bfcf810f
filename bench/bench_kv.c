/*
 * bench_kv.c -- the headline benchmark: kvidx against LMDB, RocksDB and
 * LevelDB, one workload, one key set, one run, ratios from that run.
 *
 *   bench_kv [--n N | --big] [--seed X] [--repeat R] [--engines a,b,..]
 *            [--dir D] [--rw-secs S] [--json]
 *
 * Contents
 *   1. options and constants
 *   2. failure: every error names the engine and the phase, then exits
 *   3. keys and values (derived from the seed, checked on every read)
 *   4. files and memory: bytes on disk, VmRSS (mkdir -p, rm -r: bench.h)
 *   5. engines: one table of functions per engine (kvidx, lmdb, rocksdb,
 *      leveldb) behind the same calls
 *   6. phases: one (engine, repeat) in a forked child
 *   7. rw: readers under a writer, latency histogram (kvidx and LMDB)
 *   8. results: medians, the table, JSON
 *   9. main
 *
 * Per engine and repeat, in its own process (so RSS is that engine's and
 * one engine's heap does not shape the next one's), on the same keys:
 * fillseq, fillseq-batch, fillrandom-batch (each in a fresh directory,
 * dropped after a sampled check), fillrandom (kept), RSS, close,
 * disk-fresh, reopen, warm-up, readrandom, readmissing, scan100, scanfull,
 * overwrite, delete (every other key), close, disk-live, then the rw phase
 * (kvidx, LMDB) and fillrandom-sync (2,000 durable puts). Every value read
 * is compared with the bytes expected; any mismatch, missing key,
 * unexpected key or out-of-order scan aborts the whole run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <leveldb/c.h>
#include <lmdb.h>
#include <rocksdb/c.h>

#include "kvidx.h"
#define BENCH_PROG "bench_kv"
#define BENCH_FILES
#include "bench.h"

/* ==== 1. options and constants ========================================= */

#define VLEN BENCH_VLEN      /* every value: the largest kvidx stores */
#define REC_BYTES 264.0      /* 8-byte key + 256-byte value: the payload of a record */
#define BATCH 1000           /* puts per batch / per LMDB write txn in the -batch rows */
#define SCAN_LEN 100         /* keys per scan100 scan */
#define CHECK_SAMPLES 10000  /* untimed spot checks after fills, overwrite, delete */
#define SYNC_PUTS 2000       /* fillrandom-sync: enough for a stable rate at ~250 us each */
#define LMDB_MAPSIZE (64ull << 30) /* room for 10M records several times over; sparse */
#define RW_READERS 2
#define PATH_CAP BENCH_PATH_CAP

static uint64_t g_n = 1000000;    /* keys */
static uint64_t g_seed = 42;
static int g_repeat = 3;
static double g_rw_secs = 3.0;
static int g_json;
static const char *g_dir = "bench/data/kv";

/* ==== 2. failure ======================================================== */

/* bench_fail (bench.h): "bench_kv: ENGINE PHASE: message", then exit (a
 * child: _exit, so no library destructor runs beside live threads); the
 * parent sees the failure and stops the whole run. g_bench_part is the
 * engine, g_bench_phase the phase. */

/* ==== 3. keys and values ================================================ */

static uint64_t *g_keys;   /* generation order: the "random order" of every phase */
static uint64_t *g_sorted; /* the same keys ascending: fillseq order, scan expectations */

/* Distinct by construction: seed*C + i are distinct for i < N, and
 * bench_mix (splitmix64's finalizer: add, xor-shifts, odd multiplies) is a
 * bijection of uint64, so no check is needed. */
static uint64_t key_at(uint64_t i) { return bench_mix(g_seed * 0x100000001B3ull + i); }


/* The peers compare keys as bytes: big-endian makes byte order numeric. */
static void be_put(uint8_t *p, uint64_t x) {
    int i;
    for (i = 7; i >= 0; i--) {
        p[i] = (uint8_t)x;
        x >>= 8;
    }
}

static uint64_t be_get(const void *p) {
    const uint8_t *q = p;
    uint64_t x = 0;
    int i;
    for (i = 0; i < 8; i++) x = x << 8 | q[i];
    return x;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int in_set(uint64_t key) {
    return bsearch(&key, g_sorted, (size_t)g_n, sizeof key, cmp_u64) != NULL;
}

/* What a get found, compared with up to two expected values. */
enum { G_MISS, G_A, G_B, G_BAD };

static int val_match(const void *p, size_t len, const uint8_t *a, const uint8_t *b) {
    if (len == VLEN && a && !memcmp(p, a, VLEN)) return G_A;
    if (len == VLEN && b && !memcmp(p, b, VLEN)) return G_B;
    return G_BAD;
}

/* ==== 4. files and memory =============================================== */

/* Blocks allocated to every file under path, in bytes (what df loses). */
static uint64_t disk_bytes(const char *path) {
    bench_du(path);
    return g_bench_du.blocks;
}

/* VmRSS of this process, bytes. */
static double rss_bytes(void) {
    char line[256];
    double kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) bench_fail("/proc/self/status: %s", strerror(errno));
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atof(line + 6);
    fclose(f);
    if (kb < 0) bench_fail("no VmRSS in /proc/self/status");
    return kb * 1024.0;
}

/* ==== 5. engines ========================================================= */

/* Modes of open: the default write path (no fsync per operation), the
 * engine's best batched mode, and one fsync'ed write per operation. */
enum { MODE_PLAIN, MODE_BATCH, MODE_SYNC };

typedef struct db db;

/* Read state of one thread on one db (LMDB: a read txn and a cursor kept
 * reset between uses; the others: a value buffer at most). */
typedef struct rd {
    db *d;
    MDB_txn *txn;
    MDB_cursor *cur;
    uint8_t buf[VLEN];
} rd;

/* A scan calls this per key, ascending; non-zero stops it. Same shape as
 * kvidx_scan_fn so kvidx calls it directly. */
typedef int (*visit_fn)(void *ud, uint64_t key, const void *val, size_t len);

typedef struct engine {
    const char *name;
    int has_rw; /* runs the rw phase */
    void (*open)(db *d, const char *dir, int mode);
    void (*close)(db *d);
    void (*rd_init)(db *d, rd *r);
    void (*rd_fini)(rd *r);
    /* G_MISS, or how the value found compares with a and b (either NULL) */
    int (*get)(rd *r, uint64_t key, const uint8_t *a, const uint8_t *b);
    /* visits keys >= from until fn returns non-zero or the keys end */
    void (*scan)(rd *r, uint64_t from, visit_fn fn, void *ud);
    void (*put)(db *d, uint64_t key, const uint8_t *val);
    /* puts keys[0..n) with version ver as one batch; append: keys ascend
     * past every stored key */
    void (*put_batch)(db *d, const uint64_t *keys, size_t n, uint32_t ver, int append);
    void (*del)(db *d, uint64_t key); /* the key must exist */
} engine;

struct db {
    const engine *e;
    kvidx *kv;
    MDB_env *env;
    MDB_dbi dbi;
    rocksdb_t *rk;
    rocksdb_options_t *rk_o;
    rocksdb_writeoptions_t *rk_w;
    rocksdb_readoptions_t *rk_r;
    rocksdb_writebatch_t *rk_b;
    leveldb_t *lv;
    leveldb_options_t *lv_o;
    leveldb_writeoptions_t *lv_w;
    leveldb_readoptions_t *lv_r;
    leveldb_writebatch_t *lv_b;
    rd main; /* the opening thread's reader */
};

/* Readers that need no per-thread state (kvidx, RocksDB, LevelDB). */
static void rd_plain_init(db *d, rd *r) { r->d = d; }

static void rd_plain_fini(rd *r) { (void)r; }

/* RocksDB and LevelDB report errors as malloc'd strings. */
static void err_check(char *err, const char *what) {
    if (err) bench_fail("%s: %s", what, err);
}

/* ---- kvidx --------------------------------------------------------------- */

static void kv_check(int rc, const char *what) {
    if (rc) bench_fail("%s: %s", what, kvidx_strerror(rc));
}

static void kv_open(db *d, const char *dir, int mode) {
    kvidx_options o;
    kvidx_options_init(&o); /* 8 shards, background sync every 1000 ms */
    if (mode == MODE_SYNC) o.flags |= KVIDX_SYNC;
    kv_check(kvidx_open(dir, &o, &d->kv), "kvidx_open");
}

static void kv_close(db *d) {
    kv_check(kvidx_close(d->kv), "kvidx_close");
    d->kv = NULL;
}

static int kv_get(rd *r, uint64_t key, const uint8_t *a, const uint8_t *b) {
    size_t len;
    int rc = kvidx_get(r->d->kv, key, r->buf, sizeof r->buf, &len);
    if (rc == KVIDX_NOTFOUND) return G_MISS;
    kv_check(rc, "kvidx_get");
    return val_match(r->buf, len, a, b);
}

static void kv_scan(rd *r, uint64_t from, visit_fn fn, void *ud) {
    kv_check(kvidx_scan(r->d->kv, from, UINT64_MAX, fn, ud), "kvidx_scan");
}

static void kv_put(db *d, uint64_t key, const uint8_t *val) {
    kv_check(kvidx_put(d->kv, key, val, VLEN), "kvidx_put");
}

/* kvidx has no batch API: a batch is the same plain puts. */
static void kv_put_batch(db *d, const uint64_t *keys, size_t n, uint32_t ver, int append) {
    uint8_t v[VLEN];
    size_t i;
    (void)append;
    for (i = 0; i < n; i++) {
        bench_make_val(keys[i], ver, v);
        kv_check(kvidx_put(d->kv, keys[i], v, VLEN), "kvidx_put");
    }
}

static void kv_del(db *d, uint64_t key) {
    kv_check(kvidx_delete(d->kv, key), "kvidx_delete");
}

/* ---- LMDB ---------------------------------------------------------------- */

static void lm_check(int rc, const char *what) {
    if (rc) bench_fail("%s: %s", what, mdb_strerror(rc));
}

/* Default: MDB_NOSYNC (LMDB's own default fsyncs every commit). Batch:
 * MDB_WRITEMAP | MDB_NOSYNC. Sync: LMDB's default flags. */
static void lm_open(db *d, const char *dir, int mode) {
    unsigned flags = mode == MODE_SYNC ? 0u : mode == MODE_BATCH ? MDB_WRITEMAP | MDB_NOSYNC : MDB_NOSYNC;
    MDB_txn *t;
    if (mkdir(dir, 0755) && errno != EEXIST) bench_fail("mkdir %s: %s", dir, strerror(errno));
    lm_check(mdb_env_create(&d->env), "mdb_env_create");
    lm_check(mdb_env_set_mapsize(d->env, (size_t)LMDB_MAPSIZE), "mdb_env_set_mapsize");
    lm_check(mdb_env_open(d->env, dir, flags, 0644), "mdb_env_open");
    lm_check(mdb_txn_begin(d->env, NULL, 0, &t), "mdb_txn_begin");
    lm_check(mdb_dbi_open(t, NULL, 0, &d->dbi), "mdb_dbi_open");
    lm_check(mdb_txn_commit(t), "mdb_txn_commit");
}

static void lm_close(db *d) {
    mdb_env_close(d->env);
    d->env = NULL;
}

/* One read txn per thread, kept reset; each get or scan renews it and
 * resets it after: LMDB's fast path for many independent reads. */
static void lm_rd_init(db *d, rd *r) {
    r->d = d;
    lm_check(mdb_txn_begin(d->env, NULL, MDB_RDONLY, &r->txn), "mdb_txn_begin(RDONLY)");
    lm_check(mdb_cursor_open(r->txn, d->dbi, &r->cur), "mdb_cursor_open");
    mdb_txn_reset(r->txn);
}

static void lm_rd_fini(rd *r) {
    mdb_cursor_close(r->cur);
    mdb_txn_abort(r->txn);
    r->cur = NULL, r->txn = NULL;
}

static int lm_get(rd *r, uint64_t key, const uint8_t *a, const uint8_t *b) {
    uint8_t kb[8];
    MDB_val k, v;
    int rc, g;
    be_put(kb, key);
    k.mv_size = 8, k.mv_data = kb;
    lm_check(mdb_txn_renew(r->txn), "mdb_txn_renew");
    rc = mdb_get(r->txn, r->d->dbi, &k, &v);
    if (rc && rc != MDB_NOTFOUND) lm_check(rc, "mdb_get");
    /* v points into the map: compare before the reset */
    g = rc == MDB_NOTFOUND ? G_MISS : val_match(v.mv_data, v.mv_size, a, b);
    mdb_txn_reset(r->txn);
    return g;
}

static void lm_scan(rd *r, uint64_t from, visit_fn fn, void *ud) {
    uint8_t kb[8];
    MDB_val k, v;
    int rc;
    be_put(kb, from);
    k.mv_size = 8, k.mv_data = kb;
    lm_check(mdb_txn_renew(r->txn), "mdb_txn_renew");
    lm_check(mdb_cursor_renew(r->txn, r->cur), "mdb_cursor_renew");
    /* Bounded: the visitor fails past the N keys expected. */
    for (rc = mdb_cursor_get(r->cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(r->cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) bench_fail("mdb_cursor_get: a %zu-byte key", k.mv_size);
        if (fn(ud, be_get(k.mv_data), v.mv_data, v.mv_size)) break;
    }
    if (rc && rc != MDB_NOTFOUND) lm_check(rc, "mdb_cursor_get");
    mdb_txn_reset(r->txn);
}

static void lm_put(db *d, uint64_t key, const uint8_t *val) {
    uint8_t kb[8];
    MDB_val k, v;
    MDB_txn *t;
    be_put(kb, key);
    k.mv_size = 8, k.mv_data = kb;
    v.mv_size = VLEN, v.mv_data = (void *)val;
    lm_check(mdb_txn_begin(d->env, NULL, 0, &t), "mdb_txn_begin");
    lm_check(mdb_put(t, d->dbi, &k, &v, 0), "mdb_put");
    lm_check(mdb_txn_commit(t), "mdb_txn_commit");
}

static void lm_put_batch(db *d, const uint64_t *keys, size_t n, uint32_t ver, int append) {
    uint8_t kb[8], val[VLEN];
    MDB_val k, v;
    MDB_txn *t;
    size_t i;
    k.mv_size = 8, k.mv_data = kb;
    lm_check(mdb_txn_begin(d->env, NULL, 0, &t), "mdb_txn_begin");
    for (i = 0; i < n; i++) {
        be_put(kb, keys[i]);
        bench_make_val(keys[i], ver, val);
        v.mv_size = VLEN, v.mv_data = val;
        lm_check(mdb_put(t, d->dbi, &k, &v, append ? MDB_APPEND : 0), "mdb_put");
    }
    lm_check(mdb_txn_commit(t), "mdb_txn_commit");
}

static void lm_del(db *d, uint64_t key) {
    uint8_t kb[8];
    MDB_val k;
    MDB_txn *t;
    be_put(kb, key);
    k.mv_size = 8, k.mv_data = kb;
    lm_check(mdb_txn_begin(d->env, NULL, 0, &t), "mdb_txn_begin");
    lm_check(mdb_del(t, d->dbi, &k, NULL), "mdb_del");
    lm_check(mdb_txn_commit(t), "mdb_txn_commit");
}

/* ---- RocksDB --------------------------------------------------------------- */

/* rocksdb_options_create + create_if_missing, every other option at its
 * default; write options default (WAL on, sync=0) except in MODE_SYNC. */
static void rk_open(db *d, const char *dir, int mode) {
    char *err = NULL;
    d->rk_o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(d->rk_o, 1);
    d->rk = rocksdb_open(d->rk_o, dir, &err);
    err_check(err, "rocksdb_open");
    d->rk_w = rocksdb_writeoptions_create();
    if (mode == MODE_SYNC) rocksdb_writeoptions_set_sync(d->rk_w, 1);
    d->rk_r = rocksdb_readoptions_create();
    d->rk_b = rocksdb_writebatch_create();
}

static void rk_close(db *d) {
    rocksdb_close(d->rk);
    rocksdb_writebatch_destroy(d->rk_b);
    rocksdb_readoptions_destroy(d->rk_r);
    rocksdb_writeoptions_destroy(d->rk_w);
    rocksdb_options_destroy(d->rk_o);
    d->rk = NULL;
}

static int rk_get(rd *r, uint64_t key, const uint8_t *a, const uint8_t *b) {
    uint8_t kb[8];
    char *err = NULL, *v;
    size_t len;
    int g;
    be_put(kb, key);
    v = rocksdb_get(r->d->rk, r->d->rk_r, (const char *)kb, 8, &len, &err);
    err_check(err, "rocksdb_get");
    if (!v) return G_MISS;
    g = val_match(v, len, a, b);
    rocksdb_free(v);
    return g;
}

static void rk_scan(rd *r, uint64_t from, visit_fn fn, void *ud) {
    uint8_t kb[8];
    char *err = NULL;
    rocksdb_iterator_t *it = rocksdb_create_iterator(r->d->rk, r->d->rk_r);
    be_put(kb, from);
    /* Bounded: the visitor fails past the N keys expected. */
    for (rocksdb_iter_seek(it, (const char *)kb, 8); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t klen, vlen;
        const char *k = rocksdb_iter_key(it, &klen), *v = rocksdb_iter_value(it, &vlen);
        if (klen != 8) bench_fail("rocksdb iterator: a %zu-byte key", klen);
        if (fn(ud, be_get(k), v, vlen)) break;
    }
    rocksdb_iter_get_error(it, &err);
    err_check(err, "rocksdb iterator");
    rocksdb_iter_destroy(it);
}

static void rk_put(db *d, uint64_t key, const uint8_t *val) {
    uint8_t kb[8];
    char *err = NULL;
    be_put(kb, key);
    rocksdb_put(d->rk, d->rk_w, (const char *)kb, 8, (const char *)val, VLEN, &err);
    err_check(err, "rocksdb_put");
}

static void rk_put_batch(db *d, const uint64_t *keys, size_t n, uint32_t ver, int append) {
    uint8_t kb[8], val[VLEN];
    char *err = NULL;
    size_t i;
    (void)append;
    rocksdb_writebatch_clear(d->rk_b);
    for (i = 0; i < n; i++) {
        be_put(kb, keys[i]);
        bench_make_val(keys[i], ver, val);
        rocksdb_writebatch_put(d->rk_b, (const char *)kb, 8, (const char *)val, VLEN);
    }
    rocksdb_write(d->rk, d->rk_w, d->rk_b, &err);
    err_check(err, "rocksdb_write");
}

static void rk_del(db *d, uint64_t key) {
    uint8_t kb[8];
    char *err = NULL;
    be_put(kb, key);
    rocksdb_delete(d->rk, d->rk_w, (const char *)kb, 8, &err);
    err_check(err, "rocksdb_delete");
}

/* ---- LevelDB --------------------------------------------------------------- */

/* The same shape as RocksDB: create_if_missing, defaults otherwise. */
static void lv_open(db *d, const char *dir, int mode) {
    char *err = NULL;
    d->lv_o = leveldb_options_create();
    leveldb_options_set_create_if_missing(d->lv_o, 1);
    d->lv = leveldb_open(d->lv_o, dir, &err);
    err_check(err, "leveldb_open");
    d->lv_w = leveldb_writeoptions_create();
    if (mode == MODE_SYNC) leveldb_writeoptions_set_sync(d->lv_w, 1);
    d->lv_r = leveldb_readoptions_create();
    d->lv_b = leveldb_writebatch_create();
}

static void lv_close(db *d) {
    leveldb_close(d->lv);
    leveldb_writebatch_destroy(d->lv_b);
    leveldb_readoptions_destroy(d->lv_r);
    leveldb_writeoptions_destroy(d->lv_w);
    leveldb_options_destroy(d->lv_o);
    d->lv = NULL;
}

static int lv_get(rd *r, uint64_t key, const uint8_t *a, const uint8_t *b) {
    uint8_t kb[8];
    char *err = NULL, *v;
    size_t len;
    int g;
    be_put(kb, key);
    v = leveldb_get(r->d->lv, r->d->lv_r, (const char *)kb, 8, &len, &err);
    err_check(err, "leveldb_get");
    if (!v) return G_MISS;
    g = val_match(v, len, a, b);
    leveldb_free(v);
    return g;
}

static void lv_scan(rd *r, uint64_t from, visit_fn fn, void *ud) {
    uint8_t kb[8];
    char *err = NULL;
    leveldb_iterator_t *it = leveldb_create_iterator(r->d->lv, r->d->lv_r);
    be_put(kb, from);
    /* Bounded: the visitor fails past the N keys expected. */
    for (leveldb_iter_seek(it, (const char *)kb, 8); leveldb_iter_valid(it); leveldb_iter_next(it)) {
        size_t klen, vlen;
        const char *k = leveldb_iter_key(it, &klen), *v = leveldb_iter_value(it, &vlen);
        if (klen != 8) bench_fail("leveldb iterator: a %zu-byte key", klen);
        if (fn(ud, be_get(k), v, vlen)) break;
    }
    leveldb_iter_get_error(it, &err);
    err_check(err, "leveldb iterator");
    leveldb_iter_destroy(it);
}

static void lv_put(db *d, uint64_t key, const uint8_t *val) {
    uint8_t kb[8];
    char *err = NULL;
    be_put(kb, key);
    leveldb_put(d->lv, d->lv_w, (const char *)kb, 8, (const char *)val, VLEN, &err);
    err_check(err, "leveldb_put");
}

static void lv_put_batch(db *d, const uint64_t *keys, size_t n, uint32_t ver, int append) {
    uint8_t kb[8], val[VLEN];
    char *err = NULL;
    size_t i;
    (void)append;
    leveldb_writebatch_clear(d->lv_b);
    for (i = 0; i < n; i++) {
        be_put(kb, keys[i]);
        bench_make_val(keys[i], ver, val);
        leveldb_writebatch_put(d->lv_b, (const char *)kb, 8, (const char *)val, VLEN);
    }
    leveldb_write(d->lv, d->lv_w, d->lv_b, &err);
    err_check(err, "leveldb_write");
}

static void lv_del(db *d, uint64_t key) {
    uint8_t kb[8];
    char *err = NULL;
    be_put(kb, key);
    leveldb_delete(d->lv, d->lv_w, (const char *)kb, 8, &err);
    err_check(err, "leveldb_delete");
}

/* ---- the table ------------------------------------------------------------ */

#define NENG 4
static const engine g_engines[NENG] = {
    {"kvidx", 1, kv_open, kv_close, rd_plain_init, rd_plain_fini, kv_get, kv_scan, kv_put, kv_put_batch, kv_del},
    {"lmdb", 1, lm_open, lm_close, lm_rd_init, lm_rd_fini, lm_get, lm_scan, lm_put, lm_put_batch, lm_del},
    {"rocksdb", 0, rk_open, rk_close, rd_plain_init, rd_plain_fini, rk_get, rk_scan, rk_put, rk_put_batch, rk_del},
    {"leveldb", 0, lv_open, lv_close, rd_plain_init, rd_plain_fini, lv_get, lv_scan, lv_put, lv_put_batch, lv_del},
};

static const char *engine_name(int e) { return g_engines[e].name; }

static void db_open(db *d, const engine *e, const char *dir, int mode) {
    memset(d, 0, sizeof *d);
    d->e = e;
    e->open(d, dir, mode);
    e->rd_init(d, &d->main);
}

static void db_close(db *d) {
    d->e->rd_fini(&d->main);
    d->e->close(d);
}

/* ==== 6. phases ========================================================== */

enum {
    M_FILLSEQ, M_FILLSEQ_BATCH, M_FILLRANDOM_BATCH, M_FILLRANDOM, M_RSS_BASE, M_RSS, M_RSS_ENGINE,
    M_DISK_FRESH, M_DISK_FRESH_X, M_REOPEN_S, M_REOPEN_RATE, M_READRANDOM, M_READMISSING,
    M_SCAN100, M_SCANFULL, M_OVERWRITE, M_DELETE, M_DISK_LIVE, M_DISK_LIVE_X, M_FILL_SYNC,
    M_RW_READS, M_RW_WRITES, M_RW_P50, M_RW_P99, M_RW_P999, M_RW_MAX, M_COUNT
};

static const struct metric {
    const char *name, *unit;
    int lower_better; /* for MiB, bytes, seconds, ns: kvidx/peer < 1 favours kvidx */
    int decimals;
} g_metrics[M_COUNT] = {
    {"fillseq", "ops/s", 0, 0},
    {"fillseq-batch", "ops/s", 0, 0},
    {"fillrandom-batch", "ops/s", 0, 0},
    {"fillrandom", "ops/s", 0, 0},
    {"rss-base", "MiB", 1, 1},
    {"rss-fillrandom", "MiB", 1, 1},
    {"rss-engine", "MiB", 1, 1},
    {"disk-fresh", "B/rec", 1, 1},
    {"disk-fresh-x264", "x264", 1, 3},
    {"reopen", "s", 1, 4},
    {"reopen-rate", "keys/s", 0, 0},
    {"readrandom", "ops/s", 0, 0},
    {"readmissing", "ops/s", 0, 0},
    {"scan100", "keys/s", 0, 0},
    {"scanfull", "keys/s", 0, 0},
    {"overwrite", "ops/s", 0, 0},
    {"delete", "ops/s", 0, 0},
    {"disk-live", "B/rec", 1, 1},
    {"disk-live-x264", "x264", 1, 3},
    {"fillrandom-sync", "ops/s", 0, 0},
    {"rw-reads", "ops/s", 0, 0},
    {"rw-writes", "ops/s", 0, 0},
    {"rw-read-p50", "ns", 1, 0},
    {"rw-read-p99", "ns", 1, 0},
    {"rw-read-p99.9", "ns", 1, 0},
    {"rw-read-max", "ns", 1, 0},
};

/* What one (engine, repeat) child sends back through its pipe; -1 = not
 * measured. */
typedef struct result {
    double v[M_COUNT];
} result;

static int g_rep; /* this child's repeat, for progress lines */

static void phase(const char *name) { g_bench_phase = name; }

static void progress(double v, const char *unit) {
    fprintf(stderr, "bench_kv: %-7s rep %d/%d  %-16s %14.*f %s\n", g_bench_part, g_rep + 1, g_repeat, g_bench_phase,
            v < 100 ? 4 : 0, v, unit);
}

static double rate(uint64_t ops, double secs) { return (double)ops / (secs > 0 ? secs : 1e-9); }

static void expect_val(rd *r, uint64_t key, uint32_t ver) {
    uint8_t v[VLEN];
    int g;
    bench_make_val(key, ver, v);
    g = r->d->e->get(r, key, v, NULL);
    if (g != G_A)
        bench_fail("key %016" PRIx64 ": %s (expected version %u)", key, g == G_MISS ? "missing" : "wrong value", ver);
}

static void expect_missing(rd *r, uint64_t key) {
    int g = r->d->e->get(r, key, NULL, NULL);
    if (g != G_MISS) bench_fail("key %016" PRIx64 ": present, expected missing", key);
}

/* Untimed: CHECK_SAMPLES random keys of the set hold version ver. */
static void check_sample(db *d, uint32_t ver, uint64_t salt) {
    uint64_t i;
    for (i = 0; i < CHECK_SAMPLES; i++) expect_val(&d->main, g_keys[bench_mix(i ^ salt) % g_n], ver);
}

/* Scan expectations: the keys visited are g_sorted[pos..] in order, each
 * with version ver; the scan stops after want keys. */
typedef struct scan_chk {
    uint64_t pos, seen, want;
    uint32_t ver;
} scan_chk;

static int scan_visit(void *ud, uint64_t key, const void *val, size_t len) {
    scan_chk *c = ud;
    uint8_t v[VLEN];
    if (c->pos >= g_n) bench_fail("scan: key %016" PRIx64 " after the last key of the set", key);
    if (key != g_sorted[c->pos])
        bench_fail("scan: key %016" PRIx64 " where %016" PRIx64 " was expected (order, missing or foreign key)", key,
                   g_sorted[c->pos]);
    bench_make_val(key, c->ver, v);
    if (len != VLEN || memcmp(val, v, VLEN)) bench_fail("scan: key %016" PRIx64 ": wrong value", key);
    c->pos++;
    c->seen++;
    return c->seen >= c->want;
}

/* Fills a fresh directory with every key in order[], version 1, one put
 * at a time or in batches of BATCH; returns puts/s. The db stays open. */
static double fill(db *d, const engine *e, const char *dir, int mode, const uint64_t *order, int batch,
                   int append) {
    uint8_t v[VLEN];
    uint64_t i;
    double t;
    bench_rm_tree(dir);
    db_open(d, e, dir, mode);
    t = bench_now_s();
    if (batch) {
        for (i = 0; i < g_n; i += BATCH)
            e->put_batch(d, order + i, (size_t)(g_n - i < BATCH ? g_n - i : BATCH), 1, append);
    } else {
        for (i = 0; i < g_n; i++) {
            bench_make_val(order[i], 1, v);
            e->put(d, order[i], v);
        }
    }
    return rate(g_n, bench_now_s() - t);
}

/* A fill whose database is dropped: time, spot check, close, remove. */
static void fill_dropped(const engine *e, const char *base, const char *name, int mode,
                         const uint64_t *order, int batch, int append, result *res, int m) {
    char dir[PATH_CAP];
    db d;
    phase(name);
    bench_path_join(dir, base, name);
    res->v[m] = fill(&d, e, dir, mode, order, batch, append);
    progress(res->v[m], "ops/s");
    check_sample(&d, 1, 0x5A5A ^ (uint64_t)m);
    db_close(&d);
    bench_rm_tree(dir);
    sync(); /* what this phase left dirty must not be written back during the next */
}

/* ==== 7. rw: readers under a writer ======================================= */

/* Latency histogram: exact below 16 ns, then 8 buckets per power of two
 * (12.5% wide), so p99.9 of millions of reads costs 4 KiB per thread. */
#define HIST_BUCKETS 512

typedef struct hist {
    uint64_t b[HIST_BUCKETS];
    uint64_t n, max;
} hist;

static unsigned hist_bucket(uint64_t ns) {
    unsigned lg;
    if (ns < 16) return (unsigned)ns;
    lg = 63u - (unsigned)__builtin_clzll(ns); /* >= 4; the top bucket is 16 + 59*8 + 7 = 495 */
    return 16u + (lg - 4u) * 8u + (unsigned)((ns >> (lg - 3u)) & 7u);
}

/* The largest ns in bucket i. */
static uint64_t hist_upper(unsigned i) {
    unsigned lg, sub;
    if (i < 16) return i;
    lg = (i - 16) / 8 + 4, sub = (i - 16) % 8;
    if (lg >= 60) return UINT64_MAX;
    return ((uint64_t)(9 + sub) << (lg - 3)) - 1;
}

static void hist_add(hist *h, uint64_t ns) {
    h->b[hist_bucket(ns)]++;
    h->n++;
    if (ns > h->max) h->max = ns;
}

/* The upper bound of the bucket holding quantile q (never above max). */
static uint64_t hist_q(const hist *h, double q) {
    uint64_t rank = (uint64_t)(q * (double)h->n), seen = 0;
    unsigned i;
    if (!h->n) return 0;
    if (rank >= h->n) rank = h->n - 1;
    for (i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen > rank) return hist_upper(i) < h->max ? hist_upper(i) : h->max;
    }
    return h->max;
}

typedef struct rw_thr {
    db *d;
    uint64_t seed, ops;
    hist h;
} rw_thr;

static int g_stop; /* set by the main thread when the time is up; __atomic access */

/* Kept keys are the odd generation indices (delete removed the even). */
static uint64_t live_key(uint64_t x) { return g_keys[2 * (x % (g_n / 2)) + 1]; }

static void *rw_reader(void *arg) {
    rw_thr *c = arg;
    const engine *e = c->d->e;
    uint8_t a[VLEN], b[VLEN];
    uint64_t x = c->seed, ops = 0;
    rd r;
    memset(&r, 0, sizeof r);
    e->rd_init(c->d, &r);
    /* Bounded by time: the main thread sets g_stop after --rw-secs. */
    while (!__atomic_load_n(&g_stop, __ATOMIC_RELAXED)) {
        uint64_t key = live_key(x = bench_mix(x)), t0, t1;
        int g;
        bench_make_val(key, 1, a);
        bench_make_val(key, 2, b);
        t0 = bench_now_ns();
        g = e->get(&r, key, a, b);
        t1 = bench_now_ns();
        if (g != G_A && g != G_B)
            bench_fail("key %016" PRIx64 ": %s (expected version 1 or 2)", key,
                       g == G_MISS ? "missing" : "wrong value");
        hist_add(&c->h, t1 - t0);
        ops++;
    }
    e->rd_fini(&r);
    c->ops = ops;
    return NULL;
}

static void *rw_writer(void *arg) {
    rw_thr *c = arg;
    uint8_t v[VLEN];
    uint64_t x = c->seed, ops = 0;
    /* Bounded by time, like the readers. Versions alternate 1, 2. */
    while (!__atomic_load_n(&g_stop, __ATOMIC_RELAXED)) {
        uint64_t key = live_key(x = bench_mix(x));
        bench_make_val(key, (uint32_t)(1 + (ops & 1)), v);
        c->d->e->put(c->d, key, v);
        ops++;
    }
    c->ops = ops;
    return NULL;
}

/* RW_READERS readers doing checked random gets and one writer
 * overwriting random live keys, for g_rw_secs, on the live keys of d. */
static void rw_phase(db *d, result *res) {
    rw_thr th[RW_READERS + 1];
    pthread_t tid[RW_READERS + 1];
    hist all;
    uint64_t reads = 0, deadline;
    double t;
    int i, j;
    memset(th, 0, sizeof th);
    memset(&all, 0, sizeof all);
    __atomic_store_n(&g_stop, 0, __ATOMIC_RELAXED);
    t = bench_now_s();
    for (i = 0; i <= RW_READERS; i++) {
        th[i].d = d;
        th[i].seed = g_seed ^ (0x1234567ull * (uint64_t)(i + 1));
        if (pthread_create(&tid[i], NULL, i < RW_READERS ? rw_reader : rw_writer, &th[i]))
            bench_fail("pthread_create failed");
    }
    deadline = bench_now_ns() + (uint64_t)(g_rw_secs * 1e9);
    for (i = 0; i < 10000000; i++) { /* bounded: a signal may cut a sleep short, not forever */
        uint64_t now = bench_now_ns();
        struct timespec ts;
        if (now >= deadline) break;
        ts.tv_sec = (time_t)((deadline - now) / 1000000000u);
        ts.tv_nsec = (long)((deadline - now) % 1000000000u);
        nanosleep(&ts, NULL);
    }
    __atomic_store_n(&g_stop, 1, __ATOMIC_RELAXED);
    for (i = 0; i <= RW_READERS; i++) pthread_join(tid[i], NULL);
    t = bench_now_s() - t;
    for (i = 0; i < RW_READERS; i++) {
        reads += th[i].ops;
        for (j = 0; j < HIST_BUCKETS; j++) all.b[j] += th[i].h.b[j];
        all.n += th[i].h.n;
        if (th[i].h.max > all.max) all.max = th[i].h.max;
    }
    res->v[M_RW_READS] = rate(reads, t);
    res->v[M_RW_WRITES] = rate(th[RW_READERS].ops, t);
    res->v[M_RW_P50] = (double)hist_q(&all, 0.50);
    res->v[M_RW_P99] = (double)hist_q(&all, 0.99);
    res->v[M_RW_P999] = (double)hist_q(&all, 0.999);
    res->v[M_RW_MAX] = (double)all.max;
    progress(res->v[M_RW_READS], "reads/s");
    progress(res->v[M_RW_WRITES], "writes/s");
}

/* ---- one engine, one repeat ------------------------------------------------ */

static void run_engine(const engine *e, result *res) {
    char base[PATH_CAP], dir[PATH_CAP];
    uint8_t v[VLEN];
    uint64_t i, n = g_n, live = g_n / 2, total;
    double t;
    db d;
    scan_chk sc;

    res->v[M_RSS_BASE] = rss_bytes() / 1048576.0;
    bench_path_join(base, g_dir, e->name);
    bench_rm_tree(base);
    bench_mkdir_p(base);

    fill_dropped(e, base, "fillseq", MODE_PLAIN, g_sorted, 0, 0, res, M_FILLSEQ);
    fill_dropped(e, base, "fillseq-batch", MODE_BATCH, g_sorted, 1, 1, res, M_FILLSEQ_BATCH);
    fill_dropped(e, base, "fillrandom-batch", MODE_BATCH, g_keys, 1, 0, res, M_FILLRANDOM_BATCH);

    phase("fillrandom");
    bench_path_join(dir, base, "main");
    res->v[M_FILLRANDOM] = fill(&d, e, dir, MODE_PLAIN, g_keys, 0, 0);
    res->v[M_RSS] = rss_bytes() / 1048576.0;
    res->v[M_RSS_ENGINE] = res->v[M_RSS] - res->v[M_RSS_BASE];
    progress(res->v[M_FILLRANDOM], "ops/s");
    db_close(&d);
    sync();

    phase("disk-fresh");
    res->v[M_DISK_FRESH] = (double)disk_bytes(dir) / (double)n;
    res->v[M_DISK_FRESH_X] = res->v[M_DISK_FRESH] / REC_BYTES;
    progress(res->v[M_DISK_FRESH], "bytes/record");

    phase("reopen");
    t = bench_now_s();
    db_open(&d, e, dir, MODE_PLAIN);
    expect_val(&d.main, g_keys[bench_mix(g_seed ^ 0x0DE4) % n], 1);
    t = bench_now_s() - t;
    res->v[M_REOPEN_S] = t;
    res->v[M_REOPEN_RATE] = rate(n, t);
    progress(res->v[M_REOPEN_S], "s");

    phase("warm-up"); /* untimed: "hot" means the same for every engine */
    for (i = 0; i < n; i++) expect_val(&d.main, g_keys[i], 1);

    phase("readrandom");
    t = bench_now_s();
    for (i = 0; i < n; i++) expect_val(&d.main, g_keys[bench_mix(i ^ g_seed ^ 0x2545F4914F6CDD1Dull) % n], 1);
    res->v[M_READRANDOM] = rate(n, bench_now_s() - t);
    progress(res->v[M_READRANDOM], "ops/s");

    phase("readmissing");
    t = bench_now_s();
    for (i = 0; i < n; i++) {
        uint64_t k = bench_mix(g_keys[i] ^ 0xDEADBEEFCAFEF00Dull);
        if (e->get(&d.main, k, NULL, NULL) != G_MISS) {
            /* 64-bit random keys: a hit is all but impossible; if the key
             * is in the set after all, its value must be right. */
            if (!in_set(k)) bench_fail("key %016" PRIx64 " found but never written", k);
            expect_val(&d.main, k, 1);
        }
    }
    res->v[M_READMISSING] = rate(n, bench_now_s() - t);
    progress(res->v[M_READMISSING], "ops/s");

    phase("scan100");
    total = 0;
    t = bench_now_s();
    for (i = 0; i < (n + SCAN_LEN - 1) / SCAN_LEN; i++) {
        uint64_t at = bench_mix(i ^ g_seed ^ 0x5CA4) % n;
        uint64_t expect = n - at < SCAN_LEN ? n - at : SCAN_LEN;
        sc.pos = at, sc.seen = 0, sc.want = SCAN_LEN, sc.ver = 1;
        e->scan(&d.main, g_sorted[at], scan_visit, &sc);
        if (sc.seen != expect)
            bench_fail("scan from %016" PRIx64 ": %" PRIu64 " keys, expected %" PRIu64, g_sorted[at], sc.seen, expect);
        total += sc.seen;
    }
    res->v[M_SCAN100] = rate(total, bench_now_s() - t);
    progress(res->v[M_SCAN100], "keys/s");

    phase("scanfull");
    sc.pos = 0, sc.seen = 0, sc.want = n + 1, sc.ver = 1; /* never stops early: extra keys fail */
    t = bench_now_s();
    e->scan(&d.main, 0, scan_visit, &sc);
    res->v[M_SCANFULL] = rate(sc.seen, bench_now_s() - t);
    if (sc.seen != n) bench_fail("%" PRIu64 " keys, expected %" PRIu64, sc.seen, n);
    progress(res->v[M_SCANFULL], "keys/s");

    phase("overwrite");
    t = bench_now_s();
    for (i = 0; i < n; i++) {
        bench_make_val(g_keys[i], 2, v);
        e->put(&d, g_keys[i], v);
    }
    res->v[M_OVERWRITE] = rate(n, bench_now_s() - t);
    progress(res->v[M_OVERWRITE], "ops/s");
    check_sample(&d, 2, 0x0E4);

    phase("delete");
    t = bench_now_s();
    for (i = 0; i < n; i += 2) e->del(&d, g_keys[i]);
    res->v[M_DELETE] = rate(n - live, bench_now_s() - t);
    progress(res->v[M_DELETE], "ops/s");
    for (i = 0; i < CHECK_SAMPLES; i++) {
        uint64_t j = bench_mix(i ^ g_seed ^ 0xDE1) % n;
        if (j % 2 == 0) expect_missing(&d.main, g_keys[j]);
        else expect_val(&d.main, g_keys[j], 2);
    }
    db_close(&d);
    sync();

    phase("disk-live");
    res->v[M_DISK_LIVE] = (double)disk_bytes(dir) / (double)live;
    res->v[M_DISK_LIVE_X] = res->v[M_DISK_LIVE] / REC_BYTES;
    progress(res->v[M_DISK_LIVE], "bytes/record");

    if (e->has_rw) {
        phase("rw");
        db_open(&d, e, dir, MODE_PLAIN);
        for (i = 1; i < n; i += 2) expect_val(&d.main, g_keys[i], 2); /* warm-up, untimed */
        rw_phase(&d, res);
        db_close(&d);
    }
    bench_rm_tree(dir);
    sync();

    phase("fillrandom-sync");
    {
        uint64_t m = n < SYNC_PUTS ? n : SYNC_PUTS;
        bench_path_join(dir, base, "sync");
        db_open(&d, e, dir, MODE_SYNC);
        t = bench_now_s();
        for (i = 0; i < m; i++) {
            bench_make_val(g_keys[i], 1, v);
            e->put(&d, g_keys[i], v);
        }
        res->v[M_FILL_SYNC] = rate(m, bench_now_s() - t);
        progress(res->v[M_FILL_SYNC], "ops/s");
        for (i = 0; i < m; i++) expect_val(&d.main, g_keys[i], 1);
        db_close(&d);
    }
    bench_rm_tree(base);
    sync();
}

/* What run_child's child runs: engine e, repeat rep. */
typedef struct child_arg {
    const engine *e;
    int rep;
} child_arg;

static void child_main(void *out, void *arg) {
    const child_arg *c = arg;
    result *r = out;
    int i;
    g_bench_part = c->e->name, g_rep = c->rep;
    for (i = 0; i < M_COUNT; i++) r->v[i] = -1;
    run_engine(c->e, r);
}

/* Runs e in a forked child; its result comes back through a pipe as the
 * plain struct. Returns 0, or -1 when the child failed (it said why). */
static int run_child(const engine *e, int rep, result *out) {
    child_arg c;
    c.e = e, c.rep = rep;
    return bench_run_child(child_main, &c, out, sizeof *out);
}

/* ==== 8. results ============================================================ */

static int g_sel[NENG];  /* engine i selected */
static result *g_res;    /* [engine][repeat] */

static double median_of(int e, int m) {
    double xs[1024], t;
    int k = 0, i, j;
    for (i = 0; i < g_repeat && k < 1024; i++) {
        double x = g_res[e * g_repeat + i].v[m];
        if (x >= 0) xs[k++] = x;
    }
    if (!k) return -1;
    for (i = 1; i < k; i++) /* insertion sort: k is the repeat count */
        for (j = i; j > 0 && xs[j - 1] > xs[j]; j--) t = xs[j], xs[j] = xs[j - 1], xs[j - 1] = t;
    return k % 2 ? xs[k / 2] : (xs[k / 2 - 1] + xs[k / 2]) / 2;
}

static char g_ver_lmdb[128], g_ver_rocksdb[128], g_ver_leveldb[32], g_cpu[256], g_kernel[256], g_fs[512];

static void read_versions(void) {
    int a, b, c;
    FILE *p;
    mdb_version(&a, &b, &c);
    snprintf(g_ver_lmdb, sizeof g_ver_lmdb, "%d.%d.%d", a, b, c);
    snprintf(g_ver_leveldb, sizeof g_ver_leveldb, "%d.%d", leveldb_major_version(), leveldb_minor_version());
    snprintf(g_ver_rocksdb, sizeof g_ver_rocksdb, "unknown");
    /* The RocksDB C API has no version call: ask the Debian package. */
    if ((p = popen("dpkg-query -W -f '${Version}' librocksdb-dev 2>/dev/null", "r"))) {
        char buf[128];
        if (fgets(buf, sizeof buf, p) && buf[0]) {
            buf[strcspn(buf, "\n")] = '\0';
            snprintf(g_ver_rocksdb, sizeof g_ver_rocksdb, "%s", buf);
        }
        pclose(p);
    }
    bench_read_kernel(g_kernel, sizeof g_kernel);
    bench_read_cpu(g_cpu, sizeof g_cpu);
}

static const char *g_config[NENG] = {
    "kvidx_options_init defaults: 8 shards, background fdatasync every 1000 ms; no batch API, "
    "so its -batch rows are the same plain puts",
    "one write txn per put/delete, MDB_NOSYNC (LMDB's own default fsyncs every commit, see "
    "fillrandom-sync); batch: 1000 puts per txn with MDB_WRITEMAP|MDB_NOSYNC, MDB_APPEND in "
    "fillseq-batch; mapsize 64 GiB; gets: one read txn per thread, mdb_txn_renew/mdb_txn_reset "
    "around each get or scan; scans: a cursor (MDB_SET_RANGE, MDB_NEXT)",
    "rocksdb_options_create + create_if_missing, all else default; write options default (WAL, "
    "sync=0); batch: rocksdb_writebatch of 1000; gets: rocksdb_get + rocksdb_free; scans: one "
    "iterator per scan; Debian build, assertions on (imports __assert_fail)",
    "leveldb_options_create + create_if_missing, all else default; write options default "
    "(sync=0); batch: leveldb_writebatch of 1000; gets: leveldb_get + leveldb_free; scans: one "
    "iterator per scan",
};

static void print_json(void) {
    int e, m, i, first;
    printf("{\n  \"bench\": \"bench_kv\",\n  \"versions\": {\"kvidx\": ");
    bench_json_str(kvidx_version());
    bench_json_field("lmdb", g_ver_lmdb);
    bench_json_field("rocksdb", g_ver_rocksdb);
    bench_json_field("leveldb", g_ver_leveldb);
    printf("},\n  \"n\": %" PRIu64 ", \"seed\": %" PRIu64 ", \"repeat\": %d, \"value_bytes\": %d,"
           " \"rw_secs\": %.3f, \"rw_readers\": %d,\n  ",
           g_n, g_seed, g_repeat, VLEN, g_rw_secs, RW_READERS);
    bench_json_machine(g_cpu, g_kernel);
    bench_json_field("filesystem", g_fs);
    bench_json_field("dir", g_dir);
    bench_json_engines(engine_name, g_config, g_sel, NENG);
    printf(",\n  \"metrics\": [");
    for (m = 0; m < M_COUNT; m++) {
        const struct metric *mt = &g_metrics[m];
        printf("%s\n    {\"name\": \"%s\", \"unit\": \"%s\", \"better\": \"%s\",\n     \"median\": {",
               m ? "," : "", mt->name, mt->unit, mt->lower_better ? "lower" : "higher");
        for (e = 0, first = 1; e < NENG; e++) {
            if (!g_sel[e]) continue;
            printf("%s\"%s\": ", first ? "" : ", ", g_engines[e].name);
            bench_json_num(median_of(e, m), mt->decimals);
            first = 0;
        }
        printf("},\n     \"runs\": {");
        for (e = 0, first = 1; e < NENG; e++) {
            if (!g_sel[e]) continue;
            printf("%s\"%s\": [", first ? "" : ", ", g_engines[e].name);
            for (i = 0; i < g_repeat; i++) {
                printf("%s", i ? ", " : "");
                bench_json_num(g_res[e * g_repeat + i].v[m], mt->decimals);
            }
            printf("]");
            first = 0;
        }
        printf("},\n     \"ratio\": {");
        for (e = 1, first = 1; e < NENG; e++) {
            double k = median_of(0, m), p = median_of(e, m);
            if (!g_sel[0] || !g_sel[e]) continue;
            printf("%s\"kvidx/%s\": ", first ? "" : ", ", g_engines[e].name);
            if (k >= 0 && p > 0) printf("%.4f", k / p);
            else printf("null");
            first = 0;
        }
        printf("}}");
    }
    printf("\n  ]\n}\n");
}

static void print_table(void) {
    char b1[64];
    int e, m;
    printf("bench_kv: kvidx %s | LMDB %s | RocksDB %s (Debian librocksdb, assertions on) | LevelDB %s\n",
           kvidx_version(), g_ver_lmdb, g_ver_rocksdb, g_ver_leveldb);
    printf("n %" PRIu64 " keys, seed %" PRIu64 ", values %d bytes, median of %d repeats (a forked process per engine "
           "and repeat, engines alternating)\n",
           g_n, g_seed, VLEN, g_repeat);
    printf("nproc %ld | CPU %s | kernel %s | data dir %s on %s\n\n", sysconf(_SC_NPROCESSORS_ONLN), g_cpu, g_kernel,
           g_dir, g_fs);

    printf("%-17s %-6s %-6s", "phase", "unit", "better");
    for (e = 0; e < NENG; e++)
        if (g_sel[e]) printf(" %14s", g_engines[e].name);
    for (e = 1; e < NENG; e++)
        if (g_sel[0] && g_sel[e]) printf(" %14s", e == 1 ? "kvidx/lmdb" : e == 2 ? "kvidx/rocksdb" : "kvidx/leveldb");
    printf("\n");
    for (m = 0; m < M_COUNT; m++) {
        const struct metric *mt = &g_metrics[m];
        if (m == M_RW_READS)
            printf("-- rw: %d reader threads + 1 writer, %.1f s, on the %" PRIu64 " keys left after delete --\n",
                   RW_READERS, g_rw_secs, g_n / 2);
        printf("%-17s %-6s %-6s", mt->name, mt->unit, mt->lower_better ? "lower" : "higher");
        for (e = 0; e < NENG; e++)
            if (g_sel[e]) printf(" %14s", bench_fmt_num(b1, sizeof b1, median_of(e, m), mt->decimals));
        for (e = 1; e < NENG; e++) {
            double k = median_of(0, m), p = median_of(e, m);
            if (!g_sel[0] || !g_sel[e]) continue;
            if (k >= 0 && p > 0) printf(" %14.2f", k / p);
            else printf(" %14s", "-");
        }
        printf("\n");
    }

    printf("\nLegend\n");
    printf("  ratio = kvidx / peer, of the medians. better=higher (ops/s, keys/s): > 1 means kvidx is faster.\n"
           "  better=lower (MiB, B/rec, x264, s, ns): < 1 means kvidx uses less memory, less disk, less time.\n");
    printf("  keys: %" PRIu64 " distinct random uint64 (bench_mix of seed); kvidx takes the uint64, the others its\n"
           "  8-byte big-endian form. Values: 256 bytes from (key, version). Every value read in every phase\n"
           "  is generated and compared (memcmp) inside the timed loops, for every engine alike.\n", g_n);
    printf("  default writes: no fsync per operation (a write that returned survives kill -9, not power loss).\n");
    for (e = 0; e < NENG; e++) {
        char head[32];
        if (!g_sel[e]) continue;
        snprintf(head, sizeof head, "  %-8s ", g_engines[e].name);
        bench_print_wrapped(head, g_config[e], 104);
    }
    printf("  fillseq/-batch: ascending keys; fillrandom/-batch: generation (random) order; each a fresh directory.\n"
           "  rss-fillrandom: VmRSS right after fillrandom (the process ran the three fills before it); it counts\n"
           "  file pages the process maps (LMDB maps its data file). rss-base: VmRSS of the same process before\n"
           "  its first open (the key arrays); rss-engine = rss-fillrandom - rss-base.\n"
           "  disk-*: st_blocks*512 of every file in the database directory after close + sync, per live record\n"
           "  (disk-fresh: N after fillrandom; disk-live: N/2 after overwrite and delete); x264 = multiple of\n"
           "  8-byte key + 256-byte value.\n"
           "  reopen: open of the closed database + one checked get; reopen-rate = N / that time.\n"
           "  reads are hot: an untimed read of every key in random order comes first (kvidx writes values with\n"
           "  O_DIRECT, so they enter the page cache only when read). readrandom: N uniform gets of present keys;\n"
           "  readmissing: N gets of absent keys. scan100: N/100 scans of 100 keys from a random present key;\n"
           "  scanfull: one ascending scan of all N. Scans check order, count and every value.\n"
           "  overwrite: N puts of version 2, random order; delete: every other key (N/2), one op each.\n"
           "  fillrandom-sync (informational): %d puts each durable before it returns: kvidx KVIDX_SYNC, LMDB\n"
           "  default flags (fsync per commit), RocksDB and LevelDB sync=1.\n"
           "  rw (kvidx, LMDB): after delete, reopen and an untimed read of the live keys; %d reader threads do\n"
           "  random checked gets (either version accepted) while 1 writer overwrites random live keys (one\n"
           "  put / one txn each, default durability). Latency of each get from a log-linear histogram (bucket\n"
           "  upper bounds, 12.5%% wide).\n",
           SYNC_PUTS, RW_READERS);
}

/* ==== 9. main ================================================================ */

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--n N | --big] [--seed X] [--repeat R] [--engines kvidx,lmdb,rocksdb,leveldb]\n"
            "          [--dir D] [--rw-secs S] [--json]\n"
            "  --n N        keys (default 1000000; --big = 10000000)\n"
            "  --seed X     key seed (default 42)\n"
            "  --repeat R   runs per engine; figures are medians (default 3)\n"
            "  --engines    comma-separated subset (default all four)\n"
            "  --dir D      data directory, one subdirectory per engine, removed at the end\n"
            "               (default bench/data/kv)\n"
            "  --rw-secs S  length of the rw phase (default 3)\n"
            "  --json       print one JSON object on stdout instead of the table\n",
            argv0);
    exit(2);
}

static void parse_engines(const char *list) { bench_parse_list("--engines", list, engine_name, NENG, "engine", g_sel); }

static void opt_big(const char *val) {
    (void)val;
    g_n = 10000000;
}

int main(int argc, char **argv) {
    static const bench_opt opts[] = {
        {"--big", BENCH_OPT_FLAG, NULL, opt_big},
        {"--json", BENCH_OPT_FLAG, &g_json, NULL},
        {"--n", BENCH_OPT_U64, &g_n, NULL},
        {"--seed", BENCH_OPT_U64, &g_seed, NULL},
        {"--repeat", BENCH_OPT_INT, &g_repeat, NULL},
        {"--rw-secs", BENCH_OPT_DOUBLE, &g_rw_secs, NULL},
        {"--engines", BENCH_OPT_FN, NULL, parse_engines},
        {"--dir", BENCH_OPT_STR, &g_dir, NULL},
        {NULL, 0, NULL, NULL},
    };
    uint64_t i;
    int e, rep, any = 0;

    for (e = 0; e < NENG; e++) g_sel[e] = 1;
    bench_parse_opts(argc, argv, opts, usage);
    if (g_n < 100 || g_n > ((uint64_t)1 << 34)) bench_fail("--n must be in 100..2^34");
    if (g_repeat < 1 || g_repeat > 1000) bench_fail("--repeat must be in 1..1000");
    if (!(g_rw_secs > 0 && g_rw_secs <= 3600)) bench_fail("--rw-secs must be in (0, 3600]");
    for (e = 0; e < NENG; e++) any |= g_sel[e];
    if (!any) bench_fail("--engines: none selected");

    g_keys = malloc((size_t)g_n * sizeof *g_keys);
    g_sorted = malloc((size_t)g_n * sizeof *g_sorted);
    g_res = calloc((size_t)NENG * (size_t)g_repeat, sizeof *g_res);
    if (!g_keys || !g_sorted || !g_res) bench_fail("out of memory for %" PRIu64 " keys", g_n);
    for (i = 0; i < g_n; i++) g_keys[i] = g_sorted[i] = key_at(i);
    qsort(g_sorted, (size_t)g_n, sizeof *g_sorted, cmp_u64);

    bench_mkdir_p(g_dir);
    read_versions();
    bench_read_fs(g_dir, g_fs, sizeof g_fs);
    fprintf(stderr, "bench_kv: kvidx %s, LMDB %s, RocksDB %s, LevelDB %s; n %" PRIu64 ", repeat %d, dir %s\n",
            kvidx_version(), g_ver_lmdb, g_ver_rocksdb, g_ver_leveldb, g_n, g_repeat, g_dir);

    for (rep = 0; rep < g_repeat; rep++) {
        for (e = 0; e < NENG; e++) {
            if (!g_sel[e]) continue;
            if (run_child(&g_engines[e], rep, &g_res[e * g_repeat + rep])) {
                char p[PATH_CAP];
                bench_path_join(p, g_dir, g_engines[e].name);
                bench_rm_tree(p);
                rmdir(g_dir);
                g_bench_part = g_engines[e].name, g_bench_phase = "run";
                bench_fail("repeat %d failed (see above); run stopped, data removed", rep + 1);
            }
        }
    }
    for (e = 0; e < NENG; e++) {
        char p[PATH_CAP];
        bench_path_join(p, g_dir, g_engines[e].name);
        bench_rm_tree(p);
    }
    rmdir(g_dir); /* only if empty: --dir may name a directory holding other things */

    if (g_json) print_json();
    else print_table();
    free(g_keys);
    free(g_sorted);
    free(g_res);
    return 0;
}
