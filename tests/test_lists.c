/*
 * test_lists.c -- black-box tests of kvidx's lists (sorted sets of uint64
 * ids under a uint64 key), through kvidx.h alone.
 *
 *   test_list_api             every rule of the lists section of kvidx.h:
 *                             argument errors, absent lists, put/add/remove
 *                             counts, the last id deleting its list, ids and
 *                             keys 0 and UINT64_MAX, paging, values and
 *                             lists as separate keyspaces, list_scan (stop,
 *                             writing callback), stats, read-only handles
 *   test_list_multileaf       paging and list_scan across node boundaries
 *                             with gaps between ids and between keys
 *   test_list_model_1shard    random operations against a reference model:
 *   test_list_model_16shards  thousands of small lists and a few of 100k+
 *                             ids; every result compared; close + reopen
 *                             (with a different shards option, once
 *                             read-only) and a whole check after each
 *   test_list_crash           kill -9 a writer at random moments; every
 *                             acknowledged operation survives, the one in
 *                             flight is all there or not at all
 *   test_list_torn_tail       garbage after, or a cut through, the last
 *                             record of an unsynced list log: open works,
 *                             keeps everything before it, stays stable
 *   test_list_snapshot_tmp    a half-written snapshot temp file is ignored
 *   test_list_concurrent_pages  readers page through a big list while a
 *                             writer changes it; ids that are never removed
 *                             are always seen, pages stay sorted
 *
 * KVIDX_SEED replays a run (kill timings and thread interleavings aside);
 * KVIDX_TEST_SCALE (default 1) divides the operation counts (sanitizer
 * builds divide them further: by 2 under ASan, 8 under TSan);
 * KVIDX_LIST_OPS sets the model test's operation count (default 200000).
 */
#include "../kvidx.h"
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>

#define PATHSZ 4352
#define PAGE_MAX 4096

static uint64_t g_scale = 1;


static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_lists: out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- failure reporting (single-threaded cases) ------------------------- */

static int g_lines; /* failure lines printed in this case */

static void lfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void lfail(const char *fmt, ...) {
    va_list ap;
    t_case_failures++;
    if (g_lines++ >= 30) return;
    fprintf(stderr, "  ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " [%s seed %" PRIu64 "]\n", t_prog, t_seed);
}

/* ---- database helpers ---------------------------------------------------- */

static kvidx *xopen(const char *dir, uint32_t shards, uint32_t flags, uint32_t sync_ms) {
    kvidx_options o;
    kvidx *db = NULL;
    int rc;
    kvidx_options_init(&o);
    o.shards = shards;
    o.flags = flags;
    o.sync_interval_ms = sync_ms;
    rc = kvidx_open(dir, &o, &db);
    if (rc != KVIDX_OK) {
        lfail("open %s (shards %u flags %u): %d (%s)", dir, shards, flags, rc, kvidx_strerror(rc));
        return NULL;
    }
    return db;
}

/* ---- the reference model: a sorted, distinct array of ids per list ---- */

typedef struct {
    uint64_t *v;
    size_t n, cap;
} idvec;

static void iv_reserve(idvec *a, size_t want) {
    if (want <= a->cap) return;
    {
        size_t c = a->cap ? a->cap : 8;
        uint64_t *p;
        while (c < want) c *= 2;
        p = realloc(a->v, c * sizeof *p);
        if (!p) {
            fprintf(stderr, "test_lists: out of memory\n");
            exit(2);
        }
        a->v = p;
        a->cap = c;
    }
}

static void iv_free(idvec *a) {
    free(a->v);
    memset(a, 0, sizeof *a);
}

static void iv_copy(idvec *dst, const idvec *src) {
    iv_reserve(dst, src->n);
    if (src->n) memcpy(dst->v, src->v, src->n * sizeof *src->v);
    dst->n = src->n;
}

static int u64_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts b[0..n) and drops duplicates; returns the new length. */
static size_t sort_dedup(uint64_t *b, size_t n) {
    size_t i, k = 0;
    if (n == 0) return 0;
    qsort(b, n, sizeof *b, u64_cmp);
    for (i = 1; i < n; i++)
        if (b[i] != b[k]) b[++k] = b[i];
    return k + 1;
}

/* The index of the first id >= x. */
static size_t iv_lower(const idvec *a, uint64_t x) {
    size_t lo = 0, hi = a->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a->v[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int iv_has(const idvec *a, uint64_t x) {
    size_t i = iv_lower(a, x);
    return i < a->n && a->v[i] == x;
}

static void iv_put(idvec *a, const uint64_t *ids, size_t n) {
    iv_reserve(a, n);
    if (n) memcpy(a->v, ids, n * sizeof *ids);
    a->n = sort_dedup(a->v, n);
}

/* Merges the ids in; returns how many were new. */
static size_t iv_add(idvec *a, const uint64_t *ids, size_t n) {
    uint64_t *b;
    size_t m, j, k = 0;
    if (n == 0) return 0;
    b = xmalloc(n * sizeof *b);
    memcpy(b, ids, n * sizeof *b);
    m = sort_dedup(b, n);
    for (j = 0; j < m; j++)
        if (!iv_has(a, b[j])) b[k++] = b[j];
    if (k) {
        size_t i = a->n, w = a->n + k;
        iv_reserve(a, a->n + k);
        j = k;
        while (j > 0) { /* backward merge */
            if (i > 0 && a->v[i - 1] > b[j - 1]) a->v[--w] = a->v[--i];
            else a->v[--w] = b[--j];
        }
        a->n += k;
    }
    free(b);
    return k;
}

/* Removes the ids; returns how many were there. */
static size_t iv_remove(idvec *a, const uint64_t *ids, size_t n) {
    uint64_t *b;
    size_t m, i, w, j = 0, r = 0;
    if (n == 0 || a->n == 0) return 0;
    b = xmalloc(n * sizeof *b);
    memcpy(b, ids, n * sizeof *b);
    m = sort_dedup(b, n);
    i = w = iv_lower(a, b[0]);
    for (; i < a->n; i++) {
        while (j < m && b[j] < a->v[i]) j++;
        if (j < m && b[j] == a->v[i]) {
            r++;
            continue;
        }
        a->v[w++] = a->v[i];
    }
    a->n = w;
    free(b);
    return r;
}

/* List writes, as the journal and the model know them. */
enum { OP_PUT = 1, OP_ADD = 2, OP_REMOVE = 3, OP_DELETE = 4 };

static const char *op_name(uint32_t op) {
    switch (op) {
    case OP_PUT: return "put";
    case OP_ADD: return "add";
    case OP_REMOVE: return "remove";
    case OP_DELETE: return "delete";
    }
    return "?";
}

/* Applies a write to the model; *rc and *res get what kvidx must return
 * (res: added for add, removed for remove, else 0). */
static void m_apply(idvec *a, uint32_t op, const uint64_t *ids, size_t n, int *rc, uint64_t *res) {
    *rc = KVIDX_OK;
    *res = 0;
    switch (op) {
    case OP_PUT: iv_put(a, ids, n); break;
    case OP_ADD: *res = iv_add(a, ids, n); break;
    case OP_REMOVE:
        if (a->n == 0) *rc = KVIDX_NOTFOUND;
        else *res = iv_remove(a, ids, n);
        break;
    case OP_DELETE:
        if (a->n == 0) *rc = KVIDX_NOTFOUND;
        a->n = 0;
        break;
    }
}

/* The same write on the database. */
static int db_apply(kvidx *db, uint32_t op, uint64_t key, const uint64_t *ids, size_t n,
                    uint64_t *res) {
    size_t r = 0;
    int rc = KVIDX_EINVAL;
    switch (op) {
    case OP_PUT: rc = kvidx_list_put(db, key, ids, n); break;
    case OP_ADD: r = 777777; rc = kvidx_list_add(db, key, ids, n, &r); break;
    case OP_REMOVE: r = 777777; rc = kvidx_list_remove(db, key, ids, n, &r); break;
    case OP_DELETE: rc = kvidx_list_delete(db, key); break;
    }
    *res = r;
    return rc;
}

/* ---- a set of lists: keys, their models, their key order -------------- */

typedef struct {
    size_t nk;
    uint64_t *keys;
    idvec *lists;
    size_t *ord; /* indexes by ascending key */
} lset;

static const uint64_t *g_ord_keys;
static int ord_cmp(const void *a, const void *b) {
    uint64_t x = g_ord_keys[*(const size_t *)a], y = g_ord_keys[*(const size_t *)b];
    return x < y ? -1 : x > y;
}

/* Keys: 0, UINT64_MAX, small ones and hashed ones, all distinct. */
static uint64_t key_of(size_t i, uint64_t salt) {
    if (i == 0) return 0;
    if (i == 1) return UINT64_MAX;
    if (i % 4 == 0) return i;
    return t_mix64(i ^ salt) | 1u << 20; /* never a small key */
}

static void ls_init(lset *s, size_t nk, uint64_t salt) {
    size_t i;
    s->nk = nk;
    s->keys = xmalloc(nk * sizeof *s->keys);
    s->lists = calloc(nk, sizeof *s->lists);
    s->ord = xmalloc(nk * sizeof *s->ord);
    if (!s->lists) exit(2);
    for (i = 0; i < nk; i++) s->keys[i] = key_of(i, salt), s->ord[i] = i;
    g_ord_keys = s->keys;
    qsort(s->ord, nk, sizeof *s->ord, ord_cmp);
    for (i = 1; i < nk; i++)
        if (s->keys[s->ord[i]] == s->keys[s->ord[i - 1]]) {
            fprintf(stderr, "test_lists: duplicate key, change the salt\n");
            exit(2);
        }
}

static void ls_free(lset *s) {
    size_t i;
    for (i = 0; i < s->nk; i++) iv_free(&s->lists[i]);
    free(s->keys);
    free(s->lists);
    free(s->ord);
    memset(s, 0, sizeof *s);
}

/* ---- checks against the model ------------------------------------------- */

static uint64_t g_page[PAGE_MAX];

/* Count, contains and a full pass of list_get pages (random caps in
 * 1..maxcap) against a. Returns 0 when all agree; quiet: print nothing. */
static int check_list(kvidx *db, uint64_t key, const idvec *a, size_t maxcap, int quiet,
                      const char *ctx) {
    uint64_t cnt = 999, from = 0;
    size_t pos = 0, n, cap, want, i;
    int rc;
#define CL_BAD(...)                                                           \
    do {                                                                      \
        if (!quiet) lfail(__VA_ARGS__);                                       \
        return 1;                                                             \
    } while (0)
    if (maxcap > PAGE_MAX) maxcap = PAGE_MAX;
    rc = kvidx_list_count(db, key, &cnt);
    if (a->n == 0) {
        if (rc != KVIDX_NOTFOUND || cnt != 0)
            CL_BAD("%s: key %" PRIu64 ": count rc %d count %" PRIu64 ", model: no list", ctx, key,
                   rc, cnt);
        n = 99;
        rc = kvidx_list_get(db, key, 0, g_page, 16, &n);
        if (rc != KVIDX_NOTFOUND || n != 0)
            CL_BAD("%s: key %" PRIu64 ": get rc %d n %zu, model: no list", ctx, key, rc, n);
        return 0;
    }
    if (rc != KVIDX_OK || cnt != a->n)
        CL_BAD("%s: key %" PRIu64 ": count rc %d count %" PRIu64 ", model %zu ids", ctx, key, rc,
               cnt, a->n);
    rc = kvidx_list_contains(db, key, a->v[t_below(a->n)]);
    if (rc != KVIDX_OK) CL_BAD("%s: key %" PRIu64 ": contains of a present id: %d", ctx, key, rc);
    for (;;) {
        cap = 1 + (size_t)t_below(maxcap);
        want = a->n - pos < cap ? a->n - pos : cap;
        n = SIZE_MAX;
        rc = kvidx_list_get(db, key, from, g_page, cap, &n);
        if (rc != KVIDX_OK || n != want)
            CL_BAD("%s: key %" PRIu64 ": get(from %" PRIu64 ", cap %zu): rc %d n %zu, model %zu "
                   "(list of %zu, at index %zu)", ctx, key, from, cap, rc, n, want, a->n, pos);
        for (i = 0; i < n; i++)
            if (g_page[i] != a->v[pos + i])
                CL_BAD("%s: key %" PRIu64 ": get(from %" PRIu64 ", cap %zu)[%zu] = %" PRIu64
                       ", model %" PRIu64 " (index %zu of %zu)", ctx, key, from, cap, i,
                       g_page[i], a->v[pos + i], pos + i, a->n);
        pos += n;
        if (n < cap || g_page[n - 1] == UINT64_MAX) break;
        from = g_page[n - 1] + 1;
    }
    if (pos != a->n)
        CL_BAD("%s: key %" PRIu64 ": paging gave %zu ids, model %zu", ctx, key, pos, a->n);
    return 0;
#undef CL_BAD
}

typedef struct {
    uint64_t key, count;
} kc;

typedef struct {
    kc *v;
    size_t n, cap;
} kcvec;

static int collect_fn(void *ud, uint64_t key, uint64_t count) {
    kcvec *c = ud;
    if (c->n == c->cap) {
        kc *p;
        c->cap = c->cap ? c->cap * 2 : 64;
        p = realloc(c->v, c->cap * sizeof *p);
        if (!p) exit(2);
        c->v = p;
    }
    c->v[c->n].key = key;
    c->v[c->n].count = count;
    c->n++;
    return 0;
}

/* list_scan over [from, to] must give exactly the model's lists there. */
static int check_scan(kvidx *db, const lset *s, uint64_t from, uint64_t to, const char *ctx) {
    kcvec c;
    size_t i, j = 0;
    int rc, bad = 0;
    memset(&c, 0, sizeof c);
    rc = kvidx_list_scan(db, from, to, collect_fn, &c);
    if (rc != KVIDX_OK) {
        lfail("%s: list_scan [%" PRIu64 ", %" PRIu64 "]: %d", ctx, from, to, rc);
        free(c.v);
        return 1;
    }
    for (i = 0; i < s->nk && !bad; i++) {
        size_t k = s->ord[i];
        uint64_t key = s->keys[k];
        if (key < from || key > to || s->lists[k].n == 0) continue;
        if (j >= c.n) {
            lfail("%s: list_scan [%" PRIu64 ", %" PRIu64 "] ended after %zu lists, missing key %"
                  PRIu64, ctx, from, to, c.n, key);
            bad = 1;
        } else if (c.v[j].key != key || c.v[j].count != s->lists[k].n) {
            lfail("%s: list_scan [%" PRIu64 ", %" PRIu64 "] #%zu: key %" PRIu64 " count %" PRIu64
                  ", model key %" PRIu64 " count %zu", ctx, from, to, j, c.v[j].key,
                  c.v[j].count, key, s->lists[k].n);
            bad = 1;
        }
        j++;
    }
    if (!bad && j != c.n) {
        lfail("%s: list_scan [%" PRIu64 ", %" PRIu64 "]: %zu lists, model %zu (first extra key %"
              PRIu64 ")", ctx, from, to, c.n, j, c.v[j].key);
        bad = 1;
    }
    free(c.v);
    return bad;
}

/* Everything: each list paged through, a full and a partial list_scan,
 * and the list stats. Returns the number of problems. */
static int verify_all(kvidx *db, const lset *s, const char *ctx) {
    kvidx_stats st;
    uint64_t lists = 0, ids = 0;
    size_t i;
    int bad = 0, rc;
    for (i = 0; i < s->nk; i++) {
        size_t maxcap = t_below(4) == 0 ? 8 : t_below(2) ? 300 : PAGE_MAX;
        if (s->lists[i].n > 20000 && maxcap < 256) maxcap = 256;
        bad += check_list(db, s->keys[i], &s->lists[i], maxcap, 0, ctx);
        lists += s->lists[i].n > 0;
        ids += s->lists[i].n;
        if (bad > 5) break;
    }
    bad += check_scan(db, s, 0, UINT64_MAX, ctx);
    {
        uint64_t a = t_rand(), b = t_rand();
        if (t_below(2)) b = a + t_below(1ull << 62);
        if (b < a) { uint64_t x = a; a = b; b = x; }
        bad += check_scan(db, s, a, b, ctx);
    }
    rc = t_stat(db, &st);
    if (rc != KVIDX_OK || st.lists != lists || st.list_ids != ids) {
        lfail("%s: stat rc %d lists %" PRIu64 " list_ids %" PRIu64 ", model %" PRIu64 " / %" PRIu64,
              ctx, rc, st.lists, st.list_ids, lists, ids);
        bad++;
    }
    return bad;
}

/* ======================================================================
 * 1. The API's rules, one by one.
 * ====================================================================== */

static int count_fn(void *ud, uint64_t key, uint64_t count) {
    (void)key, (void)count;
    ++*(int *)ud;
    return 0;
}

static int stop_after_5(void *ud, uint64_t key, uint64_t count) {
    (void)key, (void)count;
    return ++*(int *)ud >= 5;
}

typedef struct {
    kvidx *db;
    int calls, bad;
    uint64_t last;
} wscan;

/* Visits [100, 139]: reads the list it is on, adds an id to it, and
 * writes a new list at key + 1000 (outside the scanned range). */
static int writing_fn(void *ud, uint64_t key, uint64_t count) {
    wscan *w = ud;
    uint64_t id = 999999, c2 = 0;
    size_t added = 0;
    if (w->calls && key <= w->last) w->bad++;
    w->last = key;
    w->calls++;
    if (kvidx_list_count(w->db, key, &c2) != KVIDX_OK || c2 != count) w->bad++;
    if (kvidx_list_add(w->db, key, &id, 1, &added) != KVIDX_OK || added != 1) w->bad++;
    if (kvidx_list_contains(w->db, key, id) != KVIDX_OK) w->bad++;
    if (kvidx_list_add(w->db, key + 1000, &key, 1, &added) != KVIDX_OK || added != 1) w->bad++;
    return 0;
}

/* ids[] ascending equal to the n at out? */
static int same_ids(const uint64_t *out, size_t n, const uint64_t *want, size_t wn) {
    return n == wn && (n == 0 || memcmp(out, want, n * sizeof *out) == 0);
}

static void test_list_api(void) {
    char dir[PATHSZ];
    kvidx *db, *ro;
    uint64_t out[1024], cnt, ids[8];
    size_t n, added, removed, i;
    int calls;
    t_watchdog("test_list_api", 120);
    g_lines = 0;
    snprintf(dir, sizeof dir, "%s", t_dir("lists_api"));
    db = xopen(dir, 4, KVIDX_CREATE, 1000);
    REQUIRE(db);

    /* NULL arguments and from > to: KVIDX_EINVAL, and nothing changes. */
    ids[0] = 7, ids[1] = 8;
    CHECK_RC(kvidx_list_put(db, 1, ids, 2), KVIDX_OK);
    CHECK_RC(kvidx_list_put(NULL, 1, ids, 1), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_put(db, 1, NULL, 1), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_add(NULL, 1, ids, 1, &added), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_add(db, 1, NULL, 2, &added), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_remove(NULL, 1, ids, 1, &removed), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_remove(db, 1, NULL, 1, &removed), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_delete(NULL, 1), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_get(NULL, 1, 0, out, 4, &n), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_get(db, 1, 0, out, 4, NULL), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_get(db, 1, 0, NULL, 4, &n), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_count(NULL, 1, &cnt), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_count(db, 1, NULL), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_contains(NULL, 1, 7), KVIDX_EINVAL);
    calls = 0;
    CHECK_RC(kvidx_list_scan(NULL, 0, UINT64_MAX, count_fn, &calls), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_scan(db, 0, UINT64_MAX, NULL, &calls), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_scan(db, 5, 4, count_fn, &calls), KVIDX_EINVAL);
    CHECK_RC(kvidx_list_scan(db, UINT64_MAX, 0, count_fn, &calls), KVIDX_EINVAL);
    CHECK(calls == 0);
    n = 99;
    CHECK_RC(kvidx_list_get(db, 1, 0, out, 8, &n), KVIDX_OK);
    CHECK(same_ids(out, n, ids, 2));
    /* NULL out with cap 0, NULL ids with n 0, NULL added/removed: fine */
    n = 99;
    CHECK_RC(kvidx_list_get(db, 1, 0, NULL, 0, &n), KVIDX_OK);
    CHECK(n == 0);
    CHECK_RC(kvidx_list_add(db, 1, NULL, 0, &added), KVIDX_OK);
    CHECK_RC(kvidx_list_add(db, 1, ids, 2, NULL), KVIDX_OK);
    CHECK_RC(kvidx_list_remove(db, 1, NULL, 0, NULL), KVIDX_OK);
    CHECK_RC(kvidx_list_count(db, 1, &cnt), KVIDX_OK);
    CHECK(cnt == 2);

    /* An absent list: NOTFOUND with zeroed outputs; deleting or putting
     * nothing is fine; adding nothing creates no list. */
    n = 99, cnt = 99, removed = 99;
    CHECK_RC(kvidx_list_get(db, 2, 0, out, 4, &n), KVIDX_NOTFOUND);
    CHECK(n == 0);
    n = 99;
    CHECK_RC(kvidx_list_get(db, 2, 0, NULL, 0, &n), KVIDX_NOTFOUND);
    CHECK(n == 0);
    CHECK_RC(kvidx_list_count(db, 2, &cnt), KVIDX_NOTFOUND);
    CHECK(cnt == 0);
    CHECK_RC(kvidx_list_contains(db, 2, 0), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_list_remove(db, 2, ids, 2, &removed), KVIDX_NOTFOUND);
    CHECK(removed == 0);
    removed = 99;
    CHECK_RC(kvidx_list_remove(db, 2, NULL, 0, &removed), KVIDX_NOTFOUND);
    CHECK(removed == 0);
    CHECK_RC(kvidx_list_remove(db, 2, ids, 2, NULL), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_list_delete(db, 2), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_list_put(db, 2, NULL, 0), KVIDX_OK);
    added = 99;
    CHECK_RC(kvidx_list_add(db, 2, NULL, 0, &added), KVIDX_OK);
    CHECK(added == 0);
    CHECK_RC(kvidx_list_count(db, 2, &cnt), KVIDX_NOTFOUND);
    calls = 0;
    CHECK_RC(kvidx_list_scan(db, 2, 2, count_fn, &calls), KVIDX_OK);
    CHECK(calls == 0);

    /* put sorts and de-duplicates, replaces, and n == 0 deletes. */
    {
        uint64_t raw[] = {5, 3, 9, 3, 5, 5, 1, 9, 0}, want[] = {0, 1, 3, 5, 9}, seven = 7;
        CHECK_RC(kvidx_list_put(db, 3, raw, 9), KVIDX_OK);
        n = 0;
        CHECK_RC(kvidx_list_get(db, 3, 0, out, 64, &n), KVIDX_OK);
        CHECK(same_ids(out, n, want, 5));
        CHECK_RC(kvidx_list_count(db, 3, &cnt), KVIDX_OK);
        CHECK(cnt == 5);
        CHECK_RC(kvidx_list_put(db, 3, &seven, 1), KVIDX_OK);
        CHECK_RC(kvidx_list_get(db, 3, 0, out, 64, &n), KVIDX_OK);
        CHECK(same_ids(out, n, &seven, 1));
        CHECK_RC(kvidx_list_contains(db, 3, 5), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_put(db, 3, raw, 0), KVIDX_OK); /* n == 0, ids not NULL */
        CHECK_RC(kvidx_list_count(db, 3, &cnt), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_delete(db, 3), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_put(db, 3, raw, 9), KVIDX_OK);
        CHECK_RC(kvidx_list_put(db, 3, NULL, 0), KVIDX_OK);
        CHECK_RC(kvidx_list_count(db, 3, &cnt), KVIDX_NOTFOUND);
    }

    /* add and remove report exact counts (duplicates in the batch count
     * once); removing the last id deletes the list. */
    {
        uint64_t a1[] = {10, 20, 10, 30}, a2[] = {20, 40, 40, 5}, a3[] = {10, 20};
        uint64_t r1[] = {20, 20, 99, 5}, r2[] = {99, 98}, r3[] = {10, 30, 40, 10};
        uint64_t w2[] = {5, 10, 20, 30, 40}, w3[] = {10, 30, 40};
        CHECK_RC(kvidx_list_add(db, 4, a1, 4, &added), KVIDX_OK);
        CHECK(added == 3);
        CHECK_RC(kvidx_list_add(db, 4, a2, 4, &added), KVIDX_OK);
        CHECK(added == 2);
        CHECK_RC(kvidx_list_add(db, 4, a3, 2, &added), KVIDX_OK);
        CHECK(added == 0);
        CHECK_RC(kvidx_list_get(db, 4, 0, out, 64, &n), KVIDX_OK);
        CHECK(same_ids(out, n, w2, 5));
        CHECK_RC(kvidx_list_remove(db, 4, r1, 4, &removed), KVIDX_OK);
        CHECK(removed == 2);
        CHECK_RC(kvidx_list_remove(db, 4, r2, 2, &removed), KVIDX_OK);
        CHECK(removed == 0);
        CHECK_RC(kvidx_list_remove(db, 4, NULL, 0, &removed), KVIDX_OK);
        CHECK(removed == 0);
        CHECK_RC(kvidx_list_get(db, 4, 0, out, 64, &n), KVIDX_OK);
        CHECK(same_ids(out, n, w3, 3));
        CHECK_RC(kvidx_list_remove(db, 4, r3, 4, &removed), KVIDX_OK);
        CHECK(removed == 3);
        CHECK_RC(kvidx_list_count(db, 4, &cnt), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_contains(db, 4, 10), KVIDX_NOTFOUND);
        n = 99;
        CHECK_RC(kvidx_list_get(db, 4, 0, out, 64, &n), KVIDX_NOTFOUND);
        CHECK(n == 0);
        CHECK_RC(kvidx_list_remove(db, 4, r3, 1, &removed), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_delete(db, 4), KVIDX_NOTFOUND);
        calls = 0;
        CHECK_RC(kvidx_list_scan(db, 3, 5, count_fn, &calls), KVIDX_OK);
        CHECK(calls == 0);
        /* removing everything in one call is the same */
        CHECK_RC(kvidx_list_add(db, 4, a1, 4, &added), KVIDX_OK);
        CHECK_RC(kvidx_list_remove(db, 4, w2, 5, &removed), KVIDX_OK);
        CHECK(removed == 3);
        CHECK_RC(kvidx_list_count(db, 4, &cnt), KVIDX_NOTFOUND);
    }

    /* ids and keys 0 and UINT64_MAX. */
    {
        uint64_t ext[] = {UINT64_MAX, 0, UINT64_MAX - 1, 1, 0, UINT64_MAX};
        uint64_t w[] = {0, 1, UINT64_MAX - 1, UINT64_MAX}, mx = UINT64_MAX, rm[] = {0, UINT64_MAX};
        uint64_t from = 0;
        size_t got = 0;
        CHECK_RC(kvidx_list_put(db, 0, ext, 6), KVIDX_OK);
        CHECK_RC(kvidx_list_get(db, 0, 0, out, 64, &n), KVIDX_OK);
        CHECK(same_ids(out, n, w, 4));
        CHECK_RC(kvidx_list_contains(db, 0, 0), KVIDX_OK);
        CHECK_RC(kvidx_list_contains(db, 0, UINT64_MAX), KVIDX_OK);
        CHECK_RC(kvidx_list_contains(db, 0, 2), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_get(db, 0, UINT64_MAX, out, 8, &n), KVIDX_OK);
        CHECK(n == 1 && out[0] == UINT64_MAX);
        CHECK_RC(kvidx_list_get(db, 0, UINT64_MAX - 1, out, 1, &n), KVIDX_OK);
        CHECK(n == 1 && out[0] == UINT64_MAX - 1);
        CHECK_RC(kvidx_list_get(db, 0, 2, out, 8, &n), KVIDX_OK);
        CHECK(same_ids(out, n, w + 2, 2));
        /* page with cap 1 as the header says: stop after UINT64_MAX */
        for (i = 0; i < 10; i++) {
            n = 99;
            CHECK_RC(kvidx_list_get(db, 0, from, out, 1, &n), KVIDX_OK);
            if (n != 1) break;
            CHECK(got < 4 && out[0] == w[got]);
            got++;
            if (out[0] == UINT64_MAX) break;
            from = out[0] + 1;
        }
        CHECK(got == 4);
        CHECK_RC(kvidx_list_add(db, UINT64_MAX, &mx, 1, &added), KVIDX_OK);
        CHECK(added == 1);
        CHECK_RC(kvidx_list_contains(db, UINT64_MAX, UINT64_MAX), KVIDX_OK);
        calls = 0;
        CHECK_RC(kvidx_list_scan(db, UINT64_MAX, UINT64_MAX, count_fn, &calls), KVIDX_OK);
        CHECK(calls == 1);
        calls = 0;
        CHECK_RC(kvidx_list_scan(db, 0, 0, count_fn, &calls), KVIDX_OK);
        CHECK(calls == 1);
        CHECK_RC(kvidx_list_remove(db, 0, rm, 2, &removed), KVIDX_OK);
        CHECK(removed == 2);
        CHECK_RC(kvidx_list_get(db, 0, 0, out, 64, &n), KVIDX_OK);
        CHECK(same_ids(out, n, w + 1, 2));
    }

    /* get returns exactly min(cap, ids >= from), OK with 0 past the end. */
    {
        uint64_t l5[100], froms[] = {0, 999, 1000, 1001, 1500, 1989, 1990, 1991, 5000, UINT64_MAX};
        size_t caps[] = {0, 1, 2, 50, 99, 100, 101, 1024}, fi, ci;
        for (i = 0; i < 100; i++) l5[i] = 1000 + 10 * (99 - i); /* descending on purpose */
        CHECK_RC(kvidx_list_put(db, 5, l5, 100), KVIDX_OK);
        qsort(l5, 100, sizeof *l5, u64_cmp);
        for (fi = 0; fi < sizeof froms / sizeof *froms; fi++) {
            size_t at = 0, left, want;
            while (at < 100 && l5[at] < froms[fi]) at++;
            left = 100 - at;
            for (ci = 0; ci < sizeof caps / sizeof *caps; ci++) {
                want = caps[ci] < left ? caps[ci] : left;
                n = 99999;
                CHECK_RC(kvidx_list_get(db, 5, froms[fi], out, caps[ci], &n), KVIDX_OK);
                if (n != want || (n && memcmp(out, l5 + at, n * sizeof *out)))
                    lfail("get(5, from %" PRIu64 ", cap %zu): n %zu, want %zu", froms[fi],
                          caps[ci], n, want);
            }
        }
        n = 99;
        CHECK_RC(kvidx_list_get(db, 5, 1991, NULL, 0, &n), KVIDX_OK);
        CHECK(n == 0);
    }

    /* Values and lists are separate keyspaces on the same key. */
    {
        uint64_t l[] = {1, 2, 3};
        char v[16];
        size_t len = 0;
        kcvec c;
        CHECK_RC(kvidx_put(db, 6, "val", 3), KVIDX_OK);
        CHECK_RC(kvidx_list_add(db, 6, l, 3, &added), KVIDX_OK);
        CHECK(added == 3);
        CHECK_RC(kvidx_get(db, 6, v, sizeof v, &len), KVIDX_OK);
        CHECK(len == 3 && memcmp(v, "val", 3) == 0);
        CHECK_RC(kvidx_delete(db, 6), KVIDX_OK); /* the value goes, the list stays */
        CHECK_RC(kvidx_list_count(db, 6, &cnt), KVIDX_OK);
        CHECK(cnt == 3);
        CHECK_RC(kvidx_get(db, 6, v, sizeof v, &len), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_put(db, 6, "v2", 2), KVIDX_OK);
        CHECK_RC(kvidx_list_delete(db, 6), KVIDX_OK); /* the list goes, the value stays */
        CHECK_RC(kvidx_get(db, 6, v, sizeof v, &len), KVIDX_OK);
        CHECK(len == 2 && memcmp(v, "v2", 2) == 0);
        CHECK_RC(kvidx_list_count(db, 6, &cnt), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_put(db, 6, l, 3), KVIDX_OK);
        CHECK_RC(kvidx_list_put(db, 7, l, 2), KVIDX_OK); /* 7: a list only */
        CHECK_RC(kvidx_put(db, 8, "x", 1), KVIDX_OK);    /* 8: a value only */
        CHECK_RC(kvidx_get(db, 7, v, sizeof v, &len), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_delete(db, 7), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_count(db, 8, &cnt), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_delete(db, 8), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_get(db, 8, v, sizeof v, &len), KVIDX_OK);
        CHECK_RC(kvidx_list_count(db, 7, &cnt), KVIDX_OK);
        CHECK(cnt == 2);
        memset(&c, 0, sizeof c);
        CHECK_RC(kvidx_list_scan(db, 6, 8, collect_fn, &c), KVIDX_OK);
        CHECK(c.n == 2 && c.v[0].key == 6 && c.v[0].count == 3 && c.v[1].key == 7 &&
              c.v[1].count == 2);
        free(c.v);
    }

    /* list_scan: ascending, once each, with counts; stopping; a callback
     * that reads and writes the same handle. */
    {
        uint64_t l[8] = {1, 2, 3, 4, 5, 6, 7, 8}, k;
        kcvec c;
        wscan w;
        int ok = 1;
        for (k = 100; k < 140; k++) CHECK_RC(kvidx_list_put(db, k, l, k % 7 + 1), KVIDX_OK);
        memset(&c, 0, sizeof c);
        CHECK_RC(kvidx_list_scan(db, 100, 139, collect_fn, &c), KVIDX_OK);
        CHECK(c.n == 40);
        for (i = 0; i < c.n && i < 40; i++)
            ok &= c.v[i].key == 100 + i && c.v[i].count == (100 + i) % 7 + 1;
        CHECK(ok);
        c.n = 0;
        CHECK_RC(kvidx_list_scan(db, 110, 119, collect_fn, &c), KVIDX_OK);
        CHECK(c.n == 10 && c.v[0].key == 110 && c.v[9].key == 119);
        c.n = 0;
        CHECK_RC(kvidx_list_scan(db, 140, 1000, collect_fn, &c), KVIDX_OK);
        CHECK(c.n == 0);
        free(c.v);
        calls = 0;
        CHECK_RC(kvidx_list_scan(db, 0, UINT64_MAX, stop_after_5, &calls), KVIDX_OK);
        CHECK(calls == 5);
        memset(&w, 0, sizeof w);
        w.db = db;
        CHECK_RC(kvidx_list_scan(db, 100, 139, writing_fn, &w), KVIDX_OK);
        CHECK(w.calls == 40 && w.bad == 0);
        for (k = 100; k < 140; k++) {
            CHECK_RC(kvidx_list_count(db, k, &cnt), KVIDX_OK);
            CHECK(cnt == k % 7 + 2);
            n = 0;
            CHECK_RC(kvidx_list_get(db, k + 1000, 0, out, 8, &n), KVIDX_OK);
            CHECK(n == 1 && out[0] == k);
        }
    }

    /* Read-only handle: every write is ERDONLY (absent lists and no-op
     * writes too), nothing changes, outputs untouched; reads work. */
    {
        uint64_t one = 123456, l5[100];
        size_t n5 = 0;
        CHECK_RC(kvidx_list_get(db, 5, 0, l5, 100, &n5), KVIDX_OK);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        db = NULL;
        ro = xopen(dir, 0, KVIDX_RDONLY, 1000);
        REQUIRE(ro);
        added = removed = 4242;
        CHECK_RC(kvidx_list_put(ro, 5, &one, 1), KVIDX_ERDONLY);
        CHECK_RC(kvidx_list_put(ro, 5, NULL, 0), KVIDX_ERDONLY);
        CHECK_RC(kvidx_list_put(ro, 77, NULL, 0), KVIDX_ERDONLY);
        CHECK_RC(kvidx_list_add(ro, 5, &one, 1, &added), KVIDX_ERDONLY);
        CHECK_RC(kvidx_list_add(ro, 5, NULL, 0, &added), KVIDX_ERDONLY);
        CHECK_RC(kvidx_list_add(ro, 77, &one, 1, &added), KVIDX_ERDONLY);
        CHECK(added == 4242);
        CHECK_RC(kvidx_list_remove(ro, 5, l5, 1, &removed), KVIDX_ERDONLY);
        CHECK_RC(kvidx_list_remove(ro, 77, &one, 1, &removed), KVIDX_ERDONLY);
        CHECK(removed == 4242);
        CHECK_RC(kvidx_list_delete(ro, 5), KVIDX_ERDONLY);
        CHECK_RC(kvidx_list_delete(ro, 77), KVIDX_ERDONLY);
        n = 0;
        CHECK_RC(kvidx_list_get(ro, 5, 0, out, 1024, &n), KVIDX_OK);
        CHECK(n5 == 100 && same_ids(out, n, l5, n5));
        CHECK_RC(kvidx_list_count(ro, 77, &cnt), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_list_contains(ro, 5, l5[0]), KVIDX_OK);
        calls = 0;
        CHECK_RC(kvidx_list_scan(ro, 0, UINT64_MAX, count_fn, &calls), KVIDX_OK);
        /* 1, 0, 5, 6, 7, 100..139, 1100..1139, UINT64_MAX */
        CHECK(calls == 86);
        CHECK_RC(kvidx_close(ro), KVIDX_OK);
    }

    /* The same after a read-write reopen. */
    db = xopen(dir, 0, KVIDX_CREATE, 1000);
    REQUIRE(db);
    calls = 0;
    CHECK_RC(kvidx_list_scan(db, 0, UINT64_MAX, count_fn, &calls), KVIDX_OK);
    CHECK(calls == 86);
    CHECK_RC(kvidx_list_count(db, 139, &cnt), KVIDX_OK);
    CHECK(cnt == 139 % 7 + 2);
    CHECK_RC(kvidx_list_count(db, 4, &cnt), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* Lists and key indexes too big for one node: paging and list_scan must
 * cross node boundaries whatever the gaps between ids (or keys) are. */
static void test_list_multileaf(void) {
    char dir[PATHSZ];
    kvidx *db;
    static uint64_t ids[20000], out[PAGE_MAX];
    static const uint64_t steps[] = {1, 2, 3, 1000, 1ull << 40};
    size_t si, i, n, added, caps[] = {1, 7, 100, 1000, PAGE_MAX}, ci;
    uint64_t one = 1;
    kcvec c;
    t_watchdog("test_list_multileaf", 60);
    g_lines = 0;
    snprintf(dir, sizeof dir, "%s", t_dir("lists_multileaf"));
    db = xopen(dir, 1, KVIDX_CREATE, 1000);
    REQUIRE(db);
    for (si = 0; si < sizeof steps / sizeof *steps; si++) {
        idvec want;
        for (i = 0; i < 20000; i++) ids[i] = 5 + i * steps[si];
        CHECK_RC(kvidx_list_add(db, si, ids, 20000, &added), KVIDX_OK);
        CHECK(added == 20000);
        want.v = ids, want.n = want.cap = 20000;
        for (ci = 0; ci < sizeof caps / sizeof *caps; ci++) {
            uint64_t from = 0;
            size_t pos = 0;
            for (;;) { /* page with a fixed cap */
                n = 0;
                CHECK_RC(kvidx_list_get(db, si, from, out, caps[ci], &n), KVIDX_OK);
                if (n && memcmp(out, ids + pos, n * sizeof *out)) {
                    lfail("step %" PRIu64 " cap %zu: page at %zu differs", steps[si], caps[ci], pos);
                    break;
                }
                pos += n;
                if (n < caps[ci]) break;
                from = out[n - 1] + 1;
            }
            CHECK(pos == 20000);
        }
        /* from in every gap between ids */
        for (i = 0; i + 1 < 20000 && steps[si] > 1; i += 97) {
            n = 0;
            CHECK_RC(kvidx_list_get(db, si, ids[i] + 1, out, 3, &n), KVIDX_OK);
            CHECK(n == 3 && out[0] == ids[i + 1]);
        }
        check_list(db, si, &want, 300, 0, "multileaf");
    }
    /* 5000 lists with sparse keys in the one shard */
    for (i = 0; i < 5000; i++)
        CHECK_RC(kvidx_list_put(db, 1000 + i * 1000, &one, 1), KVIDX_OK);
    memset(&c, 0, sizeof c);
    CHECK_RC(kvidx_list_scan(db, 0, UINT64_MAX, collect_fn, &c), KVIDX_OK);
    CHECK(c.n == 5000 + sizeof steps / sizeof *steps);
    for (i = 1; i < c.n; i++) CHECK(c.v[i].key > c.v[i - 1].key);
    c.n = 0;
    CHECK_RC(kvidx_list_scan(db, 1000 + 1001, 1000 + 3000 * 1000 - 1, collect_fn, &c), KVIDX_OK);
    CHECK(c.n == 2998 && c.v[0].key == 1000 + 2000);
    free(c.v);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* Stats: lists and ids counted, changes counted, no-ops not. */
static void test_list_stats(void) {
    char dir[PATHSZ];
    kvidx *db;
    kvidx_stats st;
    uint64_t ids[64], k, sum = 0, w0;
    size_t added, removed, i;
    t_watchdog("test_list_stats", 120);
    g_lines = 0;
    snprintf(dir, sizeof dir, "%s", t_dir("lists_stats"));
    db = xopen(dir, 2, KVIDX_CREATE, 1000);
    REQUIRE(db);
    CHECK_RC(t_stat(db, &st), KVIDX_OK);
    CHECK(st.lists == 0 && st.list_ids == 0 && st.list_writes == 0);
    for (i = 0; i < 64; i++) ids[i] = 3 * i + 1;
    for (k = 1; k <= 10; k++) {
        CHECK_RC(kvidx_list_add(db, k, ids, (size_t)k * 5, &added), KVIDX_OK);
        sum += k * 5;
    }
    CHECK_RC(t_stat(db, &st), KVIDX_OK);
    CHECK(st.lists == 10 && st.list_ids == sum);
    CHECK(st.list_writes == 10);
    CHECK(st.keys == 0); /* lists are not values */
    CHECK(st.list_log_bytes > 0);
    w0 = st.list_writes;
    /* no-ops: adding present ids, removing absent ones, deleting nothing */
    CHECK_RC(kvidx_list_add(db, 1, ids, 5, &added), KVIDX_OK);
    CHECK(added == 0);
    CHECK_RC(kvidx_list_remove(db, 1, ids + 40, 5, &removed), KVIDX_OK);
    CHECK(removed == 0);
    CHECK_RC(kvidx_list_delete(db, 99), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_list_remove(db, 99, ids, 1, &removed), KVIDX_NOTFOUND);
    CHECK_RC(t_stat(db, &st), KVIDX_OK);
    CHECK(st.list_writes == w0);
    /* changes */
    CHECK_RC(kvidx_list_remove(db, 1, ids, 5, &removed), KVIDX_OK); /* list 1 goes */
    CHECK(removed == 5);
    CHECK_RC(kvidx_list_delete(db, 2), KVIDX_OK);
    CHECK_RC(kvidx_list_remove(db, 3, ids, 1, &removed), KVIDX_OK);
    sum -= 5 + 10 + 1;
    CHECK_RC(t_stat(db, &st), KVIDX_OK);
    CHECK(st.lists == 8 && st.list_ids == sum);
    CHECK(st.list_writes == w0 + 3);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(dir, 0, KVIDX_CREATE, 1000);
    REQUIRE(db);
    CHECK_RC(t_stat(db, &st), KVIDX_OK);
    CHECK(st.lists == 8 && st.list_ids == sum);
    CHECK(st.list_writes == 0);
    CHECK(st.list_log_bytes + st.list_snapshot_bytes > 0);
    CHECK(st.list_ram_bytes > 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* ======================================================================
 * 2. Model test: random operations, every result compared.
 * ====================================================================== */

#define M_SMALL 4000u
#define M_BIG 4u
#define TRACE 16

typedef struct {
    uint64_t opno, key, res, id0, idn;
    uint32_t op;
    size_t n;
    int rc;
} tr;

static tr g_trace[TRACE];
static uint64_t g_ntrace;

static void trace(uint64_t opno, uint32_t op, uint64_t key, const uint64_t *ids, size_t n,
                  int rc, uint64_t res) {
    tr *t = &g_trace[g_ntrace++ % TRACE];
    t->opno = opno, t->op = op, t->key = key, t->n = n, t->rc = rc, t->res = res;
    t->id0 = n ? ids[0] : 0;
    t->idn = n ? ids[n - 1] : 0;
}

static void dump_trace(void) {
    uint64_t i = g_ntrace > TRACE ? g_ntrace - TRACE : 0;
    fprintf(stderr, "  last writes:\n");
    for (; i < g_ntrace; i++) {
        const tr *t = &g_trace[i % TRACE];
        fprintf(stderr, "    op %" PRIu64 ": %s key %" PRIu64 " n %zu (first %" PRIu64
                ", last %" PRIu64 ") -> rc %d res %" PRIu64 "\n", t->opno, op_name(t->op), t->key,
                t->n, t->id0, t->idn, t->rc, t->res);
    }
}

/* An id for list i: narrow ranges give collisions, wide ones the edges. */
static uint64_t gen_id(size_t i) {
    static const uint64_t special[] = {0, 1, UINT64_MAX, UINT64_MAX - 1, 0xFFFFFFFFull,
                                       0x100000000ull};
    uint64_t r;
    switch (i % 3) {
    case 0: return t_below(256);
    case 1: return t_below(1ull << 32);
    default:
        r = t_below(100);
        if (r < 3) return special[t_below(6)];
        if (r < 30) return t_rand();
        return t_below(1ull << 32);
    }
}

/* A present id (when there is one) or a fresh one. */
static uint64_t pick_id(const idvec *a, size_t i) {
    if (a->n && t_below(10) < 6) return a->v[t_below(a->n)];
    return gen_id(i);
}

static size_t batch_n(void) {
    uint64_t r = t_below(100);
    if (r < 60) return 1 + (size_t)t_below(4);
    if (r < 90) return 5 + (size_t)t_below(16);
    return 21 + (size_t)t_below(30);
}

/* Big list b grows mostly in ascending runs from its own start. */
static const uint64_t big_start[M_BIG] = {0, 1ull << 32, 1ull << 63, 12345};
static const uint64_t big_step[M_BIG] = {4, 1000, 1ull << 20, 64};

static void model_run(const char *name, uint32_t shards, uint64_t ops) {
    char dir[PATHSZ];
    lset s;
    kvidx *db;
    uint64_t *ids = xmalloc(8192 * sizeof *ids), cursor[M_BIG], op, nreopen = 0;
    uint64_t counts[8] = {0}, t0 = t_now_ms();
    uint64_t reopen_at[3];
    size_t nk = M_SMALL + M_BIG, b;
    int stop = 0;

    g_lines = 0;
    g_ntrace = 0;
    snprintf(dir, sizeof dir, "%s", t_dir(name));
    ls_init(&s, nk, t_rand());
    for (b = 0; b < M_BIG; b++) cursor[b] = big_start[b];
    reopen_at[0] = ops / 4, reopen_at[1] = ops / 2, reopen_at[2] = ops * 3 / 4;
    db = xopen(dir, shards, KVIDX_CREATE, 1000);
    if (!db) {
        ls_free(&s);
        free(ids);
        return;
    }

    for (op = 0; op < ops && !stop; op++) {
        size_t i, n = 0, j;
        idvec *a;
        uint64_t key, r, res, mres;
        uint32_t w = 0;
        int rc, mrc;
        int big = t_below(100) < 3;

        i = big ? M_SMALL + (size_t)t_below(M_BIG) : (size_t)t_below(M_SMALL);
        a = &s.lists[i];
        key = s.keys[i];
        r = t_below(100);

        /* choose a write (w != 0, ids[0..n)) or do a read */
        if (big) {
            b = i - M_SMALL;
            if (r < 12) { /* bulk ascending add */
                n = 200 + (size_t)t_below(1800);
                for (j = 0; j < n; j++) ids[j] = cursor[b] += 1 + t_below(big_step[b]);
                if (t_below(8) == 0 && a->n) ids[t_below(n)] = a->v[t_below(a->n)]; /* a dup */
                w = OP_ADD;
            } else if (r < 40) { /* single ascending add */
                ids[0] = cursor[b] += 1 + t_below(big_step[b]);
                n = 1, w = OP_ADD;
            } else if (r < 48) { /* random adds inside the range */
                n = batch_n();
                for (j = 0; j < n; j++)
                    ids[j] = big_start[b] + t_below(cursor[b] - big_start[b] + 1);
                w = OP_ADD;
            } else if (r < 58) { /* random removes */
                n = batch_n();
                for (j = 0; j < n; j++)
                    ids[j] = a->n && t_below(4) ? a->v[t_below(a->n)]
                                                : big_start[b] + t_below(cursor[b] - big_start[b] + 1);
                w = OP_REMOVE;
            } else if (r < 60 && a->n > 2000) { /* remove a run */
                size_t at = (size_t)t_below(a->n - 1000);
                n = 200 + (size_t)t_below(800);
                for (j = 0; j < n; j++) ids[j] = a->v[at + j];
                w = OP_REMOVE;
            }
        } else {
            if (r < 5) {
                n = t_below(10) ? batch_n() : 0;
                for (j = 0; j < n; j++) ids[j] = gen_id(i);
                w = OP_PUT;
            } else if (r < 35) {
                n = t_below(300) ? batch_n() : 200 + (size_t)t_below(3000); /* rarely large */
                for (j = 0; j < n; j++) ids[j] = t_below(5) ? gen_id(i) : pick_id(a, i);
                w = OP_ADD;
            } else if (r < 55) {
                n = t_below(50) ? batch_n() : 0;
                for (j = 0; j < n; j++) ids[j] = pick_id(a, i);
                w = OP_REMOVE;
            } else if (r < 57) {
                w = OP_DELETE;
            }
        }

        if (w) {
            rc = db_apply(db, w, key, n ? ids : (t_below(2) ? NULL : ids), n, &res);
            m_apply(a, w, ids, n, &mrc, &mres);
            trace(op, w, key, ids, n, rc, res);
            counts[w]++;
            if (rc != mrc || (rc == KVIDX_OK && res != mres) ||
                (w == OP_REMOVE && rc == KVIDX_NOTFOUND && res != 0)) {
                lfail("op %" PRIu64 ": %s key %" PRIu64 " (%zu ids): rc %d res %" PRIu64
                      ", model rc %d res %" PRIu64, op, op_name(w), key, n, rc, res, mrc, mres);
                stop = 1;
            }
        } else if (r < 75) { /* contains */
            uint64_t id = big && a->n && t_below(2) ? a->v[t_below(a->n)] : pick_id(a, i);
            if (t_below(4) == 0) id++;
            rc = kvidx_list_contains(db, key, id);
            counts[5]++;
            if (rc != (iv_has(a, id) ? KVIDX_OK : KVIDX_NOTFOUND)) {
                lfail("op %" PRIu64 ": contains(key %" PRIu64 ", %" PRIu64 "): %d, model %s", op,
                      key, id, rc, iv_has(a, id) ? "has it" : "has not");
                stop = 1;
            }
        } else if (r < 82) { /* count */
            uint64_t c = 999;
            rc = kvidx_list_count(db, key, &c);
            counts[6]++;
            if (rc != (a->n ? KVIDX_OK : KVIDX_NOTFOUND) || c != a->n) {
                lfail("op %" PRIu64 ": count(key %" PRIu64 "): rc %d count %" PRIu64 ", model %zu",
                      op, key, rc, c, a->n);
                stop = 1;
            }
        } else { /* one page from a random place */
            uint64_t from, f = t_below(10);
            size_t cap = t_below(10) == 0 ? 0 : t_below(2) ? 1 + (size_t)t_below(10)
                                                           : 1 + (size_t)t_below(300);
            size_t at, want, got = 99999;
            if (f < 2 || !a->n) from = f == 0 ? 0 : gen_id(i);
            else if (f < 6) from = a->v[t_below(a->n)];
            else if (f < 9) from = a->v[t_below(a->n)] + 1;
            else from = UINT64_MAX;
            at = iv_lower(a, from);
            want = a->n - at < cap ? a->n - at : cap;
            rc = kvidx_list_get(db, key, from, cap || t_below(2) ? g_page : NULL, cap, &got);
            counts[7]++;
            if (rc != (a->n ? KVIDX_OK : KVIDX_NOTFOUND) || got != want ||
                (want && memcmp(g_page, a->v + at, want * sizeof *g_page))) {
                lfail("op %" PRIu64 ": get(key %" PRIu64 ", from %" PRIu64 ", cap %zu): rc %d n %zu"
                      ", model %zu of %zu", op, key, from, cap, rc, got, want, a->n);
                stop = 1;
            }
        }

        /* now and then: one whole list, a scan range, the stats */
        if (!stop && op % 5000 == 4999) {
            size_t k = t_below(3) == 0 ? M_SMALL + (size_t)t_below(M_BIG) : (size_t)t_below(nk);
            size_t maxcap = k >= M_SMALL ? 64 + (size_t)t_below(PAGE_MAX) : 1 + (size_t)t_below(200);
            char ctx[64];
            snprintf(ctx, sizeof ctx, "op %" PRIu64, op);
            if (check_list(db, s.keys[k], &s.lists[k], maxcap, 0, ctx)) stop = 1;
            if (op % 20000 == 19999) {
                uint64_t lo = s.keys[s.ord[t_below(nk)]], hi = s.keys[s.ord[t_below(nk)]];
                kvidx_stats st;
                uint64_t lists = 0, nids = 0;
                if (lo > hi) { uint64_t x = lo; lo = hi; hi = x; }
                if (check_scan(db, &s, lo, hi, ctx)) stop = 1;
                for (k = 0; k < nk; k++) lists += s.lists[k].n > 0, nids += s.lists[k].n;
                CHECK_RC(t_stat(db, &st), KVIDX_OK);
                if (st.lists != lists || st.list_ids != nids) {
                    lfail("%s: stat lists %" PRIu64 " ids %" PRIu64 ", model %" PRIu64
                          " / %" PRIu64, ctx, st.lists, st.list_ids, lists, nids);
                    stop = 1;
                }
            }
        }

        /* close and reopen; check everything */
        if (!stop && nreopen < 3 && op + 1 == reopen_at[nreopen]) {
            char ctx[64];
            kvidx_stats st;
            uint32_t other = shards == 1 ? 16 : 1; /* ignored: the stored count wins */
            snprintf(ctx, sizeof ctx, "after reopen %" PRIu64 " (op %" PRIu64 ")", nreopen + 1, op);
            CHECK_RC(kvidx_close(db), KVIDX_OK);
            if (nreopen == 1) { /* once read-only first */
                db = xopen(dir, other, KVIDX_RDONLY, 1000);
                if (!db) break;
                if (verify_all(db, &s, ctx)) stop = 1;
                CHECK_RC(kvidx_close(db), KVIDX_OK);
            }
            db = xopen(dir, nreopen == 0 ? other : 0, KVIDX_CREATE, 1000);
            if (!db) break;
            CHECK_RC(t_stat(db, &st), KVIDX_OK);
            CHECK(st.shards == shards);
            CHECK(st.list_writes == 0);
            if (verify_all(db, &s, ctx)) stop = 1;
            nreopen++;
        }
    }
    if (stop) dump_trace();
    {
        printf("  shards %u: %" PRIu64 " ops (put %" PRIu64 " add %" PRIu64 " remove %" PRIu64
               " delete %" PRIu64 " contains %" PRIu64 " count %" PRIu64 " get %" PRIu64
               "), big lists %zu %zu %zu %zu ids, %" PRIu64 " ms\n", shards, op, counts[OP_PUT],
               counts[OP_ADD], counts[OP_REMOVE], counts[OP_DELETE], counts[5], counts[6],
               counts[7], s.lists[M_SMALL].n, s.lists[M_SMALL + 1].n, s.lists[M_SMALL + 2].n,
               s.lists[M_SMALL + 3].n, t_now_ms() - t0);
    }
    if (db && !stop) { /* the end: close, reopen, everything */
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        db = xopen(dir, 0, KVIDX_CREATE, 1000);
        if (db) verify_all(db, &s, "final reopen");
    }
    if (db) CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK(op == ops);
    ls_free(&s);
    free(ids);
    if (!t_case_failures) t_rmrf(dir);
}

static uint64_t g_model_ops = 200000;

static void test_list_model_1shard(void) {
    t_watchdog("test_list_model_1shard", 120);
    model_run("lists_model1", 1, g_model_ops);
}

static void test_list_model_16shards(void) {
    t_watchdog("test_list_model_16shards", 120);
    model_run("lists_model16", 16, g_model_ops / 2);
}

/* ======================================================================
 * Child writers (crash and torn-tail tests): a journal in shared memory.
 *
 * The child fills record i (op, key index, ids in the id arena), stores
 * begun = i + 1, makes the call, stores its result and acked = i + 1.
 * After the kill the parent replays records [0, acked) into its model and
 * checks each result; record acked, if begun, is the one in flight.
 * ====================================================================== */

#define J_RECS 100000u
#define J_IDS (3u << 20)

typedef struct {
    uint32_t op, n;
    uint64_t ki;  /* key index in the parent's lset */
    uint64_t off; /* ids at arena[off .. off + n) */
    int32_t rc;
    uint32_t pad;
    uint64_t res;
} jrec;

typedef struct {
    uint64_t ready, done, begun, acked, used;
    int32_t err_rc;
    uint32_t err_op;
    uint64_t err_i;
    jrec rec[J_RECS];
    uint64_t arena[J_IDS];
} journal;

static journal *j_map(void) {
    void *p = mmap(NULL, sizeof(journal), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void j_reset(journal *j) {
    j->ready = j->done = j->begun = j->acked = j->used = 0;
    j->err_rc = 0;
    j->err_op = 0;
    j->err_i = 0;
}

typedef struct {
    uint32_t shards, sync_ms;
    size_t nkeys;      /* keys the child writes: indexes [0, nkeys) */
    uint64_t max_ops;  /* then: done, and wait to be killed */
    int big_last;      /* the last op adds 2000 ids to key index nkeys (a fresh list) */
} childcfg;

static uint64_t c_rng;
static uint64_t c_rand(void) { return c_rng = t_mix64(c_rng); }
static uint64_t c_below(uint64_t n) { return c_rand() % n; }

static void child_err(journal *j, uint32_t op, uint64_t i, int rc) {
    j->err_rc = rc;
    j->err_op = op;
    j->err_i = i;
    __atomic_store_n(&j->done, 2, __ATOMIC_SEQ_CST);
    _exit(2);
}

static void child_wait(journal *j) {
    __atomic_store_n(&j->done, 1, __ATOMIC_SEQ_CST);
    for (;;) pause();
}

static void child_main(const char *dir, const lset *s, journal *j, const childcfg *cfg) {
    kvidx *db = NULL;
    kvidx_options o;
    uint64_t i;
    int rc;
    kvidx_options_init(&o);
    o.flags = KVIDX_CREATE;
    o.shards = cfg->shards;
    o.sync_interval_ms = cfg->sync_ms;
    rc = kvidx_open(dir, &o, &db);
    if (rc != KVIDX_OK) child_err(j, 0, 0, rc);
    __atomic_store_n(&j->ready, 1, __ATOMIC_SEQ_CST);
    for (i = 0;; i++) {
        jrec *r = &j->rec[i];
        uint64_t *ids, res = 0, x = c_below(1000), k;
        size_t n = 0, t;
        int last = cfg->big_last && i + 1 == cfg->max_ops;
        if (i >= cfg->max_ops || i >= J_RECS || j->used + 4096 > J_IDS) child_wait(j);
        ids = j->arena + j->used;
        k = c_below(cfg->nkeys);
        if (last) {
            k = cfg->nkeys;
            r->op = OP_ADD;
            n = 2000;
            for (t = 0; t < n; t++) ids[t] = c_rand();
        } else if (x < 5) { /* a bulk ascending add */
            uint64_t base = c_below(4096);
            r->op = OP_ADD;
            n = 500 + (size_t)c_below(1500);
            for (t = 0; t < n; t++) ids[t] = base + t * (1 + c_below(3));
        } else {
            r->op = x < 450 ? OP_ADD : x < 750 ? OP_REMOVE : x < 900 ? OP_PUT : OP_DELETE;
            if (r->op != OP_DELETE) n = (size_t)c_below(r->op == OP_PUT ? 60 : 40) + (r->op != OP_PUT);
            /* mostly a narrow range (removes hit); some 64-bit ids from a pool */
            for (t = 0; t < n; t++) ids[t] = c_below(10) ? c_below(4096) : t_mix64(c_below(512));
        }
        r->ki = k;
        r->n = (uint32_t)n;
        r->off = j->used;
        j->used += n;
        __atomic_store_n(&j->begun, i + 1, __ATOMIC_SEQ_CST);
        rc = db_apply(db, r->op, s->keys[k], ids, n, &res);
        if (rc != KVIDX_OK && !(rc == KVIDX_NOTFOUND && (r->op == OP_REMOVE || r->op == OP_DELETE)))
            child_err(j, r->op, i, rc);
        r->rc = rc;
        r->res = res;
        __atomic_store_n(&j->acked, i + 1, __ATOMIC_SEQ_CST);
        if (c_below(400) == 0 && cfg->sync_ms != 0 && (rc = kvidx_sync(db)) != KVIDX_OK)
            child_err(j, 99, i, rc);
    }
}

/* Forks a child writer. kill_ms: kill that long after fork without
 * waiting for it to open (< 0: wait until it opened, then kill after a
 * random time or number of acks; with max_ops: wait until it is done).
 * Returns 0 when the child was killed as planned. */
static int run_child(const char *dir, const lset *s, journal *j, const childcfg *cfg, int kill_ms) {
    pid_t pid;
    int status = 0, fail = 0;
    uint64_t start, deadline, target;
    j_reset(j);
    c_rng = t_rand();
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        child_main(dir, s, j, cfg);
        _exit(6);
    }
    t_child = pid;
    start = t_now_ms();
    if (kill_ms >= 0) {
        t_sleep_ms((unsigned)kill_ms);
    } else {
        /* wait for the open (generous: sanitizers are slow) */
        while (!__atomic_load_n(&j->ready, __ATOMIC_SEQ_CST) &&
               !__atomic_load_n(&j->done, __ATOMIC_SEQ_CST) && t_now_ms() - start < 60000)
            t_sleep_ms(1);
        if (cfg->max_ops != UINT64_MAX) {
            while (!__atomic_load_n(&j->done, __ATOMIC_SEQ_CST) && t_now_ms() - start < 120000)
                t_sleep_ms(1);
        } else if (t_below(2)) { /* by time */
            t_sleep_ms((unsigned)t_below(120 / g_scale / SAN_SLOW + 1));
        } else { /* by acks, within a time cap */
            target = t_below(20000 / g_scale / SAN_SLOW + 1);
            deadline = t_now_ms() + 300;
            while (__atomic_load_n(&j->acked, __ATOMIC_SEQ_CST) < target &&
                   !__atomic_load_n(&j->done, __ATOMIC_SEQ_CST) && t_now_ms() < deadline) {
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
            }
        }
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            perror("waitpid");
            fail = 1;
            break;
        }
    t_child = 0;
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
        if (j->done == 2)
            lfail("child: %s #%" PRIu64 " returned %d (%s)",
                  j->err_op ? op_name(j->err_op) : "open", j->err_i, j->err_rc,
                  kvidx_strerror(j->err_rc));
        else
            lfail("child ended by itself (status %d)", status);
        fail = 1;
    }
    return fail;
}

/* Replays the acknowledged records into s, checking each result. */
static int replay(lset *s, const journal *j, const char *ctx) {
    uint64_t i;
    for (i = 0; i < j->acked; i++) {
        const jrec *r = &j->rec[i];
        uint64_t res;
        int rc;
        m_apply(&s->lists[r->ki], r->op, j->arena + r->off, r->n, &rc, &res);
        if (rc != r->rc || (rc == KVIDX_OK && res != r->res)) {
            lfail("%s: child's %s #%" PRIu64 " on key %" PRIu64 " (%u ids): rc %d res %" PRIu64
                  ", model rc %d res %" PRIu64, ctx, op_name(r->op), i, s->keys[r->ki], r->n,
                  r->rc, r->res, rc, res);
            return 1;
        }
    }
    return 0;
}

/* ======================================================================
 * 3. Crash: kill -9 a writer, reopen, every acknowledged op is there.
 * ====================================================================== */

#define CR_KEYS 150u
#define CR_ROUNDS 20

/* Opens dir and checks it against s; the in-flight record (if any) may
 * be applied or not: the model follows the disk. */
static int crash_verify(const char *dir, lset *s, const journal *j, int rdonly, uint32_t shards,
                        int *applied, const char *ctx) {
    kvidx *db = xopen(dir, 0, rdonly ? KVIDX_RDONLY : KVIDX_CREATE, 1000);
    const jrec *pend = j->begun > j->acked ? &j->rec[j->acked] : NULL;
    kvidx_stats st;
    size_t i;
    int bad = 0;
    *applied = -1;
    if (!db) return 1;
    for (i = 0; i < s->nk; i++) {
        if (pend && pend->ki == i && check_list(db, s->keys[i], &s->lists[i], 64, 1, ctx)) {
            idvec alt;
            int rc;
            uint64_t res;
            memset(&alt, 0, sizeof alt);
            iv_copy(&alt, &s->lists[i]);
            m_apply(&alt, pend->op, j->arena + pend->off, pend->n, &rc, &res);
            if (!check_list(db, s->keys[i], &alt, 64, 1, ctx)) {
                iv_copy(&s->lists[i], &alt);
                *applied = 1;
            } else {
                lfail("%s: key %" PRIu64 " matches neither the model nor the model with the "
                      "in-flight %s of %u ids", ctx, s->keys[i], op_name(pend->op), pend->n);
                check_list(db, s->keys[i], &s->lists[i], 64, 0, ctx);
                bad++;
            }
            iv_free(&alt);
        } else {
            if (pend && pend->ki == i) *applied = 0;
            bad += check_list(db, s->keys[i], &s->lists[i], 64, 0, ctx);
        }
        if (bad > 5) break;
    }
    bad += verify_all(db, s, ctx);
    CHECK_RC(t_stat(db, &st), KVIDX_OK);
    CHECK(st.shards == shards);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    return bad;
}

static void test_list_crash(void) {
    char dir[PATHSZ];
    lset s;
    journal *j = j_map();
    kvidx *db;
    childcfg cfg;
    int round, applied;
    uint64_t acks = 0, inflight_applied = 0, inflight_dropped = 0, t0 = t_now_ms();
    t_watchdog("test_list_crash", 120);
    g_lines = 0;
    REQUIRE(j);
    snprintf(dir, sizeof dir, "%s", t_dir("lists_crash"));
    ls_init(&s, CR_KEYS + 1, t_rand());
    /* created up front: a kill during creation is not this test's subject */
    db = xopen(dir, 4, KVIDX_CREATE, 1000);
    if (!db) {
        ls_free(&s);
        munmap(j, sizeof *j);
        REQUIRE(db);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    memset(&cfg, 0, sizeof cfg);
    cfg.shards = 4;
    cfg.nkeys = CR_KEYS;
    cfg.max_ops = UINT64_MAX;
    for (round = 1; round <= CR_ROUNDS; round++) {
        char ctx[64];
        int early = round % 5 == 0; /* killed at once: maybe inside open */
        int fail;
        snprintf(ctx, sizeof ctx, "crash round %d", round);
        cfg.sync_ms = round % 3 == 0 ? 0 : round % 3 == 1 ? 1000 : 5;
        fail = run_child(dir, &s, j, &cfg, early ? (int)t_below(4) : -1);
        fail = fail || replay(&s, j, ctx);
        acks += j->acked;
        fail = fail || crash_verify(dir, &s, j, round % 2 == 0, 4, &applied, ctx);
        inflight_applied += applied == 1;
        inflight_dropped += applied == 0;
        if (fail) {
            lfail("%s failed: %" PRIu64 " acked, %s", ctx, j->acked,
                  j->begun > j->acked ? "one in flight" : "none in flight");
            break;
        }
    }
    printf("  %d rounds, %" PRIu64 " acknowledged list writes, in flight applied %" PRIu64
           " / dropped %" PRIu64 ", %" PRIu64 " ms\n", round > CR_ROUNDS ? CR_ROUNDS : round, acks,
           inflight_applied, inflight_dropped, t_now_ms() - t0);
    CHECK(acks > 0);
    /* a clean writer at the end takes new writes that survive */
    if (round > CR_ROUNDS && (db = xopen(dir, 0, KVIDX_CREATE, 1000))) {
        size_t i, added;
        for (i = 0; i < s.nk; i += 3) {
            uint64_t id = 5000 + i;
            CHECK_RC(kvidx_list_add(db, s.keys[i], &id, 1, &added), KVIDX_OK);
            iv_add(&s.lists[i], &id, 1);
        }
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        j_reset(j);
        CHECK(crash_verify(dir, &s, j, 0, 4, &applied, "after the rounds") == 0);
    }
    ls_free(&s);
    munmap(j, sizeof *j);
    if (!t_case_failures) t_rmrf(dir);
}

/* ======================================================================
 * 4. Torn tail of the list log, 5. half-written snapshot: file surgery.
 * ====================================================================== */

typedef struct {
    char path[PATHSZ];
    unsigned shard, gen;
    long size;
} lfile;

/* Parses "s<digits>.<digits><suffix>" with suffix exactly want. */
static int parse_name(const char *name, const char *want, unsigned *shard, unsigned *gen) {
    const char *p = name;
    char *e;
    unsigned long a, b;
    if (*p++ != 's' || *p < '0' || *p > '9') return 0;
    a = strtoul(p, &e, 10);
    if (*e != '.' || e[1] < '0' || e[1] > '9') return 0;
    b = strtoul(e + 1, &e, 10);
    if (strcmp(e, want) != 0) return 0;
    *shard = (unsigned)a;
    *gen = (unsigned)b;
    return 1;
}

/* The files of dir ending in suffix (".l", ".ls"), newest generation per
 * shard only; returns how many (at most max). */
static int find_files(const char *dir, const char *suffix, lfile *out, int max) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0, i;
    if (!d) return 0;
    while ((de = readdir(d))) {
        unsigned sh, g;
        struct stat sb;
        if (!parse_name(de->d_name, suffix, &sh, &g)) continue;
        for (i = 0; i < n && out[i].shard != sh; i++) {
        }
        if (i < n && out[i].gen >= g) continue;
        if (i == n) {
            if (n == max) continue;
            n++;
        }
        snprintf(out[i].path, sizeof out[i].path, "%s/%s", dir, de->d_name);
        out[i].shard = sh;
        out[i].gen = g;
        out[i].size = stat(out[i].path, &sb) == 0 ? (long)sb.st_size : -1;
    }
    closedir(d);
    return n;
}

static uint8_t *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = xmalloc((size_t)n + 1);
    if (n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = n;
    return b;
}

static int write_at(const char *path, long off, const void *buf, size_t n, int create) {
    int fd = open(path, O_WRONLY | (create ? O_CREAT | O_TRUNC : 0), 0644);
    ssize_t w;
    if (fd < 0) return -1;
    w = pwrite(fd, buf, n, off);
    close(fd);
    return w == (ssize_t)n ? 0 : -1;
}

/* The end of a log's data: past its last non-zero byte. A log that is
 * preallocated (a long zero run at the end) is damaged in place there;
 * one that is not is appended to or truncated. */
static long data_end(const uint8_t *b, long size) {
    long e = size;
    while (e > 0 && b[e - 1] == 0) e--;
    return e;
}

enum { TORN_GARBAGE, TORN_CUT_SMALL, TORN_CUT_LARGE };

static void torn_run(int mode) {
    static const char *names[] = {"garbage after the last record, 4 shards",
                                  "last record cut by a few bytes, 1 shard",
                                  "last record cut by up to 4000 bytes, 1 shard"};
    char dir[PATHSZ];
    lset s;
    journal *j = j_map();
    childcfg cfg;
    lfile lf[64];
    kvidx *db;
    int nl, i, k, pass;
    uint32_t shards = mode == TORN_GARBAGE ? 4 : 1;
    const size_t nkeys = 60;
    uint64_t ids[64];
    size_t added;
    if (!j) {
        lfail("mmap failed");
        return;
    }
    snprintf(dir, sizeof dir, "%s", t_dir("lists_torn"));
    ls_init(&s, nkeys + 1, t_rand());
    db = xopen(dir, shards, KVIDX_CREATE, 0);
    if (!db) goto out;
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    /* A child writes with no sync at all (sync_interval_ms 0, never
     * kvidx_sync) and is killed when done: the log tail is unsynced. */
    memset(&cfg, 0, sizeof cfg);
    cfg.shards = shards;
    cfg.sync_ms = 0;
    cfg.nkeys = nkeys;
    cfg.max_ops = 3000 / g_scale + 10;
    cfg.big_last = mode != TORN_GARBAGE;
    if (run_child(dir, &s, j, &cfg, -1) || j->acked != cfg.max_ops) {
        lfail("torn: child did %" PRIu64 " of %" PRIu64 " ops", j->acked, cfg.max_ops);
        goto out;
    }
    if (mode != TORN_GARBAGE) j->acked--; /* the last op's record gets cut: not in the model */
    if (replay(&s, j, "torn replay")) goto out;

    nl = find_files(dir, ".l", lf, 64);
    if (nl == 0) {
        lfail("torn: no list log (s<shard>.<gen>.l) in %s", dir);
        goto out;
    }
    for (i = 0; i < nl; i++) {
        long size = 0, end;
        uint8_t *b = read_file(lf[i].path, &size), garbage[256];
        size_t gn = 1 + (size_t)t_below(sizeof garbage);
        int padded, rc = 0;
        if (!b) {
            lfail("torn: cannot read %s", lf[i].path);
            goto out;
        }
        end = data_end(b, size);
        padded = size - end >= 64;
        free(b);
        if (end == 0) continue; /* a shard with nothing logged */
        for (k = 0; k < (int)gn; k++) garbage[k] = (uint8_t)t_rand();
        garbage[0] |= 1;
        if (mode == TORN_GARBAGE) {
            if (padded && (long)gn > size - end) gn = (size_t)(size - end);
            rc = write_at(lf[i].path, padded ? end : size, garbage, gn, 0);
            printf("  %s: %zu garbage bytes %s at %ld of %ld\n", lf[i].path, gn,
                   padded ? "written" : "appended", padded ? end : size, size);
        } else {
            long cut = mode == TORN_CUT_SMALL ? 1 + (long)t_below(16) : 1 + (long)t_below(4000);
            if (cut >= end) cut = end / 2;
            if (padded) {
                memset(garbage, 0, sizeof garbage);
                for (k = 0; k < cut && rc == 0; k += (int)sizeof garbage)
                    rc = write_at(lf[i].path, end - cut + k, garbage,
                                  cut - k < (long)sizeof garbage ? (size_t)(cut - k) : sizeof garbage, 0);
            } else {
                rc = truncate(lf[i].path, size - cut);
            }
            printf("  %s: last %ld bytes %s (data ends at %ld, file %ld)\n", lf[i].path, cut,
                   padded ? "zeroed" : "cut off", end, size);
        }
        if (rc != 0) {
            lfail("torn: cannot change %s: %s", lf[i].path, strerror(errno));
            goto out;
        }
    }

    /* Read-only first (it cannot repair), then read-write twice: always
     * the same state, everything before the damage. */
    for (pass = 0; pass < 3; pass++) {
        char ctx[96];
        snprintf(ctx, sizeof ctx, "torn (%s), open %d %s", names[mode], pass + 1,
                 pass == 0 ? "read-only" : "read-write");
        db = xopen(dir, 0, pass == 0 ? KVIDX_RDONLY : KVIDX_CREATE, 0);
        if (!db) goto out;
        verify_all(db, &s, ctx);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    /* new writes after the repaired tail survive a clean reopen and a kill */
    db = xopen(dir, 0, KVIDX_CREATE, 0);
    if (!db) goto out;
    for (i = 0; i < (int)s.nk; i += 2) {
        for (k = 0; k < 64; k++) ids[k] = 100000 + (uint64_t)i * 64 + (uint64_t)k;
        CHECK_RC(kvidx_list_add(db, s.keys[i], ids, 1 + (size_t)i % 64, &added), KVIDX_OK);
        CHECK(added == 1 + (size_t)i % 64);
        iv_add(&s.lists[i], ids, 1 + (size_t)i % 64);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(dir, 0, KVIDX_CREATE, 0);
    if (!db) goto out;
    verify_all(db, &s, "torn: after new writes and a reopen");
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    cfg.big_last = 0;
    cfg.max_ops = 500;
    if (!run_child(dir, &s, j, &cfg, -1) && !replay(&s, j, "torn: second child")) {
        db = xopen(dir, 0, KVIDX_CREATE, 1000);
        if (db) {
            verify_all(db, &s, "torn: after a second kill");
            CHECK_RC(kvidx_close(db), KVIDX_OK);
        }
    }
out:
    ls_free(&s);
    munmap(j, sizeof *j);
    if (!t_case_failures) t_rmrf(dir);
}

static void test_list_torn_tail(void) {
    t_watchdog("test_list_torn_tail", 120);
    g_lines = 0;
    torn_run(TORN_GARBAGE);
    torn_run(TORN_CUT_SMALL);
    torn_run(TORN_CUT_LARGE);
}

/* A crash while writing a snapshot leaves sNNNN.G.ls.tmp: open ignores it. */
static void test_list_snapshot_tmp(void) {
    char dir[PATHSZ], path[PATHSZ + 32];
    lset s;
    kvidx *db;
    lfile ls[64], lg[64];
    int nls, nlg, i, pass;
    size_t k;
    uint64_t ids[2000];
    t_watchdog("test_list_snapshot_tmp", 120);
    g_lines = 0;
    snprintf(dir, sizeof dir, "%s", t_dir("lists_snaptmp"));
    ls_init(&s, 300, t_rand());
    db = xopen(dir, 1, KVIDX_CREATE, 1000);
    if (!db) {
        ls_free(&s);
        return;
    }
    /* over 1 MiB of list log in the one shard: the close writes a
     * snapshot (kvidx folds a log of 1 MiB or more at close) */
    for (k = 0; k < 6000; k++) {
        size_t ki = (size_t)t_below(s.nk), n = 1 + (size_t)t_below(k % 25 ? 40 : 2000), t;
        uint32_t op = t_below(4) ? OP_ADD : OP_REMOVE;
        uint64_t res, mres;
        int rc, mrc;
        for (t = 0; t < n; t++) ids[t] = k % 25 ? t_below(100000) : t_rand();
        rc = db_apply(db, op, s.keys[ki], ids, n, &res);
        m_apply(&s.lists[ki], op, ids, n, &mrc, &mres);
        if (rc != mrc || (rc == KVIDX_OK && res != mres)) {
            lfail("snapshot: %s key %" PRIu64 ": rc %d res %" PRIu64 ", model %d %" PRIu64,
                  op_name(op), s.keys[ki], rc, res, mrc, mres);
            break;
        }
    }
    {
        kvidx_stats st;
        CHECK_RC(t_stat(db, &st), KVIDX_OK);
        printf("  list log %" PRIu64 " bytes before the close\n", st.list_log_bytes);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    /* half of each real snapshot, or garbage, under the temp names of
     * this generation and the next */
    nls = find_files(dir, ".ls", ls, 64);
    nlg = find_files(dir, ".l", lg, 64);
    printf("  %d snapshot file(s), %d list log(s) after a clean close\n", nls, nlg);
    CHECK(nls + nlg > 0);
    for (i = 0; i < (nls ? nls : nlg); i++) {
        const lfile *f = nls ? &ls[i] : &lg[i];
        long size = 0;
        uint8_t *b = nls ? read_file(f->path, &size) : NULL;
        unsigned g;
        if (!b) {
            size = 1 + (long)t_below(8192);
            b = xmalloc((size_t)size);
            for (k = 0; k < (size_t)size; k++) b[k] = (uint8_t)t_rand();
        }
        for (g = f->gen; g <= f->gen + 1; g++) {
            snprintf(path, sizeof path, "%s/s%04u.%u.ls.tmp", dir, f->shard, g);
            CHECK(write_at(path, 0, b, (size_t)(size / 2 ? size / 2 : 1), 1) == 0);
        }
        free(b);
    }
    for (pass = 0; pass < 2; pass++) {
        db = xopen(dir, 0, pass ? KVIDX_CREATE : KVIDX_RDONLY, 1000);
        if (!db) break;
        verify_all(db, &s, pass ? "with a snapshot temp file, read-write"
                                : "with a snapshot temp file, read-only");
        if (pass) { /* and it keeps working */
            for (k = 0; k < s.nk; k += 5) {
                uint64_t id = 200000 + k;
                size_t added;
                CHECK_RC(kvidx_list_add(db, s.keys[k], &id, 1, &added), KVIDX_OK);
                iv_add(&s.lists[k], &id, 1);
            }
        }
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    db = xopen(dir, 0, KVIDX_CREATE, 1000);
    if (db) {
        verify_all(db, &s, "snapshot temp: after new writes and a reopen");
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    ls_free(&s);
    if (!t_case_failures) t_rmrf(dir);
}

/* ======================================================================
 * 6. Readers page through a big list while a writer changes it. Ids that
 * are multiples of 3 are never removed: every full pass must see each
 * of them; pages are strictly ascending and start at from.
 * ====================================================================== */

#define CC_PERM 12000u          /* permanent ids 0, 3, ..., 3 * (CC_PERM - 1) */
#define CC_TOP (3u * CC_PERM)   /* all ids are below this */
#define CC_KEY 4242u
#define CC_READERS 3

static int g_cc_stop;     /* atomic */
static uint64_t g_cc_fails; /* atomic */

static void ccfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ccfail(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    if (__atomic_fetch_add(&g_cc_fails, 1, __ATOMIC_SEQ_CST) >= 20) return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "  test_list_concurrent_pages: %s [seed %" PRIu64 "]\n", buf, t_seed);
}

typedef struct {
    kvidx *db;
    uint64_t rng, passes, pages, ops;
    double secs;
    uint8_t *present; /* writer: its view of the list */
} ccarg;

static uint64_t cc_rand(ccarg *a) { return a->rng = t_mix64(a->rng); }

static void *cc_reader(void *p) {
    ccarg *a = p;
    uint64_t buf[64];
    while (!__atomic_load_n(&g_cc_stop, __ATOMIC_SEQ_CST)) {
        uint64_t from = 0, next_perm = 0, c;
        size_t n, cap, i;
        int rc, bad = 0;
        for (;;) { /* one full pass */
            cap = 1 + (size_t)(cc_rand(a) % 64);
            n = SIZE_MAX;
            rc = kvidx_list_get(a->db, CC_KEY, from, buf, cap, &n);
            a->pages++;
            if (rc != KVIDX_OK || n > cap) {
                ccfail("get(from %" PRIu64 ", cap %zu): rc %d n %zu", from, cap, rc, n);
                bad = 1;
                break;
            }
            for (i = 0; i < n && !bad; i++) {
                uint64_t id = buf[i];
                if (id < from || (i && id <= buf[i - 1]) || id >= CC_TOP) {
                    ccfail("get(from %" PRIu64 ", cap %zu)[%zu] = %" PRIu64 " after %" PRIu64, from,
                           cap, i, id, i ? buf[i - 1] : from);
                    bad = 1;
                } else if (id > next_perm) {
                    ccfail("permanent id %" PRIu64 " missing: get(from %" PRIu64 ", cap %zu)[%zu] = %"
                           PRIu64, next_perm, from, cap, i, id);
                    bad = 1;
                } else if (id == next_perm) {
                    next_perm += 3;
                }
            }
            if (bad || n < cap) break;
            from = buf[n - 1] + 1;
        }
        if (bad) break;
        if (next_perm != CC_TOP) {
            ccfail("a pass ended at permanent id %" PRIu64 " of %u", next_perm, CC_TOP);
            break;
        }
        a->passes++;
        /* point reads in between */
        for (i = 0; i < 50; i++) {
            uint64_t id = 3 * (cc_rand(a) % CC_PERM);
            if ((rc = kvidx_list_contains(a->db, CC_KEY, id)) != KVIDX_OK)
                ccfail("contains(permanent %" PRIu64 "): %d", id, rc);
            if ((rc = kvidx_list_contains(a->db, CC_KEY, CC_TOP + cc_rand(a) % 1000)) != KVIDX_NOTFOUND)
                ccfail("contains(never added): %d", rc);
            c = 0;
            rc = kvidx_list_count(a->db, CC_KEY, &c);
            if (rc != KVIDX_OK || c < CC_PERM || c > CC_TOP)
                ccfail("count: rc %d count %" PRIu64, rc, c);
            a->ops += 3;
        }
        n = 99;
        rc = kvidx_list_get(a->db, CC_KEY, CC_TOP, buf, 8, &n);
        if (rc != KVIDX_OK || n != 0) ccfail("get past the end: rc %d n %zu", rc, n);
    }
    return NULL;
}

static void *cc_writer(void *p) {
    ccarg *a = p;
    uint64_t ids[64], *all = malloc(CC_TOP * sizeof *all);
    uint64_t deadline = t_now_ms() + (uint64_t)(a->secs * 1000);
    size_t n, i, k, want, got;
    int rc;
    if (!all) {
        ccfail("writer: out of memory");
        return NULL;
    }
    while (t_now_ms() < deadline) {
        uint64_t r = cc_rand(a) % 1000;
        n = 1 + (size_t)(cc_rand(a) % (r < 10 ? 64 : 16));
        for (i = 0; i < n; i++) { /* churn ids: 3k+1 and 3k+2 only */
            uint64_t id = 3 * (cc_rand(a) % CC_PERM) + 1 + cc_rand(a) % 2;
            if (cc_rand(a) % 4 == 0 && i) id = ids[i - 1] + 3 < CC_TOP ? ids[i - 1] + 3 : id;
            ids[i] = id;
        }
        if (r < 480) {
            /* want = distinct ids of the batch not present */
            want = 0;
            for (i = 0; i < n; i++) {
                for (k = 0; k < i && ids[k] != ids[i]; k++) {
                }
                if (k == i && !a->present[ids[i]]) want++;
            }
            got = 99999;
            rc = kvidx_list_add(a->db, CC_KEY, ids, n, &got);
            if (rc != KVIDX_OK || got != want)
                ccfail("writer: add %zu: rc %d added %zu, want %zu", n, rc, got, want);
            for (i = 0; i < n; i++) a->present[ids[i]] = 1;
        } else if (r < 995) {
            want = 0;
            for (i = 0; i < n; i++) {
                for (k = 0; k < i && ids[k] != ids[i]; k++) {
                }
                if (k == i && a->present[ids[i]]) want++;
            }
            got = 99999;
            rc = kvidx_list_remove(a->db, CC_KEY, ids, n, &got);
            if (rc != KVIDX_OK || got != want)
                ccfail("writer: remove %zu: rc %d removed %zu, want %zu", n, rc, got, want);
            for (i = 0; i < n; i++) a->present[ids[i]] = 0;
        } else if (r < 997) {
            /* replace the whole list: the permanent ids and about half the others */
            for (i = 0, k = 0; i < CC_TOP; i++) {
                a->present[i] = i % 3 == 0 || cc_rand(a) % 2;
                if (a->present[i]) all[k++] = i;
            }
            for (i = k; i > 1; i--) { /* shuffled: put sorts */
                size_t x = (size_t)(cc_rand(a) % i);
                uint64_t t = all[i - 1];
                all[i - 1] = all[x];
                all[x] = t;
            }
            if ((rc = kvidx_list_put(a->db, CC_KEY, all, k)) != KVIDX_OK)
                ccfail("writer: put %zu: rc %d", k, rc);
        } else {
            /* a neighbour list comes and goes */
            rc = kvidx_list_put(a->db, CC_KEY + 1, ids, n);
            if (rc == KVIDX_OK && cc_rand(a) % 2) rc = kvidx_list_delete(a->db, CC_KEY + 1);
            if (rc != KVIDX_OK) ccfail("writer: neighbour: rc %d", rc);
        }
        a->ops++;
    }
    free(all);
    return NULL;
}

static void test_list_concurrent_pages(void) {
    char dir[PATHSZ];
    kvidx *db;
    pthread_t th[CC_READERS + 1];
    ccarg args[CC_READERS + 1];
    uint64_t *all, i, k = 0, passes = 0, pages = 0, t0;
    uint8_t *present;
    int started[CC_READERS + 1], r;
    t_watchdog("test_list_concurrent_pages", 120);
    g_lines = 0;
    __atomic_store_n(&g_cc_fails, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_cc_stop, 0, __ATOMIC_SEQ_CST);
    snprintf(dir, sizeof dir, "%s", t_dir("lists_conc"));
    db = xopen(dir, 4, KVIDX_CREATE, 1000);
    REQUIRE(db);
    all = xmalloc(CC_TOP * sizeof *all);
    present = calloc(CC_TOP, 1);
    if (!present) exit(2);
    for (i = 0; i < CC_TOP; i++)
        if (i % 3 == 0 || t_below(2)) present[i] = 1, all[k++] = i;
    CHECK_RC(kvidx_list_put(db, CC_KEY, all, (size_t)k), KVIDX_OK);
    t0 = t_now_ms();
    for (r = 0; r <= CC_READERS; r++) {
        memset(&args[r], 0, sizeof args[r]);
        args[r].db = db;
        args[r].rng = t_rand();
        args[r].secs = 1.5;
        args[r].present = present;
        started[r] = pthread_create(&th[r], NULL, r ? cc_reader : cc_writer, &args[r]) == 0;
        CHECK(started[r]);
    }
    if (started[0]) pthread_join(th[0], NULL); /* the writer stops by itself */
    __atomic_store_n(&g_cc_stop, 1, __ATOMIC_SEQ_CST);
    for (r = 1; r <= CC_READERS; r++)
        if (started[r]) {
            pthread_join(th[r], NULL);
            passes += args[r].passes;
            pages += args[r].pages;
            CHECK(args[r].passes >= 1);
        }
    printf("  writer %" PRIu64 " ops; %d readers: %" PRIu64 " full passes, %" PRIu64 " pages; %"
           PRIu64 " ms\n", args[0].ops, CC_READERS, passes, pages, t_now_ms() - t0);
    CHECK(__atomic_load_n(&g_cc_fails, __ATOMIC_SEQ_CST) == 0);
    CHECK(args[0].ops > 0);
    /* afterwards the list is exactly the writer's view */
    {
        idvec want;
        memset(&want, 0, sizeof want);
        for (i = 0; i < CC_TOP; i++)
            if (present[i]) iv_add(&want, &i, 1);
        check_list(db, CC_KEY, &want, 500, 0, "after the threads");
        iv_free(&want);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(all);
    free(present);
    if (!t_case_failures) t_rmrf(dir);
}

int main(void) {
    const char *s = getenv("KVIDX_TEST_SCALE");
    const char *o = getenv("KVIDX_LIST_OPS");
    if (s && strtoull(s, NULL, 10) > 1) g_scale = strtoull(s, NULL, 10);
    g_model_ops = o && *o ? strtoull(o, NULL, 10) : 200000 / g_scale / SAN_SLOW;
    t_on_timeout = t_kill_child;
    t_init("test_lists");
    T_RUN(test_list_api);
    T_RUN(test_list_multileaf);
    T_RUN(test_list_stats);
    T_RUN(test_list_model_1shard);
    T_RUN(test_list_model_16shards);
    T_RUN(test_list_crash);
    T_RUN(test_list_torn_tail);
    T_RUN(test_list_snapshot_tmp);
    T_RUN(test_list_concurrent_pages);
    alarm(0);
    return t_done();
}
