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

/* Checks the subtree nd; returns its height (leaves 0), or -1 if broken.
 * *prev: the last id seen (ascending across leaves); *first: none yet. */
static int tree_check(const ls_node *nd, uint64_t *prev, int *first, uint64_t *count) {
    unsigned i;
    int h = -2;
    if (nd->kind == LS_IDS) {
        if (nd->n == 0 || nd->n > KVIDX_LS_LEAF || nd->width < 1 || nd->width > 8) return -1;
        for (i = 0; i < nd->n; i++) {
            uint64_t id = ls_id(nd, i);
            if (!*first && id <= *prev) return -1;
            *first = 0, *prev = id;
        }
        if (nd->n > 1 && ((ls_id(nd, nd->n - 1) - nd->x) & ~ls_mask(nd->width))) return -1;
        *count += nd->n;
        return 0;
    }
    if (nd->kind != LS_INNER || nd->n == 0 || nd->n > KVIDX_LS_FAN) return -1;
    {
        uint64_t below = 0;
        for (i = 0; i < nd->n; i++) {
            const ls_node *c = ls_ptr(nd, i);
            int ch;
            uint64_t first_id = c->kind == LS_IDS ? c->x : c->u[0];
            if (nd->u[i] != first_id) return -1;
            ch = tree_check(c, prev, first, &below);
            if (ch < 0 || (h != -2 && ch != h)) return -1;
            h = ch;
        }
        if (below != nd->x) return -1;
        *count += below;
    }
    return h + 1;
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
    for (round = 0; round < 3000; round++) {
        int add = round < 1500 ? t_below(4) != 0 : t_below(3) == 0;
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
            REQUIRE(ls_edit(cx, root, b, nu, add, &v, &ch) == KVIDX_OK);
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
        if (round == 1499) { /* ascending arrivals fill leaves */
            uint64_t top = m.n ? m.a[m.n - 1] : 0;
            for (i = 0; i < 20000; i++) {
                uint64_t x = top + 1 + i * 3;
                REQUIRE(ls_edit(cx, root, &x, 1, 1, &v, &ch) == KVIDX_OK);
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

/* Ascending single adds keep leaves full: memory per id close to the
 * offset width plus the per-leaf costs. */
static void test_ascending_fill(void) {
    vs_shard *s = bare_shard();
    ls_ctx *cx = s->lcx;
    ls_node *root = NULL, *nr;
    uint64_t i, x;
    size_t ch;
    for (i = 0; i < 100000; i++) {
        ls_vec v = {0, 0, 0, 0};
        x = 1000000 + i * 7;
        if (!root) REQUIRE(ls_build(cx, &x, 1, &nr) == KVIDX_OK);
        else REQUIRE(ls_edit(cx, root, &x, 1, 1, &v, &ch) == KVIDX_OK && ls_top(cx, &v, &nr) == KVIDX_OK);
        ls_commit(cx);
        root = nr;
    }
    CHECK(ls_count(root) == 100000);
    /* 7-byte gaps over a leaf of 128 ids span < 65536: 2 bytes an id,
     * plus a header and an inner cell per leaf. */
    CHECK(s->lbytes < 100000 * 3);
    printf("  100000 ascending ids: %.2f bytes an id\n", (double)s->lbytes / 100000);
    ls_tree_free(s, root);
    CHECK(s->lbytes == 0);
    bare_free(s);
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

int main(void) {
    t_init("test_lists_wb");
    T_RUN(test_varint);
    T_RUN(test_tree_edits);
    T_RUN(test_ascending_fill);
    T_RUN(test_alloc_failures);
    T_RUN(test_damage);
    T_RUN(test_snapshot_window);
    T_RUN(test_auto_snapshot);
    return t_done();
}
