/*
 * test_model.c -- model-based random test of kvidx's value API.
 *
 * A plain reference map (open addressing, key -> length and a seed the
 * value bytes are derived from) shadows the database. Random puts (lengths
 * 0..256, random, all-zero and all-0xFF bytes), overwrites, deletes of
 * present and absent keys, gets of present and absent keys and small range
 * scans run against both; every result is compared. Every 20,000 operations
 * the database is closed and reopened and checked whole: every key ever
 * touched, a full scan, and kvidx_stat. One full scan per phase runs with
 * the handle open.
 *
 *   case 1: shards = 1, ~300k operations (well over 3 * 65536 value puts,
 *           so one shard crosses several key and value sections)
 *   case 2: shards = 4, a small keyspace with heavy overwrites and deletes
 *
 * KVIDX_SEED replays a run; KVIDX_TEST_SCALE (default 1) divides the
 * operation counts.
 */
#include "../kvidx.h"
#include "harness.h"

#include <signal.h>
#include <stdarg.h>

#define PATHSZ 4352
#define PHASE_OPS 20000u

static uint64_t g_scale = 1;

/* ---- watchdog ------------------------------------------------------------ */

/* ---- values derived from (seed, kind) ---------------------------------- */

enum { V_RANDOM, V_ZERO, V_ONES, V_LOW };

static void mkval(uint8_t *b, size_t len, uint64_t seed, int kind) {
    size_t i;
    switch (kind) {
    case V_ZERO: memset(b, 0x00, len); break;
    case V_ONES: memset(b, 0xFF, len); break;
    case V_LOW:
        for (i = 0; i < len; i++) b[i] = (uint8_t)((seed + i) & 3);
        break;
    default:
        for (i = 0; i + 8 <= len; i += 8) {
            uint64_t x = t_mix64(seed + i);
            memcpy(b + i, &x, 8);
        }
        for (; i < len; i++) b[i] = (uint8_t)t_mix64(seed ^ (i << 40));
    }
}

/* ---- the reference model ----------------------------------------------- */

typedef struct {
    uint64_t key;
    uint64_t seed;
    uint16_t len;
    uint8_t kind;
    uint8_t used;    /* slot holds a key (ever touched) */
    uint8_t present; /* key currently holds a value */
} ment;

typedef struct {
    ment *t;
    size_t cap, used;   /* slots, keys ever touched */
    uint64_t *keys;     /* keys ever touched, in first-touch order */
    size_t present;     /* live keys */
    uint64_t bytes;     /* sum of live lengths */
    uint64_t records;   /* successful puts + successful deletes */
} model;

static size_t m_slot(const model *m, uint64_t key) {
    size_t i = (size_t)t_mix64(key ^ 0x5bd1e995u) & (m->cap - 1);
    while (m->t[i].used && m->t[i].key != key) i = (i + 1) & (m->cap - 1);
    return i;
}

static ment *m_find(const model *m, uint64_t key) {
    ment *e = &m->t[m_slot(m, key)];
    return e->used ? e : NULL;
}

static int m_init(model *m) {
    memset(m, 0, sizeof *m);
    m->cap = 1 << 16;
    m->t = calloc(m->cap, sizeof *m->t);
    m->keys = malloc(m->cap / 2 * sizeof *m->keys);
    return m->t && m->keys ? 0 : -1;
}

static void m_free(model *m) {
    free(m->t);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

/* The entry for key, created (absent) if it was never touched. */
static ment *m_get(model *m, uint64_t key) {
    size_t i;
    if ((m->used + 1) * 2 > m->cap) {
        ment *old = m->t;
        size_t oc = m->cap, j;
        uint64_t *nk;
        m->cap *= 2;
        m->t = calloc(m->cap, sizeof *m->t);
        nk = realloc(m->keys, m->cap / 2 * sizeof *m->keys);
        if (!m->t || !nk) { fprintf(stderr, "test_model: out of memory\n"); exit(2); }
        m->keys = nk;
        for (j = 0; j < oc; j++)
            if (old[j].used) m->t[m_slot(m, old[j].key)] = old[j];
        free(old);
    }
    i = m_slot(m, key);
    if (!m->t[i].used) {
        m->t[i].used = 1;
        m->t[i].key = key;
        m->keys[m->used++] = key;
    }
    return &m->t[i];
}

static int u64_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Live keys, ascending (caller frees). */
static uint64_t *m_sorted(const model *m, size_t *n) {
    size_t i, k = 0;
    uint64_t *s = malloc((m->present + 1) * sizeof *s);
    if (!s) { fprintf(stderr, "test_model: out of memory\n"); exit(2); }
    for (i = 0; i < m->used; i++) {
        const ment *e = m_find(m, m->keys[i]);
        if (e && e->present) s[k++] = e->key;
    }
    qsort(s, k, sizeof *s, u64_cmp);
    *n = k;
    return s;
}

/* ---- mismatch reporting -------------------------------------------------- */

static int g_bad;

static void bad(uint64_t op, uint64_t key, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "  MISMATCH at op %" PRIu64 ", key %" PRIu64 " (0x%016" PRIx64 "): ", op, key,
            key);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (!g_bad) t_case_failures++;
    g_bad = 1;
}

/* Compares len bytes at got with the model entry e; 1 when equal. */
static int same_value(const ment *e, const void *got, size_t len) {
    uint8_t want[KVIDX_VALUE_MAX];
    if (len != e->len) return 0;
    mkval(want, e->len, e->seed, e->kind);
    return len == 0 || memcmp(got, want, len) == 0;
}

/* Checks kvidx_get(key) against the model (NULL e: never touched). */
static void check_key(kvidx *db, const model *m, uint64_t op, uint64_t key) {
    uint8_t buf[KVIDX_VALUE_MAX];
    size_t len = 999;
    const ment *e = m_find(m, key);
    int rc = kvidx_get(db, key, buf, sizeof buf, &len);
    if (!e || !e->present) {
        if (rc != KVIDX_NOTFOUND || len != 0)
            bad(op, key, "get: rc %d (%s) len %zu, model: absent", rc, kvidx_strerror(rc), len);
        return;
    }
    if (rc != KVIDX_OK) {
        bad(op, key, "get: rc %d (%s), model: present len %u", rc, kvidx_strerror(rc), e->len);
        return;
    }
    if (len != e->len) {
        bad(op, key, "get: len %zu, model len %u", len, e->len);
        return;
    }
    if (!same_value(e, buf, len)) {
        uint8_t want[KVIDX_VALUE_MAX];
        size_t i = 0;
        mkval(want, e->len, e->seed, e->kind);
        while (i < len && buf[i] == want[i]) i++;
        bad(op, key, "get: bytes differ at offset %zu of %zu (got 0x%02x want 0x%02x, kind %d)", i,
            len, buf[i], want[i], e->kind);
    }
}

/* ---- scans --------------------------------------------------------------- */

typedef struct {
    const model *m;
    const uint64_t *want; /* expected keys, ascending */
    size_t nwant, i;
    uint64_t op;
} scanchk;

static int scanchk_fn(void *ud, uint64_t key, const void *val, size_t len) {
    scanchk *s = ud;
    const ment *e;
    if (s->i >= s->nwant) {
        bad(s->op, key, "scan: extra key after the %zu expected ones", s->nwant);
        return 1;
    }
    if (key != s->want[s->i]) {
        bad(s->op, key, "scan: item %zu is key %" PRIu64 ", expected key %" PRIu64, s->i, key,
            s->want[s->i]);
        return 1;
    }
    e = m_find(s->m, key);
    if (!e || !e->present || !same_value(e, val, len)) {
        bad(s->op, key, "scan: value differs (len %zu, model len %u)", len, e ? e->len : 0);
        return 1;
    }
    s->i++;
    return 0;
}

static void check_scan(kvidx *db, const model *m, uint64_t op, uint64_t from, uint64_t to,
                       const uint64_t *want, size_t nwant) {
    scanchk s;
    int rc;
    s.m = m;
    s.want = want;
    s.nwant = nwant;
    s.i = 0;
    s.op = op;
    rc = kvidx_scan(db, from, to, scanchk_fn, &s);
    if (g_bad) return;
    if (rc != KVIDX_OK)
        bad(op, from, "scan [%" PRIu64 ", %" PRIu64 "]: rc %d (%s)", from, to, rc,
            kvidx_strerror(rc));
    else if (s.i != nwant)
        bad(op, nwant > s.i ? want[s.i] : from,
            "scan [%" PRIu64 ", %" PRIu64 "]: visited %zu keys, model has %zu (first missing shown)",
            from, to, s.i, nwant);
}

/* A range of at most ~2000 keys, checked by walking it in the model. */
static void check_small_scan(kvidx *db, const model *m, uint64_t op, uint64_t from, uint64_t to) {
    uint64_t want[2100], k;
    size_t n = 0;
    for (k = from;; k++) {
        const ment *e = m_find(m, k);
        if (e && e->present && n < sizeof want / sizeof want[0]) want[n++] = k;
        if (k == to) break;
    }
    check_scan(db, m, op, from, to, want, n);
}

static void check_full_scan(kvidx *db, const model *m, uint64_t op) {
    size_t n;
    uint64_t *s = m_sorted(m, &n);
    check_scan(db, m, op, 0, UINT64_MAX, s, n);
    free(s);
}

/* ---- the random workload ------------------------------------------------- */

typedef struct {
    const char *name;
    uint32_t shards;
    uint64_t ops;
    uint64_t hot;          /* hot keys: [0, hot) and [UINT64_MAX - hot + 1, UINT64_MAX] */
    uint64_t cold_space;   /* 0: cold keys are random 64-bit; else [0, cold_space) */
    int p_put, p_del, p_get; /* percent; the rest are range scans */
    int k_hot, k_top, k_existing, k_special; /* percent of key picks; the rest cold */
} cfg;

static uint64_t pick_key(const cfg *c, const model *m) {
    static const uint64_t special[] = {0, 1, UINT64_MAX, UINT64_MAX - 1, 1ull << 63};
    int r = (int)t_below(100);
    if (r < c->k_special) return special[t_below(sizeof special / sizeof special[0])];
    r -= c->k_special;
    if (r < c->k_hot) return t_below(c->hot);
    r -= c->k_hot;
    if (r < c->k_top) return UINT64_MAX - t_below(c->hot);
    r -= c->k_top;
    if (r < c->k_existing && m->used) return m->keys[t_below(m->used)];
    return c->cold_space ? t_below(c->cold_space) : t_rand();
}

/* Closes, reopens and verifies the whole model. Returns the new handle. */
static kvidx *reopen_verify(kvidx *db, const char *dir, const cfg *c, const model *m, uint64_t op,
                            int phase) {
    kvidx_options o;
    kvidx_stats st;
    size_t i;
    int rc = kvidx_close(db);
    if (rc != KVIDX_OK) {
        bad(op, 0, "close: rc %d (%s)", rc, kvidx_strerror(rc));
        return NULL;
    }
    kvidx_options_init(&o);
    o.flags = 0; /* it exists: no CREATE needed */
    o.shards = phase % 2 ? 16 : c->shards; /* ignored: the stored count wins */
    db = NULL;
    rc = kvidx_open(dir, &o, &db);
    if (rc != KVIDX_OK) {
        bad(op, 0, "reopen: rc %d (%s)", rc, kvidx_strerror(rc));
        return NULL;
    }
    for (i = 0; i < m->used && !g_bad; i++) check_key(db, m, op, m->keys[i]);
    /* never-touched keys are absent */
    for (i = 0; i < 200 && !g_bad; i++) {
        uint64_t k = t_rand();
        if (!m_find(m, k)) check_key(db, m, op, k);
    }
    if (!g_bad) check_full_scan(db, m, op);
    if (!g_bad) {
        memset(&st, 0, sizeof st);
        st.size = (uint32_t)sizeof st;
        rc = kvidx_stat(db, &st);
        if (rc != KVIDX_OK)
            bad(op, 0, "stat: rc %d", rc);
        else if (st.shards != c->shards)
            bad(op, 0, "stat: shards %u, created with %u", st.shards, c->shards);
        else if (st.keys != m->present)
            bad(op, 0, "stat after reopen: keys %" PRIu64 ", model %zu", st.keys, m->present);
        else if (st.value_bytes != m->bytes)
            bad(op, 0, "stat after reopen: value_bytes %" PRIu64 ", model %" PRIu64,
                st.value_bytes, m->bytes);
        else if (st.records != m->records)
            bad(op, 0, "stat after reopen: records %" PRIu64 ", model %" PRIu64, st.records,
                m->records);
        else if (st.garbage_records != m->records - m->present)
            bad(op, 0, "stat after reopen: garbage_records %" PRIu64 ", model %" PRIu64,
                st.garbage_records, m->records - m->present);
    }
    return db;
}

static void run_model(const cfg *c) {
    char dir[PATHSZ];
    model m;
    kvidx *db = NULL;
    kvidx_options o;
    uint64_t op, ops = c->ops / g_scale, full_at, value_puts = 0, puts = 0, dels = 0, gets = 0,
                 scans = 0, reopens = 0;
    uint8_t v[KVIDX_VALUE_MAX], buf[KVIDX_VALUE_MAX];
    int rc, phase = 0;
    time_t t0 = time(NULL);

    g_bad = 0;
    REQUIRE(m_init(&m) == 0);
    snprintf(dir, sizeof dir, "%s", t_dir(c->name));
    kvidx_options_init(&o);
    o.shards = c->shards;
    rc = kvidx_open(dir, &o, &db);
    CHECK_RC(rc, KVIDX_OK);
    if (rc != KVIDX_OK) { m_free(&m); return; }
    full_at = t_below(PHASE_OPS);

    for (op = 0; op < ops && !g_bad; op++) {
        int r = (int)t_below(100);
        uint64_t key = pick_key(c, &m);

        if (r < c->p_put) {
            ment *e;
            size_t len;
            uint64_t seed = t_rand();
            int kind, kr = (int)t_below(100);
            kind = kr < 4 ? V_ZERO : kr < 8 ? V_ONES : kr < 10 ? V_LOW : V_RANDOM;
            kr = (int)t_below(100);
            len = kr < 3 ? 0 : kr < 8 ? KVIDX_VALUE_MAX : kr < 10 ? 1 : (size_t)t_below(KVIDX_VALUE_MAX + 1);
            mkval(v, len, seed, kind);
            rc = kvidx_put(db, key, len ? v : (t_below(2) ? NULL : v), len);
            if (rc != KVIDX_OK) {
                bad(op, key, "put len %zu: rc %d (%s)", len, rc, kvidx_strerror(rc));
                break;
            }
            e = m_get(&m, key);
            if (e->present) m.bytes -= e->len;
            else m.present++;
            e->present = 1;
            e->seed = seed;
            e->kind = (uint8_t)kind;
            e->len = (uint16_t)len;
            m.bytes += len;
            m.records++;
            puts++;
            value_puts += len > 0;
            check_key(db, &m, op, key);
        } else if (r < c->p_put + c->p_del) {
            ment *e = m_find(&m, key);
            int want = e && e->present ? KVIDX_OK : KVIDX_NOTFOUND;
            rc = kvidx_delete(db, key);
            if (rc != want) {
                bad(op, key, "delete: rc %d (%s), model says %s", rc, kvidx_strerror(rc),
                    want == KVIDX_OK ? "present" : "absent");
                break;
            }
            if (want == KVIDX_OK) {
                e->present = 0;
                m.present--;
                m.bytes -= e->len;
                m.records++;
                dels++;
            }
            check_key(db, &m, op, key);
        } else if (r < c->p_put + c->p_del + c->p_get) {
            const ment *e;
            gets++;
            if (t_below(4) == 0) key = t_rand(); /* most likely absent */
            e = m_find(&m, key);
            if (e && e->present && e->len > 0 && t_below(8) == 0) {
                /* too small a buffer: ETOOBIG, needed length, buf untouched */
                size_t len = 0, cap = (size_t)t_below(e->len);
                memset(buf, 0xA7, sizeof buf);
                rc = kvidx_get(db, key, buf, cap, &len);
                if (rc != KVIDX_ETOOBIG || len != e->len)
                    bad(op, key, "get cap %zu of a %u-byte value: rc %d len %zu", cap, e->len, rc,
                        len);
                else {
                    size_t i;
                    for (i = 0; i < sizeof buf && buf[i] == 0xA7; i++) {}
                    if (i != sizeof buf) bad(op, key, "ETOOBIG get wrote into the buffer at %zu", i);
                }
            } else {
                check_key(db, &m, op, key);
            }
        } else {
            uint64_t from, to, w = t_below(t_below(4) ? 300 : 2000);
            int sr = (int)t_below(10);
            scans++;
            if (sr < 5) from = t_below(c->hot + 100);
            else if (sr < 7) from = UINT64_MAX - t_below(c->hot + 100);
            else if (m.used) {
                from = m.keys[t_below(m.used)];
                from = from > 50 ? from - t_below(50) : 0;
            } else from = t_rand();
            to = from + w >= from ? from + w : UINT64_MAX;
            check_small_scan(db, &m, op, from, to);
        }

        if (!g_bad && op % PHASE_OPS == full_at) check_full_scan(db, &m, op);
        if (!g_bad && (op + 1) % PHASE_OPS == 0) {
            db = reopen_verify(db, dir, c, &m, op, ++phase);
            reopens++;
            full_at = t_below(PHASE_OPS);
            if (!db) break;
        }
    }
    if (db && !g_bad) db = reopen_verify(db, dir, c, &m, op, ++phase);
    if (db) CHECK_RC(kvidx_close(db), KVIDX_OK);
    printf("  %s: shards %u, %" PRIu64 " ops (%" PRIu64 " puts, %" PRIu64 " with a value, %" PRIu64
           " deletes, %" PRIu64 " gets, %" PRIu64 " scans), %" PRIu64 " reopens, %zu keys touched,"
           " %zu live, %lds\n",
           c->name, c->shards, op, puts, value_puts, dels, gets, scans, reopens, m.used, m.present,
           (long)(time(NULL) - t0));
    fflush(stdout);
    if (c->shards == 1 && g_scale == 1 && !g_bad) {
        /* the point of this case: several 65536-slot sections in one shard */
        CHECK(value_puts > 3 * 65536 + 30000);
    }
    m_free(&m);
    t_rmrf(dir);
}

static void test_model_one_shard(void) {
    static const cfg c = {
        "model1", 1, 300000, 2000, 0,
        84, 6, 8,     /* put, delete, get; 2% scans */
        25, 3, 20, 2, /* hot, top, existing, special; 50% random 64-bit */
    };
    run_model(&c);
}

static void test_model_four_shards(void) {
    static const cfg c = {
        "model4", 4, 200000, 3000, 50000,
        50, 22, 22,   /* 6% scans */
        70, 10, 10, 3, /* 7% cold keys in [0, 50000) */
    };
    run_model(&c);
}

/* An open on threads (this test builds with KVIDX_OPEN_PARALLEL=0) that
 * meets a damaged shard fails with KVIDX_ECORRUPT, changes nothing, and
 * opens again once the damage is undone. */
static void test_threaded_open_damage(void) {
    const char *dir = t_dir("model_damage");
    char path[4200];
    kvidx_options o;
    kvidx *db;
    uint8_t v[KVIDX_VALUE_MAX], b = 0;
    size_t len;
    uint64_t k, bad = 0;
    FILE *f;
    t_rmrf(dir);
    kvidx_options_init(&o);
    o.shards = 8;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    memset(v, 7, sizeof v);
    for (k = 0; k < 20000; k++) bad += kvidx_put(db, k, v, sizeof v) != KVIDX_OK;
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    snprintf(path, sizeof path, "%s/s0005.1.k", dir); /* its header's magic */
    REQUIRE((f = fopen(path, "r+b")) != NULL);
    REQUIRE(fread(&b, 1, 1, f) == 1);
    b ^= 0x20;
    fseek(f, 0, SEEK_SET);
    REQUIRE(fwrite(&b, 1, 1, f) == 1);
    fclose(f);
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_ECORRUPT);
    REQUIRE((f = fopen(path, "r+b")) != NULL);
    b ^= 0x20;
    REQUIRE(fwrite(&b, 1, 1, f) == 1);
    fclose(f);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (k = 0; k < 20000; k++) bad += kvidx_get(db, k, v, sizeof v, &len) != KVIDX_OK || len != sizeof v;
    CHECK(bad == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

int main(void) {
    const char *s = getenv("KVIDX_TEST_SCALE");
    if (s && strtoull(s, NULL, 10) > 1) g_scale = strtoull(s, NULL, 10);
    t_watchdog("test_model", 1800);
    t_init("test_model");
    T_RUN(test_model_one_shard);
    T_RUN(test_model_four_shards);
    T_RUN(test_threaded_open_damage);
    alarm(0);
    return t_done();
}
