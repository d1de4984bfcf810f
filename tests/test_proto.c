/*
 * test_proto.c -- black-box tests of kvidx's protocol layer (RESP2 and
 * inline requests; docs/PROTOCOL.md), through kvidx.h alone: requests go
 * in through kvidx_session_feed or kvidx_serve over memory transports,
 * replies are compared byte for byte with what PROTOCOL.md says, and what
 * the requests stored is compared, through kvidx_get / kvidx_list_get /
 * kvidx_scan / kvidx_list_scan, with a reference model (key -> value
 * bytes, key -> sorted set of ids) kept by the test.
 *
 *   test_session_api       argument errors of open/feed/serve; an empty or
 *                          partial feed writes nothing; close(NULL)
 *   test_server_commands   PING ECHO SELECT DBSIZE COMMAND CONFIG CLIENT
 *                          INFO QUIT, normal and error replies
 *   test_strings           GET SET (NX XX GET, unsupported EX...) DEL
 *                          EXISTS MGET MSET (all-or-nothing) INCR DECR
 *                          INCRBY DECRBY (integer syntax, overflow)
 *   test_sets              SADD SREM SMEMBERS SCARD SISMEMBER SMISMEMBER
 *                          SINTER SSCAN, bad members change nothing
 *   test_key_mapping       decimal keys (leading zeros, 20 digits max),
 *                          everything else XXH3-64 of its bytes
 *   test_two_keyspaces     values and lists under one key: TYPE DEL
 *                          EXISTS DBSIZE GET SET NX INCR SCAN
 *   test_errors_change_nothing  one of every error reply, exact bytes; a
 *                          snapshot of the database before and after
 *   test_flush             FLUSHALL/FLUSHDB refused without
 *                          KVIDX_PROTO_FLUSH, working with it
 *   test_scan_paging       SCAN and SSCAN with COUNT 1..1000 from 0 and
 *                          from random cursors: every key exactly once,
 *                          ascending, against the model
 *   test_inline            quotes, escapes, tabs, LF-only lines, empty
 *                          lines, *0 and *-1
 *   test_limits            bulk > 64 KiB, array > 1M elements, inline
 *                          line > 64 KiB, request > 64 MiB: an error
 *                          reply, nothing executed, the session goes on
 *   test_broken_framing    *abc, $x, *1 :5, no CRLF after bulk data, long
 *                          length line, unbalanced quotes: the reply,
 *                          KVIDX_EPROTO, later feeds refused; fed whole
 *                          and a byte at a time
 *   test_pipeline          10,000 requests in one feed: replies in order,
 *                          one write call; over 1 MiB of replies: cut
 *                          into pieces; a write that takes a few bytes
 *                          at a time
 *   test_random_model      a seeded stream of random requests (RESP and
 *                          inline mixed) against the model, fed whole and
 *                          split at random points
 *   test_every_split       a small stream split at every byte boundary
 *   test_serve             kvidx_serve over a read transport in random
 *                          chunks; QUIT; read error; broken framing
 *   test_write_fail        write returning < 0 or 0 -> KVIDX_EPROTO
 *   test_threads           sessions on threads: INCR/INCRBY/DECRBY exact,
 *                          every INCR reply distinct; SET NX one winner a
 *                          key; SET GET returns every old value once
 *   test_feed_null_empty   kvidx_session_feed(s, NULL, 0) (last: a UBSan
 *                          abort there hides nothing)
 *
 * KVIDX_SEED replays a run (thread interleavings aside). Loop sizes are
 * divided by SAN_SLOW under ASan and TSan.
 */
#include "../kvidx.h"
#include "harness.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>

#define MIB (1024u * 1024u)

/* ---- failure reporting --------------------------------------------------- */

static int g_lines; /* failure lines printed in this case */

static void pfail(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pfail(int line, const char *fmt, ...) {
    va_list ap;
    t_case_failures++;
    if (g_lines++ >= 40) return;
    fprintf(stderr, "tests/test_proto.c:%d: ", line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " [%s seed %" PRIu64 "]\n", t_prog, t_seed);
}

/* p[0..n) printable: CR LF TAB and other bytes escaped, cut at max bytes. */
static const char *esc_r(const void *p, size_t n, size_t max, char *out, size_t cap) {
    const unsigned char *s = p;
    size_t i, o = 0;
    for (i = 0; i < n && i < max && o + 8 < cap; i++) {
        unsigned c = s[i];
        if (c == '\r') o += (size_t)snprintf(out + o, cap - o, "\\r");
        else if (c == '\n') o += (size_t)snprintf(out + o, cap - o, "\\n");
        else if (c == '\t') o += (size_t)snprintf(out + o, cap - o, "\\t");
        else if (c == '\\') o += (size_t)snprintf(out + o, cap - o, "\\\\");
        else if (c < 0x20 || c >= 0x7f) o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        else out[o++] = (char)c;
    }
    if (i < n && o + 20 < cap) o += (size_t)snprintf(out + o, cap - o, "...(%zu bytes)", n);
    out[o] = 0;
    return out;
}

static char g_e1[2048], g_e2[2048], g_e3[2048];

/* Compares got with want; reports the first difference with context. */
static int same_bytes(int line, const char *what, const void *got, size_t gn, const void *want,
                      size_t wn) {
    const unsigned char *g = got, *w = want;
    size_t i = 0, from;
    if (gn == wn && (wn == 0 || memcmp(g, w, wn) == 0)) return 1;
    while (i < gn && i < wn && g[i] == w[i]) i++;
    from = i > 60 ? i - 60 : 0;
    pfail(line, "%s: reply differs at byte %zu (got %zu bytes, want %zu)\n    got:  \"%s\"\n    want: \"%s\"",
          what, i, gn, wn, esc_r(g + from, gn - from, 200, g_e1, sizeof g_e1),
          esc_r(w + from, wn - from, 200, g_e2, sizeof g_e2));
    return 0;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_proto: out of memory\n");
        exit(2);
    }
    return p;
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_proto: out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- growable byte buffer ------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void b_reserve(buf *b, size_t add) {
    if (b->n + add + 1 <= b->cap) return;
    {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + add + 1) c *= 2;
        b->p = xrealloc(b->p, c);
        b->cap = c;
    }
}

static void b_put(buf *b, const void *p, size_t n) {
    b_reserve(b, n);
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void b_puts(buf *b, const char *s) { b_put(b, s, strlen(s)); }

static void b_fmt(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void b_fmt(buf *b, const char *fmt, ...) {
    va_list ap;
    int k;
    char tmp[512];
    va_start(ap, fmt);
    k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < sizeof tmp) {
        b_put(b, tmp, (size_t)k);
    } else {
        b_reserve(b, (size_t)k);
        va_start(ap, fmt);
        vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
        va_end(ap);
        b->n += (size_t)k;
    }
}

static void b_free(buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* RESP reply builders (what the test expects). */
static void r_ok(buf *b) { b_puts(b, "+OK\r\n"); }
static void r_nil(buf *b) { b_puts(b, "$-1\r\n"); }
static void r_int(buf *b, int64_t v) { b_fmt(b, ":%" PRId64 "\r\n", v); }
static void r_arr(buf *b, size_t n) { b_fmt(b, "*%zu\r\n", n); }
static void r_bulk(buf *b, const void *p, size_t n) {
    b_fmt(b, "$%zu\r\n", n);
    b_put(b, p, n);
    b_puts(b, "\r\n");
}
static void r_u64(buf *b, uint64_t v) {
    char t[32];
    int k = snprintf(t, sizeof t, "%" PRIu64, v);
    r_bulk(b, t, (size_t)k);
}
static void r_err(buf *b, const char *msg) {
    b_puts(b, "-ERR ");
    b_puts(b, msg);
    b_puts(b, "\r\n");
}

/* ---- request arguments and their encodings -------------------------------- */

#define ARGS_MAX 80
#define ARG_CAP 352

typedef struct {
    int n;
    size_t l[ARGS_MAX];
    char s[ARGS_MAX][ARG_CAP];
} args;

static void a_add(args *a, const void *p, size_t n) {
    if (a->n >= ARGS_MAX || n >= ARG_CAP) {
        fprintf(stderr, "test_proto: args overflow\n");
        exit(2);
    }
    memcpy(a->s[a->n], p, n);
    a->s[a->n][n] = 0;
    a->l[a->n++] = n;
}
static void a_str(args *a, const char *s) { a_add(a, s, strlen(s)); }
static void a_fmt(args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void a_fmt(args *a, const char *fmt, ...) {
    char t[ARG_CAP];
    int k;
    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    a_add(a, t, (size_t)k);
}
static void a_u64(args *a, uint64_t v) { a_fmt(a, "%" PRIu64, v); }

/* RESP array of bulk strings. */
static void enc_resp_raw(buf *b, int argc, const char *const *argv, const size_t *lens) {
    int i;
    b_fmt(b, "*%d\r\n", argc);
    for (i = 0; i < argc; i++) {
        b_fmt(b, "$%zu\r\n", lens[i]);
        b_put(b, argv[i], lens[i]);
        b_puts(b, "\r\n");
    }
}

static void enc_resp(buf *b, const args *a) {
    int i;
    b_fmt(b, "*%d\r\n", a->n);
    for (i = 0; i < a->n; i++) {
        b_fmt(b, "$%zu\r\n", a->l[i]);
        b_put(b, a->s[i], a->l[i]);
        b_puts(b, "\r\n");
    }
}

static int bare_ok(const char *s, size_t n) {
    size_t i;
    if (n == 0) return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\'' || c == '\\') return 0;
    }
    return 1;
}

static int squote_ok(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\') return 0;
    }
    return 1;
}

/* One inline line: words separated by spaces/tabs, quoted where needed
 * (double quotes with \n \r \t \\ \" \xHH escapes, or single quotes). */
static void enc_inline(buf *b, const args *a, int random_style) {
    int i;
    for (i = 0; i < a->n; i++) {
        const char *s = a->s[i];
        size_t n = a->l[i], k;
        if (i) {
            if (random_style && t_below(8) == 0) b_puts(b, t_below(2) ? "\t" : "  ");
            else b_puts(b, " ");
        }
        if (bare_ok(s, n) && !(random_style && t_below(10) == 0)) {
            b_put(b, s, n);
        } else if (squote_ok(s, n) && random_style && t_below(2)) {
            b_puts(b, "'");
            b_put(b, s, n);
            b_puts(b, "'");
        } else {
            b_puts(b, "\"");
            for (k = 0; k < n; k++) {
                unsigned char c = (unsigned char)s[k];
                if (c == '\n') b_puts(b, "\\n");
                else if (c == '\r') b_puts(b, "\\r");
                else if (c == '\t') b_puts(b, "\\t");
                else if (c == '\\') b_puts(b, "\\\\");
                else if (c == '"') b_puts(b, "\\\"");
                else if (c < 0x20 || c >= 0x7f)
                    b_fmt(b, (random_style && t_below(2)) ? "\\x%02X" : "\\x%02x", c);
                else b_put(b, &s[k], 1);
            }
            b_puts(b, "\"");
        }
    }
    b_puts(b, (random_style && t_below(3) == 0) ? "\n" : "\r\n");
}

/* ---- memory transports ------------------------------------------------------ */

typedef struct {
    buf out;            /* every byte taken */
    size_t calls;       /* write calls */
    size_t zero_calls;  /* write calls offering 0 bytes (never expected) */
    size_t max_offer;   /* the largest len offered */
    unsigned partial;   /* 0: take everything; n: take 1..n bytes a call */
    long fail_after;    /* -1: never fail; k: calls after the k-th return fail_rc */
    ptrdiff_t fail_rc;
    uint64_t rng;
} sink;

static ptrdiff_t sink_write(void *ctx, const void *p, size_t len) {
    sink *s = ctx;
    size_t take = len;
    s->calls++;
    if (len == 0) {
        s->zero_calls++;
        return 0;
    }
    if (len > s->max_offer) s->max_offer = len;
    if (s->fail_after >= 0 && s->calls > (size_t)s->fail_after) return s->fail_rc;
    if (s->partial && len > 1) {
        uint64_t z = (s->rng += 0x9E3779B97F4A7C15ull);
        z = t_mix64(z);
        take = 1 + (size_t)(z % (len < s->partial ? len : s->partial));
    }
    b_put(&s->out, p, take);
    return (ptrdiff_t)take;
}

typedef struct {
    kvidx_session *s;
    sink k;
    kvidx_transport t;
} conn;

static int c_open(conn *c, kvidx *db, unsigned flags) {
    int rc;
    memset(c, 0, sizeof *c);
    c->k.fail_after = -1;
    c->k.rng = t_rand();
    c->t.ctx = &c->k;
    c->t.write = sink_write;
    c->t.flags = flags;
    rc = kvidx_session_open(db, &c->t, &c->s);
    if (rc != KVIDX_OK) pfail(__LINE__, "kvidx_session_open: %d (%s)", rc, kvidx_strerror(rc));
    return rc;
}

static void c_close(conn *c) {
    kvidx_session_close(c->s);
    c->s = NULL;
    if (c->k.zero_calls) pfail(__LINE__, "write was called %zu times with 0 bytes", c->k.zero_calls);
    b_free(&c->k.out);
}

/* Feeds req; checks the return code and the bytes written by this feed. */
static void x_raw(conn *c, int line, const void *req, size_t rn, const void *want, size_t wn,
                  int want_rc) {
    int rc;
    char what[600];
    c->k.out.n = 0;
    rc = kvidx_session_feed(c->s, req, rn);
    snprintf(what, sizeof what, "request \"%s\"", esc_r(req, rn, 160, g_e3, sizeof g_e3));
    if (rc != want_rc)
        pfail(line, "%s: kvidx_session_feed returned %d (%s), want %d (%s)", what, rc,
              kvidx_strerror(rc), want_rc, kvidx_strerror(want_rc));
    same_bytes(line, what, c->k.out.p, c->k.out.n, want, wn);
}

#define XS(c, req, want, rc) x_raw((c), __LINE__, (req), sizeof(req) - 1, (want), sizeof(want) - 1, (rc))
#define XR(c, req, want) x_raw((c), __LINE__, (req), strlen(req), (want), strlen(want), KVIDX_OK)

/* Sends the NULL-terminated arguments as one RESP request; the reply must
 * be exactly want. */
static void x_cmdv(conn *c, int line, const char *want, size_t wn, va_list ap) {
    args *a = xmalloc(sizeof *a);
    buf req = {0};
    const char *s;
    a->n = 0;
    while ((s = va_arg(ap, const char *)) != NULL) a_str(a, s);
    enc_resp(&req, a);
    x_raw(c, line, req.p, req.n, want, wn, KVIDX_OK);
    b_free(&req);
    free(a);
}

static void x_cmd(conn *c, int line, const char *want, ...) {
    va_list ap;
    va_start(ap, want);
    x_cmdv(c, line, want, strlen(want), ap);
    va_end(ap);
}

#define EX(c, want, ...) x_cmd((c), __LINE__, (want), __VA_ARGS__, (const char *)NULL)

/* Sends a request and returns the reply (NUL-terminated, valid until the
 * next feed on c). */
static const char *x_get(conn *c, int line, ...) {
    va_list ap;
    args *a = xmalloc(sizeof *a);
    buf req = {0};
    const char *s;
    int rc;
    a->n = 0;
    va_start(ap, line);
    while ((s = va_arg(ap, const char *)) != NULL) a_str(a, s);
    va_end(ap);
    enc_resp(&req, a);
    c->k.out.n = 0;
    b_reserve(&c->k.out, 0);
    c->k.out.p[0] = 0;
    rc = kvidx_session_feed(c->s, req.p, req.n);
    if (rc != KVIDX_OK)
        pfail(line, "request \"%s\": kvidx_session_feed returned %d (%s)",
              esc_r(req.p, req.n, 160, g_e3, sizeof g_e3), rc, kvidx_strerror(rc));
    b_free(&req);
    free(a);
    return c->k.out.p;
}

#define GETR(c, ...) x_get((c), __LINE__, __VA_ARGS__, (const char *)NULL)

/* ---- the reference model -------------------------------------------------- */

typedef struct {
    uint64_t key;
    int hv;
    size_t vlen;
    unsigned char v[KVIDX_VALUE_MAX];
    uint64_t *ids;
    size_t nids, cap;
} ment;

typedef struct {
    ment *e;
    size_t n, cap;
} model;

static ment *m_find(const model *m, uint64_t key) {
    size_t i;
    for (i = 0; i < m->n; i++)
        if (m->e[i].key == key) return &m->e[i];
    return NULL;
}

static ment *m_get(model *m, uint64_t key) {
    ment *e = m_find(m, key);
    if (e) return e;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->e = xrealloc(m->e, m->cap * sizeof *m->e);
    }
    e = &m->e[m->n++];
    memset(e, 0, sizeof *e);
    e->key = key;
    return e;
}

static int m_live(const ment *e) { return e && (e->hv || e->nids); }

static void m_clear(model *m) {
    size_t i;
    for (i = 0; i < m->n; i++) free(m->e[i].ids);
    m->n = 0;
}

static void m_free(model *m) {
    m_clear(m);
    free(m->e);
    memset(m, 0, sizeof *m);
}

static void m_setv(model *m, uint64_t key, const void *v, size_t n) {
    ment *e = m_get(m, key);
    e->hv = 1;
    e->vlen = n;
    if (n) memcpy(e->v, v, n);
}

/* Index of the first id >= id. */
static size_t ids_lb(const ment *e, uint64_t id) {
    size_t lo = 0, hi = e->nids;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (e->ids[mid] < id) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int m_has_id(const ment *e, uint64_t id) {
    size_t i;
    if (!e || !e->nids) return 0;
    i = ids_lb(e, id);
    return i < e->nids && e->ids[i] == id;
}

static int m_add_id(ment *e, uint64_t id) {
    size_t i = ids_lb(e, id);
    if (i < e->nids && e->ids[i] == id) return 0;
    if (e->nids == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 8;
        e->ids = xrealloc(e->ids, e->cap * sizeof *e->ids);
    }
    memmove(e->ids + i + 1, e->ids + i, (e->nids - i) * sizeof *e->ids);
    e->ids[i] = id;
    e->nids++;
    return 1;
}

static int m_rem_id(ment *e, uint64_t id) {
    size_t i;
    if (!e || !e->nids) return 0;
    i = ids_lb(e, id);
    if (i >= e->nids || e->ids[i] != id) return 0;
    memmove(e->ids + i, e->ids + i + 1, (e->nids - i - 1) * sizeof *e->ids);
    e->nids--;
    return 1;
}

static int u64_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The keys holding a value or a list, ascending (caller frees). */
static uint64_t *m_keys(const model *m, size_t *n) {
    uint64_t *k = xmalloc((m->n + 1) * sizeof *k);
    size_t i, j = 0;
    for (i = 0; i < m->n; i++)
        if (m_live(&m->e[i])) k[j++] = m->e[i].key;
    qsort(k, j, sizeof *k, u64_cmp);
    *n = j;
    return k;
}

static size_t m_count(const model *m) {
    size_t i, j = 0;
    for (i = 0; i < m->n; i++) j += m_live(&m->e[i]) != 0;
    return j;
}

/* want (the model) against got (a snapshot of the database). */
static int m_same(int line, const char *what, const model *want, const model *got) {
    size_t i;
    int bad = 0;
    for (i = 0; i < want->n && bad < 10; i++) {
        const ment *w = &want->e[i], *g = m_find(got, w->key);
        if (!m_live(w)) continue;
        if (!g || w->hv != g->hv || (w->hv && (w->vlen != g->vlen || memcmp(w->v, g->v, w->vlen)))) {
            pfail(line, "%s: key %" PRIu64 ": value %s (len %zu) in the model, %s (len %zu) in the database",
                  what, w->key, w->hv ? "present" : "absent", w->vlen,
                  g && g->hv ? "present" : "absent", g ? g->vlen : 0);
            bad++;
        }
        if (!g || w->nids != g->nids || (w->nids && memcmp(w->ids, g->ids, w->nids * sizeof *w->ids))) {
            pfail(line, "%s: key %" PRIu64 ": list of %zu ids in the model, %zu in the database", what,
                  w->key, w->nids, g ? g->nids : 0);
            bad++;
        }
    }
    for (i = 0; i < got->n && bad < 10; i++) {
        const ment *g = &got->e[i], *w = m_find(want, g->key);
        if (m_live(g) && !m_live(w)) {
            pfail(line, "%s: key %" PRIu64 " holds %s in the database, nothing in the model", what,
                  g->key, g->hv ? "a value" : "a list");
            bad++;
        }
    }
    return bad == 0;
}

/* ---- snapshots of the database through the C API ------------------------- */

typedef struct {
    model *m;
    uint64_t *keys;
    size_t n, cap;
} snapctx;

static int snap_val(void *ud, uint64_t key, const void *val, size_t len) {
    snapctx *c = ud;
    if (len > KVIDX_VALUE_MAX) len = KVIDX_VALUE_MAX;
    m_setv(c->m, key, val, len);
    return 0;
}

static int snap_list(void *ud, uint64_t key, uint64_t count) {
    snapctx *c = ud;
    (void)count;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->keys = xrealloc(c->keys, c->cap * sizeof *c->keys);
    }
    c->keys[c->n++] = key;
    return 0;
}

/* Everything db holds, into m (cleared first). */
static void snap(int line, kvidx *db, model *m) {
    snapctx c;
    size_t i;
    uint64_t page[1024];
    int rc;
    m_clear(m);
    memset(&c, 0, sizeof c);
    c.m = m;
    rc = kvidx_scan(db, 0, UINT64_MAX, snap_val, &c);
    if (rc != KVIDX_OK) pfail(line, "kvidx_scan: %d", rc);
    rc = kvidx_list_scan(db, 0, UINT64_MAX, snap_list, &c);
    if (rc != KVIDX_OK) pfail(line, "kvidx_list_scan: %d", rc);
    for (i = 0; i < c.n; i++) {
        ment *e = m_get(m, c.keys[i]);
        uint64_t from = 0;
        for (;;) {
            size_t n = 0, j;
            rc = kvidx_list_get(db, c.keys[i], from, page, 1024, &n);
            if (rc != KVIDX_OK) {
                pfail(line, "kvidx_list_get %" PRIu64 ": %d", c.keys[i], rc);
                break;
            }
            for (j = 0; j < n; j++) m_add_id(e, page[j]);
            if (n < 1024 || page[n - 1] == UINT64_MAX) break;
            from = page[n - 1] + 1;
        }
    }
    free(c.keys);
}

/* db must hold exactly what m says. */
static void check_db(int line, const char *what, kvidx *db, const model *m) {
    model g = {0};
    snap(line, db, &g);
    m_same(line, what, m, &g);
    m_free(&g);
}

/* ---- the protocol's rules, as the test reads PROTOCOL.md ------------------ */

/* 1 to 20 decimal digits whose value fits in uint64_t. */
static int parse_u64(const char *s, size_t n, uint64_t *out) {
    uint64_t v = 0;
    size_t i;
    if (n < 1 || n > 20) return 0;
    for (i = 0; i < n; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9') return 0;
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static uint64_t keyof(const char *s, size_t n) {
    uint64_t k;
    if (parse_u64(s, n, &k)) return k;
    return XXH3_64bits(s, n);
}


/* -?[0-9]+, no leading zeros but "0", at most 20 characters, in int64. */
static int parse_i64(const char *s, size_t n, int64_t *out) {
    size_t i = 0;
    uint64_t v = 0;
    int neg = 0;
    if (n < 1 || n > 20) return 0;
    if (s[0] == '-') {
        neg = 1;
        i = 1;
        if (n == 1) return 0;
    }
    if (s[i] == '0' && n - i > 1) return 0;
    for (; i < n; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9') return 0;
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return 0;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX) return 0;
        *out = (int64_t)v;
    }
    return 1;
}

/* cur + d (sub: cur - d); 0 on int64 overflow. */
static int add_i64(int64_t cur, int64_t d, int sub, int64_t *r) {
    if (sub) {
        if (d == INT64_MIN) {
            if (cur >= 0) return 0;
            *r = (cur + INT64_MAX) + 1;
            return 1;
        }
        d = -d;
    }
    if (d > 0 && cur > INT64_MAX - d) return 0;
    if (d < 0 && cur < INT64_MIN - d) return 0;
    *r = cur + d;
    return 1;
}

static int ieq(const char *s, size_t n, const char *word) {
    size_t i;
    if (strlen(word) != n) return 0;
    for (i = 0; i < n; i++) {
        char a = s[i], b = word[i];
        if (a >= 'a' && a <= 'z') a = (char)(a - 32);
        if (b >= 'a' && b <= 'z') b = (char)(b - 32);
        if (a != b) return 0;
    }
    return 1;
}

static void r_arity(buf *b, const char *lname) {
    b_fmt(b, "-ERR wrong number of arguments for '%s' command\r\n", lname);
}

static void r_badmember(buf *b, const char *s, size_t n) {
    b_puts(b, "-ERR member is not a decimal uint64 id: '");
    b_put(b, s, n > 40 ? 40 : n);
    b_puts(b, "'\r\n");
}

#define E_NOTINT "value is not an integer or out of range"
#define E_OVERFLOW "increment or decrement would overflow"
#define E_BIG "value exceeds 256 bytes"
#define E_SYNTAX "syntax error"

/* Validates members a->s[from..]; on the first bad one writes the error. */
static int members_ok(const args *a, int from, buf *rep, uint64_t *ids) {
    int i;
    for (i = from; i < a->n; i++) {
        if (!parse_u64(a->s[i], a->l[i], &ids[i - from])) {
            r_badmember(rep, a->s[i], a->l[i]);
            return 0;
        }
    }
    return 1;
}

/* The model's interpreter for the commands the random streams use. */
static void model_exec(model *m, const args *a, buf *rep) {
    const char *c = a->s[0];
    size_t cl = a->l[0];
    int na = a->n - 1, i;
    uint64_t ids[ARGS_MAX];
#define IS(w) ieq(c, cl, w)
#define KEY(i) keyof(a->s[i], a->l[i])
    if (IS("PING")) {
        if (na > 1) r_arity(rep, "ping");
        else if (na == 1) r_bulk(rep, a->s[1], a->l[1]);
        else b_puts(rep, "+PONG\r\n");
    } else if (IS("ECHO")) {
        if (na != 1) r_arity(rep, "echo");
        else r_bulk(rep, a->s[1], a->l[1]);
    } else if (IS("SELECT")) {
        if (na != 1) r_arity(rep, "select");
        else if (a->l[1] == 1 && a->s[1][0] == '0') r_ok(rep);
        else r_err(rep, "DB index is out of range");
    } else if (IS("FLUSHALL")) {
        m_clear(m);
        r_ok(rep);
    } else if (IS("DBSIZE")) {
        if (na != 0) r_arity(rep, "dbsize");
        else r_int(rep, (int64_t)m_count(m));
    } else if (IS("GET")) {
        if (na != 1) r_arity(rep, "get");
        else {
            ment *e = m_find(m, KEY(1));
            if (e && e->hv) r_bulk(rep, e->v, e->vlen);
            else r_nil(rep);
        }
    } else if (IS("SET")) {
        int nx = 0, xx = 0, get = 0, bad = 0;
        if (na < 2) {
            r_arity(rep, "set");
            return;
        }
        for (i = 3; i < a->n; i++) {
            if (ieq(a->s[i], a->l[i], "NX")) nx = 1;
            else if (ieq(a->s[i], a->l[i], "XX")) xx = 1;
            else if (ieq(a->s[i], a->l[i], "GET")) get = 1;
            else bad = 1;
        }
        if (bad || (nx && xx)) {
            r_err(rep, E_SYNTAX);
        } else if (a->l[2] > KVIDX_VALUE_MAX) {
            r_err(rep, E_BIG);
        } else {
            uint64_t k = KEY(1);
            ment *e = m_find(m, k);
            int exists = e && e->hv;
            int stop = (nx && exists) || (xx && !exists);
            if (get) {
                if (exists) r_bulk(rep, e->v, e->vlen);
                else r_nil(rep);
            } else if (stop) {
                r_nil(rep);
            } else {
                r_ok(rep);
            }
            if (!stop) m_setv(m, k, a->s[2], a->l[2]);
        }
    } else if (IS("DEL")) {
        int64_t n = 0;
        if (na < 1) {
            r_arity(rep, "del");
            return;
        }
        for (i = 1; i < a->n; i++) {
            ment *e = m_find(m, KEY(i));
            if (m_live(e)) {
                n++;
                e->hv = 0;
                e->nids = 0;
            }
        }
        r_int(rep, n);
    } else if (IS("EXISTS")) {
        int64_t n = 0;
        if (na < 1) {
            r_arity(rep, "exists");
            return;
        }
        for (i = 1; i < a->n; i++) n += m_live(m_find(m, KEY(i)));
        r_int(rep, n);
    } else if (IS("MGET")) {
        if (na < 1) {
            r_arity(rep, "mget");
            return;
        }
        r_arr(rep, (size_t)na);
        for (i = 1; i < a->n; i++) {
            ment *e = m_find(m, KEY(i));
            if (e && e->hv) r_bulk(rep, e->v, e->vlen);
            else r_nil(rep);
        }
    } else if (IS("MSET")) {
        if (na < 2 || na % 2) {
            r_arity(rep, "mset");
            return;
        }
        for (i = 2; i < a->n; i += 2)
            if (a->l[i] > KVIDX_VALUE_MAX) {
                r_err(rep, E_BIG);
                return;
            }
        for (i = 1; i < a->n; i += 2) m_setv(m, KEY(i), a->s[i + 1], a->l[i + 1]);
        r_ok(rep);
    } else if (IS("INCR") || IS("DECR") || IS("INCRBY") || IS("DECRBY")) {
        int by = IS("INCRBY") || IS("DECRBY"), sub = IS("DECR") || IS("DECRBY");
        int64_t d = 1, cur = 0, r;
        ment *e;
        if (na != 1 + by) {
            r_arity(rep, IS("INCR") ? "incr" : IS("DECR") ? "decr" : IS("INCRBY") ? "incrby" : "decrby");
            return;
        }
        if (by && !parse_i64(a->s[2], a->l[2], &d)) {
            r_err(rep, E_NOTINT);
            return;
        }
        e = m_find(m, KEY(1));
        if (e && e->hv && !parse_i64((const char *)e->v, e->vlen, &cur)) {
            r_err(rep, E_NOTINT);
            return;
        }
        if (!add_i64(cur, d, sub, &r)) {
            r_err(rep, E_OVERFLOW);
            return;
        }
        {
            char t[32];
            int k = snprintf(t, sizeof t, "%" PRId64, r);
            m_setv(m, KEY(1), t, (size_t)k);
        }
        r_int(rep, r);
    } else if (IS("SADD") || IS("SREM")) {
        int add = IS("SADD");
        int64_t n = 0;
        ment *e;
        if (na < 2) {
            r_arity(rep, add ? "sadd" : "srem");
            return;
        }
        if (!members_ok(a, 2, rep, ids)) return;
        e = add ? m_get(m, KEY(1)) : m_find(m, KEY(1));
        for (i = 0; i < na - 1; i++) n += add ? m_add_id(e, ids[i]) : m_rem_id(e, ids[i]);
        r_int(rep, n);
    } else if (IS("SMEMBERS")) {
        ment *e;
        size_t j;
        if (na != 1) {
            r_arity(rep, "smembers");
            return;
        }
        e = m_find(m, KEY(1));
        r_arr(rep, e ? e->nids : 0);
        for (j = 0; e && j < e->nids; j++) r_u64(rep, e->ids[j]);
    } else if (IS("SCARD")) {
        ment *e;
        if (na != 1) {
            r_arity(rep, "scard");
            return;
        }
        e = m_find(m, KEY(1));
        r_int(rep, e ? (int64_t)e->nids : 0);
    } else if (IS("SISMEMBER")) {
        if (na != 2) {
            r_arity(rep, "sismember");
            return;
        }
        if (!members_ok(a, 2, rep, ids)) return;
        r_int(rep, m_has_id(m_find(m, KEY(1)), ids[0]));
    } else if (IS("SMISMEMBER")) {
        ment *e;
        if (na < 2) {
            r_arity(rep, "smismember");
            return;
        }
        if (!members_ok(a, 2, rep, ids)) return;
        e = m_find(m, KEY(1));
        r_arr(rep, (size_t)(na - 1));
        for (i = 0; i < na - 1; i++) r_int(rep, m_has_id(e, ids[i]));
    } else if (IS("SINTER")) {
        const ment *first;
        size_t j, cnt = 0;
        buf tmp = {0};
        if (na < 1) {
            r_arity(rep, "sinter");
            return;
        }
        first = m_find(m, KEY(1));
        for (j = 0; first && j < first->nids; j++) {
            int all = 1;
            for (i = 2; i < a->n && all; i++) all = m_has_id(m_find(m, KEY(i)), first->ids[j]);
            if (all) {
                r_u64(&tmp, first->ids[j]);
                cnt++;
            }
        }
        r_arr(rep, cnt);
        b_put(rep, tmp.p, tmp.n);
        b_free(&tmp);
    } else if (IS("TYPE")) {
        ment *e;
        if (na != 1) {
            r_arity(rep, "type");
            return;
        }
        e = m_find(m, KEY(1));
        b_puts(rep, e && e->hv ? "+string\r\n" : e && e->nids ? "+set\r\n" : "+none\r\n");
    } else if (IS("SCAN")) { /* only SCAN 0 COUNT 100000 */
        size_t n, j;
        uint64_t *k = m_keys(m, &n);
        b_puts(rep, "*2\r\n$1\r\n0\r\n");
        r_arr(rep, n);
        for (j = 0; j < n; j++) r_u64(rep, k[j]);
        free(k);
    } else if (IS("SSCAN")) { /* only SSCAN key 0 COUNT 100000 */
        ment *e = m_find(m, KEY(1));
        size_t j;
        b_puts(rep, "*2\r\n$1\r\n0\r\n");
        r_arr(rep, e ? e->nids : 0);
        for (j = 0; e && j < e->nids; j++) r_u64(rep, e->ids[j]);
    } else {
        b_puts(rep, "-ERR unknown command '");
        b_put(rep, c, cl > 40 ? 40 : cl);
        b_puts(rep, "'\r\n");
    }
#undef IS
#undef KEY
}

/* ---- random requests ---------------------------------------------------------- */

static int g_small; /* short values and few arguments (the every-split stream) */

typedef struct {
    const char *s;
    size_t n;
} sv;

static const sv special_keys[] = {
    {"18446744073709551615", 20}, {"18446744073709551616", 20}, {"user:1", 6}, {"user:2", 6},
    {"", 0}, {"-1", 2}, {"+5", 2}, {"a b", 3}, {"q\"x'y", 5}, {"\x01\xfe\\", 3},
    {"000000000000000000007", 21}, {"cr\r\nlf", 6}, {"n\0ul", 4}, {"00000000000000000007", 20},
};

static void gen_key(args *a) {
    if (t_below(100) < 85) {
        unsigned k = (unsigned)t_below(g_small ? 8 : 24);
        int w = t_below(4) == 0 ? (int)t_below(5) + 1 : 0;
        a_fmt(a, "%0*u", w, k);
    } else {
        const sv *s = &special_keys[t_below(sizeof special_keys / sizeof *special_keys)];
        a_add(a, s->s, s->n);
    }
}

static void gen_bytes(char *t, size_t n, int printable) {
    size_t i;
    for (i = 0; i < n; i++)
        t[i] = printable ? (char)('a' + t_below(26)) : (char)t_below(256);
}

static void gen_val(args *a) {
    char t[ARG_CAP];
    uint64_t r = t_below(100);
    size_t n;
    if (r < 40 || (g_small && r < 60)) {
        n = t_below(g_small ? 6 : 13);
        gen_bytes(t, n, 1);
    } else if (r < 55) {
        n = t_below(g_small ? 8 : 257);
        gen_bytes(t, n, 0);
    } else if (r < 80) {
        static const char *const lim[] = {"9223372036854775807", "-9223372036854775808",
                                          "9223372036854775806", "-9223372036854775807"};
        if (t_below(8) == 0) n = (size_t)snprintf(t, sizeof t, "%s", lim[t_below(4)]);
        else n = (size_t)snprintf(t, sizeof t, "%d", (int)t_below(101) - 50);
    } else if (r < 85) {
        static const char *const odd[] = {"007", "+3", " 4", "4 ", "1.5", "", "abc", "00",
                                          "123456789012345678901", "99999999999999999999"};
        n = (size_t)snprintf(t, sizeof t, "%s", odd[t_below(10)]);
    } else if (r < 90) {
        n = g_small ? 3 : KVIDX_VALUE_MAX;
        gen_bytes(t, n, t_below(2) != 0);
    } else if (r < 93) {
        n = g_small ? 257 : 257 + t_below(44);
        gen_bytes(t, n, 1);
    } else {
        n = (size_t)snprintf(t, sizeof t, "hello world\t%u", (unsigned)t_below(10));
    }
    a_add(a, t, n);
}

static void gen_id(args *a) {
    uint64_t r = t_below(100);
    if (r < 92) {
        unsigned k = (unsigned)t_below(g_small ? 10 : 40);
        int w = t_below(5) == 0 ? (int)t_below(4) + 1 : 0;
        a_fmt(a, "%0*u", w, k);
    } else if (r < 96) {
        a_str(a, "18446744073709551615");
    } else {
        static const sv bad[] = {{"abc", 3}, {"-1", 2}, {"", 0}, {"18446744073709551616", 20},
                                 {"000000000000000000001", 21}, {"1 ", 2}, {"+1", 2},
                                 {"xxxxxxxxxxyyyyyyyyyyzzzzzzzzzzwwwwwwwwwwvvvvv", 45}};
        const sv *s = &bad[t_below(sizeof bad / sizeof *bad)];
        a_add(a, s->s, s->n);
    }
}

static void gen_amount(args *a, int decr) {
    uint64_t r = t_below(100);
    if (r < 82) {
        a_fmt(a, "%d", (int)t_below(201) - 100);
    } else if (r < 92) {
        static const char *const lim[] = {"9223372036854775807", "-9223372036854775807",
                                          "-9223372036854775808"};
        a_str(a, lim[t_below(decr ? 2 : 3)]);
    } else {
        static const char *const bad[] = {"1.5", "+1", "01", "abc", "", "99999999999999999999",
                                          "-", " 1"};
        a_str(a, bad[t_below(8)]);
    }
}

static void name(args *a, const char *cmd) {
    char t[64];
    size_t i, n = strlen(cmd);
    for (i = 0; i < n; i++) {
        char ch = cmd[i];
        if (ch >= 'A' && ch <= 'Z' && t_below(4) == 0) ch = (char)(ch + 32);
        t[i] = ch;
    }
    a_add(a, t, n);
}

/* One random request into a. */
static void gen_request(args *a) {
    int i, k;
    a->n = 0;
    switch (t_below(30)) {
    case 0:
        name(a, "PING");
        if (t_below(3) == 0) gen_val(a);
        if (a->n == 2 && a->l[1] > 64) a->l[1] = 64;
        break;
    case 1:
        name(a, "ECHO");
        gen_val(a);
        break;
    case 2: case 3: case 4: {
        name(a, "SET");
        gen_key(a);
        gen_val(a);
        k = (int)t_below(8);
        if (k == 1) name(a, "NX");
        if (k == 2) name(a, "XX");
        if (k == 3) name(a, "GET");
        if (k == 4) { name(a, "NX"); name(a, "GET"); }
        if (k == 5) { name(a, "XX"); name(a, "GET"); }
        if (k == 6 && t_below(4) == 0) {
            a_str(a, "FOO");
            if (a->l[2] > KVIDX_VALUE_MAX) a->l[2] = 10;
        }
        break;
    }
    case 5: case 6:
        name(a, "GET");
        gen_key(a);
        break;
    case 7:
        name(a, "DEL");
        for (k = (int)t_below(3) + 1, i = 0; i < k; i++) gen_key(a);
        break;
    case 8:
        name(a, "EXISTS");
        for (k = (int)t_below(3) + 1, i = 0; i < k; i++) gen_key(a);
        break;
    case 9:
        name(a, "MGET");
        for (k = (int)t_below(4) + 1, i = 0; i < k; i++) gen_key(a);
        break;
    case 10:
        name(a, "MSET");
        for (k = (int)t_below(3) + 1, i = 0; i < k; i++) {
            gen_key(a);
            gen_val(a);
        }
        if (t_below(10) == 0) {
            gen_key(a); /* odd: arity error; keep the values small */
            for (i = 2; i < a->n; i += 2)
                if (a->l[i] > KVIDX_VALUE_MAX) a->l[i] = 5;
        }
        break;
    case 11: case 12:
        name(a, t_below(2) ? "INCR" : "DECR");
        gen_key(a);
        break;
    case 13: case 14:
        k = (int)t_below(2);
        name(a, k ? "INCRBY" : "DECRBY");
        gen_key(a);
        gen_amount(a, !k);
        break;
    case 15: case 16: case 17:
        name(a, "SADD");
        gen_key(a);
        for (k = (int)t_below(g_small ? 3 : 5) + 1, i = 0; i < k; i++) gen_id(a);
        break;
    case 18:
        name(a, "SREM");
        gen_key(a);
        for (k = (int)t_below(4) + 1, i = 0; i < k; i++) gen_id(a);
        break;
    case 19:
        name(a, "SMEMBERS");
        gen_key(a);
        break;
    case 20:
        name(a, "SCARD");
        gen_key(a);
        break;
    case 21:
        name(a, "SISMEMBER");
        gen_key(a);
        gen_id(a);
        break;
    case 22:
        name(a, "SMISMEMBER");
        gen_key(a);
        for (k = (int)t_below(4) + 1, i = 0; i < k; i++) gen_id(a);
        break;
    case 23:
        name(a, "SINTER");
        for (k = (int)t_below(3) + 1, i = 0; i < k; i++) gen_key(a);
        break;
    case 24:
        name(a, "TYPE");
        gen_key(a);
        break;
    case 25:
        name(a, t_below(2) ? "DBSIZE" : "SELECT");
        if (a->s[0][1] == 'E' || a->s[0][1] == 'e') a_str(a, "0");
        break;
    case 26:
        if (t_below(2)) {
            name(a, "SCAN");
            a_str(a, "0");
        } else {
            name(a, "SSCAN");
            gen_key(a);
            a_str(a, "0");
        }
        name(a, "COUNT");
        a_str(a, "100000");
        break;
    case 27: { /* wrong arity */
        static const char *const cmds[] = {"GET", "SET", "INCRBY", "SISMEMBER", "SADD", "ECHO",
                                           "TYPE", "SCARD", "DEL", "MGET"};
        static const int argn[] = {2, 1, 1, 3, 1, 2, 0, 2, 0, 0};
        k = (int)t_below(10);
        name(a, cmds[k]);
        for (i = 0; i < argn[k]; i++) gen_key(a);
        break;
    }
    case 28: {
        static const char *const unk[] = {"NOPE", "GETX", "hget", "SUNIONSTORE", "x"};
        a_str(a, unk[t_below(5)]);
        if (t_below(2)) gen_key(a);
        break;
    }
    default:
        name(a, "GET");
        gen_key(a);
        break;
    }
}

typedef struct {
    buf req, rep;
    size_t nreq;
} stream;

/* Appends n random requests (RESP or inline) and the model's replies. */
static void gen_stream(stream *st, model *m, size_t n, int inline_pct) {
    args *a = xmalloc(sizeof *a);
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t r = t_below(100);
        if (r < 2) { /* requests that get no reply */
            static const char *const none[] = {"\r\n", "*0\r\n", "*-1\r\n", "\n"};
            b_puts(&st->req, none[t_below(4)]);
        }
        gen_request(a);
        model_exec(m, a, &st->rep);
        if ((int)t_below(100) < inline_pct) enc_inline(&st->req, a, 1);
        else enc_resp(&st->req, a);
        st->nreq++;
    }
    free(a);
}

static void stream_flushall(stream *st, model *m) {
    args *a = xmalloc(sizeof *a);
    a->n = 0;
    a_str(a, "FLUSHALL");
    model_exec(m, a, &st->rep);
    enc_resp(&st->req, a);
    st->nreq++;
    free(a);
}

static void stream_free(stream *st) {
    b_free(&st->req);
    b_free(&st->rep);
}

/* ---- databases -------------------------------------------------------------- */

static char g_dirs[8][4096];
static int g_ndirs;

static kvidx *db_open(const char *nm) {
    kvidx_options o;
    kvidx *db = NULL;
    int rc;
    const char *d = t_dir(nm);
    kvidx_options_init(&o);
    o.sync_interval_ms = 0;
    o.shards = 4;
    rc = kvidx_open(d, &o, &db);
    if (rc != KVIDX_OK) {
        pfail(__LINE__, "kvidx_open %s: %d (%s)", d, rc, kvidx_strerror(rc));
        return NULL;
    }
    if (g_ndirs < 8) snprintf(g_dirs[g_ndirs++], sizeof g_dirs[0], "%s", d);
    return db;
}

static void db_close(kvidx *db) {
    int rc = kvidx_close(db);
    if (rc != KVIDX_OK) pfail(__LINE__, "kvidx_close: %d", rc);
    while (g_ndirs > 0) t_rmrf(g_dirs[--g_ndirs]);
}

/* kvidx_get of key: 1 and its bytes in v/n, or 0 if absent. */
static int cget(kvidx *db, uint64_t key, char *v, size_t *n) {
    int rc = kvidx_get(db, key, v, KVIDX_VALUE_MAX, n);
    if (rc == KVIDX_OK) {
        v[*n] = 0;
        return 1;
    }
    if (rc != KVIDX_NOTFOUND) pfail(__LINE__, "kvidx_get %" PRIu64 ": %d", key, rc);
    return 0;
}

/* key's value must be want (want NULL: absent). */
static void check_val(int line, kvidx *db, uint64_t key, const char *want, size_t wn) {
    char v[KVIDX_VALUE_MAX + 1];
    size_t n = 0;
    int h = cget(db, key, v, &n);
    if (!want) {
        if (h) pfail(line, "kvidx_get %" PRIu64 ": \"%s\", want absent", key, esc_r(v, n, 80, g_e1, sizeof g_e1));
    } else if (!h || n != wn || memcmp(v, want, n)) {
        pfail(line, "kvidx_get %" PRIu64 ": %s \"%s\", want \"%s\"", key, h ? "value" : "absent",
              esc_r(v, h ? n : 0, 80, g_e1, sizeof g_e1), esc_r(want, wn, 80, g_e2, sizeof g_e2));
    }
}

#define CHECK_VAL(db, key, want) check_val(__LINE__, (db), (key), (want), strlen(want))
#define CHECK_NOVAL(db, key) check_val(__LINE__, (db), (key), NULL, 0)

/* The ids of key's list must be exactly want[0..n). */
static void check_ids(int line, kvidx *db, uint64_t key, const uint64_t *want, size_t n) {
    uint64_t got[256];
    size_t gn = 0;
    int rc = kvidx_list_get(db, key, 0, got, 256, &gn);
    if (n == 0) {
        if (rc != KVIDX_NOTFOUND) pfail(line, "kvidx_list_get %" PRIu64 ": %d, want NOTFOUND", key, rc);
        return;
    }
    if (rc != KVIDX_OK || gn != n || memcmp(got, want, n * sizeof *want))
        pfail(line, "kvidx_list_get %" PRIu64 ": rc %d, %zu ids (first %" PRIu64 "), want %zu", key, rc,
              gn, gn ? got[0] : 0, n);
}

#define CHECK_IDS(db, key, ...)                                                  \
    do {                                                                         \
        const uint64_t w_[] = {__VA_ARGS__};                                     \
        check_ids(__LINE__, (db), (key), w_, sizeof w_ / sizeof *w_);            \
    } while (0)
#define CHECK_NOLIST(db, key) check_ids(__LINE__, (db), (key), NULL, 0)

/* ---- reply parsing (for replies whose exact bytes the test cannot know) --- */

typedef struct {
    const char *p, *end;
} rd;

static int rd_line(rd *r, char lead, int64_t *num) {
    const char *q;
    char t[32];
    size_t n;
    if (r->p >= r->end || *r->p != lead) return 0;
    q = r->p + 1;
    while (q + 1 < r->end && !(q[0] == '\r' && q[1] == '\n')) q++;
    if (q + 1 >= r->end) return 0;
    n = (size_t)(q - r->p - 1);
    if (n == 0 || n >= sizeof t) return 0;
    memcpy(t, r->p + 1, n);
    t[n] = 0;
    if (!parse_i64(t, n, num)) return 0;
    r->p = q + 2;
    return 1;
}

/* A bulk string holding a decimal uint64. */
static int rd_u64bulk(rd *r, uint64_t *v) {
    int64_t len;
    if (!rd_line(r, '$', &len) || len < 1 || len > 20 || r->end - r->p < len + 2) return 0;
    if (!parse_u64(r->p, (size_t)len, v)) return 0;
    r->p += len;
    if (r->p[0] != '\r' || r->p[1] != '\n') return 0;
    r->p += 2;
    return 1;
}

/* A whole SCAN/SSCAN reply: [cursor, [ids]]; ids up to cap. */
static int parse_scan(const char *s, size_t n, uint64_t *cursor, uint64_t *ids, size_t cap, size_t *nids) {
    rd r;
    int64_t k, i;
    r.p = s;
    r.end = s + n;
    if (!rd_line(&r, '*', &k) || k != 2) return 0;
    if (!rd_u64bulk(&r, cursor)) return 0;
    if (!rd_line(&r, '*', &k) || k < 0 || (size_t)k > cap) return 0;
    for (i = 0; i < k; i++)
        if (!rd_u64bulk(&r, &ids[i])) return 0;
    *nids = (size_t)k;
    return r.p == r.end;
}

/* The body of a bulk string reply that must be the whole of s. */
static const char *bulk_body(int line, const char *s, size_t n, size_t *len) {
    rd r;
    int64_t l;
    r.p = s;
    r.end = s + n;
    if (!rd_line(&r, '$', &l) || l < 0 || r.end - r.p != l + 2 || r.p[l] != '\r' || r.p[l + 1] != '\n') {
        pfail(line, "not a single bulk string: \"%s\"", esc_r(s, n, 120, g_e1, sizeof g_e1));
        *len = 0;
        return "";
    }
    *len = (size_t)l;
    return r.p;
}

static int has(const char *hay, size_t n, const char *needle) {
    size_t k = strlen(needle), i;
    for (i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return 1;
    return 0;
}

/* A reply that must be a single error line "-ERR ...\r\n". */
static void check_err_line(int line, const char *s, size_t n, const char *prefix) {
    size_t i;
    int ok = n >= 7 && memcmp(s, prefix, strlen(prefix)) == 0 && s[n - 2] == '\r' && s[n - 1] == '\n';
    for (i = 0; ok && i + 2 < n; i++)
        if (s[i] == '\r' || s[i] == '\n') ok = 0;
    if (!ok) pfail(line, "want one error line starting \"%s\", got \"%s\"", prefix, esc_r(s, n, 200, g_e1, sizeof g_e1));
}

#define ARITY(name) "-ERR wrong number of arguments for '" name "' command\r\n"
#define ERR(msg) "-ERR " msg "\r\n"

/* ---- test cases ------------------------------------------------------------ */

static void test_session_api(void) {
    kvidx *db = db_open("proto_api");
    kvidx_transport t;
    kvidx_session *s = NULL;
    sink k;
    conn c;
    REQUIRE(db);
    memset(&t, 0, sizeof t);
    memset(&k, 0, sizeof k);
    k.fail_after = -1;
    t.ctx = &k;
    t.write = sink_write;
    CHECK_RC(kvidx_session_open(NULL, &t, &s), KVIDX_EINVAL);
    CHECK_RC(kvidx_session_open(db, NULL, &s), KVIDX_EINVAL);
    CHECK_RC(kvidx_session_open(db, &t, NULL), KVIDX_EINVAL);
    t.write = NULL;
    CHECK_RC(kvidx_session_open(db, &t, &s), KVIDX_EINVAL);
    t.write = sink_write;
    CHECK_RC(kvidx_session_feed(NULL, "PING\r\n", 6), KVIDX_EINVAL);
    kvidx_session_close(NULL);
    CHECK_RC(kvidx_serve(db, NULL), KVIDX_EINVAL);
    CHECK_RC(kvidx_serve(db, &t), KVIDX_EINVAL); /* t.read NULL */
    CHECK(k.calls == 0);

    if (c_open(&c, db, 0) == KVIDX_OK) {
        XR(&c, "", "");
        XR(&c, "PI", "");
        XR(&c, "NG\r", "");
        CHECK(c.k.calls == 0); /* nothing to say: no write call */
        XR(&c, "\n", "+PONG\r\n");
        CHECK(c.k.calls == 1);
        XR(&c, "*1\r\n$4\r\nPI", "");
        XR(&c, "NG\r\n*1\r\n", "+PONG\r\n");
        XR(&c, "$4\r\nPING\r\n", "+PONG\r\n");
        CHECK(c.k.calls == 3);
        c_close(&c);
    }
    db_close(db);
}

static void test_server_commands(void) {
    kvidx *db = db_open("proto_server");
    conn c, c2;
    const char *r;
    size_t bn;
    const char *b;
    long long id1 = -1, id2 = -1;
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    REQUIRE(c_open(&c2, db, 0) == KVIDX_OK);

    EX(&c, "+PONG\r\n", "PING");
    EX(&c, "+PONG\r\n", "ping");
    EX(&c, "$5\r\nhello\r\n", "PING", "hello");
    EX(&c, "$0\r\n\r\n", "PING", "");
    EX(&c, ARITY("ping"), "PING", "a", "b");
    EX(&c, "$3\r\nabc\r\n", "ECHO", "abc");
    EX(&c, "$0\r\n\r\n", "eChO", "");
    EX(&c, ARITY("echo"), "ECHO");
    EX(&c, ARITY("echo"), "ECHO", "a", "b");
    EX(&c, "+OK\r\n", "SELECT", "0");
    EX(&c, ERR("DB index is out of range"), "SELECT", "1");
    EX(&c, ERR("DB index is out of range"), "select", "15");
    EX(&c, ARITY("select"), "SELECT");
    EX(&c, ARITY("select"), "SELECT", "0", "1");
    EX(&c, ":0\r\n", "DBSIZE");
    EX(&c, ARITY("dbsize"), "DBSIZE", "x");
    EX(&c, "*0\r\n", "COMMAND");
    EX(&c, "*0\r\n", "COMMAND", "DOCS");
    EX(&c, "*0\r\n", "command", "docs", "get", "set");
    EX(&c, "*0\r\n", "COMMAND", "INFO", "get");
    EX(&c, "*0\r\n", "COMMAND", "LIST");
    /* "the number of commands in this table": the table names 31 commands
     * (PING ECHO QUIT SELECT DBSIZE INFO COMMAND CONFIG CLIENT GET SET DEL
     * EXISTS MGET MSET INCR DECR INCRBY DECRBY SCAN TYPE SADD SREM SMEMBERS
     * SCARD SISMEMBER SMISMEMBER SINTER SSCAN FLUSHALL FLUSHDB) */
    EX(&c, ":31\r\n", "COMMAND", "COUNT");
    EX(&c, "*0\r\n", "CONFIG", "GET", "save");
    EX(&c, "*0\r\n", "CONFIG", "GET", "save", "appendonly");
    EX(&c, ERR("CONFIG SET is not supported"), "CONFIG", "SET", "save", "");
    EX(&c, ERR("CONFIG RESETSTAT is not supported"), "CONFIG", "RESETSTAT");
    EX(&c, ERR("CONFIG REWRITE is not supported"), "CONFIG", "REWRITE");

    EX(&c, "*0\r\n", "COMMAND", "GETKEYS", "GET", "1");
    EX(&c, ERR("CLIENT LIST is not supported"), "CLIENT", "LIST");
    EX(&c, ERR("CLIENT KILL is not supported"), "CLIENT", "KILL", "1.2.3.4:5");
    EX(&c, ERR("unknown command 'MULTI'"), "MULTI");
    EX(&c, ERR("unknown command 'EXEC'"), "EXEC");
    EX(&c, ERR("unknown command 'HELLO'"), "HELLO", "3");
    EX(&c, ERR("unknown command 'AUTH'"), "AUTH", "pw");
    EX(&c, ERR("unknown command 'TTL'"), "TTL", "1");
    EX(&c, "$-1\r\n", "CLIENT", "GETNAME");
    EX(&c, "+OK\r\n", "CLIENT", "SETNAME", "conn1");
    EX(&c, "$5\r\nconn1\r\n", "CLIENT", "GETNAME");
    EX(&c, "+OK\r\n", "client", "setinfo", "lib-name", "redis-py");
    EX(&c, "+OK\r\n", "CLIENT", "SETINFO", "lib-ver", "5.0.1");
    EX(&c, "$5\r\nconn1\r\n", "CLIENT", "GETNAME");
    EX(&c2, "$-1\r\n", "CLIENT", "GETNAME"); /* names are per session */
    r = GETR(&c, "CLIENT", "ID");
    CHECK(sscanf(r, ":%lld\r\n", &id1) == 1 && r[strlen(r) - 1] == '\n');
    r = GETR(&c2, "CLIENT", "ID");
    CHECK(sscanf(r, ":%lld\r\n", &id2) == 1);
    if (id1 == id2) pfail(__LINE__, "CLIENT ID: both sessions have id %lld", id1);
    r = GETR(&c, "CLIENT", "ID");
    CHECK(r[0] == ':' && atoll(r + 1) == id1); /* stable within a session */

    /* INFO: 2 keys with values, 2 lists, key 2 holds both: DBSIZE 3,
     * db0:keys=4 */
    EX(&c, "+OK\r\n", "SET", "1", "a");
    EX(&c, "+OK\r\n", "SET", "2", "b");
    EX(&c, ":1\r\n", "SADD", "2", "5");
    EX(&c, ":2\r\n", "SADD", "3", "7", "8");
    EX(&c, ":3\r\n", "DBSIZE");
    r = GETR(&c, "INFO");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    {
        static const char *const want[] = {"# Server", "redis_version:7.0.0", "kvidx_version:",
                                           "redis_mode:standalone", "process_id:", "uptime_in_seconds:",
                                           "# Clients", "connected_clients:2", "# Memory", "used_memory:",
                                           "kvidx_map_bytes:", "kvidx_list_ram_bytes:", "# Persistence",
                                           "loading:0", "kvidx_syncs:", "kvidx_disk_bytes:", "# Stats",
                                           "total_connections_received:", "total_commands_processed:",
                                           "keyspace_hits:", "keyspace_misses:", "kvidx_puts:",
                                           "kvidx_deletes:", "kvidx_list_writes:", "kvidx_compactions:",
                                           "# Keyspace", "db0:keys=4,expires=0,avg_ttl=0", "kvidx_keys:2",
                                           "kvidx_lists:2", "kvidx_list_ids:3", "kvidx_shards:4"};
        size_t i;
        for (i = 0; i < sizeof want / sizeof *want; i++)
            if (!has(b, bn, want[i])) pfail(__LINE__, "INFO lacks \"%s\"", want[i]);
    }
    {
        static const char *const secs[] = {"all", "everything", "default", "ALL"};
        size_t i;
        for (i = 0; i < 4; i++) {
            r = GETR(&c, "INFO", secs[i]);
            b = bulk_body(__LINE__, r, c.k.out.n, &bn);
            if (!has(b, bn, "redis_version:7.0.0") || !has(b, bn, "connected_clients:2") ||
                !has(b, bn, "db0:keys=4,") || !has(b, bn, "kvidx_list_ids:3") || !has(b, bn, "used_memory:") ||
                !has(b, bn, "loading:0") || !has(b, bn, "keyspace_hits:"))
                pfail(__LINE__, "INFO %s lacks a section", secs[i]);
        }
    }
    r = GETR(&c, "INFO", "server");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "# Server") && has(b, bn, "redis_version:7.0.0"));
    CHECK(!has(b, bn, "connected_clients:") && !has(b, bn, "db0:"));
    r = GETR(&c, "INFO", "keyspace");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "# Keyspace") && has(b, bn, "db0:keys=4,expires=0,avg_ttl=0"));
    CHECK(!has(b, bn, "redis_version:"));
    r = GETR(&c, "INFO", "clients", "KEYSPACE");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "connected_clients:2") && has(b, bn, "db0:keys=4"));
    CHECK(!has(b, bn, "redis_version:") && !has(b, bn, "used_memory:"));
    r = GETR(&c, "INFO", "kvidx");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "kvidx_keys:2") && has(b, bn, "kvidx_lists:2") && has(b, bn, "kvidx_list_ids:3"));
    CHECK(!has(b, bn, "redis_version:"));
    r = GETR(&c, "INFO", "memory");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "used_memory:") && !has(b, bn, "db0:"));
    r = GETR(&c, "INFO", "stats");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "total_commands_processed:") && !has(b, bn, "db0:"));
    r = GETR(&c, "INFO", "persistence");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "loading:0") && !has(b, bn, "db0:"));

    /* QUIT: +OK, KVIDX_CLOSED, what follows in the same feed is not run,
     * later feeds are refused and write nothing */
    XS(&c2, "*1\r\n$4\r\nQUIT\r\nSET 5 x\r\n", "+OK\r\n", KVIDX_CLOSED);
    c2.k.out.n = 0;
    CHECK(kvidx_session_feed(c2.s, "PING\r\n", 6) != KVIDX_OK);
    CHECK(c2.k.out.n == 0);
    CHECK_NOVAL(db, 5);
    c_close(&c2);
    r = GETR(&c, "INFO", "clients");
    b = bulk_body(__LINE__, r, c.k.out.n, &bn);
    CHECK(has(b, bn, "connected_clients:1"));
    XS(&c, "quit\n", "+OK\r\n", KVIDX_CLOSED);
    c_close(&c);
    db_close(db);
}

static void test_strings(void) {
    kvidx *db = db_open("proto_strings");
    conn c;
    char big[65537];
    args *a = xmalloc(sizeof *a);
    buf req = {0};
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);

    EX(&c, "+OK\r\n", "SET", "1", "hello");
    EX(&c, "$5\r\nhello\r\n", "GET", "1");
    CHECK_VAL(db, 1, "hello");
    EX(&c, "+OK\r\n", "set", "1", "");
    EX(&c, "$0\r\n\r\n", "GET", "1");
    CHECK_VAL(db, 1, "");
    EX(&c, "$-1\r\n", "GET", "9");
    EX(&c, ARITY("get"), "GET");
    EX(&c, ARITY("get"), "GET", "1", "2");
    EX(&c, ARITY("set"), "SET");
    EX(&c, ARITY("set"), "SET", "1");

    /* NX / XX / GET */
    EX(&c, "+OK\r\n", "SET", "2", "v", "NX");
    EX(&c, "$-1\r\n", "SET", "2", "w", "NX");
    CHECK_VAL(db, 2, "v");
    EX(&c, "$-1\r\n", "SET", "3", "v", "XX");
    CHECK_NOVAL(db, 3);
    EX(&c, "+OK\r\n", "SET", "2", "w", "XX");
    CHECK_VAL(db, 2, "w");
    EX(&c, "$1\r\nw\r\n", "SET", "2", "x", "GET");
    CHECK_VAL(db, 2, "x");
    EX(&c, "$-1\r\n", "SET", "4", "y", "GET");
    CHECK_VAL(db, 4, "y");
    EX(&c, "$1\r\nx\r\n", "SET", "2", "z", "NX", "GET"); /* stopped, old value */
    CHECK_VAL(db, 2, "x");
    EX(&c, "$-1\r\n", "SET", "5", "q", "XX", "GET"); /* stopped, no old value */
    CHECK_NOVAL(db, 5);
    EX(&c, "$-1\r\n", "SET", "5", "q", "NX", "GET"); /* stored, no old value */
    CHECK_VAL(db, 5, "q");
    EX(&c, "$1\r\nx\r\n", "SET", "2", "z", "xx", "get");
    CHECK_VAL(db, 2, "z");
    EX(&c, "$-1\r\n", "set", "2", "a", "nx");
    CHECK_VAL(db, 2, "z");
    EX(&c, ERR(E_SYNTAX), "SET", "2", "a", "FOO");
    EX(&c, ERR(E_SYNTAX), "SET", "2", "a", "NX", "BAR");
    {
        const char *r_ = GETR(&c, "SET", "2", "a", "NX", "XX");
        check_err_line(__LINE__, r_, c.k.out.n, "-ERR ");
    }
    EX(&c, ERR("SET option 'EX' is not supported: kvidx keys do not expire"), "SET", "2", "a", "EX", "10");
    EX(&c, ERR("SET option 'PX' is not supported: kvidx keys do not expire"), "SET", "2", "a", "PX", "10");
    EX(&c, ERR("SET option 'EXAT' is not supported: kvidx keys do not expire"), "SET", "2", "a", "EXAT", "1");
    EX(&c, ERR("SET option 'PXAT' is not supported: kvidx keys do not expire"), "SET", "2", "a", "PXAT", "1");
    EX(&c, ERR("SET option 'KEEPTTL' is not supported: kvidx keys do not expire"), "SET", "2", "a", "KEEPTTL");
    {
        const char *r_ = GETR(&c, "SET", "2", "a", "ex", "10");
        check_err_line(__LINE__, r_, c.k.out.n, "-ERR SET option '");
    }
    CHECK_VAL(db, 2, "z");

    /* 256 bytes: stored; 257 and 65536: refused, nothing changes */
    memset(big, 'b', sizeof big);
    a->n = 0;
    a_str(a, "SET");
    a_str(a, "2");
    a_add(a, big, 256);
    enc_resp(&req, a);
    x_raw(&c, __LINE__, req.p, req.n, "+OK\r\n", sizeof("+OK\r\n") - 1, KVIDX_OK);
    {
        char v[257];
        size_t n = 0;
        CHECK(cget(db, 2, v, &n) && n == 256 && memcmp(v, big, 256) == 0);
    }
    EX(&c, "+OK\r\n", "SET", "2", "z");
    req.n = 0;
    a->n = 0;
    a_str(a, "SET");
    a_str(a, "2");
    a_add(a, big, 257);
    enc_resp(&req, a);
    x_raw(&c, __LINE__, req.p, req.n, ERR(E_BIG), strlen(ERR(E_BIG)), KVIDX_OK);
    req.n = 0;
    {
        const char *argv[3] = {"SET", "6", big};
        size_t lens[3] = {3, 1, 65536};
        enc_resp_raw(&req, 3, argv, lens);
        x_raw(&c, __LINE__, req.p, req.n, ERR(E_BIG), strlen(ERR(E_BIG)), KVIDX_OK);
        req.n = 0;
        argv[0] = "ECHO";
        argv[1] = big;
        lens[0] = 4;
        lens[1] = 65536;
        enc_resp_raw(&req, 2, argv, lens); /* a 65,536-byte bulk is within the limit */
        c.k.out.n = 0;
        CHECK(kvidx_session_feed(c.s, req.p, req.n) == KVIDX_OK);
        CHECK(c.k.out.n == 65536 + 10 && memcmp(c.k.out.p, "$65536\r\n", 8) == 0 &&
              memcmp(c.k.out.p + 8, big, 65536) == 0);
        req.n = 0;
    }
    CHECK_VAL(db, 2, "z");
    CHECK_NOVAL(db, 6);

    /* DEL EXISTS MGET */
    EX(&c, ":1\r\n", "EXISTS", "2");
    EX(&c, ":3\r\n", "EXISTS", "2", "2", "4", "99");
    EX(&c, ":0\r\n", "EXISTS", "99");
    EX(&c, ARITY("exists"), "EXISTS");
    EX(&c, "*4\r\n$1\r\nz\r\n$-1\r\n$1\r\ny\r\n$0\r\n\r\n", "MGET", "2", "99", "4", "1");
    EX(&c, ARITY("mget"), "MGET");
    EX(&c, ":2\r\n", "DEL", "2", "99", "4", "02");
    CHECK_NOVAL(db, 2);
    CHECK_NOVAL(db, 4);
    EX(&c, ":0\r\n", "DEL", "2");
    EX(&c, ARITY("del"), "DEL");
    EX(&c, "$-1\r\n", "GET", "2");

    /* MSET: every pair checked first */
    EX(&c, "+OK\r\n", "MSET", "10", "a", "11", "b", "12", "c");
    CHECK_VAL(db, 10, "a");
    CHECK_VAL(db, 11, "b");
    CHECK_VAL(db, 12, "c");
    req.n = 0;
    {
        const char *argv[7] = {"MSET", "10", "A", "13", big, "12", "C"};
        size_t lens[7] = {4, 2, 1, 2, 257, 2, 1};
        enc_resp_raw(&req, 7, argv, lens);
        x_raw(&c, __LINE__, req.p, req.n, ERR(E_BIG), strlen(ERR(E_BIG)), KVIDX_OK);
        req.n = 0;
    }
    CHECK_VAL(db, 10, "a");
    CHECK_NOVAL(db, 13);
    CHECK_VAL(db, 12, "c");
    EX(&c, ARITY("mset"), "MSET");
    EX(&c, ARITY("mset"), "MSET", "10");
    EX(&c, ARITY("mset"), "MSET", "10", "X", "11");
    CHECK_VAL(db, 10, "a");
    EX(&c, "+OK\r\n", "mset", "10", "x", "010", "y");
    CHECK_VAL(db, 10, "y");

    /* INCR DECR INCRBY DECRBY */
    EX(&c, ":1\r\n", "INCR", "20");
    EX(&c, ":2\r\n", "incr", "20");
    EX(&c, ":1\r\n", "DECR", "20");
    EX(&c, ":11\r\n", "INCRBY", "20", "10");
    EX(&c, ":6\r\n", "DECRBY", "20", "5");
    EX(&c, ":-4\r\n", "INCRBY", "20", "-10");
    EX(&c, ":-1\r\n", "DECR", "21");
    EX(&c, ":0\r\n", "INCRBY", "22", "0");
    CHECK_VAL(db, 20, "-4");
    CHECK_VAL(db, 21, "-1");
    CHECK_VAL(db, 22, "0");
    {
        static const char *const badint[] = {"abc", "1.5", "+1", "01", "", "-", " 1", "1 ", "0x10",
                                             "9223372036854775808", "-9223372036854775809",
                                             "123456789012345678901", "99999999999999999999", "1e3"};
        size_t i;
        for (i = 0; i < sizeof badint / sizeof *badint; i++) {
            EX(&c, ERR(E_NOTINT), "INCRBY", "20", badint[i]);
            EX(&c, ERR(E_NOTINT), "DECRBY", "20", badint[i]);
            EX(&c, "+OK\r\n", "SET", "23", badint[i]);
            EX(&c, ERR(E_NOTINT), "INCR", "23");
            EX(&c, ERR(E_NOTINT), "DECRBY", "23", "1");
            check_val(__LINE__, db, 23, badint[i], strlen(badint[i]));
        }
        CHECK_VAL(db, 20, "-4");
    }
    EX(&c, "+OK\r\n", "SET", "24", "9223372036854775807");
    EX(&c, ERR(E_OVERFLOW), "INCR", "24");
    EX(&c, ERR(E_OVERFLOW), "INCRBY", "24", "1");
    EX(&c, ERR(E_OVERFLOW), "DECRBY", "24", "-1");
    CHECK_VAL(db, 24, "9223372036854775807");
    EX(&c, ":9223372036854775806\r\n", "DECR", "24");
    EX(&c, "+OK\r\n", "SET", "25", "-9223372036854775808");
    EX(&c, ERR(E_OVERFLOW), "DECR", "25");
    EX(&c, ERR(E_OVERFLOW), "INCRBY", "25", "-1");
    CHECK_VAL(db, 25, "-9223372036854775808");
    EX(&c, ":-9223372036854775807\r\n", "INCR", "25");
    EX(&c, ":-9223372036854775808\r\n", "INCRBY", "26", "-9223372036854775808");
    CHECK_VAL(db, 26, "-9223372036854775808");
    EX(&c, ERR(E_OVERFLOW), "DECRBY", "27", "-9223372036854775808"); /* 0 + 2^63 */
    CHECK_NOVAL(db, 27);
    EX(&c, ":9223372036854775807\r\n", "INCRBY", "28", "9223372036854775807");
    EX(&c, ":-1\r\n", "INCRBY", "28", "-9223372036854775808");
    EX(&c, "+OK\r\n", "SET", "29", "-5");
    EX(&c, ":-4\r\n", "INCR", "29");
    EX(&c, "+OK\r\n", "SET", "29", "0");
    EX(&c, ":1\r\n", "INCR", "29");
    EX(&c, ARITY("incr"), "INCR");
    EX(&c, ARITY("incr"), "INCR", "29", "1");
    EX(&c, ARITY("decr"), "DECR");
    EX(&c, ARITY("incrby"), "INCRBY", "29");
    EX(&c, ARITY("incrby"), "INCRBY", "29", "1", "2");
    EX(&c, ARITY("decrby"), "DECRBY", "29");
    CHECK_VAL(db, 29, "1");
    c_close(&c);
    b_free(&req);
    free(a);
    db_close(db);
}

/* A result outside int64 is the only overflow (PROTOCOL.md, Integers):
 * -1 - (-2^63) = 2^63 - 1 fits. */
static void test_decrby_min(void) {
    kvidx *db = db_open("proto_decrby");
    conn c;
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    EX(&c, "+OK\r\n", "SET", "1", "-1");
    EX(&c, ":9223372036854775807\r\n", "DECRBY", "1", "-9223372036854775808");
    c_close(&c);
    db_close(db);
}

static void test_sets(void) {
    kvidx *db = db_open("proto_sets");
    conn c;
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    EX(&c, ":3\r\n", "SADD", "100", "3", "1", "2");
    EX(&c, ":1\r\n", "sadd", "100", "2", "4", "004");
    EX(&c, "*4\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n4\r\n", "SMEMBERS", "100");
    CHECK_IDS(db, 100, 1, 2, 3, 4);
    EX(&c, ":1\r\n", "SADD", "100", "007");
    EX(&c, ":2\r\n", "SADD", "100", "18446744073709551615", "0", "00000000000000000000");
    EX(&c, "*7\r\n$1\r\n0\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n4\r\n$1\r\n7\r\n$20\r\n18446744073709551615\r\n",
       "SMEMBERS", "0100");
    CHECK_IDS(db, 100, 0, 1, 2, 3, 4, 7, UINT64_MAX);
    EX(&c, ":7\r\n", "SCARD", "100");
    EX(&c, ":0\r\n", "SCARD", "999");
    EX(&c, ":1\r\n", "SISMEMBER", "100", "7");
    EX(&c, ":1\r\n", "SISMEMBER", "100", "0007");
    EX(&c, ":0\r\n", "SISMEMBER", "100", "5");
    EX(&c, ":0\r\n", "SISMEMBER", "999", "1");
    EX(&c, "*3\r\n:1\r\n:0\r\n:1\r\n", "SMISMEMBER", "100", "1", "5", "18446744073709551615");
    EX(&c, "*1\r\n:0\r\n", "SMISMEMBER", "999", "1");
    EX(&c, ":1\r\n", "SREM", "100", "1", "5");
    EX(&c, ":0\r\n", "SREM", "999", "1");
    EX(&c, "*0\r\n", "SMEMBERS", "999");
    CHECK_IDS(db, 100, 0, 2, 3, 4, 7, UINT64_MAX);
    EX(&c, ":3\r\n", "SADD", "101", "2", "3", "9");
    EX(&c, "*2\r\n$1\r\n2\r\n$1\r\n3\r\n", "SINTER", "100", "101");
    EX(&c, "*2\r\n$1\r\n2\r\n$1\r\n3\r\n", "SINTER", "101", "100", "0101");
    EX(&c, "*3\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n9\r\n", "SINTER", "101");
    EX(&c, "*0\r\n", "SINTER", "100", "999");
    EX(&c, "*0\r\n", "SINTER", "999", "100");
    EX(&c, "*2\r\n$1\r\n0\r\n*3\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n9\r\n", "SSCAN", "101", "0");
    EX(&c, "*2\r\n$1\r\n0\r\n*2\r\n$1\r\n3\r\n$1\r\n9\r\n", "SSCAN", "101", "3");
    EX(&c, "*2\r\n$1\r\n0\r\n*0\r\n", "SSCAN", "999", "0");
    EX(&c, "*2\r\n$1\r\n0\r\n*1\r\n$20\r\n18446744073709551615\r\n", "SSCAN", "100", "18446744073709551615");
    EX(&c, "*2\r\n$1\r\n0\r\n*3\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n9\r\n", "SSCAN", "101", "0", "MATCH", "*", "COUNT", "5");
    /* the last id removed deletes the list */
    EX(&c, ":1\r\n", "SADD", "102", "5");
    EX(&c, "+set\r\n", "TYPE", "102");
    EX(&c, ":1\r\n", "SREM", "102", "5");
    CHECK_NOLIST(db, 102);
    EX(&c, "+none\r\n", "TYPE", "102");
    EX(&c, ":0\r\n", "EXISTS", "102");
    /* bad members: error, nothing changes */
    EX(&c, "-ERR member is not a decimal uint64 id: 'abc'\r\n", "SADD", "100", "8", "abc", "9");
    EX(&c, "-ERR member is not a decimal uint64 id: '18446744073709551616'\r\n", "SADD", "100", "8", "18446744073709551616");
    EX(&c, "-ERR member is not a decimal uint64 id: '-1'\r\n", "SADD", "100", "-1");
    EX(&c, "-ERR member is not a decimal uint64 id: ''\r\n", "SADD", "100", "8", "");
    EX(&c, "-ERR member is not a decimal uint64 id: '+1'\r\n", "SADD", "100", "+1");
    EX(&c, "-ERR member is not a decimal uint64 id: ' 1'\r\n", "SADD", "100", " 1");
    EX(&c, "-ERR member is not a decimal uint64 id: '000000000000000000001'\r\n", "SADD", "100", "000000000000000000001");
    EX(&c, "-ERR member is not a decimal uint64 id: 'xxxxxxxxxxyyyyyyyyyyzzzzzzzzzzwwwwwwwwww'\r\n", "SADD", "100",
       "8", "xxxxxxxxxxyyyyyyyyyyzzzzzzzzzzwwwwwwwwwwvvvvvvvvvv");
    EX(&c, "-ERR member is not a decimal uint64 id: 'abc'\r\n", "SADD", "103", "abc");
    EX(&c, "-ERR member is not a decimal uint64 id: 'abc'\r\n", "SREM", "100", "2", "abc");
    EX(&c, "-ERR member is not a decimal uint64 id: 'abc'\r\n", "SISMEMBER", "100", "abc");
    EX(&c, "-ERR member is not a decimal uint64 id: 'x'\r\n", "SMISMEMBER", "100", "2", "x");
    CHECK_IDS(db, 100, 0, 2, 3, 4, 7, UINT64_MAX);
    CHECK_NOLIST(db, 103);
    EX(&c, ARITY("sadd"), "SADD", "100");
    EX(&c, ARITY("sadd"), "SADD");
    EX(&c, ARITY("srem"), "SREM", "100");
    EX(&c, ARITY("smembers"), "SMEMBERS");
    EX(&c, ARITY("smembers"), "SMEMBERS", "100", "101");
    EX(&c, ARITY("scard"), "SCARD");
    EX(&c, ARITY("sismember"), "SISMEMBER", "100");
    EX(&c, ARITY("sismember"), "SISMEMBER", "100", "1", "2");
    EX(&c, ARITY("smismember"), "SMISMEMBER", "100");
    EX(&c, ARITY("sinter"), "SINTER");
    EX(&c, ARITY("sscan"), "SSCAN", "100");
    EX(&c, ERR("invalid cursor"), "SSCAN", "100", "abc");
    EX(&c, ERR("invalid cursor"), "SSCAN", "100", "-1");
    EX(&c, ERR("invalid cursor"), "SSCAN", "100", "18446744073709551616");
    EX(&c, ERR("MATCH patterns other than '*' are not supported"), "SSCAN", "100", "0", "MATCH", "1*");
    EX(&c, ERR(E_NOTINT), "SSCAN", "100", "0", "COUNT", "x");
    EX(&c, ERR(E_SYNTAX), "SSCAN", "100", "0", "BOGUS", "1");
    CHECK_IDS(db, 100, 0, 2, 3, 4, 7, UINT64_MAX);
    c_close(&c);
    db_close(db);
}

static void test_key_mapping(void) {
    kvidx *db = db_open("proto_keys");
    conn c;
    buf want = {0};
    uint64_t ks[16];
    size_t nk = 0, i;
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    EX(&c, "+OK\r\n", "SET", "42", "a");
    EX(&c, "$1\r\na\r\n", "GET", "042");
    EX(&c, "$1\r\na\r\n", "GET", "0042");
    EX(&c, "$1\r\na\r\n", "GET", "00000000000000000042"); /* 20 digits */
    CHECK_VAL(db, 42, "a");
    ks[nk++] = 42;
    EX(&c, "$-1\r\n", "GET", "000000000000000000042"); /* 21 digits: a name */
    EX(&c, "+OK\r\n", "SET", "000000000000000000042", "h21");
    CHECK_VAL(db, XXH3_64bits("000000000000000000042", 21), "h21");
    CHECK_VAL(db, 42, "a");
    ks[nk++] = XXH3_64bits("000000000000000000042", 21);
    EX(&c, "+OK\r\n", "SET", "18446744073709551615", "max");
    CHECK_VAL(db, UINT64_MAX, "max");
    ks[nk++] = UINT64_MAX;
    EX(&c, "$-1\r\n", "GET", "018446744073709551615"); /* 21 digits */
    EX(&c, "$3\r\nmax\r\n", "GET", "18446744073709551615");
    EX(&c, "+OK\r\n", "SET", "18446744073709551616", "h");
    CHECK_VAL(db, XXH3_64bits("18446744073709551616", 20), "h");
    CHECK_NOVAL(db, 0);
    ks[nk++] = XXH3_64bits("18446744073709551616", 20);
    EX(&c, "+OK\r\n", "SET", "99999999999999999999", "h2");
    CHECK_VAL(db, XXH3_64bits("99999999999999999999", 20), "h2");
    ks[nk++] = XXH3_64bits("99999999999999999999", 20);
    EX(&c, "+OK\r\n", "SET", "user:1", "u");
    CHECK_VAL(db, XXH3_64bits("user:1", 6), "u");
    EX(&c, "$1\r\nu\r\n", "GET", "user:1");
    ks[nk++] = XXH3_64bits("user:1", 6);
    EX(&c, "+OK\r\n", "SET", "", "e");
    CHECK_VAL(db, XXH3_64bits("", 0), "e");
    ks[nk++] = XXH3_64bits("", 0);
    EX(&c, "+OK\r\n", "SET", "-1", "m");
    CHECK_VAL(db, XXH3_64bits("-1", 2), "m");
    ks[nk++] = XXH3_64bits("-1", 2);
    EX(&c, "+OK\r\n", "SET", "+5", "p");
    CHECK_VAL(db, XXH3_64bits("+5", 2), "p");
    CHECK_NOVAL(db, 5);
    ks[nk++] = XXH3_64bits("+5", 2);
    EX(&c, "+OK\r\n", "SET", " 7", "s");
    CHECK_VAL(db, XXH3_64bits(" 7", 2), "s");
    CHECK_NOVAL(db, 7);
    ks[nk++] = XXH3_64bits(" 7", 2);
    EX(&c, "+OK\r\n", "SET", "0", "zero");
    CHECK_VAL(db, 0, "zero");
    ks[nk++] = 0;
    EX(&c, ":1\r\n", "SADD", "user:2", "5");
    CHECK_IDS(db, XXH3_64bits("user:2", 6), 5);
    CHECK_NOVAL(db, XXH3_64bits("user:2", 6));
    ks[nk++] = XXH3_64bits("user:2", 6);
    /* SCAN returns every key as its number, ascending */
    qsort(ks, nk, sizeof *ks, u64_cmp);
    b_puts(&want, "*2\r\n$1\r\n0\r\n");
    r_arr(&want, nk);
    for (i = 0; i < nk; i++) r_u64(&want, ks[i]);
    x_cmd(&c, __LINE__, want.p, "SCAN", "0", "COUNT", "100", (const char *)NULL);
    {
        char t[32];
        snprintf(t, sizeof t, ":%zu\r\n", nk);
        x_cmd(&c, __LINE__, t, "DBSIZE", (const char *)NULL);
    }
    c_close(&c);
    b_free(&want);
    db_close(db);
}

static void test_two_keyspaces(void) {
    kvidx *db = db_open("proto_spaces");
    conn c;
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    EX(&c, "+OK\r\n", "SET", "10", "v");
    EX(&c, ":2\r\n", "SADD", "10", "1", "2");
    EX(&c, ":1\r\n", "SADD", "11", "5");
    EX(&c, "+OK\r\n", "SET", "12", "w");
    EX(&c, "+string\r\n", "TYPE", "10");
    EX(&c, "+set\r\n", "TYPE", "11");
    EX(&c, "+string\r\n", "type", "12");
    EX(&c, "+none\r\n", "TYPE", "13");
    EX(&c, "$1\r\nv\r\n", "GET", "10");
    EX(&c, "$-1\r\n", "GET", "11");
    EX(&c, "*2\r\n$1\r\n1\r\n$1\r\n2\r\n", "SMEMBERS", "10");
    EX(&c, "*0\r\n", "SMEMBERS", "12");
    EX(&c, ":0\r\n", "SCARD", "12");
    EX(&c, "*4\r\n$1\r\nv\r\n$-1\r\n$1\r\nw\r\n$-1\r\n", "MGET", "10", "11", "12", "13");
    EX(&c, ":1\r\n", "EXISTS", "10");
    EX(&c, ":4\r\n", "EXISTS", "10", "11", "12", "13", "011");
    EX(&c, ":3\r\n", "DBSIZE");
    EX(&c, "*2\r\n$1\r\n0\r\n*3\r\n$2\r\n10\r\n$2\r\n11\r\n$2\r\n12\r\n", "SCAN", "0");
    EX(&c, "*2\r\n$1\r\n0\r\n*2\r\n$2\r\n11\r\n$2\r\n12\r\n", "SCAN", "11", "COUNT", "5");
    /* SET NX, SET GET and INCR look at values only */
    EX(&c, "+OK\r\n", "SET", "11", "y", "NX");
    EX(&c, "$1\r\ny\r\n", "SET", "11", "x", "GET");
    EX(&c, "$1\r\nx\r\n", "GET", "11");
    EX(&c, ":1\r\n", "DEL", "11");
    EX(&c, ":1\r\n", "SADD", "11", "5");
    EX(&c, "$-1\r\n", "SET", "11", "x", "GET");
    EX(&c, "$-1\r\n", "SET", "11", "y", "NX");
    EX(&c, "$1\r\nx\r\n", "GET", "11");
    EX(&c, "+string\r\n", "TYPE", "11");
    EX(&c, ":1\r\n", "DEL", "11");
    CHECK_NOVAL(db, 11);
    CHECK_NOLIST(db, 11);
    EX(&c, ":1\r\n", "SADD", "11", "5");
    EX(&c, ":1\r\n", "INCR", "11");
    CHECK_VAL(db, 11, "1");
    CHECK_IDS(db, 11, 5);
    EX(&c, ":1\r\n", "SCARD", "11");
    /* DEL removes both, counting the key once */
    EX(&c, ":1\r\n", "DEL", "10");
    CHECK_NOVAL(db, 10);
    CHECK_NOLIST(db, 10);
    EX(&c, "+none\r\n", "TYPE", "10");
    EX(&c, ":2\r\n", "DEL", "11", "12", "13", "11");
    EX(&c, ":0\r\n", "DBSIZE");
    EX(&c, "*2\r\n$1\r\n0\r\n*0\r\n", "SCAN", "0");
    check_db(__LINE__, "empty", db, &(model){0});
    c_close(&c);
    db_close(db);
}

static void test_errors_change_nothing(void) {
    kvidx *db = db_open("proto_errors");
    conn c;
    model before = {0};
    char name50[51];
    const char *r;
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    EX(&c, "+OK\r\n", "MSET", "1", "one", "2", "two", "3", "7");
    EX(&c, ":3\r\n", "SADD", "2", "10", "20", "30");
    EX(&c, ":1\r\n", "SADD", "4", "1");
    snap(__LINE__, db, &before);

    EX(&c, ERR("unknown command 'FOO'"), "FOO");
    EX(&c, ERR("unknown command 'foo'"), "foo", "1", "2");
    EX(&c, ERR("unknown command 'HSET'"), "HSET", "1", "f", "v");
    EX(&c, ERR("unknown command 'LPUSH'"), "LPUSH", "1", "x");
    EX(&c, ERR("unknown command 'EXPIRE'"), "EXPIRE", "1", "10");
    EX(&c, ERR("unknown command ''"), "");
    memset(name50, 'N', 50);
    name50[50] = 0;
    EX(&c, ERR("unknown command 'NNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNN'"), name50);
    /* "Every error is one line": a name holding CR LF must not break the
     * reply stream */
    r = GETR(&c, "X\r\nY");
    check_err_line(__LINE__, r, c.k.out.n, "-ERR unknown command '");
    r = GETR(&c, "SADD", "4", "a\r\n:1");
    check_err_line(__LINE__, r, c.k.out.n, "-ERR member is not a decimal uint64 id: '");
    EX(&c, "+PONG\r\n", "PING");

    EX(&c, ARITY("get"), "GeT");
    EX(&c, ARITY("set"), "Set", "1");
    EX(&c, ARITY("mset"), "MSET", "1", "x", "2");
    EX(&c, ARITY("incrby"), "INCRBY", "3");
    EX(&c, ARITY("decrby"), "DECRBY", "3", "1", "1");
    EX(&c, ARITY("del"), "DEL");
    EX(&c, ARITY("type"), "TYPE");
    EX(&c, ARITY("type"), "TYPE", "1", "2");
    EX(&c, ARITY("scan"), "SCAN");
    EX(&c, ARITY("sadd"), "SADD", "2");
    EX(&c, ARITY("srem"), "SREM", "2");
    EX(&c, ARITY("echo"), "ECHO");
    EX(&c, ERR(E_SYNTAX), "SET", "1", "x", "NOPE");
    EX(&c, ERR("SET option 'EX' is not supported: kvidx keys do not expire"), "SET", "1", "x", "EX", "5");
    EX(&c, ERR(E_BIG), "SET", "1",
       "01234567890123456789012345678901234567890123456789012345678901234567890123456789"
       "01234567890123456789012345678901234567890123456789012345678901234567890123456789"
       "01234567890123456789012345678901234567890123456789012345678901234567890123456789"
       "01234567890123456789");
    EX(&c, ERR(E_BIG), "MSET", "5", "x", "1",
       "01234567890123456789012345678901234567890123456789012345678901234567890123456789"
       "01234567890123456789012345678901234567890123456789012345678901234567890123456789"
       "01234567890123456789012345678901234567890123456789012345678901234567890123456789"
       "01234567890123456789");
    EX(&c, ERR(E_NOTINT), "INCR", "1");
    EX(&c, ERR(E_NOTINT), "INCRBY", "3", "x");
    EX(&c, ERR(E_NOTINT), "DECRBY", "3", "9223372036854775808");
    EX(&c, ERR(E_OVERFLOW), "INCRBY", "3", "9223372036854775807");
    EX(&c, ERR(E_OVERFLOW), "DECRBY", "3", "-9223372036854775807");
    EX(&c, "-ERR member is not a decimal uint64 id: 'a'\r\n", "SADD", "2", "40", "a");
    EX(&c, "-ERR member is not a decimal uint64 id: 'a'\r\n", "SADD", "6", "a");
    EX(&c, "-ERR member is not a decimal uint64 id: '-5'\r\n", "SREM", "2", "10", "-5");
    EX(&c, ERR("DB index is out of range"), "SELECT", "1");
    EX(&c, ERR("FLUSHALL is disabled (start the server with --allow-flush)"), "FLUSHALL");
    EX(&c, ERR("FLUSHDB is disabled (start the server with --allow-flush)"), "FLUSHDB");
    EX(&c, ERR("CONFIG SET is not supported"), "CONFIG", "SET", "appendonly", "no");
    EX(&c, ERR("invalid cursor"), "SCAN", "x");
    EX(&c, ERR("invalid cursor"), "SCAN", "-1");
    EX(&c, ERR("invalid cursor"), "SCAN", "18446744073709551616");
    EX(&c, ERR(E_NOTINT), "SCAN", "0", "COUNT", "x");
    EX(&c, ERR(E_SYNTAX), "SCAN", "0", "COUNT");
    EX(&c, ERR("MATCH patterns other than '*' are not supported"), "SCAN", "0", "MATCH", "user:*");
    EX(&c, ERR(E_SYNTAX), "SCAN", "0", "TYPE", "string");
    EX(&c, ERR(E_SYNTAX), "SCAN", "0", "NOPE", "1");
    {
        model after = {0};
        snap(__LINE__, db, &after);
        m_same(__LINE__, "after the error replies", &before, &after);
        m_free(&after);
    }
    EX(&c, ":3\r\n", "SCARD", "2");
    EX(&c, "$3\r\none\r\n", "GET", "1");
    m_free(&before);
    c_close(&c);
    db_close(db);
}

static void test_flush(void) {
    kvidx *db = db_open("proto_flush");
    conn c0, c1;
    REQUIRE(db);
    REQUIRE(c_open(&c0, db, 0) == KVIDX_OK);
    REQUIRE(c_open(&c1, db, KVIDX_PROTO_FLUSH) == KVIDX_OK);
    EX(&c0, "+OK\r\n", "MSET", "1", "a", "2", "b");
    EX(&c0, ":2\r\n", "SADD", "2", "5", "6");
    EX(&c0, ":1\r\n", "SADD", "user:1", "5");
    EX(&c0, ERR("FLUSHALL is disabled (start the server with --allow-flush)"), "FLUSHALL");
    EX(&c0, ERR("FLUSHALL is disabled (start the server with --allow-flush)"), "FLUSHALL", "ASYNC");
    EX(&c0, ERR("FLUSHDB is disabled (start the server with --allow-flush)"), "flushdb");
    EX(&c0, ERR("FLUSHDB is disabled (start the server with --allow-flush)"), "FLUSHDB", "SYNC");
    EX(&c0, ":3\r\n", "DBSIZE");
    CHECK_VAL(db, 1, "a");
    CHECK_IDS(db, 2, 5, 6);
    EX(&c1, "+OK\r\n", "FLUSHALL");
    EX(&c1, ":0\r\n", "DBSIZE");
    EX(&c0, ":0\r\n", "DBSIZE");
    check_db(__LINE__, "after FLUSHALL", db, &(model){0});
    EX(&c0, "+OK\r\n", "SET", "3", "c");
    EX(&c0, ":1\r\n", "SADD", "4", "1");
    EX(&c1, "+OK\r\n", "flushdb");
    check_db(__LINE__, "after FLUSHDB", db, &(model){0});
    EX(&c0, "+OK\r\n", "SET", "3", "c");
    EX(&c1, "+OK\r\n", "FLUSHALL", "ASYNC");
    CHECK_NOVAL(db, 3);
    EX(&c0, "+OK\r\n", "SET", "3", "c");
    EX(&c1, "+OK\r\n", "flushall", "sync");
    EX(&c1, "+OK\r\n", "FLUSHDB", "SYNC");
    CHECK_NOVAL(db, 3);
    EX(&c1, "*2\r\n$1\r\n0\r\n*0\r\n", "SCAN", "0");
    c_close(&c0);
    c_close(&c1);
    db_close(db);
}

/* Pages through SCAN (key NULL) or SSCAN key with COUNT count (0: none)
 * from cursor 0; every element of want (ascending) exactly once. */
static void page_all(int line, conn *c, const char *key, unsigned count, const uint64_t *want, size_t nw) {
    uint64_t cur = 0, *page = xmalloc(100001 * sizeof *page);
    size_t got = 0, pages = 0, np;
    char cs[32], cnt[32];
    snprintf(cnt, sizeof cnt, "%u", count);
    for (;;) {
        const char *r;
        uint64_t next;
        size_t i;
        snprintf(cs, sizeof cs, "%" PRIu64, cur);
        if (key && count) r = x_get(c, line, "SSCAN", key, cs, "COUNT", cnt, (const char *)NULL);
        else if (key) r = x_get(c, line, "SSCAN", key, cs, (const char *)NULL);
        else if (count) r = x_get(c, line, "SCAN", cs, "COUNT", cnt, (const char *)NULL);
        else r = x_get(c, line, "SCAN", cs, (const char *)NULL);
        if (!parse_scan(r, c->k.out.n, &next, page, 100001, &np)) {
            pfail(line, "%s COUNT %u cursor %s: bad reply \"%s\"", key ? "SSCAN" : "SCAN", count, cs,
                  esc_r(r, c->k.out.n, 200, g_e1, sizeof g_e1));
            break;
        }
        pages++;
        if (np > (count ? (count > 100000 ? 100000 : count) : 10)) {
            pfail(line, "COUNT %u: a page of %zu", count, np);
            break;
        }
        for (i = 0; i < np; i++) {
            if (got >= nw || page[i] != want[got]) {
                pfail(line, "%s COUNT %u cursor %s: element %zu is %" PRIu64 ", want %s%" PRIu64,
                      key ? "SSCAN" : "SCAN", count, cs, got, page[i], got >= nw ? "none " : "",
                      got < nw ? want[got] : 0);
                free(page);
                return;
            }
            got++;
        }
        if (next == 0) break;
        if (np == 0) {
            pfail(line, "COUNT %u: an empty page with cursor %" PRIu64, count, next);
            break;
        }
        if (next <= page[np - 1] || (got < nw && next > want[got])) {
            pfail(line, "COUNT %u: cursor %" PRIu64 " after %" PRIu64 " (next element %" PRIu64 ")", count,
                  next, page[np - 1], got < nw ? want[got] : 0);
            break;
        }
        if (got == nw)
            pfail(line, "%s COUNT %u: the page holding the last element has cursor %" PRIu64 ", not 0",
                  key ? "SSCAN" : "SCAN", count, next);
        if (pages > nw + 2) {
            pfail(line, "COUNT %u: %zu pages for %zu elements", count, pages, nw);
            break;
        }
        cur = next;
    }
    if (got != nw) pfail(line, "%s COUNT %u: %zu of %zu elements", key ? "SSCAN" : "SCAN", count, got, nw);
    free(page);
}

/* One page from cursor cur: consecutive elements of want from the first
 * >= cur. */
static void page_from(int line, conn *c, const char *key, uint64_t cur, unsigned count, const uint64_t *want,
                      size_t nw) {
    uint64_t page[64], next;
    size_t np, lo = 0, hi = nw, i;
    char cs[32], cnt[32];
    const char *r;
    snprintf(cs, sizeof cs, "%" PRIu64, cur);
    snprintf(cnt, sizeof cnt, "%u", count);
    r = key ? x_get(c, line, "SSCAN", key, cs, "COUNT", cnt, (const char *)NULL)
            : x_get(c, line, "SCAN", cs, "count", cnt, (const char *)NULL);
    if (!parse_scan(r, c->k.out.n, &next, page, 64, &np)) {
        pfail(line, "cursor %s: bad reply \"%s\"", cs, esc_r(r, c->k.out.n, 200, g_e1, sizeof g_e1));
        return;
    }
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (want[mid] < cur) lo = mid + 1;
        else hi = mid;
    }
    if (np > count || (np == 0 && lo < nw)) pfail(line, "cursor %s COUNT %u: %zu elements", cs, count, np);
    for (i = 0; i < np; i++)
        if (lo + i >= nw || page[i] != want[lo + i]) {
            pfail(line, "cursor %s: element %zu is %" PRIu64 ", want %" PRIu64, cs, i, page[i],
                  lo + i < nw ? want[lo + i] : 0);
            return;
        }
    if (lo + np == nw && next != 0) pfail(line, "cursor %s: nothing left but cursor %" PRIu64, cs, next);
    if (lo + np < nw && (next == 0 || next <= page[np - 1] || next > want[lo + np]))
        pfail(line, "cursor %s: next cursor %" PRIu64 ", next element %" PRIu64, cs, next, want[lo + np]);
}

static void test_scan_paging(void) {
    kvidx *db = db_open("proto_scan");
    conn c;
    model m = {0};
    uint64_t *ks, *ids;
    size_t nk, nids, i;
    size_t nv = 600 / SAN_SLOW, nl = 600 / SAN_SLOW, nb = 200 / SAN_SLOW;
    static const unsigned counts[] = {1, 2, 3, 0, 10, 77, 1000, 1000000};
    char val[16];
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    /* values, lists, both; the extremes */
    for (i = 0; i < nv + nl + nb + 4; i++) {
        uint64_t k = i == 0 ? 0 : i == 1 ? 1 : i == 2 ? UINT64_MAX : i == 3 ? UINT64_MAX - 1 : t_rand();
        int kind = i < 4 ? (int)(i % 3) : i < nv + 4 ? 0 : i < nv + nl + 4 ? 1 : 2;
        if (m_live(m_find(&m, k))) continue;
        if (kind != 1) {
            snprintf(val, sizeof val, "v%zu", i);
            CHECK_RC(kvidx_put(db, k, val, strlen(val)), KVIDX_OK);
            m_setv(&m, k, val, strlen(val));
        }
        if (kind != 0) {
            uint64_t id = t_below(1000);
            CHECK_RC(kvidx_list_add(db, k, &id, 1, NULL), KVIDX_OK);
            m_add_id(m_get(&m, k), id);
        }
    }
    ks = m_keys(&m, &nk);
    for (i = 0; i < sizeof counts / sizeof *counts; i++) page_all(__LINE__, &c, NULL, counts[i], ks, nk);
    for (i = 0; i < 40; i++) {
        uint64_t cur = i % 4 == 0 ? ks[t_below(nk)] : i % 4 == 1 ? ks[t_below(nk)] + 1 : t_rand();
        if (i == 1) cur = UINT64_MAX;
        if (i == 2) cur = UINT64_MAX - 1;
        page_from(__LINE__, &c, NULL, cur, (unsigned)t_below(20) + 1, ks, nk);
    }
    {
        char t[64];
        snprintf(t, sizeof t, ":%zu\r\n", nk);
        x_cmd(&c, __LINE__, t, "DBSIZE", (const char *)NULL);
    }
    /* SSCAN over one big list */
    {
        ment *e = m_get(&m, 777);
        uint64_t *add = xmalloc(3000 * sizeof *add);
        size_t n = 3000 / SAN_SLOW;
        for (i = 0; i < n; i++) add[i] = i < 2 ? (i ? UINT64_MAX : 0) : t_rand() >> (t_below(60));
        CHECK_RC(kvidx_list_add(db, 777, add, n, NULL), KVIDX_OK);
        for (i = 0; i < n; i++) m_add_id(e, add[i]);
        free(add);
        ids = e->ids;
        nids = e->nids;
        for (i = 0; i < sizeof counts / sizeof *counts; i++) page_all(__LINE__, &c, "777", counts[i], ids, nids);
        for (i = 0; i < 30; i++) {
            uint64_t cur = i % 3 == 0 ? ids[t_below(nids)] : i % 3 == 1 ? ids[t_below(nids)] + 1 : t_rand();
            page_from(__LINE__, &c, "0777", cur, (unsigned)t_below(20) + 1, ids, nids);
        }
    }
    check_db(__LINE__, "scan model", db, &m);
    free(ks);
    m_free(&m);
    c_close(&c);
    db_close(db);
}

/* ---- framing ------------------------------------------------------------------ */

/* Random piece sizes: mostly small, some large. */
static size_t rand_piece(void) {
    uint64_t r = t_below(100);
    if (r < 45) return 1 + t_below(8);
    if (r < 80) return 1 + t_below(300);
    return 1 + t_below(9000);
}

/* Feeds p[0..n) in pieces of piece bytes (0: random sizes) without
 * clearing c's output; stops at the first return other than KVIDX_OK and
 * returns it. *max_calls: the most write calls one feed made. */
static int feed_pieces(conn *c, const char *p, size_t n, size_t piece, size_t *max_calls) {
    size_t off = 0;
    if (max_calls) *max_calls = 0;
    while (off < n) {
        size_t k = piece ? piece : rand_piece(), before = c->k.calls;
        int rc;
        if (k > n - off) k = n - off;
        rc = kvidx_session_feed(c->s, p + off, k);
        if (max_calls && c->k.calls - before > *max_calls) *max_calls = c->k.calls - before;
        off += k;
        if (rc != KVIDX_OK) return rc;
    }
    return KVIDX_OK;
}

static void test_inline(void) {
    kvidx *db = db_open("proto_inline");
    conn c;
    size_t i, calls;
    static const char one[] = "SET 8 \"q w\"\r\nGET 8\n";
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    XR(&c, "PING\r\n", "+PONG\r\n");
    XR(&c, "ping\n", "+PONG\r\n");
    XR(&c, "  PING  \r\n", "+PONG\r\n");
    XR(&c, "\tPING\t\r\n", "+PONG\r\n");
    XR(&c, "\"PING\"\r\n", "+PONG\r\n");
    XR(&c, "SET 1 \"hello world\"\r\n", "+OK\r\n");
    CHECK_VAL(db, 1, "hello world");
    XR(&c, "SET\t2\t'a b'\r\n", "+OK\r\n");
    CHECK_VAL(db, 2, "a b");
    XR(&c, "SET 3 \"\\x41\\x62\\n\\r\\t\\\\\\\"'\"\r\n", "+OK\r\n");
    CHECK_VAL(db, 3, "Ab\n\r\t\\\"'");
    XR(&c, "SET 4 \"\"\r\n", "+OK\r\n");
    CHECK_VAL(db, 4, "");
    XR(&c, "SET 5 'it\"s'\r\n", "+OK\r\n");
    CHECK_VAL(db, 5, "it\"s");
    XR(&c, "SET  05   x  \r\n", "+OK\r\n");
    CHECK_VAL(db, 5, "x");
    XS(&c, "ECHO \"\\xff\\x00z\\xAb\"\r\n", "$4\r\n\xff\0z\xab\r\n", KVIDX_OK);
    XR(&c, "SET 6 a\nGET 6\nGET 06\r\nGET 006\n", "+OK\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n");
    XR(&c, "*2\r\n$3\r\nGET\r\n$1\r\n6\r\nGET 6\r\n*2\r\n$3\r\nGET\r\n$1\r\n6\r\n",
       "$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n");
    calls = c.k.calls;
    XR(&c, "\r\n\n\r\n*0\r\n*-1\r\n\n", "");
    CHECK(c.k.calls == calls); /* nothing to answer: no write */
    XR(&c, "\r\n\n*0\r\n*-1\r\n\nPING\r\n", "+PONG\r\n");
    XR(&c, "SADD 7 \"1\" '2' 003\r\n", ":3\r\n");
    CHECK_IDS(db, 7, 1, 2, 3);
    XR(&c, "SET user:1 x\r\n", "+OK\r\n");
    CHECK_VAL(db, XXH3_64bits("user:1", 6), "x");
    XR(&c, "SET \"a b\" y\r\n", "+OK\r\n");
    CHECK_VAL(db, XXH3_64bits("a b", 3), "y");
    XR(&c, "nosuch a b\r\n", "-ERR unknown command 'nosuch'\r\n");
    XR(&c, "GET\r\n", ARITY("get"));
    XR(&c, "GET 1 2\n", ARITY("get"));
    /* a byte at a time */
    c.k.out.n = 0;
    for (i = 0; i < sizeof one - 1; i++) CHECK_RC(kvidx_session_feed(c.s, one + i, 1), KVIDX_OK);
    same_bytes(__LINE__, "a byte at a time", c.k.out.p, c.k.out.n, "+OK\r\n$3\r\nq w\r\n", sizeof("+OK\r\n$3\r\nq w\r\n") - 1);
    c_close(&c);
    db_close(db);
}

static void test_limits(void) {
    kvidx *db = db_open("proto_limits");
    conn c;
    buf req = {0}, want = {0};
    char *big = xmalloc(70001);
    size_t i;
    int rc;
    REQUIRE(db);
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    memset(big, 'x', 70001);

    /* a bulk string of 65,537 bytes: the request (all of it) is dropped */
    b_puts(&req, "*4\r\n$3\r\nSET\r\n$2\r\n77\r\n$65537\r\n");
    b_put(&req, big, 65537);
    b_puts(&req, "\r\n$2\r\nNX\r\n*1\r\n$4\r\nPING\r\n");
    x_raw(&c, __LINE__, req.p, req.n, "-ERR bulk string exceeds 65536 bytes\r\n+PONG\r\n", sizeof("-ERR bulk string exceeds 65536 bytes\r\n+PONG\r\n") - 1, KVIDX_OK);
    CHECK_NOVAL(db, 77);
    c.k.out.n = 0;
    CHECK_RC(feed_pieces(&c, req.p, req.n, 0, NULL), KVIDX_OK);
    same_bytes(__LINE__, "65,537-byte bulk in pieces", c.k.out.p, c.k.out.n,
               "-ERR bulk string exceeds 65536 bytes\r\n+PONG\r\n", sizeof("-ERR bulk string exceeds 65536 bytes\r\n+PONG\r\n") - 1);
    req.n = 0;
    b_puts(&req, "*3\r\n$65537\r\n");
    b_put(&req, big, 65537);
    b_puts(&req, "\r\n$2\r\n77\r\n$1\r\nv\r\nGET 77\r\n");
    x_raw(&c, __LINE__, req.p, req.n, "-ERR bulk string exceeds 65536 bytes\r\n$-1\r\n", sizeof("-ERR bulk string exceeds 65536 bytes\r\n$-1\r\n") - 1, KVIDX_OK);
    req.n = 0;
    b_puts(&req, "*2\r\n$4\r\nECHO\r\n$100000\r\n");
    b_put(&req, big, 70000);
    b_put(&req, big, 30000);
    b_puts(&req, "\r\nPING\r\n");
    c.k.out.n = 0;
    CHECK_RC(feed_pieces(&c, req.p, req.n, 4096, NULL), KVIDX_OK);
    same_bytes(__LINE__, "100,000-byte bulk", c.k.out.p, c.k.out.n,
               "-ERR bulk string exceeds 65536 bytes\r\n+PONG\r\n", sizeof("-ERR bulk string exceeds 65536 bytes\r\n+PONG\r\n") - 1);

    /* an array of 1,048,577 elements */
    req.n = 0;
    b_puts(&req, "*1048577\r\n$4\r\nSADD\r\n$3\r\n500\r\n");
    for (i = 0; i < 1048575; i++) b_put(&req, "$1\r\n1\r\n", 7);
    b_puts(&req, "PING\r\n");
    c.k.out.n = 0;
    CHECK_RC(feed_pieces(&c, req.p, req.n, 65536, NULL), KVIDX_OK);
    same_bytes(__LINE__, "1,048,577 elements", c.k.out.p, c.k.out.n,
               "-ERR request exceeds 1048576 arguments\r\n+PONG\r\n", sizeof("-ERR request exceeds 1048576 arguments\r\n+PONG\r\n") - 1);
    CHECK_NOLIST(db, 500);
    /* header alone, the elements in one feed */
    c.k.out.n = 0;
    rc = kvidx_session_feed(c.s, req.p, 10);
    CHECK_RC(rc, KVIDX_OK);
    rc = kvidx_session_feed(c.s, req.p + 10, req.n - 10);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "1,048,577 elements (2 feeds)", c.k.out.p, c.k.out.n,
               "-ERR request exceeds 1048576 arguments\r\n+PONG\r\n", sizeof("-ERR request exceeds 1048576 arguments\r\n+PONG\r\n") - 1);
    CHECK_NOLIST(db, 500);
    /* 1,048,576 elements are allowed */
    req.n = 0;
    b_puts(&req, "*1048576\r\n$4\r\nSADD\r\n$3\r\n501\r\n");
    for (i = 0; i < 1048574; i++) b_put(&req, "$1\r\n1\r\n", 7);
    c.k.out.n = 0;
    CHECK_RC(feed_pieces(&c, req.p, req.n, 65536, NULL), KVIDX_OK);
    same_bytes(__LINE__, "1,048,576 elements", c.k.out.p, c.k.out.n, ":1\r\n", sizeof(":1\r\n") - 1);
    CHECK_IDS(db, 501, 1);

    /* an inline line over 64 KiB */
    req.n = 0;
    b_puts(&req, "SET 78 ");
    b_put(&req, big, 70000);
    b_puts(&req, "\r\nPING\r\n");
    x_raw(&c, __LINE__, req.p, req.n, "-ERR inline request exceeds 65536 bytes\r\n+PONG\r\n", sizeof("-ERR inline request exceeds 65536 bytes\r\n+PONG\r\n") - 1, KVIDX_OK);
    CHECK_NOVAL(db, 78);
    c.k.out.n = 0;
    CHECK_RC(feed_pieces(&c, req.p, req.n, 0, NULL), KVIDX_OK);
    same_bytes(__LINE__, "long inline line in pieces", c.k.out.p, c.k.out.n,
               "-ERR inline request exceeds 65536 bytes\r\n+PONG\r\n", sizeof("-ERR inline request exceeds 65536 bytes\r\n+PONG\r\n") - 1);
    c.k.out.n = 0;
    CHECK_RC(feed_pieces(&c, req.p, req.n, 1000, NULL), KVIDX_OK);
    same_bytes(__LINE__, "long inline line in 1000-byte pieces", c.k.out.p, c.k.out.n,
               "-ERR inline request exceeds 65536 bytes\r\n+PONG\r\n", sizeof("-ERR inline request exceeds 65536 bytes\r\n+PONG\r\n") - 1);
    CHECK_NOVAL(db, 78);
    /* a line of 65,000 bytes is within the limit */
    req.n = 0;
    b_puts(&req, "ECHO ");
    b_put(&req, big, 64995);
    b_puts(&req, "\r\n");
    want.n = 0;
    r_bulk(&want, big, 64995);
    x_raw(&c, __LINE__, req.p, req.n, want.p, want.n, KVIDX_OK);

    /* arguments over 64 MiB in total: 1,025 bulks of 64 KiB, fed a bulk at a
     * time (sanitizer builds: about 1 MiB at a time, since kvidx keeps the
     * request and memmoves all of it onto itself on every feed, which
     * sanitizers make cost O(bytes kept)) */
    {
        size_t calls0 = c.k.calls, stage = SAN_SLOW > 1 ? MIB : 1;
        c.k.out.n = 0;
        rc = kvidx_session_feed(c.s, "*1026\r\n$4\r\nECHO\r\n", 17);
        req.n = 0;
        for (i = 0; i < 1025 && rc == KVIDX_OK; i++) {
            b_puts(&req, "$65536\r\n");
            b_put(&req, big, 65536);
            b_puts(&req, "\r\n");
            if (req.n >= stage || i == 1024) {
                rc = kvidx_session_feed(c.s, req.p, req.n);
                req.n = 0;
            }
        }
        if (rc == KVIDX_OK) rc = kvidx_session_feed(c.s, "PING\r\n", 6);
        CHECK_RC(rc, KVIDX_OK);
        same_bytes(__LINE__, "64 MiB request", c.k.out.p, c.k.out.n,
                   "-ERR request exceeds 67108864 bytes\r\n+PONG\r\n", sizeof("-ERR request exceeds 67108864 bytes\r\n+PONG\r\n") - 1);
        CHECK(c.k.calls - calls0 <= 2);
    }
    EX(&c, "+PONG\r\n", "PING");
    c_close(&c);
    b_free(&req);
    b_free(&want);
    free(big);
    db_close(db);
}

static void test_broken_framing(void) {
    struct {
        const char *in;
        const char *want; /* exact reply; prefix only when exact == 0 */
        int exact;
    } cases[] = {
        {"*abc\r\n", "-ERR Protocol error: invalid multibulk length\r\n", 1},
        {"*1x\r\n", "-ERR Protocol error: invalid multibulk length\r\n", 1},
        {"*1\r\n$x\r\n", "-ERR Protocol error: invalid bulk length\r\n", 1},
        {"*1\r\n$4x\r\n", "-ERR Protocol error: invalid bulk length\r\n", 1},
        {"*1\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'\r\n", 1},
        {"*2\r\n$3\r\nGET\r\n+5\r\n", "-ERR Protocol error: expected '$', got '+'\r\n", 1},
        {"*1\r\n$4\r\nPINGxx\r\n", "-ERR Protocol error: expected CRLF after bulk data\r\n", 1},
        {"*1\r\n$4\r\nPING\r\r\n", "-ERR Protocol error: expected CRLF after bulk data\r\n", 1},
        {"*11111111111111111111111111111111111111111111111111111111111111111111111111",
         "-ERR Protocol error: ", 0},
        {"*1\r\n$111111111111111111111111111111111111111111111111111111111111111111111111",
         "-ERR Protocol error: ", 0},
        {"SET 1 \"abc\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n", 1},
        {"SET 1 'abc\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n", 1},
        {"PING\r\n*abc\r\nSET 9 x\r\n", "+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n", 1},
        {"SET 9 \"x\r\nPING\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n", 1},
    };
    kvidx *db = db_open("proto_broken");
    size_t ci;
    REQUIRE(db);
    for (ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const char *in = cases[ci].in, *want = cases[ci].want;
        size_t n = strlen(in), wn = strlen(want), i;
        int pass;
        for (pass = 0; pass < 2; pass++) {
            conn c;
            int rc = KVIDX_OK;
            if (c_open(&c, db, 0) != KVIDX_OK) return;
            if (pass == 0) {
                rc = kvidx_session_feed(c.s, in, n);
                if (c.k.calls != 1) pfail(__LINE__, "case %zu: %zu write calls for one feed", ci, c.k.calls);
            } else {
                for (i = 0; i < n && rc == KVIDX_OK; i++) rc = kvidx_session_feed(c.s, in + i, 1);
            }
            if (rc != KVIDX_EPROTO)
                pfail(__LINE__, "case %zu (\"%s\", %s): feed returned %d (%s), want KVIDX_EPROTO", ci,
                      esc_r(in, n, 80, g_e3, sizeof g_e3), pass ? "a byte at a time" : "whole", rc,
                      kvidx_strerror(rc));
            if (cases[ci].exact) {
                same_bytes(__LINE__, pass ? "broken framing, a byte at a time" : "broken framing", c.k.out.p,
                           c.k.out.n, want, wn);
            } else {
                check_err_line(__LINE__, c.k.out.p ? c.k.out.p : "", c.k.out.n, want);
            }
            c.k.out.n = 0;
            rc = kvidx_session_feed(c.s, "PING\r\n", 6);
            if (rc == KVIDX_OK || c.k.out.n)
                pfail(__LINE__, "case %zu: a feed after KVIDX_EPROTO returned %d and wrote %zu bytes", ci, rc,
                      c.k.out.n);
            c_close(&c);
        }
    }
    CHECK_NOVAL(db, 9);
    CHECK_NOVAL(db, 1);
    db_close(db);
}

/* ---- pipelines ------------------------------------------------------------------ */

static void test_pipeline(void) {
    kvidx *db = db_open("proto_pipe");
    conn c;
    stream st = {{0}, {0}, 0};
    model m = {0};
    size_t n = 10000, i, calls;
    int rc;
    REQUIRE(db);
    g_small = 1;
    stream_flushall(&st, &m);
    gen_stream(&st, &m, n, 40);
    g_small = 0;
    CHECK(st.rep.n < MIB);
    REQUIRE(c_open(&c, db, KVIDX_PROTO_FLUSH) == KVIDX_OK);
    rc = kvidx_session_feed(c.s, st.req.p, st.req.n);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "10,000 requests in one feed", c.k.out.p, c.k.out.n, st.rep.p, st.rep.n);
    if (c.k.calls != 1) pfail(__LINE__, "10,000 requests, %zu bytes of replies: %zu write calls, want 1", st.rep.n, c.k.calls);
    check_db(__LINE__, "pipeline", db, &m);
    c_close(&c);

    /* the same with a write that takes 1..7 bytes a call */
    REQUIRE(c_open(&c, db, KVIDX_PROTO_FLUSH) == KVIDX_OK);
    c.k.partial = 7;
    rc = kvidx_session_feed(c.s, st.req.p, st.req.n);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "pipeline, partial writes", c.k.out.p, c.k.out.n, st.rep.p, st.rep.n);
    CHECK(c.k.calls >= st.rep.n / 7);
    check_db(__LINE__, "pipeline (partial writes)", db, &m);
    c_close(&c);

    /* replies over 1 MiB: written in pieces of about 1 MiB */
    REQUIRE(c_open(&c, db, KVIDX_PROTO_FLUSH) == KVIDX_OK);
    {
        args *a = xmalloc(sizeof *a);
        buf req = {0}, want = {0};
        char v[KVIDX_VALUE_MAX];
        size_t k = 5000 / SAN_SLOW * SAN_SLOW;
        for (i = 0; i < 100; i++) {
            memset(v, 'a' + (int)(i % 26), sizeof v);
            v[0] = (char)('0' + i % 10);
            CHECK_RC(kvidx_put(db, 1000 + i, v, sizeof v), KVIDX_OK);
        }
        for (i = 0; i < k; i++) {
            a->n = 0;
            a_str(a, "GET");
            a_u64(a, 1000 + i % 100);
            enc_resp(&req, a);
            memset(v, 'a' + (int)(i % 100 % 26), sizeof v);
            v[0] = (char)('0' + i % 100 % 10);
            r_bulk(&want, v, sizeof v);
        }
        CHECK(want.n > MIB);
        rc = kvidx_session_feed(c.s, req.p, req.n);
        CHECK_RC(rc, KVIDX_OK);
        same_bytes(__LINE__, "over 1 MiB of replies", c.k.out.p, c.k.out.n, want.p, want.n);
        calls = c.k.calls;
        if (calls < 2 || calls > want.n / (MIB - 512) + 1 || c.k.max_offer > MIB + 512)
            pfail(__LINE__, "%zu bytes of replies: %zu write calls, the largest %zu bytes", want.n, calls,
                  c.k.max_offer);
        /* and 1 MiB pieces fed a request at a time: one write per feed */
        c.k.out.n = 0;
        c.k.calls = 0;
        rc = feed_pieces(&c, req.p, 23, 23, NULL); /* "*2 $3 GET $4 1000" */
        CHECK_RC(rc, KVIDX_OK);
        CHECK(c.k.calls == 1 && c.k.out.n == 264);
        free(a);
        b_free(&req);
        b_free(&want);
    }
    c_close(&c);
    m_free(&m);
    stream_free(&st);
    db_close(db);
}

static void test_random_model(void) {
    kvidx *db = db_open("proto_model");
    conn c;
    stream st = {{0}, {0}, 0};
    model m = {0};
    size_t n = 20000 / SAN_SLOW, maxc = 0;
    int rc;
    REQUIRE(db);
    stream_flushall(&st, &m);
    gen_stream(&st, &m, n, 50);

    REQUIRE(c_open(&c, db, KVIDX_PROTO_FLUSH) == KVIDX_OK);
    rc = kvidx_session_feed(c.s, st.req.p, st.req.n);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "random stream, whole", c.k.out.p, c.k.out.n, st.rep.p, st.rep.n);
    if (st.rep.n < MIB) CHECK(c.k.calls == 1);
    check_db(__LINE__, "random stream, whole", db, &m);
    c_close(&c);

    REQUIRE(c_open(&c, db, KVIDX_PROTO_FLUSH) == KVIDX_OK);
    rc = feed_pieces(&c, st.req.p, st.req.n, 0, &maxc);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "random stream, random splits", c.k.out.p, c.k.out.n, st.rep.p, st.rep.n);
    CHECK(maxc <= 1);
    check_db(__LINE__, "random stream, random splits", db, &m);
    c_close(&c);

    REQUIRE(c_open(&c, db, KVIDX_PROTO_FLUSH) == KVIDX_OK);
    c.k.partial = 100;
    rc = feed_pieces(&c, st.req.p, st.req.n, 0, NULL);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "random stream, random splits, partial writes", c.k.out.p, c.k.out.n, st.rep.p,
               st.rep.n);
    check_db(__LINE__, "random stream, partial writes", db, &m);
    c_close(&c);
    m_free(&m);
    stream_free(&st);
    db_close(db);
}

static void test_every_split(void) {
    kvidx *db = db_open("proto_split");
    stream st = {{0}, {0}, 0};
    model m = {0};
    size_t n = 40 / SAN_SLOW < 12 ? 12 : 40 / SAN_SLOW, i, bad = 0;
    args *a = xmalloc(sizeof *a);
    REQUIRE(db);
    g_small = 1;
    stream_flushall(&st, &m);
    gen_stream(&st, &m, n / 2, 50);
    /* empty lines, *0, *-1, quotes and escapes for sure */
    b_puts(&st.req, "\r\n*0\r\n\n*-1\r\n");
    a->n = 0;
    a_str(a, "SET");
    a_str(a, "a b");
    a_add(a, "x \"\x01\r\n'", 7);
    model_exec(&m, a, &st.rep);
    enc_inline(&st.req, a, 0);
    b_puts(&st.req, "GET 'a b'\n");
    a->n = 0;
    a_str(a, "GET");
    a_str(a, "a b");
    model_exec(&m, a, &st.rep);
    gen_stream(&st, &m, n - n / 2, 50);
    g_small = 0;
    for (i = 0; i <= st.req.n && bad < 5; i++) {
        conn c;
        int rc1, rc2;
        if (c_open(&c, db, KVIDX_PROTO_FLUSH) != KVIDX_OK) break;
        rc1 = kvidx_session_feed(c.s, st.req.p, i);
        rc2 = kvidx_session_feed(c.s, st.req.p + i, st.req.n - i);
        if (rc1 != KVIDX_OK || rc2 != KVIDX_OK || c.k.calls > 2 ||
            !same_bytes(__LINE__, "split", c.k.out.p, c.k.out.n, st.rep.p, st.rep.n)) {
            pfail(__LINE__, "split at byte %zu of %zu: rc %d %d, %zu write calls", i, st.req.n, rc1, rc2,
                  c.k.calls);
            bad++;
        }
        c_close(&c);
    }
    check_db(__LINE__, "every split", db, &m);
    free(a);
    m_free(&m);
    stream_free(&st);
    db_close(db);
}

/* ---- kvidx_serve ------------------------------------------------------------------ */

typedef struct {
    const char *p;
    size_t n, off;
    size_t maxchunk;
    int fail;          /* at the end: return -1 instead of 0 */
    size_t reads_after_end;
    int ended;
    sink out;
} duplex;

static ptrdiff_t dx_read(void *ctx, void *b, size_t cap) {
    duplex *d = ctx;
    size_t k;
    if (d->off >= d->n) {
        if (d->ended) d->reads_after_end++;
        d->ended = 1;
        return d->fail ? -1 : 0;
    }
    k = 1 + (size_t)(t_mix64(d->out.rng++ ^ 0x5555) % d->maxchunk);
    if (k > cap) k = cap;
    if (k > d->n - d->off) k = d->n - d->off;
    memcpy(b, d->p + d->off, k);
    d->off += k;
    return (ptrdiff_t)k;
}

static ptrdiff_t dx_write(void *ctx, const void *p, size_t len) {
    duplex *d = ctx;
    return sink_write(&d->out, p, len);
}

static int serve_run(kvidx *db, duplex *d, const char *in, size_t n, size_t maxchunk, unsigned flags) {
    kvidx_transport t;
    memset(d, 0, sizeof *d);
    d->p = in;
    d->n = n;
    d->maxchunk = maxchunk;
    d->out.fail_after = -1;
    d->out.rng = t_rand();
    memset(&t, 0, sizeof t);
    t.ctx = d;
    t.read = dx_read;
    t.write = dx_write;
    t.flags = flags;
    return kvidx_serve(db, &t);
}

static void test_serve(void) {
    kvidx *db = db_open("proto_serve");
    stream st = {{0}, {0}, 0};
    model m = {0};
    duplex d;
    int rc;
    kvidx_transport t;
    REQUIRE(db);
    stream_flushall(&st, &m);
    gen_stream(&st, &m, 3000 / SAN_SLOW, 50);

    rc = serve_run(db, &d, st.req.p, st.req.n, 37, KVIDX_PROTO_FLUSH);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "kvidx_serve, small chunks", d.out.out.p, d.out.out.n, st.rep.p, st.rep.n);
    CHECK(d.reads_after_end == 0 && d.out.zero_calls == 0);
    check_db(__LINE__, "kvidx_serve", db, &m);
    b_free(&d.out.out);

    memset(&t, 0, sizeof t);
    rc = serve_run(db, &d, st.req.p, st.req.n, 5000, KVIDX_PROTO_FLUSH);
    d.out.partial = 0;
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "kvidx_serve, large chunks", d.out.out.p, d.out.out.n, st.rep.p, st.rep.n);
    b_free(&d.out.out);

    /* without KVIDX_PROTO_FLUSH the leading FLUSHALL is refused */
    rc = serve_run(db, &d, "FLUSHALL\r\nDBSIZE\r\n", 18, 3, 0);
    CHECK_RC(rc, KVIDX_OK);
    {
        buf w = {0};
        r_err(&w, "FLUSHALL is disabled (start the server with --allow-flush)");
        r_int(&w, (int64_t)m_count(&m));
        same_bytes(__LINE__, "kvidx_serve without flush", d.out.out.p, d.out.out.n, w.p, w.n);
        b_free(&w);
    }
    b_free(&d.out.out);

    /* QUIT ends it: KVIDX_OK, nothing after QUIT runs or is read */
    rc = serve_run(db, &d, "PING\r\nQUIT\r\nSET 90009 x\r\n", 25, 1, 0);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "kvidx_serve, QUIT", d.out.out.p, d.out.out.n, "+PONG\r\n+OK\r\n", sizeof("+PONG\r\n+OK\r\n") - 1);
    CHECK(d.off == 12);
    b_free(&d.out.out);
    rc = serve_run(db, &d, "PING\r\nQUIT\r\nSET 90009 x\r\n", 25, 100, 0);
    CHECK_RC(rc, KVIDX_OK);
    same_bytes(__LINE__, "kvidx_serve, QUIT", d.out.out.p, d.out.out.n, "+PONG\r\n+OK\r\n", sizeof("+PONG\r\n+OK\r\n") - 1);
    CHECK_NOVAL(db, 90009);
    b_free(&d.out.out);

    /* a read error */
    memset(&d, 0, sizeof d);
    d.p = "PING\r\nSET 90009 y\r\nGET";
    d.n = 22;
    d.maxchunk = 4;
    d.fail = 1;
    d.out.fail_after = -1;
    t.ctx = &d;
    t.read = dx_read;
    t.write = dx_write;
    rc = kvidx_serve(db, &t);
    CHECK_RC(rc, KVIDX_EPROTO);
    same_bytes(__LINE__, "kvidx_serve, read error", d.out.out.p, d.out.out.n, "+PONG\r\n+OK\r\n", sizeof("+PONG\r\n+OK\r\n") - 1);
    CHECK_VAL(db, 90009, "y");
    b_free(&d.out.out);

    /* broken framing */
    rc = serve_run(db, &d, "PING\r\n*1\r\n:5\r\nPING\r\n", 20, 3, 0);
    CHECK_RC(rc, KVIDX_EPROTO);
    same_bytes(__LINE__, "kvidx_serve, broken framing", d.out.out.p, d.out.out.n,
               "+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n", sizeof("+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n") - 1);
    b_free(&d.out.out);

    /* a write error */
    memset(&d, 0, sizeof d);
    d.p = "PING\r\nPING\r\n";
    d.n = 12;
    d.maxchunk = 6;
    d.out.fail_after = 0;
    d.out.fail_rc = -1;
    t.ctx = &d;
    rc = kvidx_serve(db, &t);
    CHECK_RC(rc, KVIDX_EPROTO);
    b_free(&d.out.out);
    m_free(&m);
    stream_free(&st);
    db_close(db);
}

static void test_write_fail(void) {
    kvidx *db = db_open("proto_wfail");
    conn c;
    int rc;
    REQUIRE(db);
    /* < 0 */
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    c.k.fail_after = 0;
    c.k.fail_rc = -1;
    rc = kvidx_session_feed(c.s, "PING\r\n", 6);
    CHECK_RC(rc, KVIDX_EPROTO);
    c.k.fail_after = -1;
    rc = kvidx_session_feed(c.s, "PING\r\n", 6);
    CHECK(rc != KVIDX_OK && c.k.out.n == 0);
    c_close(&c);
    /* 0 */
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    c.k.fail_after = 0;
    c.k.fail_rc = 0;
    rc = kvidx_session_feed(c.s, "PING\r\nPING\r\n", 12);
    CHECK_RC(rc, KVIDX_EPROTO);
    c_close(&c);
    /* a few bytes taken, then an error */
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    c.k.fail_after = 1;
    c.k.fail_rc = -5;
    c.k.partial = 3;
    rc = kvidx_session_feed(c.s, "ECHO hello\r\n", 12);
    CHECK_RC(rc, KVIDX_EPROTO);
    CHECK(c.k.calls == 2 && c.k.out.n >= 1 && c.k.out.n <= 3);
    c.k.fail_after = -1;
    rc = kvidx_session_feed(c.s, "PING\r\n", 6);
    CHECK(rc != KVIDX_OK);
    c_close(&c);
    /* a failed write on a later feed */
    REQUIRE(c_open(&c, db, 0) == KVIDX_OK);
    XR(&c, "PING\r\n", "+PONG\r\n");
    c.k.fail_after = 1;
    c.k.fail_rc = -1;
    rc = kvidx_session_feed(c.s, "PING\r\n", 6);
    CHECK_RC(rc, KVIDX_EPROTO);
    c_close(&c);
    db_close(db);
}

/* ---- sessions on threads ------------------------------------------------------------ */

#define NTHREADS 4
#define NXKEYS 200

typedef struct {
    kvidx *db;
    int id;
    size_t n;           /* INCRs of key 7 */
    int64_t *incr;      /* their replies */
    size_t nincr;
    int nx_won[NXKEYS];
    size_t nchain;      /* SET 9 ... GET */
    char (*olds)[16];   /* the old values they returned ("" for nil) */
    size_t nolds;
    int errors;
    char err[256];
} targ;

static void t_err(targ *a, const char *what, const char *got, size_t n) {
    if (!a->errors++) {
        size_t k = n < 100 ? n : 100, i;
        snprintf(a->err, sizeof a->err, "thread %d: %s: ", a->id, what);
        for (i = 0; i < k && strlen(a->err) + 5 < sizeof a->err; i++) {
            char ch = got[i];
            size_t l = strlen(a->err);
            a->err[l] = ch >= 0x20 && ch < 0x7f ? ch : '.';
            a->err[l + 1] = 0;
        }
    }
}

static void *thread_main(void *p) {
    targ *a = p;
    sink k;
    kvidx_transport t;
    kvidx_session *s = NULL;
    buf req = {0};
    uint64_t rng = (uint64_t)a->id * 7919 + t_seed;
    size_t i = 0, j;
    memset(&k, 0, sizeof k);
    k.fail_after = -1;
    k.rng = rng;
    memset(&t, 0, sizeof t);
    t.ctx = &k;
    t.write = sink_write;
    if (kvidx_session_open(a->db, &t, &s) != KVIDX_OK) {
        t_err(a, "session_open", "", 0);
        return NULL;
    }
    /* INCR 7 (recorded), INCRBY 8 5 + DECRBY 8 2 pairs, in batches */
    while (i < a->n) {
        size_t b = 1 + (size_t)(t_mix64(rng++) % 32), m = 0;
        rd r;
        req.n = 0;
        for (j = 0; j < b && i + j < a->n; j++) {
            if (j % 2) b_puts(&req, "*2\r\n$4\r\nINCR\r\n$1\r\n7\r\n");
            else b_puts(&req, "incr 07\r\n");
            b_puts(&req, "INCRBY 8 5\r\n*3\r\n$6\r\nDECRBY\r\n$1\r\n8\r\n$1\r\n2\r\n");
            m++;
        }
        k.out.n = 0;
        if (kvidx_session_feed(s, req.p, req.n) != KVIDX_OK) {
            t_err(a, "feed", "", 0);
            break;
        }
        r.p = k.out.p;
        r.end = k.out.p + k.out.n;
        for (j = 0; j < m; j++) {
            int64_t v, v2, v3;
            if (!rd_line(&r, ':', &v) || !rd_line(&r, ':', &v2) || !rd_line(&r, ':', &v3)) {
                t_err(a, "INCR reply", k.out.p, k.out.n);
                break;
            }
            a->incr[a->nincr++] = v;
        }
        i += m;
    }
    /* SET NX: one winner a key */
    for (j = 0; j < NXKEYS; j++) {
        char line[64];
        int l = snprintf(line, sizeof line, "SET %zu t%d NX\r\n", 1000 + j, a->id);
        k.out.n = 0;
        if (kvidx_session_feed(s, line, (size_t)l) != KVIDX_OK) t_err(a, "feed", "", 0);
        if (k.out.n == 5 && memcmp(k.out.p, "+OK\r\n", 5) == 0) a->nx_won[j] = 1;
        else if (!(k.out.n == 5 && memcmp(k.out.p, "$-1\r\n", 5) == 0)) t_err(a, "SET NX reply", k.out.p, k.out.n);
    }
    /* SET 9 <unique> GET */
    for (j = 0; j < a->nchain; j++) {
        char line[64];
        int l = snprintf(line, sizeof line, "SET 9 t%d-%zu GET\r\n", a->id, j);
        rd r;
        int64_t len;
        k.out.n = 0;
        if (kvidx_session_feed(s, line, (size_t)l) != KVIDX_OK) t_err(a, "feed", "", 0);
        r.p = k.out.p;
        r.end = k.out.p + k.out.n;
        if (k.out.n == 5 && memcmp(k.out.p, "$-1\r\n", 5) == 0) {
            a->olds[a->nolds++][0] = 0;
        } else if (rd_line(&r, '$', &len) && len > 0 && len < 16 && r.end - r.p == len + 2) {
            memcpy(a->olds[a->nolds], r.p, (size_t)len);
            a->olds[a->nolds++][len] = 0;
        } else {
            t_err(a, "SET GET reply", k.out.p, k.out.n);
        }
    }
    kvidx_session_close(s);
    b_free(&req);
    b_free(&k.out);
    return NULL;
}

static int str_cmp(const void *x, const void *y) { return strcmp((const char *)x, (const char *)y); }
static int i64_cmp(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return a < b ? -1 : a > b;
}

static void test_threads(void) {
    kvidx *db = db_open("proto_threads");
    targ *ta;
    pthread_t th[NTHREADS];
    size_t n = 20000 / SAN_SLOW, nchain = 2000 / SAN_SLOW, i, j, total = 0, nil = 0, all = 0;
    int64_t *allinc;
    char (*olds)[16];
    char want[64];
    REQUIRE(db);
    ta = calloc(NTHREADS, sizeof *ta);
    REQUIRE(ta);
    for (i = 0; i < NTHREADS; i++) {
        ta[i].db = db;
        ta[i].id = (int)i;
        ta[i].n = n;
        ta[i].incr = xmalloc(n * sizeof *ta[i].incr);
        ta[i].nchain = nchain;
        ta[i].olds = xmalloc(nchain * sizeof *ta[i].olds);
    }
    for (i = 0; i < NTHREADS; i++)
        if (pthread_create(&th[i], NULL, thread_main, &ta[i]) != 0) {
            pfail(__LINE__, "pthread_create");
            for (j = 0; j < i; j++) pthread_join(th[j], NULL);
            return;
        }
    for (i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
    for (i = 0; i < NTHREADS; i++)
        if (ta[i].errors) pfail(__LINE__, "%d errors; first: %s", ta[i].errors, ta[i].err);
    /* INCR: the replies are exactly 1..NTHREADS*n; the value is the count */
    allinc = xmalloc(NTHREADS * n * sizeof *allinc);
    for (i = 0; i < NTHREADS; i++) {
        for (j = 0; j < ta[i].nincr; j++) {
            if (j && ta[i].incr[j] <= ta[i].incr[j - 1]) {
                pfail(__LINE__, "thread %zu: INCR replies not increasing", i);
                break;
            }
        }
        memcpy(allinc + total, ta[i].incr, ta[i].nincr * sizeof *allinc);
        total += ta[i].nincr;
    }
    CHECK(total == NTHREADS * n);
    qsort(allinc, total, sizeof *allinc, i64_cmp);
    for (i = 0; i < total; i++)
        if (allinc[i] != (int64_t)i + 1) {
            pfail(__LINE__, "INCR replies: sorted element %zu is %" PRId64, i, allinc[i]);
            break;
        }
    snprintf(want, sizeof want, "%zu", NTHREADS * n);
    CHECK_VAL(db, 7, want);
    snprintf(want, sizeof want, "%zu", NTHREADS * n * 3);
    CHECK_VAL(db, 8, want);
    /* SET NX: one winner a key, and the value is the winner's */
    for (j = 0; j < NXKEYS; j++) {
        int winners = 0, w = -1;
        for (i = 0; i < NTHREADS; i++)
            if (ta[i].nx_won[j]) {
                winners++;
                w = (int)i;
            }
        if (winners != 1) {
            pfail(__LINE__, "SET NX key %zu: %d winners", 1000 + j, winners);
            continue;
        }
        snprintf(want, sizeof want, "t%d", w);
        check_val(__LINE__, db, 1000 + j, want, strlen(want));
    }
    /* SET GET: every value written comes back as an old value exactly once,
     * but the last, which is the value; nil once */
    olds = xmalloc((NTHREADS * nchain + 1) * sizeof *olds);
    for (i = 0; i < NTHREADS; i++)
        for (j = 0; j < ta[i].nolds; j++) {
            if (!ta[i].olds[j][0]) nil++;
            else memcpy(olds[all++], ta[i].olds[j], 16);
        }
    {
        char v[KVIDX_VALUE_MAX + 1];
        size_t vn = 0;
        if (cget(db, 9, v, &vn) && vn < 16) {
            memcpy(olds[all], v, vn + 1);
            all++;
        }
    }
    CHECK(nil == 1);
    CHECK(all == NTHREADS * nchain);
    qsort(olds, all, sizeof *olds, str_cmp);
    {
        char (*w)[16] = xmalloc((NTHREADS * nchain + 1) * sizeof *w);
        size_t nw = 0;
        for (i = 0; i < NTHREADS; i++)
            for (j = 0; j < nchain; j++) snprintf(w[nw++], 16, "t%zu-%zu", i, j);
        qsort(w, nw, sizeof *w, str_cmp);
        for (i = 0; i < nw && i < all; i++)
            if (strcmp(w[i], olds[i])) {
                pfail(__LINE__, "SET GET: value %s written, %s returned", w[i], olds[i]);
                break;
            }
        free(w);
    }
    free(olds);
    free(allinc);
    for (i = 0; i < NTHREADS; i++) {
        free(ta[i].incr);
        free(ta[i].olds);
    }
    free(ta);
    db_close(db);
}

/* kvidx_session_feed(s, NULL, 0) is a valid call (NULL is refused only
 * with n > 0); on a fresh session it must not pass NULL to memmove
 * (UBSan). Runs last, so that a sanitizer abort hides nothing. */
static void test_feed_null_empty(void) {
    kvidx *db = db_open("proto_null");
    conn c;
    REQUIRE(db);
    if (c_open(&c, db, 0) == KVIDX_OK) {
        CHECK_RC(kvidx_session_feed(c.s, NULL, 0), KVIDX_OK);
        XR(&c, "PI", "");
        CHECK_RC(kvidx_session_feed(c.s, NULL, 0), KVIDX_OK);
        XR(&c, "NG\r\n", "+PONG\r\n");
        CHECK_RC(kvidx_session_feed(c.s, NULL, 0), KVIDX_OK);
        CHECK(c.k.calls == 1);
        c_close(&c);
    }
    db_close(db);
}

#define RUN(fn)                    \
    do {                           \
        g_lines = 0;               \
        t_watchdog(#fn, 300);      \
        T_RUN(fn);                 \
    } while (0)

int main(void) {
    t_init("test_proto");
    RUN(test_session_api);
    RUN(test_server_commands);
    RUN(test_strings);
    RUN(test_decrby_min);
    RUN(test_sets);
    RUN(test_key_mapping);
    RUN(test_two_keyspaces);
    RUN(test_errors_change_nothing);
    RUN(test_flush);
    RUN(test_scan_paging);
    RUN(test_inline);
    RUN(test_limits);
    RUN(test_broken_framing);
    RUN(test_pipeline);
    RUN(test_random_model);
    RUN(test_every_split);
    RUN(test_serve);
    RUN(test_write_fail);
    RUN(test_threads);
    RUN(test_feed_null_empty);
    alarm(0);
    return t_done();
}
