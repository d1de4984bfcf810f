/*
 * bench_lr.c -- the concurrent read path under a writer.
 *
 * Built twice from this file (see `make bench-lr`): against kvidx.c as it
 * is (Left-Right: two maps, readers never wait), and with
 * -DKVIDX_BENCH_RWLOCK, where a pthread rwlock guards one map instead
 * (readers take it shared, the writer exclusive, and a write applies to
 * one map only). bench/lr.sh runs both and prints the ratios.
 *
 * Phases, each printed as one "key value" line for the script:
 *   fill      fillrandom of N keys, one thread (the cost of a write:
 *             double apply + publish under Left-Right, one apply here)
 *   publish   one publish with no reader (white-box: lr_wait_readers)
 *   r1        after a warm-up pass over every key: one reader, no writer
 *   rw<R>     R reader threads doing random gets for --secs seconds while
 *             one writer overwrites random keys without pause; reads/s,
 *             writes/s, read latency p50/p99/p99.9/max from a histogram
 *             of every read
 * Every value read is checked (its first 8 bytes are its key); a mismatch
 * aborts the run.
 */
#include "../kvidx.c"

#include <inttypes.h>
#include "bench.h"

#define VLEN 256

static void make_val(uint64_t key, uint64_t ver, uint8_t *v) {
    uint64_t x = bench_mix(key ^ ver);
    int i;
    memcpy(v, &key, 8);
    for (i = 8; i < VLEN; i += 8) {
        memcpy(v + i, &x, 8);
        x += ver | 1;
    }
}

static void die(const char *what, int rc) {
    fprintf(stderr, "bench_lr: %s: %s\n", what, kvidx_strerror(rc));
    exit(1);
}

/* Latency histogram: 8 sub-buckets per power of two of nanoseconds. */
#define HB 512
typedef struct hist {
    uint64_t b[HB];
    uint64_t max, n;
} hist;

static void hist_add(hist *h, uint64_t ns) {
    unsigned lg = 0, idx;
    uint64_t x = ns | 1;
    while (x >> (lg + 1)) lg++;
    idx = lg < 3 ? (unsigned)ns : lg * 8 + (unsigned)((ns >> (lg - 3)) & 7);
    if (idx >= HB) idx = HB - 1;
    h->b[idx]++;
    h->n++;
    if (ns > h->max) h->max = ns;
}

/* The upper bound of the bucket holding quantile q. */
static uint64_t hist_q(const hist *h, double q) {
    uint64_t want = (uint64_t)((double)h->n * q), seen = 0;
    unsigned i;
    for (i = 0; i < HB; i++) {
        seen += h->b[i];
        if (seen > want) {
            unsigned lg = i / 8, sub = i % 8;
            if (i < 24) return i + 1;
            return ((uint64_t)(8 + sub + 1) << (lg - 3));
        }
    }
    return h->max;
}

typedef struct ctx {
    kvidx *db;
    const uint64_t *keys;
    uint64_t n;
    volatile int stop;
    uint64_t seed;
    uint64_t ops;
    hist h;
} ctx;

static void *reader_main(void *arg) {
    ctx *c = arg;
    uint8_t b[VLEN];
    size_t len;
    uint64_t i = 0, x = c->seed;
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        uint64_t k = c->keys[(x = bench_mix(x)) % c->n], t0 = bench_now_ns(), t1;
        int rc = kvidx_get(c->db, k, b, sizeof b, &len);
        t1 = bench_now_ns();
        if (rc) die("get", rc);
        if (len != VLEN || memcmp(b, &k, 8)) die("get returned a foreign value", KVIDX_ECORRUPT);
        hist_add(&c->h, t1 - t0);
        i++;
    }
    c->ops = i;
    return NULL;
}

static void *writer_main(void *arg) {
    ctx *c = arg;
    uint8_t v[VLEN];
    uint64_t i = 0, x = c->seed;
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        uint64_t k = c->keys[(x = bench_mix(x)) % c->n];
        int rc;
        make_val(k, i + 2, v);
        if ((rc = kvidx_put(c->db, k, v, VLEN))) die("put", rc);
        i++;
    }
    c->ops = i;
    return NULL;
}

int main(int argc, char **argv) {
    uint64_t n = 1000000, seed = 42, i, *keys;
    double secs = 3, t;
    const char *dir = "bench/data/lr";
    kvidx_options o;
    kvidx *db;
    uint8_t v[VLEN];
    int a, rc, r, nreaders[2] = {1, 2};
    char cmd[4200];

    for (a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--n") && a + 1 < argc) n = strtoull(argv[++a], NULL, 0);
        else if (!strcmp(argv[a], "--secs") && a + 1 < argc) secs = atof(argv[++a]);
        else if (!strcmp(argv[a], "--dir") && a + 1 < argc) dir = argv[++a];
        else {
            fprintf(stderr, "usage: %s [--n N] [--secs S] [--dir D]\n", argv[0]);
            return 2;
        }
    }
#ifdef KVIDX_BENCH_RWLOCK
    printf("variant rwlock\n");
#else
    printf("variant left-right\n");
#endif
    printf("kvidx %s n %" PRIu64 " secs %.1f nproc %ld stripes %d\n", kvidx_version(), n, secs,
           sysconf(_SC_NPROCESSORS_ONLN), KVIDX_LR_STRIPES);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && rmdir '%s'", dir, dir, dir);
    if (system(cmd) != 0) return 1;
    keys = malloc(n * sizeof *keys);
    if (!keys) return 1;
    for (i = 0; i < n; i++) keys[i] = bench_mix(seed * 0x100000001B3ull + i);
    kvidx_options_init(&o);
    if ((rc = kvidx_open(dir, &o, &db))) die("open", rc);

    t = bench_now_s();
    for (i = 0; i < n; i++) {
        make_val(keys[i], 1, v);
        if ((rc = kvidx_put(db, keys[i], v, VLEN))) die("put", rc);
    }
    t = bench_now_s() - t;
    printf("fill_ops_per_s %.0f\n", (double)n / t);

    {
        /* One publish with no reader: the two-phase wait alone (the
         * rwlock build: an exclusive lock and unlock). */
        vs_shard *s = &db->sh[0];
        uint64_t reps = 2000000;
        pthread_mutex_lock(&s->mu);
        t = bench_now_s();
        for (i = 0; i < reps; i++) lr_wait_readers(s->lr);
        t = bench_now_s() - t;
        pthread_mutex_unlock(&s->mu);
        printf("publish_ns %.1f\n", t * 1e9 / (double)reps);
    }

    {
        /* Warm up: read every key once (the value log was written with
         * O_DIRECT, so its pages start out of the page cache), then time
         * one reader with no writer: the baseline of the rw phases. */
        ctx c;
        pthread_t th;
        memset(&c, 0, sizeof c);
        c.db = db, c.keys = keys, c.n = n, c.seed = seed;
        for (i = 0; i < n; i++) {
            size_t len;
            if ((rc = kvidx_get(db, keys[i], v, sizeof v, &len))) die("warm-up get", rc);
        }
        pthread_create(&th, NULL, reader_main, &c);
        t = bench_now_s();
        usleep((useconds_t)(secs * 1e6));
        __atomic_store_n(&c.stop, 1, __ATOMIC_RELAXED);
        pthread_join(th, NULL);
        t = bench_now_s() - t;
        printf("r1_reads_per_s %.0f\n", (double)c.ops / t);
        printf("r1_p99_ns %" PRIu64 "\n", hist_q(&c.h, 0.99));
        printf("r1_max_ns %" PRIu64 "\n", c.h.max);
    }

    for (r = 0; r < 2; r++) {
        ctx rd[2], wr;
        pthread_t th[3];
        hist all;
        uint64_t reads = 0;
        int k, j;
        memset(&wr, 0, sizeof wr);
        wr.db = db, wr.keys = keys, wr.n = n, wr.seed = seed ^ 0x77;
        memset(&all, 0, sizeof all);
        for (k = 0; k < nreaders[r]; k++) {
            memset(&rd[k], 0, sizeof rd[k]);
            rd[k].db = db, rd[k].keys = keys, rd[k].n = n, rd[k].seed = seed + (uint64_t)k;
            pthread_create(&th[k], NULL, reader_main, &rd[k]);
        }
        pthread_create(&th[2], NULL, writer_main, &wr);
        t = bench_now_s();
        usleep((useconds_t)(secs * 1e6));
        for (k = 0; k < nreaders[r]; k++) __atomic_store_n(&rd[k].stop, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&wr.stop, 1, __ATOMIC_RELAXED);
        for (k = 0; k < nreaders[r]; k++) pthread_join(th[k], NULL);
        pthread_join(th[2], NULL);
        t = bench_now_s() - t;
        for (k = 0; k < nreaders[r]; k++) {
            reads += rd[k].ops;
            for (j = 0; j < HB; j++) all.b[j] += rd[k].h.b[j];
            all.n += rd[k].h.n;
            if (rd[k].h.max > all.max) all.max = rd[k].h.max;
        }
        printf("rw%d_reads_per_s %.0f\n", nreaders[r], (double)reads / t);
        printf("rw%d_writes_per_s %.0f\n", nreaders[r], (double)wr.ops / t);
        printf("rw%d_p50_ns %" PRIu64 "\n", nreaders[r], hist_q(&all, 0.50));
        printf("rw%d_p99_ns %" PRIu64 "\n", nreaders[r], hist_q(&all, 0.99));
        printf("rw%d_p999_ns %" PRIu64 "\n", nreaders[r], hist_q(&all, 0.999));
        printf("rw%d_max_ns %" PRIu64 "\n", nreaders[r], all.max);
    }
    {
        kvidx_stats st;
        st.size = sizeof st;
        kvidx_stat(db, &st);
        printf("map_bytes_per_key %.1f\n", (double)st.map_bytes / (double)st.keys);
    }
    if ((rc = kvidx_close(db))) die("close", rc);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    free(keys);
    return 0;
}
