/*
 * bench_lists.c -- kvidx lists against Redis sorted sets, Redis sets and
 * LMDB dupsort tables: one skewed population, one run, ratios from that
 * run.
 *
 *   bench_lists [--lists N] [--big-lists N] [--big-ids N] [--ops N]
 *               [--seed X] [--engines kvidx,redis,redis-set,lmdb] [--dir D]
 *               [--timeout S] [--json]
 *
 * Contents
 *   1. options and constants
 *   2. failure: every error names the engine and the phase, then exits
 *   3. the population: lists, ids, load order, operations, final model
 *   4. files and memory: file sizes, heap (mkdir -p, rm -r, du: bench.h)
 *   5. checks shared by the engines: pages, counts
 *   6. engines: kvidx, Redis sorted sets and Redis sets (each against a
 *      fresh redis-server this program starts), LMDB
 *   7. phases: one engine in a forked child
 *   8. results: the table, JSON
 *   9. redis-server, signals, main
 *
 * The population (fixed seed, the same for every engine): --lists lists
 * of 1-100 ids (log-uniform, mean ~21.5) with a 0.5% tail of 101-5000,
 * plus --big-lists lists of --big-ids ids each. Ids are distinct random
 * values below 2^32 within a list. Small lists get their ids in random
 * order, big lists mostly ascending (new followers have new ids; 2% of
 * them arrive out of place). The load is a shuffled sequence of chunks of
 * up to 100 ids of one list, each list's chunks in order: lists grow
 * interleaved, as they would over time. load-1 adds that sequence one id
 * per call, load-100 one chunk per call.
 *
 * Every engine runs in its own forked child (its heap and RSS are its
 * own), through the same phases on the same operations, generated before
 * the fork with their expected answers: mini (per-list overhead),
 * load-100 (dropped), load-1 (kept), add, remove, contains, contains-big,
 * get, get-big, count, verify, close/save (disk), reopen. Every answer
 * read is compared with the model; a wrong one aborts the whole run.
 * Redis sets cannot page in id order: they skip get and get-big ("-").
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <lmdb.h>

#include "kvidx.h"
#define BENCH_PROG "bench_lists"
#define BENCH_FILES
#include "bench.h"

/* ==== 1. options and constants ========================================= */

#define PAGE 100          /* ids per get page (ZRANGE 0 99, kvidx_list_get cap 100) */
#define BATCH_IDS 100     /* ids per call in load-100; also the chunk size of the load order */
#define PIPE 100          /* Redis: commands in flight (pipelined) in every timed phase */
#define PIPE_BATCH 10     /* Redis: 100-id ZADDs in flight in load-100 (1000 ids) */
#define LMDB_TXN_OPS 1000 /* LMDB: writes (ids) per write transaction */
#define LMDB_MAPSIZE (64ull << 30) /* sparse: room for every scale this takes */
#define MINI_LISTS 100000 /* the per-list-overhead population: lists of 1..MINI_MAX ids */
#define MINI_MAX 10
#define SMALL_MAX 100     /* most lists: 1..SMALL_MAX ids, log-uniform */
#define MID_PERMILLE 5    /* 0.5% of them: SMALL_MAX+1..MID_MAX ids, log-uniform */
#define MID_MAX 5000
#define BIG_SHUFFLE_PCT 2 /* % of a big list's ids swapped out of ascending order */
#define VERIFY_CAP 1024   /* ids per call when verifying whole lists */
#define PATH_CAP BENCH_PATH_CAP

static uint64_t g_lists = 100000; /* small lists (plus g_big_lists big ones) */
static uint64_t g_big_lists = 5;
static uint64_t g_big_ids = 200000;
static uint64_t g_ops = 1000000; /* reads per read phase; writes and pages are fractions of it */
static uint64_t g_seed = 42;
static unsigned g_timeout;       /* seconds for the whole run (the parent's alarm); 0 = by size */
static int g_json;
static const char *g_dir = "bench/data/lists";

/* ==== 2. failure ======================================================== */

/* bench_fail (bench.h): "bench_lists: ENGINE PHASE: message", then exit
 * (a child: _exit, so no atexit handler of the parent's runs twice); the
 * parent sees the failure, stops the run and redis-server. g_bench_part
 * is the engine, g_bench_phase the phase. */

/* ==== 3. the population ================================================= */

/* One random stream per purpose, so that --ops does not change the lists. */
static uint64_t stream(uint64_t tag) { return bench_mix(g_seed ^ (tag * 0x9E3779B97F4A7C15ull)); }
static uint64_t rnd(uint64_t *s) { return bench_mix((*s)++); }
static uint64_t rnd_below(uint64_t *s, uint64_t n) { return rnd(s) % n; } /* bias < 2^-31: fine */
static double rnd01(uint64_t *s) { return (double)(rnd(s) >> 11) * (1.0 / 9007199254740992.0); }

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A set of lists in CSR form: list i holds ids[off[i] .. off[i+1]),
 * ascending. load (if any) holds the same ids per list in the order they
 * are added, and the chunks give the order of the whole load: chunk c is
 * load[ch_pos[c] .. ch_pos[c] + ch_n[c]) of list ch_list[c]. */
typedef struct pop {
    uint64_t n, total;
    const uint64_t *key; /* list i's key (shared by a population and its model) */
    uint64_t *off, *ids, *load;
    uint64_t nchunks;
    uint32_t *ch_list, *ch_n;
    uint64_t *ch_pos;
} pop;

static uint64_t pop_len(const pop *p, uint64_t i) { return p->off[i + 1] - p->off[i]; }
static const uint64_t *pop_ids(const pop *p, uint64_t i) { return p->ids + p->off[i]; }

static uint64_t *g_key;      /* keys of the main population's lists */
static uint64_t *g_mini_key; /* keys of the mini population's lists */
static uint64_t *g_by_key;   /* main list indices in ascending key order (list_scan order) */
static pop g_orig;           /* as loaded */
static pop g_fin;            /* after add and remove: what every later read must see */
static pop g_mini;           /* per-list overhead: MINI_LISTS lists of 1..MINI_MAX ids */
static uint64_t g_fin_lists; /* lists of g_fin with at least one id */
static uint64_t g_big_from;  /* big lists are [g_big_from, g_orig.n) */

/* n distinct random ids below 2^32 into out, ascending. Bounded: each
 * round keeps what is distinct and draws the rest again; with n <= 2^26
 * a handful of rounds suffice, 64 failing means a broken generator. */
static void gen_ids(uint64_t *s, uint64_t *out, uint64_t n) {
    uint64_t have = 0, i, j;
    int round;
    for (round = 0; round < 64 && have < n; round++) {
        for (i = have; i < n; i++) out[i] = rnd(s) >> 32;
        qsort(out, (size_t)n, sizeof *out, cmp_u64);
        for (i = 1, j = 1; i < n; i++)
            if (out[i] != out[j - 1]) out[j++] = out[i];
        have = n ? j : 0;
    }
    if (have < n) bench_fail("could not draw %" PRIu64 " distinct ids", n);
}

static void shuffle_u64(uint64_t *s, uint64_t *a, uint64_t n) {
    uint64_t i;
    for (i = n; i > 1; i--) {
        uint64_t j = rnd_below(s, i), t = a[i - 1];
        a[i - 1] = a[j], a[j] = t;
    }
}

/* Lays out p (n lists of the sizes in len[]) with random ids; big lists
 * (index >= big_from) get a mostly ascending load order, the others a
 * random one. Then the chunk order: every list cut in chunks of
 * BATCH_IDS, the chunks shuffled, each list's chunks kept in order. */
static void pop_build(pop *p, const uint64_t *key, const uint64_t *len, uint64_t n, uint64_t big_from,
                      uint64_t tag) {
    uint64_t s = stream(tag), i, c, *next;
    memset(p, 0, sizeof *p);
    p->n = n, p->key = key;
    p->off = bench_xmalloc((size_t)(n + 1) * sizeof *p->off);
    p->off[0] = 0;
    for (i = 0; i < n; i++) {
        p->off[i + 1] = p->off[i] + len[i];
        p->nchunks += (len[i] + BATCH_IDS - 1) / BATCH_IDS;
    }
    p->total = p->off[n];
    p->ids = bench_xmalloc((size_t)p->total * sizeof *p->ids);
    p->load = bench_xmalloc((size_t)p->total * sizeof *p->load);
    for (i = 0; i < n; i++) {
        uint64_t *ids = p->ids + p->off[i], *ld = p->load + p->off[i], m = len[i], k;
        gen_ids(&s, ids, m);
        memcpy(ld, ids, (size_t)m * sizeof *ld);
        if (i < big_from) {
            shuffle_u64(&s, ld, m);
        } else {
            for (k = 0; k < m * BIG_SHUFFLE_PCT / 100; k++) {
                uint64_t a = rnd_below(&s, m), b = rnd_below(&s, m), t = ld[a];
                ld[a] = ld[b], ld[b] = t;
            }
        }
    }
    p->ch_list = bench_xmalloc((size_t)p->nchunks * sizeof *p->ch_list);
    p->ch_n = bench_xmalloc((size_t)p->nchunks * sizeof *p->ch_n);
    p->ch_pos = bench_xmalloc((size_t)p->nchunks * sizeof *p->ch_pos);
    for (i = 0, c = 0; i < n; i++) {
        uint64_t k;
        for (k = 0; k < (len[i] + BATCH_IDS - 1) / BATCH_IDS; k++) p->ch_list[c++] = (uint32_t)i;
    }
    for (i = p->nchunks; i > 1; i--) {
        uint64_t j = rnd_below(&s, i);
        uint32_t t = p->ch_list[i - 1];
        p->ch_list[i - 1] = p->ch_list[j], p->ch_list[j] = t;
    }
    next = bench_xmalloc((size_t)n * sizeof *next);
    for (i = 0; i < n; i++) next[i] = p->off[i];
    for (c = 0; c < p->nchunks; c++) {
        uint32_t l = p->ch_list[c];
        uint64_t left = p->off[l + 1] - next[l];
        p->ch_pos[c] = next[l];
        p->ch_n[c] = (uint32_t)(left < BATCH_IDS ? left : BATCH_IDS);
        next[l] += p->ch_n[c];
    }
    free(next);
}

static void pop_free(pop *p) {
    free(p->off), free(p->ids), free(p->load);
    free(p->ch_list), free(p->ch_n), free(p->ch_pos);
    memset(p, 0, sizeof *p);
}

/* Sizes: log-uniform 1..SMALL_MAX (mean 99/ln(100) ~ 21.5), a 0.5% tail
 * log-uniform SMALL_MAX+1..MID_MAX, then the big lists. */
static void make_populations(void) {
    uint64_t n = g_lists + g_big_lists, s = stream(1), i, *len;
    len = bench_xmalloc((size_t)n * sizeof *len);
    g_key = bench_xmalloc((size_t)n * sizeof *g_key);
    for (i = 0; i < n; i++) {
        /* distinct: bench_mix is a bijection of uint64 */
        g_key[i] = bench_mix(g_seed * 0x100000001B3ull + i);
        if (i >= g_lists) {
            len[i] = g_big_ids;
        } else if (rnd_below(&s, 1000) < MID_PERMILLE) {
            len[i] = (uint64_t)((SMALL_MAX + 1) * exp(rnd01(&s) * log((double)MID_MAX / (SMALL_MAX + 1))));
        } else {
            len[i] = (uint64_t)exp(rnd01(&s) * log(SMALL_MAX + 1.0));
        }
        if (len[i] < 1) len[i] = 1;
    }
    g_big_from = g_lists;
    pop_build(&g_orig, g_key, len, n, g_big_from, 2);
    free(len);

    len = bench_xmalloc(MINI_LISTS * sizeof *len);
    g_mini_key = bench_xmalloc(MINI_LISTS * sizeof *g_mini_key);
    s = stream(3);
    for (i = 0; i < MINI_LISTS; i++) {
        g_mini_key[i] = bench_mix((g_seed ^ 0x5EEDull) * 0x100000001B3ull + i);
        len[i] = 1 + rnd_below(&s, MINI_MAX);
    }
    pop_build(&g_mini, g_mini_key, len, MINI_LISTS, MINI_LISTS, 4);
    free(len);
}

/* ---- operations -------------------------------------------------------- */

/* One operation on list `list`: the id to add/remove/look up (get: the
 * `from` id), and what it must find: contains 0/1, get the position in
 * the final list of the first id expected. */
typedef struct op {
    uint32_t list, expect;
    uint64_t id;
} op;

typedef struct opset {
    op *v;
    uint64_t n;
} opset;

static opset g_add, g_rm, g_has, g_has_big, g_get, g_get_big, g_cnt;

/* Open addressing set of (list << 32 | id) + 1; 0 is empty. */
typedef struct hset {
    uint64_t *t, mask;
} hset;

static void hset_init(hset *h, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n + 16) cap <<= 1;
    h->t = calloc((size_t)cap, sizeof *h->t);
    if (!h->t) bench_fail("out of memory");
    h->mask = cap - 1;
}

/* Inserts x; returns 0 if it was already there. Bounded: the table is
 * never more than half full. */
static int hset_add(hset *h, uint64_t x) {
    uint64_t i = bench_mix(x) & h->mask;
    x++;
    while (h->t[i]) {
        if (h->t[i] == x) return 0;
        i = (i + 1) & h->mask;
    }
    h->t[i] = x;
    return 1;
}

static int in_list(const pop *p, uint64_t i, uint64_t id) {
    return bsearch(&id, pop_ids(p, i), (size_t)pop_len(p, i), sizeof id, cmp_u64) != NULL;
}

/* Index of the first id >= from in list i of p. */
static uint64_t lower_bound(const pop *p, uint64_t i, uint64_t from) {
    const uint64_t *a = pop_ids(p, i);
    uint64_t lo = 0, hi = pop_len(p, i);
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < from) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int cmp_op(const void *a, const void *b) {
    const op *x = a, *y = b;
    if (x->list != y->list) return x->list < y->list ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void opset_alloc(opset *o, uint64_t n) {
    o->n = n;
    o->v = bench_xmalloc((size_t)n * sizeof *o->v);
}

/* Adds of ids in no list (every one adds 1), removes of distinct loaded
 * ids (every one removes 1), then the final model: loaded - removed +
 * added, per list ascending. */
static void make_writes(void) {
    uint64_t s = stream(10), i, j, a, r, tries, n = g_orig.n;
    op *sa, *sr;
    hset h;
    opset_alloc(&g_add, g_ops / 5);
    opset_alloc(&g_rm, g_ops / 5);
    hset_init(&h, g_add.n + g_rm.n);
    for (i = 0; i < g_add.n; i++) {
        for (tries = 0;; tries++) { /* bounded: a random 32-bit id is nearly always new */
            uint32_t l = (uint32_t)rnd_below(&s, n);
            uint64_t id = rnd(&s) >> 32;
            if (tries > 1000) bench_fail("cannot find ids to add");
            if (in_list(&g_orig, l, id) || !hset_add(&h, (uint64_t)l << 32 | id)) continue;
            g_add.v[i].list = l, g_add.v[i].id = id, g_add.v[i].expect = 1;
            break;
        }
    }
    for (i = 0; i < g_rm.n; i++) {
        for (tries = 0;; tries++) { /* bounded: most picked ids are not yet removed */
            uint32_t l = (uint32_t)rnd_below(&s, n);
            uint64_t id = pop_ids(&g_orig, l)[rnd_below(&s, pop_len(&g_orig, l))];
            if (tries > 100000) bench_fail("cannot find ids to remove");
            if (!hset_add(&h, (uint64_t)l << 32 | id)) continue;
            g_rm.v[i].list = l, g_rm.v[i].id = id, g_rm.v[i].expect = 1;
            break;
        }
    }
    free(h.t);

    sa = bench_xmalloc((size_t)g_add.n * sizeof *sa);
    sr = bench_xmalloc((size_t)g_rm.n * sizeof *sr);
    memcpy(sa, g_add.v, (size_t)g_add.n * sizeof *sa);
    memcpy(sr, g_rm.v, (size_t)g_rm.n * sizeof *sr);
    qsort(sa, (size_t)g_add.n, sizeof *sa, cmp_op);
    qsort(sr, (size_t)g_rm.n, sizeof *sr, cmp_op);
    memset(&g_fin, 0, sizeof g_fin);
    g_fin.n = n, g_fin.key = g_key;
    g_fin.off = bench_xmalloc((size_t)(n + 1) * sizeof *g_fin.off);
    g_fin.ids = bench_xmalloc((size_t)(g_orig.total + g_add.n) * sizeof *g_fin.ids);
    g_fin.off[0] = 0;
    g_fin_lists = 0;
    for (i = 0, a = 0, r = 0; i < n; i++) {
        const uint64_t *o = pop_ids(&g_orig, i);
        uint64_t on = pop_len(&g_orig, i), k = 0, out = g_fin.off[i];
        /* orig minus the removes of list i, merged with its adds; both
         * op runs are sorted by (list, id) */
        for (j = 0; j < on; j++) {
            if (r < g_rm.n && sr[r].list == i && sr[r].id == o[j]) {
                r++;
                continue;
            }
            while (a < g_add.n && sa[a].list == i && sa[a].id < o[j]) g_fin.ids[out++] = sa[a++].id;
            g_fin.ids[out++] = o[j];
            k++;
        }
        while (a < g_add.n && sa[a].list == i) g_fin.ids[out++] = sa[a++].id;
        if (r < g_rm.n && sr[r].list == i) bench_fail("model: remove of an id not loaded");
        g_fin.off[i + 1] = out;
        if (out > g_fin.off[i]) g_fin_lists++;
    }
    if (a != g_add.n || r != g_rm.n)
        bench_fail("model: %" PRIu64 "/%" PRIu64 " adds, %" PRIu64 "/%" PRIu64 " removes used", a, g_add.n, r, g_rm.n);
    g_fin.total = g_fin.off[n];
    free(sa);
    free(sr);
}

/* A list of g_fin with at least one id: uniform over [lo, hi). Bounded:
 * with few lists left non-empty the loop fails rather than spins. */
static uint32_t pick_nonempty(uint64_t *s, uint64_t lo, uint64_t hi) {
    int tries;
    for (tries = 0; tries < 100000; tries++) {
        uint64_t l = lo + rnd_below(s, hi - lo);
        if (pop_len(&g_fin, l)) return (uint32_t)l;
    }
    bench_fail("no non-empty list in [%" PRIu64 ", %" PRIu64 ")", lo, hi);
}

/* contains: half hits (a random id of a random non-empty list), half
 * random ids (nearly always misses); lists uniform over [lo, hi). */
static void make_contains(opset *o, uint64_t n, uint64_t lo, uint64_t hi, uint64_t tag) {
    uint64_t s = stream(tag), i;
    opset_alloc(o, hi > lo ? n : 0);
    for (i = 0; i < o->n; i++) {
        op *p = &o->v[i];
        if (rnd(&s) & 1) {
            p->list = pick_nonempty(&s, lo, hi);
            p->id = pop_ids(&g_fin, p->list)[rnd_below(&s, pop_len(&g_fin, p->list))];
        } else {
            p->list = (uint32_t)(lo + rnd_below(&s, hi - lo));
            p->id = rnd(&s) >> 32;
        }
        p->expect = (uint32_t)in_list(&g_fin, p->list, p->id);
    }
}

/* get: from 0 (first page) of any list, or (big) from a random id of a
 * big list; expect = the index of the first id due. */
static void make_get(opset *o, uint64_t n, uint64_t lo, uint64_t hi, int from_random, uint64_t tag) {
    uint64_t s = stream(tag), i;
    opset_alloc(o, hi > lo ? n : 0);
    for (i = 0; i < o->n; i++) {
        op *p = &o->v[i];
        p->list = (uint32_t)(lo + rnd_below(&s, hi - lo));
        p->id = from_random ? rnd(&s) >> 32 : 0;
        p->expect = (uint32_t)lower_bound(&g_fin, p->list, p->id);
    }
}

static void make_ops(void) {
    uint64_t i, s = stream(20), n = g_orig.n;
    make_writes();
    make_contains(&g_has, g_ops, 0, n, 21);
    make_contains(&g_has_big, g_ops / 2, g_big_from, n, 22);
    make_get(&g_get, g_ops / 5, 0, n, 0, 23);
    make_get(&g_get_big, g_ops / 10, g_big_from, n, 1, 24);
    opset_alloc(&g_cnt, g_ops);
    for (i = 0; i < g_cnt.n; i++) g_cnt.v[i].list = (uint32_t)rnd_below(&s, n);
}

static int cmp_by_key(const void *a, const void *b) { return cmp_u64(&g_key[*(const uint64_t *)a], &g_key[*(const uint64_t *)b]); }

/* ==== 4. files and memory =============================================== */

static uint64_t file_size(const char *path) {
    struct stat st;
    if (stat(path, &st)) bench_fail("stat %s: %s", path, strerror(errno));
    return (uint64_t)st.st_size;
}

/* Bytes the allocator hands out now (main arena + mmap'd blocks). */
static double heap_bytes(void) {
    struct mallinfo2 mi = mallinfo2();
    return (double)mi.uordblks + (double)mi.hblkhd;
}

/* ==== 5. checks shared by the engines ==================================== */

static uint64_t g_page_ids; /* ids the current get phase read */

/* A page read from list `l` of g_fin starting at index pos: n ids in got. */
static void check_page(uint32_t l, uint64_t pos, const uint64_t *got, size_t n, size_t cap) {
    uint64_t len = pop_len(&g_fin, l), want = pos >= len ? 0 : len - pos;
    const uint64_t *exp_ids = pop_ids(&g_fin, l) + pos;
    size_t i;
    if (want > cap) want = cap;
    if (n != want)
        bench_fail("list %016" PRIx64 " (%" PRIu64 " ids): a page from index %" PRIu64
                   " has %zu ids, expected %" PRIu64,
                   g_key[l], len, pos, n, want);
    if (memcmp(got, exp_ids, n * sizeof *got)) {
        for (i = 0; i < n && got[i] == exp_ids[i]; i++) {}
        bench_fail("list %016" PRIx64 ": page from index %" PRIu64 ": id %zu is %" PRIu64 ", expected %" PRIu64,
                   g_key[l], pos, i, got[i], exp_ids[i]);
    }
    g_page_ids += n;
}

static void check_count(uint32_t l, uint64_t got) {
    if (got != pop_len(&g_fin, l))
        bench_fail("list %016" PRIx64 ": count %" PRIu64 ", expected %" PRIu64, g_key[l], got, pop_len(&g_fin, l));
}

static void check_contains(const op *o, int got) {
    if (got != (int)o->expect)
        bench_fail("list %016" PRIx64 ": contains(%" PRIu64 ") says %s, expected %s", g_key[o->list], o->id,
                   got ? "yes" : "no", o->expect ? "yes" : "no");
}

/* ==== 6. engines ========================================================= */

typedef struct db {
    const pop *p;   /* the population this database holds (verify, messages) */
    kvidx *kv;
    redisContext *rc;
    double ram_base; /* Redis: used_memory of the empty server */
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *rtxn; /* LMDB: the read txn, kept reset between reads */
    MDB_cursor *rcur;
    MDB_txn *wtxn; /* LMDB: the open write txn of a write phase */
    uint64_t wops;
    char dir[PATH_CAP];
} db;

/* Per engine, the same phases; every one checks what it reads and fails
 * on a wrong answer. */
typedef struct engine {
    const char *name;
    void (*open)(db *d, const char *dir); /* fresh: an empty database */
    void (*close)(db *d);
    void (*load)(db *d, const pop *p, int batch);
    void (*add)(db *d, const opset *o);
    void (*remove)(db *d, const opset *o);
    void (*contains)(db *d, const opset *o);
    void (*get)(db *d, const opset *o); /* adds to g_page_ids; NULL: cannot page in id order */
    void (*count)(db *d, const opset *o);
    void (*verify)(db *d, const pop *p); /* untimed: every list, every id, no extra list */
    double (*ram)(db *d);                /* bytes its lists take in memory now */
} engine;

/* ---- kvidx --------------------------------------------------------------- */

static void kv_check(int rc, const char *what) {
    if (rc) bench_fail("%s: %s", what, kvidx_strerror(rc));
}

static void kv_stat(db *d, kvidx_stats *st) {
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    kv_check(kvidx_stat(d->kv, st), "kvidx_stat");
}

static void kv_open_dir(db *d, const char *dir) {
    kvidx_options o;
    kvidx_options_init(&o); /* defaults: 8 shards, background sync every 1000 ms */
    snprintf(d->dir, sizeof d->dir, "%s", dir);
    kv_check(kvidx_open(dir, &o, &d->kv), "kvidx_open");
}

static void kv_open(db *d, const char *dir) {
    bench_rm_tree(dir);
    kv_open_dir(d, dir);
}

static void kv_close(db *d) {
    kv_check(kvidx_close(d->kv), "kvidx_close");
    d->kv = NULL;
}

static void kv_load(db *d, const pop *p, int batch) {
    uint64_t c;
    size_t added, j;
    for (c = 0; c < p->nchunks; c++) {
        uint64_t key = p->key[p->ch_list[c]];
        const uint64_t *ids = p->load + p->ch_pos[c];
        size_t n = p->ch_n[c];
        if (batch) {
            kv_check(kvidx_list_add(d->kv, key, ids, n, &added), "kvidx_list_add");
            if (added != n) bench_fail("list %016" PRIx64 ": added %zu of %zu new ids", key, added, n);
        } else {
            for (j = 0; j < n; j++) {
                kv_check(kvidx_list_add(d->kv, key, ids + j, 1, &added), "kvidx_list_add");
                if (added != 1)
                    bench_fail("list %016" PRIx64 ": id %" PRIu64 " not added (added %zu)", key, ids[j], added);
            }
        }
    }
}

static void kv_add(db *d, const opset *o) {
    uint64_t i;
    size_t added;
    for (i = 0; i < o->n; i++) {
        kv_check(kvidx_list_add(d->kv, g_key[o->v[i].list], &o->v[i].id, 1, &added), "kvidx_list_add");
        if (added != o->v[i].expect)
            bench_fail("list %016" PRIx64 ": add %" PRIu64 ": added %zu", g_key[o->v[i].list], o->v[i].id, added);
    }
}

static void kv_remove(db *d, const opset *o) {
    uint64_t i;
    size_t removed;
    for (i = 0; i < o->n; i++) {
        kv_check(kvidx_list_remove(d->kv, g_key[o->v[i].list], &o->v[i].id, 1, &removed), "kvidx_list_remove");
        if (removed != o->v[i].expect)
            bench_fail("list %016" PRIx64 ": remove %" PRIu64 ": removed %zu", g_key[o->v[i].list], o->v[i].id,
                       removed);
    }
}

static void kv_contains(db *d, const opset *o) {
    uint64_t i;
    for (i = 0; i < o->n; i++) {
        int rc = kvidx_list_contains(d->kv, g_key[o->v[i].list], o->v[i].id);
        if (rc != KVIDX_NOTFOUND) kv_check(rc, "kvidx_list_contains");
        check_contains(&o->v[i], rc == KVIDX_OK);
    }
}

static void kv_get(db *d, const opset *o) {
    uint64_t i, buf[PAGE];
    size_t n;
    for (i = 0; i < o->n; i++) {
        int rc = kvidx_list_get(d->kv, g_key[o->v[i].list], o->v[i].id, buf, PAGE, &n);
        if (rc == KVIDX_NOTFOUND) {
            if (pop_len(&g_fin, o->v[i].list)) bench_fail("list %016" PRIx64 ": get: NOTFOUND", g_key[o->v[i].list]);
            if (n) bench_fail("list %016" PRIx64 ": get: NOTFOUND with %zu ids", g_key[o->v[i].list], n);
        } else {
            kv_check(rc, "kvidx_list_get");
        }
        check_page(o->v[i].list, o->v[i].expect, buf, n, PAGE);
    }
}

static void kv_count(db *d, const opset *o) {
    uint64_t i, cnt;
    for (i = 0; i < o->n; i++) {
        int rc = kvidx_list_count(d->kv, g_key[o->v[i].list], &cnt);
        if (rc == KVIDX_NOTFOUND) {
            if (cnt) bench_fail("list %016" PRIx64 ": count: NOTFOUND with count %" PRIu64, g_key[o->v[i].list], cnt);
        } else {
            kv_check(rc, "kvidx_list_count");
            if (!cnt) bench_fail("list %016" PRIx64 ": count: OK with count 0", g_key[o->v[i].list]);
        }
        check_count(o->v[i].list, cnt);
    }
}

/* list_scan expectations: the non-empty lists of p in key order. */
typedef struct kv_scan_chk {
    const pop *p;
    const uint64_t *order; /* list indices by key */
    uint64_t pos, seen;
} kv_scan_chk;

static int kv_scan_visit(void *ud, uint64_t key, uint64_t count) {
    kv_scan_chk *c = ud;
    while (c->pos < c->p->n && !pop_len(c->p, c->order[c->pos])) c->pos++;
    if (c->pos >= c->p->n) bench_fail("list_scan: list %016" PRIx64 " after the last list", key);
    if (key != c->p->key[c->order[c->pos]])
        bench_fail("list_scan: list %016" PRIx64 " where %016" PRIx64 " was expected (order, missing or foreign list)",
                   key, c->p->key[c->order[c->pos]]);
    if (count != pop_len(c->p, c->order[c->pos]))
        bench_fail("list_scan: list %016" PRIx64 ": count %" PRIu64 ", expected %" PRIu64, key, count,
                   pop_len(c->p, c->order[c->pos]));
    c->pos++;
    c->seen++;
    return 0;
}

static uint64_t *order_by_key(const pop *p) {
    uint64_t i, *o = bench_xmalloc((size_t)p->n * sizeof *o);
    const uint64_t *save = g_key;
    for (i = 0; i < p->n; i++) o[i] = i;
    g_key = (uint64_t *)p->key; /* cmp_by_key reads g_key: point it at p's keys */
    qsort(o, (size_t)p->n, sizeof *o, cmp_by_key);
    g_key = (uint64_t *)save;
    return o;
}

/* Untimed: kvidx_stat, list_scan and every id of every list. */
static void kv_verify(db *d, const pop *p) {
    uint64_t i, lists = 0, *buf = bench_xmalloc(VERIFY_CAP * sizeof *buf);
    const uint64_t *order = p == &g_fin ? g_by_key : order_by_key(p);
    kv_scan_chk sc;
    kvidx_stats st;
    for (i = 0; i < p->n; i++) lists += pop_len(p, i) > 0;
    kv_stat(d, &st);
    if (st.lists != lists || st.list_ids != p->total)
        bench_fail("kvidx_stat: %" PRIu64 " lists, %" PRIu64 " ids; expected %" PRIu64 " lists, %" PRIu64 " ids",
                   st.lists, st.list_ids, lists, p->total);
    memset(&sc, 0, sizeof sc);
    sc.p = p, sc.order = order;
    kv_check(kvidx_list_scan(d->kv, 0, UINT64_MAX, kv_scan_visit, &sc), "kvidx_list_scan");
    if (sc.seen != lists) bench_fail("list_scan: %" PRIu64 " lists, expected %" PRIu64, sc.seen, lists);
    for (i = 0; i < p->n; i++) {
        const uint64_t *want = pop_ids(p, i);
        uint64_t len = pop_len(p, i), at = 0, from = 0, pages;
        for (pages = 0; pages <= len / VERIFY_CAP + 1; pages++) { /* bounded: one page past the end */
            size_t n, k;
            int rc = kvidx_list_get(d->kv, p->key[i], from, buf, VERIFY_CAP, &n);
            if (rc == KVIDX_NOTFOUND && !len) break;
            kv_check(rc, "kvidx_list_get");
            if (n > len - at) bench_fail("list %016" PRIx64 ": more than its %" PRIu64 " ids", p->key[i], len);
            for (k = 0; k < n; k++)
                if (buf[k] != want[at + k])
                    bench_fail("list %016" PRIx64 ": id %" PRIu64 " is %" PRIu64 ", expected %" PRIu64, p->key[i],
                               at + k, buf[k], want[at + k]);
            at += n;
            if (n < VERIFY_CAP) break;
            from = buf[n - 1] + 1;
        }
        if (at != len) bench_fail("list %016" PRIx64 ": %" PRIu64 " ids read, expected %" PRIu64, p->key[i], at, len);
    }
    if (order != g_by_key) free((void *)order);
    free(buf);
}

static double kv_ram(db *d) {
    kvidx_stats st;
    kv_stat(d, &st);
    return (double)st.list_ram_bytes;
}

/* ---- Redis --------------------------------------------------------------- */

/* Two engines. "redis": a sorted set per list: member = the id in
 * decimal, score = the id (exact in a double below 2^53), so score order
 * is id order. "redis-set": a plain set per list, member = the id in
 * decimal (an intset up to set-max-intset-entries, 512 by default, then
 * a hash table); no order, so no get. Keys are the list key's 8 bytes.
 * Each engine gets a fresh redis-server (main). Every timed phase
 * pipelines PIPE commands: one command per round trip would time the
 * loopback, not Redis. */

static int g_redis_port;
static char g_redis_dir[PATH_CAP];
static char g_ver_redis[64] = "unknown";

static size_t u64_dec(char *out, uint64_t x) {
    char tmp[24];
    size_t n = 0, i;
    do tmp[n++] = (char)('0' + x % 10);
    while (x /= 10);
    for (i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

static uint64_t dec_u64(const char *s, size_t len) {
    uint64_t x = 0;
    size_t i;
    if (!len || len > 20) bench_fail("redis: bad id '%.*s'", (int)(len > 30 ? 30 : len), s);
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') bench_fail("redis: bad id '%.*s'", (int)(len > 30 ? 30 : len), s);
        x = x * 10 + (uint64_t)(s[i] - '0');
    }
    return x;
}

/* One command being built: argv of up to 2 + 2 * BATCH_IDS strings. */
typedef struct rcmd {
    int argc;
    const char *argv[2 + 2 * BATCH_IDS];
    size_t len[2 + 2 * BATCH_IDS];
    char kb[8];
    char num[BATCH_IDS + 2][24];
} rcmd;

static void rcmd_start(rcmd *c, const char *verb, uint64_t key) {
    memcpy(c->kb, &key, 8);
    c->argv[0] = verb, c->len[0] = strlen(verb);
    c->argv[1] = c->kb, c->len[1] = 8;
    c->argc = 2;
}

static void rcmd_str(rcmd *c, const char *s) {
    c->argv[c->argc] = s, c->len[c->argc] = strlen(s);
    c->argc++;
}

/* Appends the id's decimal form `times` times (ZADD's score and member). */
static void rcmd_id(rcmd *c, int slot, uint64_t id, int times) {
    size_t n = u64_dec(c->num[slot], id);
    while (times-- > 0) {
        c->argv[c->argc] = c->num[slot], c->len[c->argc] = n;
        c->argc++;
    }
}

static void rd_send(db *d, rcmd *c) {
    if (redisAppendCommandArgv(d->rc, c->argc, c->argv, c->len) != REDIS_OK)
        bench_fail("redis append: %s", d->rc->errstr);
}

static redisReply *rd_reply(db *d) {
    void *r = NULL;
    if (redisGetReply(d->rc, &r) != REDIS_OK || !r) bench_fail("redis: %s", d->rc->errstr);
    if (((redisReply *)r)->type == REDIS_REPLY_ERROR) bench_fail("redis: %s", ((redisReply *)r)->str);
    return r;
}

static long long rd_int(db *d) {
    redisReply *r = rd_reply(d);
    long long v;
    if (r->type != REDIS_REPLY_INTEGER) bench_fail("redis: reply type %d, expected an integer", r->type);
    v = r->integer;
    freeReplyObject(r);
    return v;
}

/* One command, its reply. */
static redisReply *rd_cmd(db *d, int argc, const char **argv) {
    size_t len[8];
    int i;
    for (i = 0; i < argc; i++) len[i] = strlen(argv[i]);
    if (redisAppendCommandArgv(d->rc, argc, argv, len) != REDIS_OK) bench_fail("redis append: %s", d->rc->errstr);
    return rd_reply(d);
}

/* INFO section's numeric field. */
static double rd_info(db *d, const char *section, const char *field) {
    const char *argv[2] = {"INFO", section};
    redisReply *r = rd_cmd(d, 2, argv);
    char pat[128];
    const char *at;
    double v;
    snprintf(pat, sizeof pat, "%s:", field);
    if (r->type != REDIS_REPLY_STRING) bench_fail("INFO %s: not a string", section);
    for (at = r->str; (at = strstr(at, pat)); at++)
        if (at == r->str || at[-1] == '\n') break;
    if (!at) bench_fail("INFO %s: no %s", section, field);
    v = strtod(at + strlen(pat), NULL);
    freeReplyObject(r);
    return v;
}

static void rd_open(db *d, const char *dir) {
    struct timeval tv = {10, 0};
    const char *flush[1] = {"FLUSHALL"};
    (void)dir;
    d->rc = redisConnectWithTimeout("127.0.0.1", g_redis_port, tv);
    if (!d->rc || d->rc->err)
        bench_fail("redis connect 127.0.0.1:%d: %s", g_redis_port, d->rc ? d->rc->errstr : "no memory");
    freeReplyObject(rd_cmd(d, 1, flush));
    d->ram_base = rd_info(d, "memory", "used_memory");
}

static void rd_close(db *d) {
    redisFree(d->rc);
    d->rc = NULL;
}

/* Drains `pending` replies whose integers must equal want[]. */
static void rd_drain_ints(db *d, const long long *want, int pending, const char *what) {
    int j;
    for (j = 0; j < pending; j++) {
        long long v = rd_int(d);
        if (v != want[j]) bench_fail("%s: reply %lld, expected %lld", what, v, want[j]);
    }
}

/* verb (ZADD or SADD) with each id `times` times (ZADD: score, member). */
static void rd_load_verb(db *d, const pop *p, int batch, const char *verb, int times) {
    rcmd *c = bench_xmalloc(sizeof *c);
    long long want[PIPE];
    int pending = 0, depth = batch ? PIPE_BATCH : PIPE;
    uint64_t ch, j;
    for (ch = 0; ch < p->nchunks; ch++) {
        uint64_t key = p->key[p->ch_list[ch]];
        const uint64_t *ids = p->load + p->ch_pos[ch];
        uint32_t n = p->ch_n[ch];
        if (batch) {
            rcmd_start(c, verb, key);
            for (j = 0; j < n; j++) rcmd_id(c, (int)j, ids[j], times);
            rd_send(d, c);
            want[pending++] = n;
            if (pending == depth) rd_drain_ints(d, want, pending, verb), pending = 0;
        } else {
            for (j = 0; j < n; j++) {
                rcmd_start(c, verb, key);
                rcmd_id(c, 0, ids[j], times);
                rd_send(d, c);
                want[pending++] = 1;
                if (pending == depth) rd_drain_ints(d, want, pending, verb), pending = 0;
            }
        }
    }
    rd_drain_ints(d, want, pending, verb);
    free(c);
}

static void rd_load(db *d, const pop *p, int batch) { rd_load_verb(d, p, batch, "ZADD", 2); }
static void rs_load(db *d, const pop *p, int batch) { rd_load_verb(d, p, batch, "SADD", 1); }

/* ZADD / ZREM / SADD / SREM of one id per op (ZADD: `times` 2, score and
 * member), pipelined; integer reply = op->expect. */
static void rd_write(db *d, const opset *o, const char *verb, int times) {
    rcmd *c = bench_xmalloc(sizeof *c);
    long long want[PIPE];
    uint64_t i, j, m;
    for (i = 0; i < o->n; i += m) {
        m = o->n - i < PIPE ? o->n - i : PIPE;
        for (j = 0; j < m; j++) {
            const op *p = &o->v[i + j];
            rcmd_start(c, verb, g_key[p->list]);
            rcmd_id(c, 0, p->id, times);
            rd_send(d, c);
            want[j] = p->expect;
        }
        rd_drain_ints(d, want, (int)m, verb);
    }
    free(c);
}

static void rd_add(db *d, const opset *o) { rd_write(d, o, "ZADD", 2); }
static void rd_remove(db *d, const opset *o) { rd_write(d, o, "ZREM", 1); }
static void rs_add(db *d, const opset *o) { rd_write(d, o, "SADD", 1); }
static void rs_remove(db *d, const opset *o) { rd_write(d, o, "SREM", 1); }

static void rd_contains(db *d, const opset *o) {
    rcmd *c = bench_xmalloc(sizeof *c);
    uint64_t i, j, m;
    for (i = 0; i < o->n; i += m) {
        m = o->n - i < PIPE ? o->n - i : PIPE;
        for (j = 0; j < m; j++) {
            rcmd_start(c, "ZSCORE", g_key[o->v[i + j].list]);
            rcmd_id(c, 0, o->v[i + j].id, 1);
            rd_send(d, c);
        }
        for (j = 0; j < m; j++) {
            redisReply *r = rd_reply(d);
            const op *p = &o->v[i + j];
            if (r->type == REDIS_REPLY_STRING) {
                if (dec_u64(r->str, r->len) != p->id) bench_fail("ZSCORE %" PRIu64 ": score %s", p->id, r->str);
                check_contains(p, 1);
            } else if (r->type == REDIS_REPLY_NIL) {
                check_contains(p, 0);
            } else {
                bench_fail("ZSCORE: reply type %d", r->type);
            }
            freeReplyObject(r);
        }
    }
    free(c);
}

/* SISMEMBER: integer 1 or 0. */
static void rs_contains(db *d, const opset *o) {
    rcmd *c = bench_xmalloc(sizeof *c);
    uint64_t i, j, m;
    for (i = 0; i < o->n; i += m) {
        m = o->n - i < PIPE ? o->n - i : PIPE;
        for (j = 0; j < m; j++) {
            rcmd_start(c, "SISMEMBER", g_key[o->v[i + j].list]);
            rcmd_id(c, 0, o->v[i + j].id, 1);
            rd_send(d, c);
        }
        for (j = 0; j < m; j++) {
            long long v = rd_int(d);
            if (v != 0 && v != 1) bench_fail("SISMEMBER %" PRIu64 ": reply %lld", o->v[i + j].id, v);
            check_contains(&o->v[i + j], (int)v);
        }
    }
    free(c);
}

/* A ZRANGE-like reply: an array of decimal ids, checked as a page of list
 * l from index pos, at most cap ids. */
static void rd_check_range(redisReply *r, uint32_t l, uint64_t pos, uint64_t *buf, size_t cap) {
    size_t k;
    if (r->type != REDIS_REPLY_ARRAY) bench_fail("ZRANGE: reply type %d", r->type);
    if (r->elements > cap)
        bench_fail("list %016" PRIx64 ": a page of %zu ids, at most %zu expected", g_key[l], r->elements, cap);
    for (k = 0; k < r->elements; k++) {
        if (r->element[k]->type != REDIS_REPLY_STRING) bench_fail("ZRANGE: element type %d", r->element[k]->type);
        buf[k] = dec_u64(r->element[k]->str, r->element[k]->len);
    }
    check_page(l, pos, buf, r->elements, cap);
}

/* First pages: ZRANGE key 0 99; from an id: ZRANGEBYSCORE key id +inf
 * LIMIT 0 100. */
static void rd_get(db *d, const opset *o) {
    rcmd *c = bench_xmalloc(sizeof *c);
    uint64_t i, j, m, buf[PAGE];
    for (i = 0; i < o->n; i += m) {
        m = o->n - i < PIPE ? o->n - i : PIPE;
        for (j = 0; j < m; j++) {
            const op *p = &o->v[i + j];
            if (p->id == 0) {
                rcmd_start(c, "ZRANGE", g_key[p->list]);
                rcmd_str(c, "0");
                rcmd_str(c, "99"); /* PAGE - 1 */
            } else {
                rcmd_start(c, "ZRANGEBYSCORE", g_key[p->list]);
                rcmd_id(c, 0, p->id, 1);
                rcmd_str(c, "+inf");
                rcmd_str(c, "LIMIT");
                rcmd_str(c, "0");
                rcmd_str(c, "100"); /* PAGE */
            }
            rd_send(d, c);
        }
        for (j = 0; j < m; j++) {
            redisReply *r = rd_reply(d);
            rd_check_range(r, o->v[i + j].list, o->v[i + j].expect, buf, PAGE);
            freeReplyObject(r);
        }
    }
    free(c);
}

/* ZCARD or SCARD. */
static void rd_count_verb(db *d, const opset *o, const char *verb) {
    rcmd *c = bench_xmalloc(sizeof *c);
    uint64_t i, j, m;
    for (i = 0; i < o->n; i += m) {
        m = o->n - i < PIPE ? o->n - i : PIPE;
        for (j = 0; j < m; j++) {
            rcmd_start(c, verb, g_key[o->v[i + j].list]);
            rd_send(d, c);
        }
        for (j = 0; j < m; j++) {
            long long v = rd_int(d);
            check_count(o->v[i + j].list, (uint64_t)v);
        }
    }
    free(c);
}

static void rd_count(db *d, const opset *o) { rd_count_verb(d, o, "ZCARD"); }
static void rs_count(db *d, const opset *o) { rd_count_verb(d, o, "SCARD"); }

/* DBSIZE must be the number of non-empty lists of p. */
static void rd_check_dbsize(db *d, const pop *p) {
    const char *dbsize[1] = {"DBSIZE"};
    redisReply *r = rd_cmd(d, 1, dbsize);
    uint64_t i, lists = 0;
    for (i = 0; i < p->n; i++) lists += pop_len(p, i) > 0;
    if (r->type != REDIS_REPLY_INTEGER || (uint64_t)r->integer != lists)
        bench_fail("DBSIZE %lld, expected %" PRIu64, r->integer, lists);
    freeReplyObject(r);
}

/* Untimed: DBSIZE, then ZRANGE 0 -1 of every list. */
static void rd_verify(db *d, const pop *p) {
    rcmd *c = bench_xmalloc(sizeof *c);
    redisReply *r;
    uint64_t i, j, m;
    rd_check_dbsize(d, p);
    for (i = 0; i < p->n; i += m) {
        m = p->n - i < PIPE ? p->n - i : PIPE;
        for (j = 0; j < m; j++) {
            rcmd_start(c, "ZRANGE", p->key[i + j]);
            rcmd_str(c, "0");
            rcmd_str(c, "-1");
            rd_send(d, c);
        }
        for (j = 0; j < m; j++) {
            const uint64_t *want = pop_ids(p, i + j);
            size_t k;
            r = rd_reply(d);
            if (r->type != REDIS_REPLY_ARRAY || r->elements != pop_len(p, i + j))
                bench_fail("list %016" PRIx64 ": ZRANGE 0 -1: %zu ids, expected %" PRIu64, p->key[i + j], r->elements,
                           pop_len(p, i + j));
            for (k = 0; k < r->elements; k++)
                if (dec_u64(r->element[k]->str, r->element[k]->len) != want[k])
                    bench_fail("list %016" PRIx64 ": id %zu is %s, expected %" PRIu64, p->key[i + j], k,
                               r->element[k]->str, want[k]);
            freeReplyObject(r);
        }
    }
    free(c);
}

/* Untimed: DBSIZE, then SMEMBERS of every list (any order: sorted here). */
static void rs_verify(db *d, const pop *p) {
    rcmd *c = bench_xmalloc(sizeof *c);
    uint64_t i, j, m, cap = 0, *buf = NULL;
    rd_check_dbsize(d, p);
    for (i = 0; i < p->n; i += m) {
        m = p->n - i < PIPE ? p->n - i : PIPE;
        for (j = 0; j < m; j++) {
            rcmd_start(c, "SMEMBERS", p->key[i + j]);
            rd_send(d, c);
        }
        for (j = 0; j < m; j++) {
            const uint64_t *want = pop_ids(p, i + j);
            redisReply *r = rd_reply(d);
            size_t k;
            if (r->type != REDIS_REPLY_ARRAY || r->elements != pop_len(p, i + j))
                bench_fail("list %016" PRIx64 ": SMEMBERS: %zu ids, expected %" PRIu64, p->key[i + j], r->elements,
                           pop_len(p, i + j));
            if (r->elements > cap) {
                free(buf);
                cap = r->elements;
                buf = bench_xmalloc((size_t)cap * sizeof *buf);
            }
            for (k = 0; k < r->elements; k++) {
                if (r->element[k]->type != REDIS_REPLY_STRING)
                    bench_fail("SMEMBERS: element type %d", r->element[k]->type);
                buf[k] = dec_u64(r->element[k]->str, r->element[k]->len);
            }
            qsort(buf, r->elements, sizeof *buf, cmp_u64);
            for (k = 0; k < r->elements; k++)
                if (buf[k] != want[k])
                    bench_fail("list %016" PRIx64 ": sorted member %zu is %" PRIu64 ", expected %" PRIu64,
                               p->key[i + j], k, buf[k], want[k]);
            freeReplyObject(r);
        }
    }
    free(buf);
    free(c);
}

static double rd_ram(db *d) { return rd_info(d, "memory", "used_memory") - d->ram_base; }

/* BGSAVE, wait for it, the size of dump.rdb. Bounded by time. */
static uint64_t rd_save(db *d, uint64_t *blocks) {
    const char *bg[1] = {"BGSAVE"};
    char path[PATH_CAP];
    struct stat st;
    int i;
    freeReplyObject(rd_cmd(d, 1, bg));
    for (i = 0; i < 30000; i++) { /* 30000 * 10 ms: 5 minutes at most */
        struct timespec ts = {0, 10000000};
        if (rd_info(d, "persistence", "rdb_bgsave_in_progress") == 0) break;
        nanosleep(&ts, NULL);
    }
    if (i == 30000) bench_fail("BGSAVE still running after 5 minutes");
    {
        const char *argv[2] = {"INFO", "persistence"};
        redisReply *r = rd_cmd(d, 2, argv);
        if (!strstr(r->str, "rdb_last_bgsave_status:ok")) bench_fail("BGSAVE failed (see %s/redis.log)", g_redis_dir);
        freeReplyObject(r);
    }
    bench_path_join(path, g_redis_dir, "dump.rdb");
    if (stat(path, &st)) bench_fail("stat %s: %s", path, strerror(errno));
    *blocks = (uint64_t)st.st_blocks * 512;
    return (uint64_t)st.st_size;
}

/* ---- LMDB ---------------------------------------------------------------- */

/* One database, MDB_DUPSORT | MDB_DUPFIXED | MDB_INTEGERKEY |
 * MDB_INTEGERDUP: key = the list key, native uint64; one duplicate per
 * id, native uint64. Writes go in transactions of LMDB_TXN_OPS ids;
 * every read renews and resets one read transaction. */

static void lm_check(int rc, const char *what) {
    if (rc) bench_fail("%s: %s", what, mdb_strerror(rc));
}

static void lm_open_dir(db *d, const char *dir) {
    MDB_txn *t;
    snprintf(d->dir, sizeof d->dir, "%s", dir);
    bench_mkdir_p(dir);
    lm_check(mdb_env_create(&d->env), "mdb_env_create");
    lm_check(mdb_env_set_mapsize(d->env, (size_t)LMDB_MAPSIZE), "mdb_env_set_mapsize");
    lm_check(mdb_env_open(d->env, dir, MDB_NOSYNC | MDB_NOMETASYNC, 0644), "mdb_env_open");
    lm_check(mdb_txn_begin(d->env, NULL, 0, &t), "mdb_txn_begin");
    lm_check(mdb_dbi_open(t, NULL, MDB_DUPSORT | MDB_DUPFIXED | MDB_INTEGERKEY | MDB_INTEGERDUP, &d->dbi),
             "mdb_dbi_open");
    lm_check(mdb_txn_commit(t), "mdb_txn_commit");
    lm_check(mdb_txn_begin(d->env, NULL, MDB_RDONLY, &d->rtxn), "mdb_txn_begin(RDONLY)");
    lm_check(mdb_cursor_open(d->rtxn, d->dbi, &d->rcur), "mdb_cursor_open");
    mdb_txn_reset(d->rtxn);
}

static void lm_open(db *d, const char *dir) {
    bench_rm_tree(dir);
    lm_open_dir(d, dir);
}

static void lm_close(db *d) {
    mdb_cursor_close(d->rcur);
    mdb_txn_abort(d->rtxn);
    mdb_env_close(d->env);
    d->env = NULL, d->rtxn = NULL, d->rcur = NULL;
}

static void lm_wbegin(db *d) {
    lm_check(mdb_txn_begin(d->env, NULL, 0, &d->wtxn), "mdb_txn_begin");
    d->wops = 0;
}

static void lm_wcommit(db *d) {
    lm_check(mdb_txn_commit(d->wtxn), "mdb_txn_commit");
    d->wtxn = NULL;
}

/* Counts n writes; commits and begins a new txn every LMDB_TXN_OPS. */
static void lm_wtick(db *d, uint64_t n) {
    d->wops += n;
    if (d->wops >= LMDB_TXN_OPS) lm_wcommit(d), lm_wbegin(d);
}

static void lm_rbegin(db *d) {
    lm_check(mdb_txn_renew(d->rtxn), "mdb_txn_renew");
    lm_check(mdb_cursor_renew(d->rtxn, d->rcur), "mdb_cursor_renew");
}

static void lm_rend(db *d) { mdb_txn_reset(d->rtxn); }

/* load-1: mdb_put per id; load-100: one mdb_cursor_put MDB_MULTIPLE per
 * chunk (LMDB's own multi-item write for DUPFIXED). */
static void lm_load(db *d, const pop *p, int batch) {
    uint64_t c, j;
    lm_wbegin(d);
    for (c = 0; c < p->nchunks; c++) {
        uint64_t key = p->key[p->ch_list[c]];
        uint64_t *ids = p->load + p->ch_pos[c];
        uint32_t n = p->ch_n[c];
        MDB_val k = {8, &key};
        if (batch) {
            MDB_cursor *cur;
            MDB_val v[2];
            v[0].mv_size = 8, v[0].mv_data = ids;
            v[1].mv_size = n, v[1].mv_data = NULL;
            lm_check(mdb_cursor_open(d->wtxn, d->dbi, &cur), "mdb_cursor_open");
            lm_check(mdb_cursor_put(cur, &k, v, MDB_MULTIPLE | MDB_NODUPDATA), "mdb_cursor_put(MULTIPLE)");
            if (v[1].mv_size != n) bench_fail("mdb_cursor_put(MULTIPLE): %zu of %u ids stored", v[1].mv_size, n);
            mdb_cursor_close(cur);
            lm_wtick(d, n);
        } else {
            for (j = 0; j < n; j++) {
                MDB_val v = {8, &ids[j]};
                lm_check(mdb_put(d->wtxn, d->dbi, &k, &v, MDB_NODUPDATA), "mdb_put");
                lm_wtick(d, 1);
            }
        }
    }
    lm_wcommit(d);
}

static void lm_add(db *d, const opset *o) {
    uint64_t i;
    lm_wbegin(d);
    for (i = 0; i < o->n; i++) {
        uint64_t key = g_key[o->v[i].list], id = o->v[i].id;
        MDB_val k = {8, &key}, v = {8, &id};
        int rc = mdb_put(d->wtxn, d->dbi, &k, &v, MDB_NODUPDATA);
        if (rc != MDB_KEYEXIST) lm_check(rc, "mdb_put");
        if ((rc == 0) != (int)o->v[i].expect)
            bench_fail("list %016" PRIx64 ": add %" PRIu64 ": %s", key, id, mdb_strerror(rc));
        lm_wtick(d, 1);
    }
    lm_wcommit(d);
}

static void lm_remove(db *d, const opset *o) {
    uint64_t i;
    lm_wbegin(d);
    for (i = 0; i < o->n; i++) {
        uint64_t key = g_key[o->v[i].list], id = o->v[i].id;
        MDB_val k = {8, &key}, v = {8, &id};
        int rc = mdb_del(d->wtxn, d->dbi, &k, &v);
        if (rc != MDB_NOTFOUND) lm_check(rc, "mdb_del");
        if ((rc == 0) != (int)o->v[i].expect)
            bench_fail("list %016" PRIx64 ": remove %" PRIu64 ": %s", key, id, mdb_strerror(rc));
        lm_wtick(d, 1);
    }
    lm_wcommit(d);
}

static void lm_contains(db *d, const opset *o) {
    uint64_t i;
    for (i = 0; i < o->n; i++) {
        uint64_t key = g_key[o->v[i].list], id = o->v[i].id;
        MDB_val k = {8, &key}, v = {8, &id};
        int rc;
        lm_rbegin(d);
        rc = mdb_cursor_get(d->rcur, &k, &v, MDB_GET_BOTH);
        lm_rend(d);
        if (rc != MDB_NOTFOUND) lm_check(rc, "mdb_cursor_get(GET_BOTH)");
        check_contains(&o->v[i], rc == 0);
    }
}

/* Up to cap ids >= from of key's list into out, ascending; the read txn
 * must be live. GET_MULTIPLE hands out the whole leaf page holding the
 * cursor, so ids below `from` on it are skipped. Items in a page may be
 * unaligned (sub-pages): memcpy. */
static size_t lm_page(db *d, uint64_t key, uint64_t from, uint64_t *out, size_t cap) {
    MDB_val k = {8, &key}, v = {8, &from};
    size_t n = 0;
    int rc = mdb_cursor_get(d->rcur, &k, &v, from ? MDB_GET_BOTH_RANGE : MDB_SET);
    if (rc == MDB_NOTFOUND) return 0;
    lm_check(rc, "mdb_cursor_get(SET)");
    /* Bounded: every page moves the cursor forward; stops at the last dup. */
    for (rc = mdb_cursor_get(d->rcur, &k, &v, MDB_GET_MULTIPLE); rc == 0 && n < cap;
         rc = mdb_cursor_get(d->rcur, &k, &v, MDB_NEXT_MULTIPLE)) {
        const char *pg = v.mv_data;
        size_t m = v.mv_size / 8, j;
        for (j = 0; j < m && n < cap; j++) {
            uint64_t x;
            memcpy(&x, pg + 8 * j, 8);
            if (x >= from) out[n++] = x;
        }
    }
    if (rc && rc != MDB_NOTFOUND) lm_check(rc, "mdb_cursor_get(MULTIPLE)");
    return n;
}

static void lm_get(db *d, const opset *o) {
    uint64_t i, buf[PAGE];
    for (i = 0; i < o->n; i++) {
        size_t n;
        lm_rbegin(d);
        n = lm_page(d, g_key[o->v[i].list], o->v[i].id, buf, PAGE);
        lm_rend(d);
        check_page(o->v[i].list, o->v[i].expect, buf, n, PAGE);
    }
}

static void lm_count(db *d, const opset *o) {
    uint64_t i;
    for (i = 0; i < o->n; i++) {
        uint64_t key = g_key[o->v[i].list];
        MDB_val k = {8, &key}, v;
        size_t cnt = 0;
        int rc;
        lm_rbegin(d);
        rc = mdb_cursor_get(d->rcur, &k, &v, MDB_SET);
        if (rc == 0) lm_check(mdb_cursor_count(d->rcur, &cnt), "mdb_cursor_count");
        lm_rend(d);
        if (rc != MDB_NOTFOUND) lm_check(rc, "mdb_cursor_get(SET)");
        check_count(o->v[i].list, (uint64_t)cnt);
    }
}

/* Untimed: entry count, then every id of every list. */
static void lm_verify(db *d, const pop *p) {
    uint64_t i, *buf = bench_xmalloc(VERIFY_CAP * sizeof *buf);
    MDB_stat ms;
    lm_rbegin(d);
    lm_check(mdb_stat(d->rtxn, d->dbi, &ms), "mdb_stat");
    if (ms.ms_entries != p->total)
        bench_fail("mdb_stat: %zu entries, expected %" PRIu64, (size_t)ms.ms_entries, p->total);
    for (i = 0; i < p->n; i++) {
        const uint64_t *want = pop_ids(p, i);
        uint64_t len = pop_len(p, i), at = 0, from = 0, pages;
        for (pages = 0; pages <= len / VERIFY_CAP + 1; pages++) { /* bounded: one page past the end */
            size_t n = lm_page(d, p->key[i], from, buf, VERIFY_CAP), k;
            if (n > len - at) bench_fail("list %016" PRIx64 ": more than its %" PRIu64 " ids", p->key[i], len);
            for (k = 0; k < n; k++)
                if (buf[k] != want[at + k])
                    bench_fail("list %016" PRIx64 ": id %" PRIu64 " is %" PRIu64 ", expected %" PRIu64, p->key[i],
                               at + k, buf[k], want[at + k]);
            at += n;
            if (n < VERIFY_CAP) break;
            from = buf[n - 1] + 1;
        }
        if (at != len) bench_fail("list %016" PRIx64 ": %" PRIu64 " ids read, expected %" PRIu64, p->key[i], at, len);
    }
    lm_rend(d);
    free(buf);
}

/* The data file: LMDB's memory is this file, mapped. */
static double lm_ram(db *d) {
    char path[PATH_CAP];
    bench_path_join(path, d->dir, "data.mdb");
    return (double)file_size(path);
}

/* ---- the table ------------------------------------------------------------ */

#define NENG 4
enum { E_KVIDX, E_REDIS, E_RSET, E_LMDB };
static const engine g_engines[NENG] = {
    {"kvidx", kv_open, kv_close, kv_load, kv_add, kv_remove, kv_contains, kv_get, kv_count, kv_verify, kv_ram},
    {"redis", rd_open, rd_close, rd_load, rd_add, rd_remove, rd_contains, rd_get, rd_count, rd_verify, rd_ram},
    {"redis-set", rd_open, rd_close, rs_load, rs_add, rs_remove, rs_contains, NULL, rs_count, rs_verify, rd_ram},
    {"lmdb", lm_open, lm_close, lm_load, lm_add, lm_remove, lm_contains, lm_get, lm_count, lm_verify, lm_ram},
};

static const char *engine_name(int e) { return g_engines[e].name; }
static int g_sel[NENG];

static int is_redis(int ei) { return ei == E_REDIS || ei == E_RSET; }

/* ==== 7. phases ========================================================== */

enum {
    M_LOAD1, M_LOAD100, M_ADD, M_REMOVE, M_CONTAINS, M_CONTAINS_BIG, M_GET_PAGES, M_GET_IDS, M_GETBIG_PAGES,
    M_GETBIG_IDS, M_COUNT, M_RAM, M_HEAP, M_RAM100, M_DISK_OPEN, M_DISK_LISTS, M_DISK_SNAP, M_DISK_DIR, M_REOPEN,
    M_MINI_LIST, M_MINI_ID, M_COUNT_METRICS
};

static const struct metric {
    const char *name, *unit;
    int lower_better;
    int decimals;
} g_metrics[M_COUNT_METRICS] = {
    {"load-1", "ids/s", 0, 0},
    {"load-100", "ids/s", 0, 0},
    {"add", "ops/s", 0, 0},
    {"remove", "ops/s", 0, 0},
    {"contains", "ops/s", 0, 0},
    {"contains-big", "ops/s", 0, 0},
    {"get", "pages/s", 0, 0},
    {"get", "ids/s", 0, 0},
    {"get-big", "pages/s", 0, 0},
    {"get-big", "ids/s", 0, 0},
    {"count", "ops/s", 0, 0},
    {"ram", "B/id", 1, 2},
    {"heap", "B/id", 1, 2},
    {"ram-load-100", "B/id", 1, 2},
    {"disk-unclosed", "B/id", 1, 2},
    {"disk-lists", "B/id", 1, 2},
    {"disk-snapshot", "B/id", 1, 2},
    {"disk-dir", "B/id", 1, 2},
    {"reopen", "s", 1, 4},
    {"mini-per-list", "B/list", 1, 1},
    {"mini-ram", "B/id", 1, 2},
};

typedef struct result {
    double v[M_COUNT_METRICS];
} result;

static void phase(const char *name) { g_bench_phase = name; }

static void progress(double v, const char *unit) {
    fprintf(stderr, "bench_lists: %-6s %-14s %14.*f %s\n", g_bench_part, g_bench_phase, v < 100 ? 3 : 0, v, unit);
}

static double rate(uint64_t ops, double secs) { return (double)ops / (secs > 0 ? secs : 1e-9); }

/* Times one read/write phase over o; stores ops/s in res->v[m]. */
static void timed(const char *name, db *d, void (*fn)(db *, const opset *), const opset *o, result *res, int m) {
    double t;
    if (!o->n) return;
    phase(name);
    t = bench_now_s();
    fn(d, o);
    res->v[m] = rate(o->n, bench_now_s() - t);
    progress(res->v[m], "ops/s");
}

/* A get phase: pages/s and ids/s. */
static void timed_get(const char *name, db *d, const engine *e, const opset *o, result *res, int mp, int mi) {
    double t;
    if (!o->n || !e->get) return;
    phase(name);
    g_page_ids = 0;
    t = bench_now_s();
    e->get(d, o);
    t = bench_now_s() - t;
    res->v[mp] = rate(o->n, t);
    res->v[mi] = rate(g_page_ids, t);
    progress(res->v[mp], "pages/s");
    progress(res->v[mi], "ids/s");
}

static double load_timed(const engine *e, db *d, const pop *p, int batch) {
    double t = bench_now_s();
    e->load(d, p, batch);
    return rate(p->total, bench_now_s() - t);
}

static void run_engine(int ei, result *res) {
    const engine *e = &g_engines[ei];
    char base[PATH_CAP], dir[PATH_CAP];
    double heap0, r, t;
    db d;

    bench_path_join(base, g_dir, e->name);
    bench_rm_tree(base);
    bench_mkdir_p(base);

    /* Per-list overhead: MINI_LISTS lists of 1..MINI_MAX ids, one id per call. */
    phase("mini");
    memset(&d, 0, sizeof d);
    bench_path_join(dir, base, "mini");
    e->open(&d, dir);
    load_timed(e, &d, &g_mini, 0);
    r = e->ram(&d);
    res->v[M_MINI_LIST] = (r - 8.0 * (double)g_mini.total) / (double)g_mini.n;
    res->v[M_MINI_ID] = r / (double)g_mini.total;
    progress(res->v[M_MINI_LIST], "B/list over 8 B/id");
    phase("mini-verify");
    e->verify(&d, &g_mini);
    e->close(&d);
    bench_rm_tree(dir);

    /* load-100: a database of its own, checked whole, then dropped. */
    phase("load-100");
    bench_path_join(dir, base, "load100");
    e->open(&d, dir);
    res->v[M_LOAD100] = load_timed(e, &d, &g_orig, 1);
    progress(res->v[M_LOAD100], "ids/s");
    res->v[M_RAM100] = e->ram(&d) / (double)g_orig.total;
    phase("load-100-verify");
    e->verify(&d, &g_orig);
    e->close(&d);
    bench_rm_tree(dir);

    /* load-1: the database every later phase uses. */
    phase("load-1");
    bench_path_join(dir, base, "main");
    e->open(&d, dir);
    heap0 = heap_bytes();
    res->v[M_LOAD1] = load_timed(e, &d, &g_orig, 0);
    progress(res->v[M_LOAD1], "ids/s");
    res->v[M_RAM] = e->ram(&d) / (double)g_orig.total;
    if (ei == E_KVIDX) res->v[M_HEAP] = (heap_bytes() - heap0) / (double)g_orig.total;
    if (is_redis(ei)) res->v[M_HEAP] = res->v[M_RAM];
    phase("ram");
    progress(res->v[M_RAM], "B/id");

    timed("add", &d, e->add, &g_add, res, M_ADD);
    timed("remove", &d, e->remove, &g_rm, res, M_REMOVE);
    timed("contains", &d, e->contains, &g_has, res, M_CONTAINS);
    timed("contains-big", &d, e->contains, &g_has_big, res, M_CONTAINS_BIG);
    timed_get("get", &d, e, &g_get, res, M_GET_PAGES, M_GET_IDS);
    timed_get("get-big", &d, e, &g_get_big, res, M_GETBIG_PAGES, M_GETBIG_IDS);
    timed("count", &d, e->count, &g_cnt, res, M_COUNT);

    phase("verify");
    e->verify(&d, &g_fin);

    phase("disk");
    if (is_redis(ei)) {
        uint64_t blocks, sz = rd_save(&d, &blocks);
        res->v[M_DISK_LISTS] = res->v[M_DISK_SNAP] = (double)sz / (double)g_fin.total;
        res->v[M_DISK_DIR] = (double)blocks / (double)g_fin.total;
        e->close(&d);
    } else {
        kvidx_stats st;
        if (ei == E_KVIDX) {
            kv_stat(&d, &st);
            res->v[M_DISK_OPEN] = (double)(st.list_log_bytes + st.list_snapshot_bytes) / (double)g_fin.total;
            fprintf(stderr, "bench_lists: kvidx  before close: list log %" PRIu64 " B, snapshot %" PRIu64
                            " B, list ram %" PRIu64 " B, %" PRIu64 " list writes\n",
                    st.list_log_bytes, st.list_snapshot_bytes, st.list_ram_bytes, st.list_writes);
        }
        if (ei == E_LMDB) res->v[M_DISK_OPEN] = lm_ram(&d) / (double)g_fin.total;
        e->close(&d);
        sync();
        bench_du(dir);
        if (ei == E_KVIDX) {
            res->v[M_DISK_LISTS] = (double)(g_bench_du.l + g_bench_du.ls) / (double)g_fin.total;
            res->v[M_DISK_SNAP] = (double)g_bench_du.ls / (double)g_fin.total;
            fprintf(stderr, "bench_lists: kvidx  after close: .l files %" PRIu64 " B, .ls files %" PRIu64
                            " B, directory %" PRIu64 " B allocated\n",
                    g_bench_du.l, g_bench_du.ls, g_bench_du.blocks);
        } else {
            char path[PATH_CAP];
            bench_path_join(path, dir, "data.mdb");
            res->v[M_DISK_LISTS] = (double)file_size(path) / (double)g_fin.total;
        }
        res->v[M_DISK_DIR] = (double)g_bench_du.blocks / (double)g_fin.total;
    }
    progress(res->v[M_DISK_LISTS], "B/id");

    if (!is_redis(ei)) {
        /* Reopen: what the files hold, read back whole. */
        phase("reopen");
        memset(&d, 0, sizeof d);
        t = bench_now_s();
        if (ei == E_KVIDX) kv_open_dir(&d, dir);
        else lm_open_dir(&d, dir);
        res->v[M_REOPEN] = bench_now_s() - t;
        progress(res->v[M_REOPEN], "s");
        phase("reopen-verify");
        e->verify(&d, &g_fin);
        e->close(&d);
    }
    bench_rm_tree(base);
}

static void child_main(void *out, void *arg) {
    int ei = *(const int *)arg, i;
    result *r = out;
    g_bench_part = g_engines[ei].name;
    for (i = 0; i < M_COUNT_METRICS; i++) r->v[i] = -1;
    run_engine(ei, r);
}

/* Runs engine ei in a forked child; its result comes back through a pipe.
 * Returns 0, or -1 when the child failed (it said why). */
static int run_child(int ei, result *out) { return bench_run_child(child_main, &ei, out, sizeof *out); }

/* ==== 8. results ============================================================ */

static result g_res[NENG];
static char g_ver_lmdb[64], g_cpu[256], g_kernel[256];

static void read_versions(void) {
    int a, b, c;
    mdb_version(&a, &b, &c);
    snprintf(g_ver_lmdb, sizeof g_ver_lmdb, "%d.%d.%d", a, b, c);
    bench_read_kernel(g_kernel, sizeof g_kernel);
    bench_read_cpu(g_cpu, sizeof g_cpu);
}

/* kvidx / peer of metric m, or -1. */
static double ratio(int peer, int m) {
    double k = g_res[E_KVIDX].v[m], p = g_res[peer].v[m];
    if (!g_sel[E_KVIDX] || !g_sel[peer] || k < 0 || p <= 0) return -1;
    return k / p;
}

static const char *g_config[NENG] = {
    "kvidx_options_init defaults (8 shards, background fdatasync every 1000 ms); load-1 and the write "
    "phases: kvidx_list_add/remove of one id per call; load-100: one kvidx_list_add of up to 100 ids "
    "(one list) per call; reads: one call each",
    "a fresh redis-server started by this program on 127.0.0.1 (--save '' --appendonly no: no persistence "
    "runs during the measurements), one connection (hiredis), every timed phase pipelined 100 commands deep "
    "(single round trips would time the loopback); a ZSET per list: member = the id in decimal, score = "
    "the id; load-1/add: ZADD of 1 id; load-100: ZADD of up to 100 ids, 10 in flight; remove: ZREM; "
    "contains: ZSCORE; get: ZRANGE k 0 99, get-big: ZRANGEBYSCORE k from +inf LIMIT 0 100; count: ZCARD; "
    "default encodings (listpack up to 128 members, then skiplist+hash)",
    "as redis (its own fresh redis-server, same flags, same pipelining), a plain SET per list: member = "
    "the id in decimal; load-1/add: SADD of 1 id; load-100: SADD of up to 100 ids, 10 in flight; remove: "
    "SREM; contains: SISMEMBER; count: SCARD; no get/get-big ('-': a set cannot page in id order); "
    "default encodings (intset up to set-max-intset-entries 512, int64 entries as ids reach 2^32, then a "
    "hash table)",
    "one DB, MDB_DUPSORT|MDB_DUPFIXED|MDB_INTEGERKEY|MDB_INTEGERDUP (key and ids native uint64), env "
    "MDB_NOSYNC|MDB_NOMETASYNC, mapsize 64 GiB; writes in txns of 1000 ids (mdb_put MDB_NODUPDATA / "
    "mdb_del; load-100: mdb_cursor_put MDB_MULTIPLE of up to 100 ids); reads: one read txn, "
    "mdb_txn_renew/reset around each op; contains: MDB_GET_BOTH; get: MDB_SET or MDB_GET_BOTH_RANGE then "
    "MDB_GET_MULTIPLE/NEXT_MULTIPLE; count: mdb_cursor_count",
};

static uint64_t ids_in_lists_of(const pop *p, uint64_t min) {
    uint64_t i, s = 0;
    for (i = 0; i < p->n; i++)
        if (pop_len(p, i) >= min) s += pop_len(p, i);
    return s;
}

static void print_json(void) {
    int e, m, first;
    printf("{\n  \"bench\": \"bench_lists\",\n  \"versions\": {\"kvidx\": ");
    bench_json_str(kvidx_version());
    bench_json_field("redis", g_ver_redis);
    bench_json_field("lmdb", g_ver_lmdb);
    printf(", \"hiredis\": \"%d.%d.%d\"},\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    printf("  \"seed\": %" PRIu64 ", \"lists\": %" PRIu64 ", \"big_lists\": %" PRIu64 ", \"big_ids\": %" PRIu64
           ", \"ops\": %" PRIu64 ",\n",
           g_seed, g_lists, g_big_lists, g_big_ids, g_ops);
    printf("  \"population\": {\"lists\": %" PRIu64 ", \"ids\": %" PRIu64 ", \"ids_in_lists_of_1000_plus\": %" PRIu64
           ", \"final_lists\": %" PRIu64 ", \"final_ids\": %" PRIu64 ", \"mini_lists\": %" PRIu64
           ", \"mini_ids\": %" PRIu64 "},\n",
           g_orig.n, g_orig.total, ids_in_lists_of(&g_orig, 1000), g_fin_lists, g_fin.total, g_mini.n, g_mini.total);
    printf("  \"ops_per_phase\": {\"add\": %" PRIu64 ", \"remove\": %" PRIu64 ", \"contains\": %" PRIu64
           ", \"contains_big\": %" PRIu64 ", \"get\": %" PRIu64 ", \"get_big\": %" PRIu64 ", \"count\": %" PRIu64
           "},\n",
           g_add.n, g_rm.n, g_has.n, g_has_big.n, g_get.n, g_get_big.n, g_cnt.n);
    printf("  ");
    bench_json_machine(g_cpu, g_kernel);
    bench_json_field("dir", g_dir);
    bench_json_engines(engine_name, g_config, g_sel, NENG);
    printf(",\n  \"metrics\": [");
    for (m = 0; m < M_COUNT_METRICS; m++) {
        const struct metric *mt = &g_metrics[m];
        printf("%s\n    {\"name\": \"%s\", \"unit\": \"%s\", \"better\": \"%s\", \"values\": {", m ? "," : "", mt->name,
               mt->unit, mt->lower_better ? "lower" : "higher");
        for (e = 0, first = 1; e < NENG; e++) {
            if (!g_sel[e]) continue;
            printf("%s\"%s\": ", first ? "" : ", ", g_engines[e].name);
            bench_json_num(g_res[e].v[m], mt->decimals);
            first = 0;
        }
        printf("}, \"ratio\": {");
        for (e = 1, first = 1; e < NENG; e++) {
            double q = ratio(e, m);
            if (!g_sel[E_KVIDX] || !g_sel[e]) continue;
            printf("%s\"kvidx/%s\": ", first ? "" : ", ", g_engines[e].name);
            if (q >= 0) printf("%.4f", q);
            else printf("null");
            first = 0;
        }
        printf("}}");
    }
    printf("\n  ]\n}\n");
}

static void print_population(FILE *f) {
    fprintf(f,
            "population: %" PRIu64 " lists (%" PRIu64 " of 1-%d ids, 0.5%% of them %d-%d; %" PRIu64 " big of %" PRIu64
            "), %" PRIu64 " ids (mean %.1f/list, %.1f without the big), %" PRIu64 " ids in lists of 1000+"
            " (%.1f%%)\n",
            g_orig.n, g_lists, SMALL_MAX, SMALL_MAX + 1, MID_MAX, g_big_lists, g_big_ids, g_orig.total,
            (double)g_orig.total / (double)g_orig.n, (double)g_orig.off[g_big_from] / (double)g_lists,
            ids_in_lists_of(&g_orig, 1000),
            100.0 * (double)ids_in_lists_of(&g_orig, 1000) / (double)g_orig.total);
    fprintf(f,
            "after add/remove: %" PRIu64 " non-empty lists, %" PRIu64 " ids | mini: %" PRIu64 " lists of 1-%d ids, %" PRIu64
            " ids | seed %" PRIu64 "\n",
            g_fin_lists, g_fin.total, g_mini.n, MINI_MAX, g_mini.total, g_seed);
}

/* Width of the kvidx/<engine> column: at least 12. */
static int ratio_width(int e) {
    int w = (int)strlen("kvidx/") + (int)strlen(g_engines[e].name);
    return w < 12 ? 12 : w;
}

static void print_table(void) {
    char b1[64];
    int e, m;
    printf("bench_lists: kvidx %s | Redis %s (hiredis %d.%d.%d) | LMDB %s\n", kvidx_version(), g_ver_redis,
           HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH, g_ver_lmdb);
    print_population(stdout);
    printf("ops: add %" PRIu64 ", remove %" PRIu64 ", contains %" PRIu64 ", contains-big %" PRIu64 ", get %" PRIu64
           " pages, get-big %" PRIu64 " pages, count %" PRIu64 " | one run, a forked process per engine\n",
           g_add.n, g_rm.n, g_has.n, g_has_big.n, g_get.n, g_get_big.n, g_cnt.n);
    printf("nproc %ld | CPU %s | kernel %s | data dir %s\n\n", sysconf(_SC_NPROCESSORS_ONLN), g_cpu, g_kernel, g_dir);

    printf("%-14s %-7s %-6s", "phase", "unit", "better");
    for (e = 0; e < NENG; e++)
        if (g_sel[e]) printf(" %13s", g_engines[e].name);
    for (e = 1; e < NENG; e++) {
        char head[32];
        if (!g_sel[E_KVIDX] || !g_sel[e]) continue;
        snprintf(head, sizeof head, "kvidx/%s", g_engines[e].name);
        printf(" %*s", ratio_width(e), head);
    }
    printf("\n");
    for (m = 0; m < M_COUNT_METRICS; m++) {
        const struct metric *mt = &g_metrics[m];
        if (m == M_RAM) printf("-- footprint (bytes per id: a bare uint64 is 8) --\n");
        printf("%-14s %-7s %-6s", mt->name, mt->unit, mt->lower_better ? "lower" : "higher");
        for (e = 0; e < NENG; e++)
            if (g_sel[e]) printf(" %13s", bench_fmt_num(b1, sizeof b1, g_res[e].v[m], mt->decimals));
        for (e = 1; e < NENG; e++) {
            double q = ratio(e, m);
            if (!g_sel[E_KVIDX] || !g_sel[e]) continue;
            if (q >= 0) printf(" %*.2f", ratio_width(e), q);
            else printf(" %*s", ratio_width(e), "-");
        }
        printf("\n");
    }

    printf("\nLegend\n");
    printf("  ratio = kvidx / peer. better=higher (ids/s, ops/s, pages/s): > 1 means kvidx is faster;\n"
           "  better=lower (B/id, B/list, s): < 1 means kvidx uses less.\n");
    for (e = 0; e < NENG; e++) {
        char head[32];
        if (!g_sel[e]) continue;
        snprintf(head, sizeof head, "  %-9s ", g_engines[e].name);
        bench_print_wrapped(head, g_config[e], 108);
    }
    printf(
        "  Every answer read is compared with the model inside the timed loops (contains yes/no, every id of\n"
        "  every page, every count, every add/remove result); after the phases (untimed) every list is read\n"
        "  back whole, and again after reopen (kvidx, LMDB).\n"
        "  load-1: the population added in a shuffled sequence of 100-id chunks (lists grow interleaved; big\n"
        "  lists mostly ascending), one id per call; load-100: the same chunks, one call each, into a fresh\n"
        "  database. add: %" PRIu64 " new random ids to uniform random lists; remove: %" PRIu64 " loaded ids\n"
        "  (lists left empty disappear). contains: uniform random list, half hits, half random ids;\n"
        "  contains-big / get-big: the big lists only; get: the first page (100 ids) of a uniform random list;\n"
        "  get-big: the page of 100 ids from a random id; count: uniform random list.\n"
        "  ram: kvidx kvidx_stats.list_ram_bytes / ids; Redis (both engines) INFO used_memory delta / ids;\n"
        "  LMDB data.mdb size / ids (its memory is that file, mapped) -- after load-1; ram-load-100: the same\n"
        "  after load-100.\n"
        "  heap: kvidx: the process's malloc'd bytes (mallinfo2 uordblks + hblkhd) before and after load-1, /\n"
        "  ids; Redis: used_memory again (its heap).\n"
        "  disk-*: after the phases (ids = the final count). disk-unclosed: still open, before close: kvidx\n"
        "  kvidx_stats list_log_bytes + list_snapshot_bytes (the log of every change since the last\n"
        "  snapshot); LMDB data.mdb. Then kvidx after kvidx_close, which folds a shard's list log into its\n"
        "  snapshot once the log holds >= 1 MiB and >= half the snapshot: disk-lists = the .l list logs +\n"
        "  .ls snapshots (st_size), disk-snapshot = the .ls files alone; Redis: BGSAVE's dump.rdb\n"
        "  (appendonly off); LMDB: data.mdb. disk-dir: blocks allocated to every file of the directory\n"
        "  (kvidx: the value-store files too; Redis: dump.rdb).\n"
        "  reopen: open of the closed database (kvidx reads its snapshot and log back).\n"
        "  mini-per-list: %" PRIu64 " lists of 1-%d ids loaded one id per call into an empty database:\n"
        "  (ram - 8 * ids) / lists, ram as above; mini-ram: ram / ids.\n",
        g_add.n, g_rm.n, g_mini.n, MINI_MAX);
}

/* ==== 9. redis-server, signals, main ========================================= */

/* redis-server runs as g_bench_server_pid (bench.h): the signal handler
 * kills it with the engine child. */
static void redis_stop(void) {
    if (g_bench_server_pid > 0) {
        kill(g_bench_server_pid, SIGKILL);
        while (waitpid(g_bench_server_pid, NULL, 0) < 0 && errno == EINTR) {}
        g_bench_server_pid = -1;
    }
}

/* A port nobody listens on now (the kernel's pick for port 0). */
static int free_port(void) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    if (fd < 0) bench_fail("socket: %s", strerror(errno));
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &len))
        bench_fail("bind 127.0.0.1:0: %s", strerror(errno));
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Starts redis-server on 127.0.0.1 at a free port in a fresh directory,
 * no persistence; waits for PING. Bounded: 3 ports, 10 s each. */
static void redis_start(void) {
    char tmpl[PATH_CAP], log[PATH_CAP], port_s[16];
    int attempt, i;
    if (snprintf(tmpl, sizeof tmpl, "%s/redis-XXXXXX", g_dir) >= (int)sizeof tmpl) bench_fail("path too long");
    if (!mkdtemp(tmpl)) bench_fail("mkdtemp %s: %s", tmpl, strerror(errno));
    snprintf(g_redis_dir, sizeof g_redis_dir, "%s", tmpl);
    bench_path_join(log, g_redis_dir, "redis.log");
    for (attempt = 0; attempt < 3; attempt++) {
        pid_t pid;
        g_redis_port = free_port();
        snprintf(port_s, sizeof port_s, "%d", g_redis_port);
        fflush(NULL);
        pid = fork();
        if (pid < 0) bench_fail("fork: %s", strerror(errno));
        if (pid == 0) {
            int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives this program */
            if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
            execlp("redis-server", "redis-server", "--port", port_s, "--bind", "127.0.0.1", "--dir", g_redis_dir,
                   "--save", "", "--appendonly", "no", "--daemonize", "no", "--databases", "1", "--protected-mode",
                   "yes", (char *)NULL);
            _exit(127);
        }
        g_bench_server_pid = pid;
        for (i = 0; i < 200; i++) { /* 200 * 50 ms */
            struct timeval tv = {0, 200000};
            struct timespec ts = {0, 50000000};
            redisContext *c;
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) {
                g_bench_server_pid = -1;
                break;
            }
            c = redisConnectWithTimeout("127.0.0.1", g_redis_port, tv);
            if (c && !c->err) {
                redisReply *r = redisCommand(c, "INFO server");
                if (r && r->type == REDIS_REPLY_STRING) {
                    const char *v = strstr(r->str, "redis_version:");
                    if (v) snprintf(g_ver_redis, sizeof g_ver_redis, "%.*s", (int)strcspn(v + 14, "\r\n"), v + 14);
                    freeReplyObject(r);
                    redisFree(c);
                    return;
                }
                if (r) freeReplyObject(r);
            }
            if (c) redisFree(c);
            nanosleep(&ts, NULL);
        }
        redis_stop();
    }
    bench_fail("redis-server did not start (see %s)", log);
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--lists N] [--big-lists N] [--big-ids N] [--ops N] [--seed X]\n"
            "          [--engines kvidx,redis,redis-set,lmdb] [--dir D] [--timeout S] [--json]\n"
            "  --lists N      lists of 1-100 ids (0.5%% of them 101-5000; default 100000)\n"
            "  --big-lists N  big lists (default 5)\n"
            "  --big-ids N    ids per big list (default 200000)\n"
            "  --ops N        contains and count ops per phase; add, remove, get: N/5; contains-big:\n"
            "                 N/2; get-big: N/10 (default 1000000)\n"
            "  --seed X       population and operation seed (default 42)\n"
            "  --engines      comma-separated subset (default all four; redis = sorted sets,\n"
            "                 redis-set = plain sets)\n"
            "  --dir D        data directory, one subdirectory per engine, removed at the end\n"
            "                 (default bench/data/lists)\n"
            "  --timeout S    the whole run is killed after S seconds (default 400 at the default\n"
            "                 size, more in proportion to a larger population)\n"
            "  --json         print one JSON object on stdout instead of the table\n",
            argv0);
    exit(2);
}

static void parse_engines(const char *list) { bench_parse_list("--engines", list, engine_name, NENG, "engine", g_sel); }

int main(int argc, char **argv) {
    static const bench_opt opts[] = {
        {"--json", BENCH_OPT_FLAG, &g_json, NULL},
        {"--lists", BENCH_OPT_U64, &g_lists, NULL},
        {"--big-lists", BENCH_OPT_U64, &g_big_lists, NULL},
        {"--big-ids", BENCH_OPT_U64, &g_big_ids, NULL},
        {"--ops", BENCH_OPT_U64, &g_ops, NULL},
        {"--seed", BENCH_OPT_U64, &g_seed, NULL},
        {"--timeout", BENCH_OPT_UINT, &g_timeout, NULL},
        {"--engines", BENCH_OPT_FN, NULL, parse_engines},
        {"--dir", BENCH_OPT_STR, &g_dir, NULL},
        {NULL, 0, NULL, NULL},
    };
    int e, any = 0, failed = 0;
    uint64_t i;
    double t0 = bench_now_s();

    for (e = 0; e < NENG; e++) g_sel[e] = 1;
    bench_parse_opts(argc, argv, opts, usage);
    if (g_lists < 10 || g_lists > 100000000) bench_fail("--lists must be in 10..100000000");
    if (g_big_lists > 1000) bench_fail("--big-lists must be in 0..1000");
    if (g_big_lists && (g_big_ids < 1 || g_big_ids > 50000000)) bench_fail("--big-ids must be in 1..50000000");
    if (g_ops < 100 || g_ops > 1000000000) bench_fail("--ops must be in 100..1000000000");
    for (e = 0; e < NENG; e++) any |= g_sel[e];
    if (!any) bench_fail("--engines: none selected");

    /* Everything is bounded by the alarm, whatever hangs: 400 s for the
     * default ~3.7M ids (which take about a minute with the four
     * engines), in proportion above. */
    if (!g_timeout) {
        double ids = 28.0 * (double)g_lists + (double)g_big_lists * (double)g_big_ids;
        g_timeout = (unsigned)(400.0 * (ids > 3.7e6 ? ids / 3.7e6 : 1.0));
    }
    bench_arm(g_timeout);
    atexit(redis_stop);

    read_versions();
    bench_mkdir_p(g_dir);
    fprintf(stderr, "bench_lists: generating the population (seed %" PRIu64 ")\n", g_seed);
    make_populations();
    make_ops();
    g_by_key = bench_xmalloc((size_t)g_fin.n * sizeof *g_by_key);
    for (i = 0; i < g_fin.n; i++) g_by_key[i] = i;
    qsort(g_by_key, (size_t)g_fin.n, sizeof *g_by_key, cmp_by_key);
    print_population(stderr);
    fprintf(stderr, "bench_lists: generated in %.1f s\n", bench_now_s() - t0);

    for (e = 0; e < NENG; e++) {
        int m, rc;
        for (m = 0; m < M_COUNT_METRICS; m++) g_res[e].v[m] = -1;
        if (!g_sel[e]) continue;
        if (is_redis(e)) { /* a fresh server per Redis engine: neither inherits the other's heap */
            g_bench_part = g_engines[e].name, g_bench_phase = "redis-server";
            redis_start();
            fprintf(stderr, "bench_lists: redis-server %s on 127.0.0.1:%d, dir %s (%s)\n", g_ver_redis,
                    g_redis_port, g_redis_dir, g_engines[e].name);
            g_bench_part = "bench", g_bench_phase = "setup";
        }
        rc = run_child(e, &g_res[e]);
        if (is_redis(e)) {
            redis_stop();
            bench_rm_tree(g_redis_dir);
            g_redis_dir[0] = '\0';
        }
        if (rc) {
            g_bench_part = g_engines[e].name, g_bench_phase = "run";
            if (g_bench_stopped) fprintf(stderr, "bench_lists: %s stopped by the signal\n", g_engines[e].name);
            else fprintf(stderr, "bench_lists: %s failed (see above); run stopped\n", g_engines[e].name);
            failed = 1;
            break;
        }
    }
    redis_stop();
    for (e = 0; e < NENG; e++) {
        char p[PATH_CAP];
        bench_path_join(p, g_dir, g_engines[e].name);
        bench_rm_tree(p);
    }
    if (g_redis_dir[0]) bench_rm_tree(g_redis_dir);
    rmdir(g_dir); /* only if empty: --dir may name a directory holding other things */
    if (failed) return bench_failed_status();

    if (g_json) print_json();
    else print_table();
    fprintf(stderr, "bench_lists: done in %.1f s\n", bench_now_s() - t0);
    pop_free(&g_orig);
    pop_free(&g_mini);
    free(g_fin.off), free(g_fin.ids);
    free(g_key), free(g_mini_key), free(g_by_key);
    free(g_add.v), free(g_rm.v), free(g_has.v), free(g_has_big.v), free(g_get.v), free(g_get_big.v), free(g_cnt.v);
    return 0;
}
