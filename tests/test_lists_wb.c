/*
 * test_lists_wb.c -- white-box tests of the list store (section 6 of
 * kvidx.c): the varints, the tree's shape under every change, the memory
 * it accounts, allocation failure at every allocation of a list change
 * and of an open, damage in the snapshot and in the durable part of the
 * log, the crash window between a snapshot and the cut of the log, and
 * snapshots taken by the write path. Built with -DKVIDX_TEST; small
 * snapshot thresholds so that writes reach them.
 */
#ifndef KVIDX_TEST
#define KVIDX_TEST
#endif
#define KVIDX_LS_SNAP_MIN ((uint64_t)4096)
#define KVIDX_LS_SNAP_AUTO ((uint64_t)65536)
#include "../kvidx.c"

#include <fcntl.h>
#include <sys/stat.h>

#include "harness.h"

/* ---- a reference model: one sorted array ---------------------------- */

typedef struct model {
    uint64_t *a;
    size_t n, cap;
} model;

static int m_find(const model *m, uint64_t x, size_t *pos) {
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    *pos = lo;
    return lo < m->n && m->a[lo] == x;
}

static int m_add(model *m, uint64_t x) {
    size_t p;
    if (m_find(m, x, &p)) return 0;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->a = realloc(m->a, m->cap * sizeof *m->a);
    }
    memmove(m->a + p + 1, m->a + p, (m->n - p) * sizeof *m->a);
    m->a[p] = x;
    m->n++;
    return 1;
}

static int m_del(model *m, uint64_t x) {
    size_t p;
    if (!m_find(m, x, &p)) return 0;
    memmove(m->a + p, m->a + p + 1, (m->n - p - 1) * sizeof *m->a);
    m->n--;
    return 1;
}

/* ---- tree checks ------------------------------------------------------ */

/* The library's own check of a list tree (kvidx_check uses it). */
static int tree_check(const ls_node *nd, uint64_t *prev, int *first, uint64_t *count) {
    return ls_tree_check(nd, LS_IDS, prev, first, count, NULL);
}

static int tree_ok(const ls_node *root, const model *m) {
    uint64_t prev = 0, count = 0;
    int first = 1;
    uint64_t *out;
    size_t got;
    int ok;
    if (!root) return m->n == 0;
    if (root->kind == LS_INNER && root->n < 2) return 0; /* a single child is collapsed */
    if (tree_check(root, &prev, &first, &count) < 0 || count != m->n || ls_count(root) != m->n)
        return 0;
    out = malloc((m->n + 1) * sizeof *out);
    got = ls_page(root, 0, out, m->n + 1);
    ok = got == m->n && memcmp(out, m->a, m->n * sizeof *out) == 0;
    free(out);
    return ok;
}

/* A bare shard for driving the tree code directly. */
static vs_shard *bare_shard(void) {
    vs_shard *s = calloc(1, sizeof *s);
    s->lcx = calloc(1, sizeof *s->lcx);
    s->lcx->s = s;
    s->lr = lr_ctl_new();
    s->lfd = -1;
    return s;
}

static void bare_free(vs_shard *s) {
    ls_vec_free(&s->lcx->fresh);
    ls_vec_free(&s->lcx->old);
    free(s->lcx);
    lr_ctl_free(s->lr);
    free(s);
}

/* ---- cases ------------------------------------------------------------ */

/* Every varint length round-trips, none is longer than 9 bytes, and
 * truncated input is refused. */
static void test_varint(void) {
    uint8_t buf[16];
    unsigned bits, bad = 0;
    for (bits = 0; bits <= 64; bits++) {
        uint64_t vals[3], v;
        unsigned j;
        vals[0] = bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
        vals[1] = bits == 64 ? UINT64_C(1) << 63 : UINT64_C(1) << bits;
        vals[2] = t_rand() >> (64 - (bits ? bits : 1));
        for (j = 0; j < 3; j++) {
            size_t n = ls_put_varint(buf, vals[j]);
            const uint8_t *p = buf;
            bad += n < 1 || n > 9;
            bad += !ls_get_varint(&p, buf + n, &v) || v != vals[j] || p != buf + n;
            p = buf;
            if (n > 1) bad += ls_get_varint(&p, buf + n - 1, &v) != 0;
        }
    }
    CHECK(ls_put_varint(buf, 127) == 1 && ls_put_varint(buf, 128) == 2);
    CHECK(ls_put_varint(buf, (UINT64_C(1) << 56) - 1) == 8 && ls_put_varint(buf, UINT64_C(1) << 56) == 9);
    CHECK(bad == 0);
}

/* Random adds and removes, single and batched, on one list through the
 * tree code: after every change the tree is well formed (leaves at one
 * depth, first keys and counts exact, ids ascending) and holds the
 * model; memory accounting returns to zero. */
static void test_tree_edits(void) {
    vs_shard *s = bare_shard();
    ls_ctx *cx = s->lcx;
    model m = {0, 0, 0};
    ls_node *root = NULL;
    unsigned round, bad = 0;
    uint64_t b[3000];
    const unsigned rounds = 3000 / SAN_SLOW;
    for (round = 0; round < rounds; round++) {
        int add = round < rounds / 2 ? t_below(4) != 0 : t_below(3) == 0;
        size_t nb = t_below(10) == 0 ? 1 + t_below(3000) : 1 + t_below(4), i, nu = 0, want = 0, ch = 0;
        uint64_t span = round % 3 == 0 ? 100000 : round % 3 == 1 ? UINT64_C(1) << 32 : UINT64_MAX;
        ls_vec v = {0, 0, 0, 0};
        ls_node *nr = NULL;
        for (i = 0; i < nb; i++) {
            uint64_t x = span == UINT64_MAX ? t_rand() : t_rand() % span;
            if (!add && m.n && t_below(2)) x = m.a[t_below((uint32_t)m.n)];
            b[i] = x;
        }
        /* sort + dedup as the API does */
        {
            uint64_t *tmp = malloc(nb * sizeof *tmp);
            lr_sort_keys(b, tmp, nb);
            free(tmp);
            for (i = 0; i < nb; i++)
                if (!nu || b[i] != b[nu - 1]) b[nu++] = b[i];
        }
        for (i = 0; i < nu; i++) want += add ? m_add(&m, b[i]) : m_del(&m, b[i]);
        if (!root) {
            if (add) REQUIRE(ls_build(cx, b, nu, &nr) == KVIDX_OK);
            ch = add ? nu : 0;
        } else {
            REQUIRE(ls_edit(cx, root, b, nu, add, 1, &v, &ch) == KVIDX_OK);
            REQUIRE(ls_top(cx, &v, &nr) == KVIDX_OK);
        }
        bad += ch != want;
        if (!want && root) bad += nr != root;
        ls_commit(cx);
        root = nr;
        if (!tree_ok(root, &m)) {
            bad++;
            break;
        }
        if (round == rounds / 2 - 1) { /* ascending arrivals fill leaves */
            uint64_t top = m.n ? m.a[m.n - 1] : 0;
            for (i = 0; i < 20000; i++) {
                uint64_t x = top + 1 + i * 3;
                REQUIRE(ls_edit(cx, root, &x, 1, 1, 1, &v, &ch) == KVIDX_OK);
                REQUIRE(ls_top(cx, &v, &nr) == KVIDX_OK);
                ls_commit(cx);
                root = nr;
                m_add(&m, x);
            }
            bad += !tree_ok(root, &m);
        }
    }
    CHECK(bad == 0);
    {
        /* Memory: what is accounted is what the nodes take. */
        uint64_t ids = m.n;
        CHECK(ids == 0 || s->lbytes > 0);
        if (ids > 10000) CHECK(s->lbytes / ids <= 8);
    }
    ls_tree_free(s, root);
    CHECK(s->lbytes == 0);
    free(m.a);
    bare_free(s);
}

/* 100,000 (sanitizers: fewer) single adds of ids 7 apart, in the order `order` gives (0
 * ascending, 1 descending, 2 alternating from both ends, 3 random): the
 * tree holds them all; returns the bytes it takes an id. */
static double fill(int order) {
    vs_shard *s = bare_shard();
    ls_ctx *cx = s->lcx;
    ls_node *root = NULL, *nr;
    uint64_t i, x, n = 100000 / SAN_SLOW, *perm = NULL, prev = 0;
    size_t ch;
    double per;
    int first = 1, bad = 0;
    if (order == 3) {
        perm = malloc(n * sizeof *perm);
        for (i = 0; i < n; i++) perm[i] = i;
        for (i = n - 1; i > 0; i--) {
            uint64_t j = t_below(i + 1), t = perm[i];
            perm[i] = perm[j], perm[j] = t;
        }
    }
    { /* a full leaf below them all: ids must go past it, and go on in their order */
        uint64_t low[KVIDX_LS_LEAF];
        for (i = 0; i < KVIDX_LS_LEAF; i++) low[i] = i;
        if (ls_build(cx, low, KVIDX_LS_LEAF, &root) != KVIDX_OK) bad = 1;
        ls_commit(cx);
    }
    for (i = 0; i < n && !bad; i++) {
        ls_vec v = {0, 0, 0, 0};
        uint64_t r = order == 0 ? i : order == 1 ? n - 1 - i : order == 2 ? (i & 1 ? n - 1 - i / 2 : i / 2) : perm[i];
        x = 1000000 + r * 7;
        bad |= ls_edit(cx, root, &x, 1, 1, 1, &v, &ch) != KVIDX_OK || ls_top(cx, &v, &nr) != KVIDX_OK;
        if (bad) break;
        ls_commit(cx);
        root = nr;
    }
    CHECK(!bad && ls_count(root) == n + KVIDX_LS_LEAF);
    x = 0;
    CHECK(tree_check(root, &prev, &first, &x) >= 0 && x == n + KVIDX_LS_LEAF); /* ascending, counts exact */
    per = (double)s->lbytes / (double)(n + KVIDX_LS_LEAF);
    ls_tree_free(s, root);
    CHECK(s->lbytes == 0);
    bare_free(s);
    free(perm);
    return per;
}

/* Single adds keep leaves well filled whatever the order: ascending
 * arrivals fill them (7-byte gaps over 128 ids span < 65536: 2 bytes an
 * id, plus a header and an inner cell per leaf); descending, two-ended
 * and random arrivals split full leaves in halves (a leaf is at least
 * half full), never leave a trail of one-id leaves. */
static void test_fill_orders(void) {
    static const char *name[] = {"ascending", "descending", "both ends", "random"};
    int order;
    for (order = 0; order < 4; order++) {
        double per = fill(order);
        printf("  %d ids, %s: %.2f bytes an id\n", 100000 / SAN_SLOW, name[order], per);
        CHECK(per < (order == 0 ? 3.0 : 5.0));
    }
}

static int fail_kind, fail_after_n;
static int fail_nth(os_op op, const char *what) {
    (void)what;
    if (op != (os_op)fail_kind) return 0;
    return fail_after_n-- == 0 ? ENOMEM : 0;
}

static kvidx_options opts(uint32_t shards) {
    kvidx_options o;
    kvidx_options_init(&o);
    o.shards = shards;
    o.sync_interval_ms = 0;
    return o;
}

static int list_is(kvidx *db, uint64_t key, const model *m) {
    uint64_t *out = malloc((m->n + 1) * sizeof *out), c = 0;
    size_t n = 0;
    int rc = kvidx_list_get(db, key, 0, out, m->n + 1, &n), ok;
    ok = m->n ? rc == KVIDX_OK && n == m->n && !memcmp(out, m->a, n * sizeof *out)
              : rc == KVIDX_NOTFOUND;
    ok = ok && kvidx_list_count(db, key, &c) == (m->n ? KVIDX_OK : KVIDX_NOTFOUND) && c == m->n;
    free(out);
    return ok;
}

/* Every allocation of a list add, remove and put failed in turn: each
 * returns KVIDX_ENOMEM and changes nothing (the list reads as before,
 * ASan finds no leak); then the call succeeds. Then the same for an
 * open that loads a snapshot and replays a log. */
static void test_alloc_failures(void) {
    const char *dir = t_dir("ls_allocfail");
    kvidx_options o = opts(2);
    kvidx *db;
    model m = {0, 0, 0};
    uint64_t i, ids[700];
    unsigned bad = 0, op;
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < 20000; i++) m_add(&m, i * 5);
    REQUIRE(kvidx_list_put(db, 7, m.a, m.n) == KVIDX_OK);
    for (op = 0; op < 3; op++) {
        int k;
        size_t n = op == 2 ? 700 : 1 + op * 300, j, ch = 4242;
        for (j = 0; j < n; j++) ids[j] = op == 1 ? m.a[t_below((uint32_t)m.n)] : t_rand() % 200000;
        for (k = 0;; k++) {
            int rc;
            fail_kind = OS_MALLOC;
            fail_after_n = k;
            os_fault_hook = fail_nth;
            rc = op == 0 ? kvidx_list_add(db, 7, ids, n, &ch)
               : op == 1 ? kvidx_list_remove(db, 7, ids, n, &ch)
                         : kvidx_list_put(db, 7, ids, n);
            os_fault_hook = NULL;
            if (rc == KVIDX_OK) break;
            bad += rc != KVIDX_ENOMEM || !list_is(db, 7, &m);
            if (k > 100000) break;
        }
        CHECK(k > 0 && k <= 100000);
        if (op == 0) for (j = 0; j < n; j++) m_add(&m, ids[j]);
        if (op == 1) for (j = 0; j < n; j++) m_del(&m, ids[j]);
        if (op == 2) {
            m.n = 0;
            for (j = 0; j < n; j++) m_add(&m, ids[j]);
        }
        bad += !list_is(db, 7, &m);
    }
    /* A snapshot (the close folds the log, past 4 KiB here), then a log
     * after it, for the open below. */
    for (i = 0; i < 300; i++) {
        uint64_t x = 1000000 + i;
        REQUIRE(kvidx_list_add(db, 100 + i % 37, &x, 1, NULL) == KVIDX_OK);
    }
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < 50; i++) {
        uint64_t x = 2000000 + i;
        REQUIRE(kvidx_list_add(db, 100 + i % 37, &x, 1, NULL) == KVIDX_OK);
    }
    {
        /* kill -9 stand-in: keep the log, skip close's snapshot. */
        kvidx_stats st;
        st.size = sizeof st;
        REQUIRE(kvidx_stat(db, &st) == KVIDX_OK);
        CHECK(st.list_snapshot_bytes > 0 && st.list_log_bytes > LS_LOG_HDR * 2);
    }
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    {
        int k;
        for (k = 0;; k++) {
            int rc;
            kvidx *d2 = NULL;
            fail_kind = OS_MALLOC;
            fail_after_n = k;
            os_fault_hook = fail_nth;
            rc = kvidx_open(dir, &o, &d2);
            os_fault_hook = NULL;
            if (rc == KVIDX_OK) {
                uint64_t c = 0;
                bad += !list_is(d2, 7, &m);
                bad += kvidx_list_count(d2, 100, &c) != KVIDX_OK || c != 9 + 2;
                CHECK_RC(kvidx_close(d2), KVIDX_OK);
                break;
            }
            bad += rc != KVIDX_ENOMEM;
            if (k > 100000) break;
        }
        CHECK(k > 0);
    }
    CHECK(bad == 0);
    free(m.a);
    t_rmrf(dir);
}

static char *path(const char *dir, const char *f) {
    static char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, f);
    return p;
}

static int flip(const char *dir, const char *f, uint64_t off) {
    int fd = open(path(dir, f), O_RDWR), ok;
    uint8_t b;
    if (fd < 0) return -1;
    ok = pread(fd, &b, 1, (off_t)off) == 1;
    b ^= 0x10;
    ok = ok && pwrite(fd, &b, 1, (off_t)off) == 1;
    close(fd);
    return ok ? 0 : -1;
}

static int64_t fsize(const char *dir, const char *f) {
    struct stat st;
    return stat(path(dir, f), &st) ? -1 : (int64_t)st.st_size;
}

/* A flipped byte in the snapshot, or in the synced part of the list log,
 * is KVIDX_ECORRUPT (not a silently shorter list); undone, the database
 * opens whole. */
static void test_damage(void) {
    const char *dir = t_dir("ls_damage");
    kvidx_options o = opts(1);
    kvidx *db;
    model m = {0, 0, 0};
    uint64_t i;
    int64_t snap, log;
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < 3000; i++) m_add(&m, i * 200); /* 2 bytes an id: past 4 KiB */
    REQUIRE(kvidx_list_put(db, 1, m.a, m.n) == KVIDX_OK);
    REQUIRE(kvidx_close(db) == KVIDX_OK); /* log > 4 KiB: a snapshot */
    snap = fsize(dir, "s0000.1.ls");
    REQUIRE(snap > 64);
    CHECK(fsize(dir, "s0000.1.l") == LS_LOG_HDR);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < 40; i++) {
        uint64_t x = 100000 + i;
        REQUIRE(kvidx_list_add(db, 2, &x, 1, NULL) == KVIDX_OK);
        REQUIRE(kvidx_sync(db) == KVIDX_OK);
    }
    log = (int64_t)db->sh[0].lpos;
    /* close without its snapshot: the log stays under the threshold */
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    CHECK(fsize(dir, "s0000.1.l") == log);
    REQUIRE(flip(dir, "s0000.1.ls", (uint64_t)snap / 2) == 0);
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_ECORRUPT);
    REQUIRE(flip(dir, "s0000.1.ls", (uint64_t)snap / 2) == 0);
    REQUIRE(flip(dir, "s0000.1.l", (uint64_t)log / 2) == 0);
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_ECORRUPT);
    REQUIRE(flip(dir, "s0000.1.l", (uint64_t)log / 2) == 0);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK(list_is(db, 1, &m));
    {
        uint64_t c = 0;
        CHECK(kvidx_list_count(db, 2, &c) == KVIDX_OK && c == 40);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(m.a);
    t_rmrf(dir);
}

/* The crash window of a snapshot: renamed into place, log not yet cut.
 * Reproduced by putting the old log back after a snapshot: its records
 * are all in the snapshot and are skipped; the log starts over; writes
 * after it survive another reopen. */
static void test_snapshot_window(void) {
    const char *dir = t_dir("ls_window");
    kvidx_options o = opts(1);
    kvidx *db;
    model m = {0, 0, 0};
    uint64_t i;
    uint8_t *old;
    int64_t n;
    int fd;
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < 400; i++) {
        uint64_t x = t_rand() % 100000;
        m_add(&m, x);
        REQUIRE(kvidx_list_add(db, 9, &x, 1, NULL) == KVIDX_OK);
    }
    REQUIRE(kvidx_sync(db) == KVIDX_OK);
    n = (int64_t)db->sh[0].lpos;
    old = malloc((size_t)n);
    fd = open(path(dir, "s0000.1.l"), O_RDONLY);
    REQUIRE(fd >= 0 && pread(fd, old, (size_t)n, 0) == n);
    close(fd);
    REQUIRE(kvidx_close(db) == KVIDX_OK); /* snapshot, log cut */
    CHECK(fsize(dir, "s0000.1.l") == LS_LOG_HDR);
    fd = open(path(dir, "s0000.1.l"), O_WRONLY);
    REQUIRE(fd >= 0 && pwrite(fd, old, (size_t)n, 0) == n);
    close(fd);
    free(old);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK(list_is(db, 9, &m));
    CHECK(db->sh[0].lpos == LS_LOG_HDR); /* all covered: cut back */
    for (i = 0; i < 10; i++) {
        uint64_t x = 500000 + i;
        m_add(&m, x);
        REQUIRE(kvidx_list_add(db, 9, &x, 1, NULL) == KVIDX_OK);
    }
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK(list_is(db, 9, &m));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(m.a);
    t_rmrf(dir);
}

/* Writes past KVIDX_LS_SNAP_AUTO (64 KiB here) fold the log into
 * snapshots as they go; every list stays exact, across a reopen. */
static void test_auto_snapshot(void) {
    const char *dir = t_dir("ls_auto");
    kvidx_options o = opts(2);
    kvidx *db;
    model m[16];
    uint64_t i, k;
    kvidx_stats st;
    unsigned bad = 0;
    memset(m, 0, sizeof m);
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < 40000; i++) {
        uint64_t x = t_rand() % 50000;
        size_t ch = 0;
        k = t_below(16);
        if (t_below(4)) {
            int want = m_add(&m[k], x);
            REQUIRE(kvidx_list_add(db, k, &x, 1, &ch) == KVIDX_OK);
            bad += ch != (size_t)want;
        } else {
            int want = m_del(&m[k], x), rc = kvidx_list_remove(db, k, &x, 1, &ch);
            bad += rc != KVIDX_OK && rc != KVIDX_NOTFOUND;
            bad += ch != (size_t)want;
        }
    }
    st.size = sizeof st;
    REQUIRE(kvidx_stat(db, &st) == KVIDX_OK);
    CHECK(st.list_snapshot_bytes > 0);
    CHECK(st.list_log_bytes < 2 * (KVIDX_LS_SNAP_AUTO + 2 * st.list_snapshot_bytes + 4096));
    for (k = 0; k < 16; k++) bad += !list_is(db, k, &m[k]);
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (k = 0; k < 16; k++) bad += !list_is(db, k, &m[k]);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK(bad == 0);
    for (k = 0; k < 16; k++) free(m[k].a);
    t_rmrf(dir);
}

static int renames, rename_fails;
static int fail_rename(os_op op, const char *what) {
    (void)what;
    if (op != OS_RENAME) return 0;
    renames++;
    return rename_fails ? ENOSPC : 0;
}

/* A snapshot that cannot be written (the rename fails: ENOSPC) loses
 * nothing and stops nothing: the open that wanted one succeeds, the
 * writes that wanted one succeed and try again only after the log has
 * grown by LS_SNAP_RETRY, not at every write; once renames work again
 * the next try folds the log. */
static int logged;
static void count_log(void *ud, const char *msg) {
    (void)ud;
    logged += strstr(msg, "list snapshot") && strstr(msg, "failed: database or disk is full");
}

static void test_snapshot_failures(void) {
    const char *dir = t_dir("ls_snapfail");
    kvidx_options o = opts(1);
    kvidx *db;
    model m = {0, 0, 0};
    uint64_t i, writes = 0;
    kvidx_stats st;
    o.log = count_log, logged = 0;
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (i = 0; i < 600; i++) { /* ~8 KiB of log: past KVIDX_LS_SNAP_MIN, under _AUTO */
        uint64_t x = t_rand();
        m_add(&m, x);
        REQUIRE(kvidx_list_add(db, 3, &x, 1, NULL) == KVIDX_OK);
    }
    os_fault_hook = fail_rename, rename_fails = 1, renames = 0;
    CHECK_RC(kvidx_close(db), KVIDX_OK); /* its snapshot fails: logged */
    CHECK(renames == 1);
    CHECK(fsize(dir, "s0000.1.ls") < 0 && fsize(dir, "s0000.1.ls.tmp") < 0);
    renames = 0;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK); /* so does the open's */
    CHECK(renames == 1);
    CHECK(list_is(db, 3, &m));
    renames = 0;
    while (db->sh[0].lpos < 4 * KVIDX_LS_SNAP_AUTO) {
        uint64_t x = t_rand();
        m_add(&m, x);
        REQUIRE(kvidx_list_add(db, 3, &x, 1, NULL) == KVIDX_OK);
        writes++;
    }
    /* tries: at 64 KiB, then every 16 KiB of log */
    CHECK(renames >= 3 && renames <= (int)(3 * KVIDX_LS_SNAP_AUTO / LS_SNAP_RETRY) + 1);
    CHECK(writes > 1000);
    CHECK(logged == renames + 2); /* each failure logged once, close and open included */
    CHECK(list_is(db, 3, &m));
    rename_fails = 0;
    for (i = 0; i < 2000 && db->sh[0].lpos > LS_LOG_HDR; i++) {
        uint64_t x = t_rand();
        m_add(&m, x);
        REQUIRE(kvidx_list_add(db, 3, &x, 1, NULL) == KVIDX_OK);
    }
    os_fault_hook = NULL;
    st.size = sizeof st;
    REQUIRE(kvidx_stat(db, &st) == KVIDX_OK);
    CHECK(st.list_snapshot_bytes > 0);
    CHECK(db->sh[0].lpos < 2 * LS_SNAP_RETRY);
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK(list_is(db, 3, &m));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(m.a);
    t_rmrf(dir);
}

/* Makes the shards of dir look written by kvidx 0.1.x: no list logs, and
 * the list part of both state copies (bytes 64..127) zero. */
static int as_v01(const char *dir, unsigned shards) {
    unsigned i;
    uint8_t zero[VS_STATE_BYTES - 64];
    memset(zero, 0, sizeof zero);
    for (i = 0; i < shards; i++) {
        char f[32];
        int fd;
        snprintf(f, sizeof f, "s%04u.1.l", i);
        if (unlink(path(dir, f))) return -1;
        snprintf(f, sizeof f, "s%04u.1.b", i);
        fd = open(path(dir, f), O_RDWR);
        if (fd < 0) return -1;
        if (pwrite(fd, zero, sizeof zero, 64) != (ssize_t)sizeof zero ||
            pwrite(fd, zero, sizeof zero, VS_STATE_SLOT + 64) != (ssize_t)sizeof zero) {
            close(fd);
            return -1;
        }
        close(fd);
    }
    return 0;
}

/* A database of kvidx 0.1.x (values only: no list logs, a state without
 * its list part) opens: read-only it has no lists; read-write it gains
 * empty list logs, takes lists, and reopens as a 0.2 database. A shard
 * of 0.2 whose list log is missing is still KVIDX_ECORRUPT. */
static void test_upgrade_v01(void) {
    const char *dir = t_dir("ls_upgrade");
    kvidx_options o = opts(4), ro = opts(4);
    kvidx *db;
    uint64_t k, ids[3] = {5, 1, 3}, c = 0;
    char v[16];
    size_t n;
    unsigned bad = 0;
    ro.flags |= KVIDX_RDONLY;
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (k = 0; k < 1000; k++) REQUIRE(kvidx_put(db, k, &k, sizeof k) == KVIDX_OK);
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    REQUIRE(as_v01(dir, 4) == 0);
    REQUIRE(kvidx_open(dir, &ro, &db) == KVIDX_OK);
    for (k = 0; k < 1000; k++)
        bad += kvidx_get(db, k, v, sizeof v, &n) != KVIDX_OK || n != 8 || memcmp(v, &k, 8);
    CHECK_RC(kvidx_list_count(db, 7, &c), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_list_add(db, 7, ids, 3, NULL), KVIDX_ERDONLY);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK(fsize(dir, "s0000.1.l") < 0); /* read-only wrote nothing */
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK(fsize(dir, "s0000.1.l") == LS_LOG_HDR);
    for (k = 0; k < 1000; k++)
        bad += kvidx_get(db, k, v, sizeof v, &n) != KVIDX_OK || n != 8 || memcmp(v, &k, 8);
    CHECK_RC(kvidx_list_add(db, 7, ids, 3, NULL), KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    REQUIRE(kvidx_open(dir, &ro, &db) == KVIDX_OK);
    CHECK(kvidx_list_count(db, 7, &c) == KVIDX_OK && c == 3);
    for (k = 0; k < 1000; k++)
        bad += kvidx_get(db, k, v, sizeof v, &n) != KVIDX_OK || n != 8 || memcmp(v, &k, 8);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK(bad == 0);
    /* Now a 0.2 database: a missing list log is damage. */
    REQUIRE(unlink(path(dir, "s0001.1.l")) == 0);
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_ECORRUPT);
    CHECK_RC(kvidx_open(dir, &ro, &db), KVIDX_ECORRUPT);
    t_rmrf(dir);
}

/* Renames file a of dir to b. */
static int mv(const char *dir, const char *a, const char *b) {
    char pa[4200];
    snprintf(pa, sizeof pa, "%s/%s", dir, a);
    return rename(pa, path(dir, b));
}

/* A list log record that is whole (its checksum holds) but carries a key
 * of another shard is damage: KVIDX_ECORRUPT, not a list in the wrong
 * shard. Made by swapping the logs of two shards (one record each, of
 * the same size) and giving each its new shard's header. */
static int swap_logs(const char *dir) {
    uint8_t h[LS_LOG_HDR];
    uint32_t i;
    if (mv(dir, "s0000.1.l", "s0000.1.l.keep") || mv(dir, "s0001.1.l", "s0000.1.l") ||
        mv(dir, "s0000.1.l.keep", "s0001.1.l"))
        return -1;
    for (i = 0; i < 2; i++) {
        char f[16];
        int fd, ok;
        snprintf(f, sizeof f, "s%04u.1.l", (unsigned)i);
        memset(h, 0, sizeof h);
        vs_fhdr_encode(h, LS_MAGIC_L, i, 2, 1);
        vs_hdr_seal(h);
        fd = open(path(dir, f), O_WRONLY);
        ok = fd >= 0 && pwrite(fd, h, sizeof h, 0) == (ssize_t)sizeof h;
        if (fd >= 0) close(fd);
        if (!ok) return -1;
    }
    return 0;
}

static void test_foreign_keys(void) {
    const char *dir = t_dir("ls_foreign");
    kvidx_options o = opts(2);
    kvidx *db;
    uint64_t k[2], x = 77, c;
    t_rmrf(dir);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (k[0] = 0; (ck_key(k[0]) & 1) != 0; k[0]++) {}
    for (k[1] = 0; (ck_key(k[1]) & 1) != 1; k[1]++) {}
    REQUIRE(kvidx_list_add(db, k[0], &x, 1, NULL) == KVIDX_OK); /* shard 0 */
    REQUIRE(kvidx_list_add(db, k[1], &x, 1, NULL) == KVIDX_OK); /* shard 1 */
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    REQUIRE(fsize(dir, "s0000.1.l") > LS_LOG_HDR && fsize(dir, "s0000.1.l") == fsize(dir, "s0001.1.l"));
    REQUIRE(swap_logs(dir) == 0);
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_ECORRUPT);
    REQUIRE(swap_logs(dir) == 0);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK); /* put back: whole again */
    CHECK(kvidx_list_count(db, k[0], &c) == KVIDX_OK && c == 1);
    CHECK(kvidx_list_count(db, k[1], &c) == KVIDX_OK && c == 1);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

int main(void) {
    t_init("test_lists_wb");
    T_RUN(test_varint);
    T_RUN(test_tree_edits);
    T_RUN(test_fill_orders);
    T_RUN(test_alloc_failures);
    T_RUN(test_damage);
    T_RUN(test_snapshot_window);
    T_RUN(test_auto_snapshot);
    T_RUN(test_snapshot_failures);
    T_RUN(test_upgrade_v01);
    T_RUN(test_foreign_keys);
    return t_done();
}
