/*
 * bench_values.c -- the value store on its own: fillrandom, overwrite,
 * readrandom (hot), readmissing, scan, delete, reopen; bytes on disk per
 * record. Every value read is checked against what was written; a
 * mismatch aborts the run. (The side-by-side comparison with LMDB,
 * RocksDB and LevelDB is a separate program.)
 *
 *   bench_values [--n N] [--shards S] [--seed X] [--dir D] [--sync]
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvidx.h"
#include "bench.h"

#define VLEN BENCH_VLEN


static void die(const char *what, int rc) {
    fprintf(stderr, "bench_values: %s: %s\n", what, kvidx_strerror(rc));
    exit(1);
}

static void report(const char *phase, uint64_t ops, double secs) {
    printf("%-14s %10" PRIu64 " ops %8.3f s %12.0f ops/s %8.1f ns/op\n", phase, ops, secs,
           (double)ops / secs, secs * 1e9 / (double)ops);
    fflush(stdout);
}

struct scan_ctx {
    uint64_t n, last, bad;
};

static int scan_cb(void *ud, uint64_t key, const void *val, size_t len) {
    struct scan_ctx *c = ud;
    if (c->n && key <= c->last) c->bad++;
    if (len != VLEN) c->bad++;
    (void)val;
    c->last = key;
    c->n++;
    return 0;
}

int main(int argc, char **argv) {
    uint64_t n = 1000000, seed = 42, i, *keys;
    uint32_t shards = 8;
    const char *dir = "bench/data/values";
    kvidx_options o;
    kvidx_stats st;
    kvidx *db;
    uint8_t v[VLEN], b[VLEN];
    size_t len;
    double t;
    int rc, a;
    char cmd[4200];
    struct scan_ctx sc;

    kvidx_options_init(&o);
    for (a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--n") && a + 1 < argc) n = strtoull(argv[++a], NULL, 0);
        else if (!strcmp(argv[a], "--shards") && a + 1 < argc) shards = (uint32_t)atoi(argv[++a]);
        else if (!strcmp(argv[a], "--seed") && a + 1 < argc) seed = strtoull(argv[++a], NULL, 0);
        else if (!strcmp(argv[a], "--dir") && a + 1 < argc) dir = argv[++a];
        else if (!strcmp(argv[a], "--sync")) o.flags |= KVIDX_SYNC;
        else {
            fprintf(stderr, "usage: %s [--n N] [--shards S] [--seed X] [--dir D] [--sync]\n", argv[0]);
            return 2;
        }
    }
    o.shards = shards;
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && rmdir '%s'", dir, dir, dir);
    if (system(cmd) != 0) return 1;
    printf("kvidx %s bench_values: n=%" PRIu64 " shards=%u seed=%" PRIu64 " value=%d bytes%s nproc=%ld\n",
           kvidx_version(), n, shards, seed, VLEN, (o.flags & KVIDX_SYNC) ? " KVIDX_SYNC" : "",
           sysconf(_SC_NPROCESSORS_ONLN));

    keys = malloc(n * sizeof *keys);
    if (!keys) return 1;
    for (i = 0; i < n; i++) keys[i] = bench_mix(seed * 0x100000001B3ull + i);

    if ((rc = kvidx_open(dir, &o, &db))) die("open", rc);

    t = bench_now_s();
    for (i = 0; i < n; i++) {
        bench_make_val(keys[i], 1, v);
        if ((rc = kvidx_put(db, keys[i], v, VLEN))) die("put", rc);
    }
    report("fillrandom", n, bench_now_s() - t);

    t = bench_now_s();
    for (i = 0; i < n; i++) {
        uint64_t k = keys[bench_mix(i ^ seed) % n];
        if ((rc = kvidx_get(db, k, b, sizeof b, &len))) die("get", rc);
        bench_make_val(k, 1, v);
        if (len != VLEN || memcmp(b, v, VLEN)) die("readrandom: wrong value", KVIDX_ECORRUPT);
    }
    report("readrandom", n, bench_now_s() - t);

    t = bench_now_s();
    for (i = 0; i < n; i++) {
        rc = kvidx_get(db, bench_mix(keys[i] ^ 0xdeadbeef), b, sizeof b, &len);
        if (rc != KVIDX_NOTFOUND) die("readmissing: found a key never written", rc);
    }
    report("readmissing", n, bench_now_s() - t);

    memset(&sc, 0, sizeof sc);
    t = bench_now_s();
    if ((rc = kvidx_scan(db, 0, UINT64_MAX, scan_cb, &sc))) die("scan", rc);
    if (sc.n != n || sc.bad) die("scan: wrong keys", KVIDX_ECORRUPT);
    report("scan (full)", n, bench_now_s() - t);

    st.size = sizeof st;
    kvidx_stat(db, &st);
    printf("after fill: disk %.1f MiB = %.1f bytes/record (%.3f x 264); map %.1f bytes/key\n",
           (double)st.disk_bytes / 1048576.0, (double)st.disk_bytes / (double)st.keys,
           (double)st.disk_bytes / (double)st.keys / 264.0, (double)st.map_bytes / (double)st.keys);

    t = bench_now_s();
    for (i = 0; i < n; i++) {
        bench_make_val(keys[i], 2, v);
        if ((rc = kvidx_put(db, keys[i], v, VLEN))) die("overwrite", rc);
    }
    report("overwrite", n, bench_now_s() - t);

    t = bench_now_s();
    if ((rc = kvidx_close(db))) die("close", rc);
    report("close (sync)", 1, bench_now_s() - t);
    t = bench_now_s();
    if ((rc = kvidx_open(dir, &o, &db))) die("reopen", rc);
    report("reopen", n, bench_now_s() - t);

    t = bench_now_s();
    for (i = 0; i < n; i++) {
        uint64_t k = keys[bench_mix(i ^ seed ^ 7) % n];
        if ((rc = kvidx_get(db, k, b, sizeof b, &len))) die("get after reopen", rc);
        bench_make_val(k, 2, v);
        if (len != VLEN || memcmp(b, v, VLEN)) die("readrandom after reopen: wrong value", KVIDX_ECORRUPT);
    }
    report("readrandom2", n, bench_now_s() - t);

    t = bench_now_s();
    for (i = 0; i < n; i += 2)
        if ((rc = kvidx_delete(db, keys[i]))) die("delete", rc);
    report("delete half", n / 2, bench_now_s() - t);

    kvidx_stat(db, &st);
    printf("end: keys %" PRIu64 " records %" PRIu64 " garbage records %" PRIu64
           " garbage slots %" PRIu64 " disk %.1f MiB\n",
           st.keys, st.records, st.garbage_records, st.garbage_slots,
           (double)st.disk_bytes / 1048576.0);
    if ((rc = kvidx_close(db))) die("close", rc);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    free(keys);
    return 0;
}
