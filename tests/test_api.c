/*
 * test_api.c -- black-box unit tests of every function and every documented
 * return code in kvidx.h. Uses only the public API and POSIX.
 *
 *   cc -std=c99 -D_GNU_SOURCE -Wall -Wextra -Wpedantic -Werror \
 *      tests/test_api.c kvidx.c -o test_api -lpthread && ./test_api
 *
 * KVIDX_SEED replays a run; KVIDX_TEST_DIR moves the scratch directories;
 * KVIDX_TEST_SCALE (default 1) divides the larger key counts.
 */
#include "../kvidx.h"
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/wait.h>

#define PATHSZ 4352

static int g_scale = 1;

/* A deadlock fails the run instead of hanging it (harness watchdog);
 * generous: sanitizer builds are slow, only a hang hits this. */
static void guard_secs(const char *name, unsigned secs) { t_watchdog(name, secs); }
static void guard(const char *name) { t_watchdog(name, 600); }

/* ---- helpers ------------------------------------------------------------- */

/* Deterministic bytes for (seed): value content the test can recompute. */
static void vfill(uint8_t *b, size_t len, uint64_t seed) {
    size_t i;
    for (i = 0; i < len; i++) b[i] = (uint8_t)(t_mix64(seed * 1000003u + i) >> 17);
}

static void dcopy(char *dst, const char *src) {
    size_t n = strlen(src);
    if (n >= PATHSZ) n = PATHSZ - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

static int path_exists(const char *p) {
    struct stat s;
    return stat(p, &s) == 0;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* 1 when the file at path holds exactly text. */
static int file_is(const char *path, const char *text) {
    char buf[256];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return n == strlen(text) && memcmp(buf, text, n) == 0;
}

static kvidx_options mkopts(uint32_t flags, uint32_t shards) {
    kvidx_options o;
    kvidx_options_init(&o);
    o.flags = flags;
    o.shards = shards;
    return o;
}

/* Opens dir with flags and shards; NULL (and a recorded failure) if not OK. */
static kvidx *xopen(const char *dir, uint32_t flags, uint32_t shards) {
    kvidx_options o = mkopts(flags, shards);
    kvidx *db = NULL;
    int rc = kvidx_open(dir, &o, &db);
    if (rc != KVIDX_OK) {
        t_case_failures++;
        fprintf(stderr, "open %s (flags %u shards %u): %d %s\n", dir, flags, shards, rc,
                kvidx_strerror(rc));
        return NULL;
    }
    CHECK(db != NULL);
    return db;
}

/* 1 when key holds exactly the len bytes at want. Prints what differs. */
static int has_value(kvidx *db, uint64_t key, const void *want, size_t len) {
    uint8_t buf[KVIDX_VALUE_MAX + 16];
    size_t got = 9999;
    int rc = kvidx_get(db, key, buf, sizeof buf, &got);
    if (rc != KVIDX_OK) {
        fprintf(stderr, "  get %" PRIu64 ": rc %d (%s), want OK\n", key, rc, kvidx_strerror(rc));
        return 0;
    }
    if (got != len) {
        fprintf(stderr, "  get %" PRIu64 ": len %zu, want %zu\n", key, got, len);
        return 0;
    }
    if (len && memcmp(buf, want, len) != 0) {
        fprintf(stderr, "  get %" PRIu64 ": bytes differ\n", key);
        return 0;
    }
    return 1;
}

static int is_absent(kvidx *db, uint64_t key) {
    uint8_t buf[KVIDX_VALUE_MAX];
    size_t got = 9999;
    int rc = kvidx_get(db, key, buf, sizeof buf, &got);
    if (rc != KVIDX_NOTFOUND || got != 0) {
        fprintf(stderr, "  get %" PRIu64 ": rc %d len %zu, want NOTFOUND len 0\n", key, rc, got);
        return 0;
    }
    return 1;
}

static uint64_t stat_field(kvidx *db, size_t off) {
    kvidx_stats st;
    uint64_t v;
    memset(&st, 0, sizeof st);
    st.size = (uint32_t)sizeof st;
    if (kvidx_stat(db, &st) != KVIDX_OK) return UINT64_MAX;
    memcpy(&v, (char *)&st + off, sizeof v);
    return v;
}
#define STAT(db, field) stat_field((db), offsetof(kvidx_stats, field))

static uint32_t stat_shards(kvidx *db) {
    kvidx_stats st;
    memset(&st, 0, sizeof st);
    st.size = (uint32_t)sizeof st;
    if (kvidx_stat(db, &st) != KVIDX_OK) return 0;
    return st.shards;
}

/* ---- a scan collector ------------------------------------------------ */

typedef struct {
    uint64_t key;
    uint32_t len;
    uint8_t val[KVIDX_VALUE_MAX];
} rec;

typedef struct {
    rec *r;
    size_t n, cap;
    size_t stop_after; /* 0 = never stop */
    int stop_ret;      /* what to return when stopping */
    int bad;           /* order, length or pointer violations */
} coll;

static int coll_fn(void *ud, uint64_t key, const void *val, size_t len) {
    coll *c = ud;
    if (c->n && key <= c->r[c->n - 1].key) c->bad |= 1;
    if (len > KVIDX_VALUE_MAX) { c->bad |= 2; len = KVIDX_VALUE_MAX; }
    if (len && !val) { c->bad |= 4; len = 0; }
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 64;
        rec *nr = realloc(c->r, nc * sizeof *nr);
        if (!nr) { c->bad |= 8; return 1; }
        c->r = nr;
        c->cap = nc;
    }
    c->r[c->n].key = key;
    c->r[c->n].len = (uint32_t)len;
    if (len) memcpy(c->r[c->n].val, val, len);
    c->n++;
    return c->stop_after && c->n >= c->stop_after ? c->stop_ret : 0;
}

static void coll_reset(coll *c) {
    c->n = 0;
    c->bad = 0;
    c->stop_after = 0;
    c->stop_ret = 1;
}

static int count_fn(void *ud, uint64_t key, const void *val, size_t len) {
    (void)key; (void)val; (void)len;
    (*(int *)ud)++;
    return 0;
}

/* ---- reference entries: key -> value derived from a seed ---------------- */

typedef struct {
    uint64_t key;
    uint64_t seed;
    uint32_t len;
    int live;
} ref;

static int ref_cmp(const void *a, const void *b) {
    uint64_t x = ((const ref *)a)->key, y = ((const ref *)b)->key;
    return x < y ? -1 : x > y;
}

static int ref_has(kvidx *db, const ref *r) {
    uint8_t v[KVIDX_VALUE_MAX];
    if (!r->live) return is_absent(db, r->key);
    vfill(v, r->len, r->seed);
    return has_value(db, r->key, v, r->len);
}

/* Checks that coll c equals the live refs (sorted) with keys in [lo, hi]. */
static int coll_matches(const coll *c, const ref *refs, size_t n, uint64_t lo, uint64_t hi) {
    size_t i, j = 0;
    uint8_t v[KVIDX_VALUE_MAX];
    if (c->bad) { fprintf(stderr, "  scan callback violations 0x%x\n", c->bad); return 0; }
    for (i = 0; i < n; i++) {
        if (!refs[i].live || refs[i].key < lo || refs[i].key > hi) continue;
        if (j >= c->n) {
            fprintf(stderr, "  scan [%" PRIu64 ",%" PRIu64 "] missed key %" PRIu64 "\n", lo, hi,
                    refs[i].key);
            return 0;
        }
        if (c->r[j].key != refs[i].key) {
            fprintf(stderr, "  scan [%" PRIu64 ",%" PRIu64 "] item %zu: key %" PRIu64
                    ", want %" PRIu64 "\n", lo, hi, j, c->r[j].key, refs[i].key);
            return 0;
        }
        vfill(v, refs[i].len, refs[i].seed);
        if (c->r[j].len != refs[i].len || memcmp(c->r[j].val, v, refs[i].len)) {
            fprintf(stderr, "  scan: key %" PRIu64 " value differs (len %u want %u)\n",
                    refs[i].key, c->r[j].len, refs[i].len);
            return 0;
        }
        j++;
    }
    if (j != c->n) {
        fprintf(stderr, "  scan [%" PRIu64 ",%" PRIu64 "] returned %zu keys, want %zu\n", lo, hi,
                c->n, j);
        return 0;
    }
    return 1;
}

/* ======================================================================
 * version, strerror, options
 * ====================================================================== */

static const int known_codes[] = {
    KVIDX_OK,      KVIDX_NOTFOUND, KVIDX_EINVAL,  KVIDX_ENOMEM, KVIDX_EIO,     KVIDX_ECORRUPT,
    KVIDX_ELOCKED, KVIDX_EVERSION, KVIDX_EFULL,   KVIDX_ERDONLY, KVIDX_ETOOBIG, KVIDX_EMISUSE,
};
#define NKNOWN (sizeof known_codes / sizeof known_codes[0])

static void test_version_strerror(void) {
    size_t i, j;
    static const int unknown[] = {2, 3, 100, -12, -13, -1000, INT_MAX, INT_MIN};
    guard(__func__);
    REQUIRE(kvidx_version() != NULL);
    CHECK(strcmp(kvidx_version(), KVIDX_VERSION_STRING) == 0);
    CHECK(strcmp(KVIDX_VERSION_STRING, "0.5.0") == 0);
    CHECK(KVIDX_VERSION_NUMBER == 500);
    for (i = 0; i < NKNOWN; i++) {
        const char *s = kvidx_strerror(known_codes[i]);
        CHECK(s != NULL);
        if (!s) continue;
        CHECK(s[0] != 0);
        for (j = 0; j < i; j++) {
            const char *o = kvidx_strerror(known_codes[j]);
            if (o && strcmp(s, o) == 0) {
                t_case_failures++;
                fprintf(stderr, "strerror(%d) == strerror(%d) == \"%s\"\n", known_codes[i],
                        known_codes[j], s);
            }
        }
    }
    /* The codes themselves: 0 OK, positive statuses, negative errors, distinct. */
    CHECK(KVIDX_OK == 0 && KVIDX_NOTFOUND > 0);
    for (i = 2; i < NKNOWN; i++) CHECK(known_codes[i] < 0);
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = kvidx_strerror(unknown[i]);
        CHECK(s != NULL);
        if (!s) continue;
        CHECK(s[0] != 0);
        for (j = 0; j < NKNOWN; j++) {
            const char *o = kvidx_strerror(known_codes[j]);
            if (o && strcmp(s, o) == 0) {
                t_case_failures++;
                fprintf(stderr, "unknown code %d described like known code %d: \"%s\"\n",
                        unknown[i], known_codes[j], s);
            }
        }
    }
    CHECK(strcmp(kvidx_strerror(KVIDX_EPROTO), "protocol error") == 0);
    CHECK(strcmp(kvidx_strerror(KVIDX_CLOSED), "session closed by the peer") == 0);
    /* Static strings: the same pointer contents on a second call. */
    CHECK(strcmp(kvidx_strerror(KVIDX_EINVAL), kvidx_strerror(KVIDX_EINVAL)) == 0);
}

static void test_options_init(void) {
    kvidx_options o;
    guard(__func__);
    memset(&o, 0xA5, sizeof o);
    kvidx_options_init(&o);
    CHECK(o.size == sizeof o);
    CHECK(o.flags == KVIDX_CREATE);
    CHECK(o.shards == 8);
    CHECK(o.sync_interval_ms == 1000);
    CHECK(o.log == NULL);
    kvidx_options_init(NULL); /* ignored: must not crash */
}

/* ======================================================================
 * open / close
 * ====================================================================== */

/* Opening d with o must return EINVAL, leave *out alone and create
 * nothing at d. what/v name the bad option in the failure message. */
static void expect_open_refused(const char *d, const kvidx_options *o, const char *what,
                                unsigned v) {
    kvidx *const SENT = (kvidx *)(void *)&g_scale, *db = SENT; /* "not written" marker */
    if (kvidx_open(d, o, &db) != KVIDX_EINVAL) {
        t_case_failures++;
        fprintf(stderr, "open with %s 0x%x: not EINVAL\n", what, v);
        if (db != SENT) kvidx_close(db);
        t_rmrf(d);
    }
    CHECK(db == SENT);
    CHECK(!path_exists(d));
}

static void test_open_bad_args(void) {
    char d[PATHSZ];
    kvidx *db, *const SENT = (kvidx *)(void *)&g_scale;
    kvidx_options o;
    static const uint32_t bad_shards[] = {3, 5, 6, 12, 1000, 1025, 2000, 2048, 4096, 0x80000000u,
                                          0xFFFFFFFFu};
    static const uint32_t bad_flags[] = {KVIDX_CREATE | 0x8u, KVIDX_CREATE | 0x100u, 0x80000000u,
                                         KVIDX_CREATE | KVIDX_SYNC | 0x10u, 0xFFFFFFFFu};
    size_t i;
    guard(__func__);
    dcopy(d, t_dir("badargs"));

    db = SENT;
    CHECK_RC(kvidx_open(NULL, NULL, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    CHECK_RC(kvidx_open(d, NULL, NULL), KVIDX_EINVAL);
    CHECK(!path_exists(d));
    o = mkopts(KVIDX_CREATE, 8);
    CHECK_RC(kvidx_open(NULL, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);

    for (i = 0; i < sizeof bad_shards / sizeof bad_shards[0]; i++) {
        o = mkopts(KVIDX_CREATE, bad_shards[i]);
        expect_open_refused(d, &o, "shards", bad_shards[i]);
    }

    o = mkopts(KVIDX_CREATE, 8);
    o.size = 0;
    db = SENT;
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    CHECK(!path_exists(d));

    for (i = 0; i < sizeof bad_flags / sizeof bad_flags[0]; i++) {
        o = mkopts(bad_flags[i], 8);
        expect_open_refused(d, &o, "flags", bad_flags[i]);
    }

    /* The good options still work afterwards, on the very same path. */
    o = mkopts(KVIDX_CREATE, 8);
    db = SENT;
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_OK);
    CHECK(db != SENT && db != NULL);
    if (db != SENT && db) CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_open_dirs(void) {
    char d[PATHSZ], p[PATHSZ + 64], f[PATHSZ + 64];
    kvidx *db, *const SENT = (kvidx *)(void *)&g_scale;
    kvidx_options o;
    guard(__func__);
    dcopy(d, t_dir("dirs"));

    /* Missing directory without CREATE, or with RDONLY (which wins). */
    o = mkopts(0, 8);
    db = SENT;
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    CHECK(!path_exists(d));
    o = mkopts(KVIDX_RDONLY, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    CHECK(!path_exists(d));
    o = mkopts(KVIDX_RDONLY | KVIDX_CREATE, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    CHECK(!path_exists(d));

    /* CREATE makes the directory, not its parents. */
    snprintf(p, sizeof p, "%s/sub/db", d);
    o = mkopts(KVIDX_CREATE, 8);
    {
        int rc = kvidx_open(p, &o, &db);
        CHECK(rc < 0);
        if (rc == KVIDX_OK) kvidx_close(db);
        else CHECK(db == SENT);
    }
    CHECK(!path_exists(d));

    /* A regular file is not a directory. */
    REQUIRE(mkdir(d, 0755) == 0);
    snprintf(f, sizeof f, "%s/plain", d);
    REQUIRE(write_file(f, "not a database\n") == 0);
    o = mkopts(KVIDX_CREATE, 8);
    CHECK_RC(kvidx_open(f, &o, &db), KVIDX_EINVAL);
    o = mkopts(0, 8);
    CHECK_RC(kvidx_open(f, &o, &db), KVIDX_EINVAL);
    o = mkopts(KVIDX_RDONLY, 8);
    CHECK_RC(kvidx_open(f, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    CHECK(file_is(f, "not a database\n"));

    /* A non-empty directory without a database is refused and left alone. */
    o = mkopts(KVIDX_CREATE, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    o = mkopts(0, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    o = mkopts(KVIDX_RDONLY, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    CHECK(file_is(f, "not a database\n"));
    if (count_entries(d) != 1) {
        t_case_failures++;
        fprintf(stderr, "refused open left %d entries in a foreign directory (want 1)\n",
                count_entries(d));
    }

    /* An existing empty directory: no database there without CREATE... */
    REQUIRE(unlink(f) == 0);
    o = mkopts(0, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    o = mkopts(KVIDX_RDONLY, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_EINVAL);
    CHECK(db == SENT);
    CHECK(count_entries(d) == 0);
    /* ...and CREATE makes one in it. */
    o = mkopts(KVIDX_CREATE, 8);
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_OK);
    REQUIRE(db != SENT && db != NULL);
    CHECK_RC(kvidx_put(db, 7, "seven", 5), KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK(count_entries(d) > 0);

    /* An existing database opens without CREATE. */
    db = xopen(d, 0, 8);
    if (db) {
        CHECK(has_value(db, 7, "seven", 5));
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    t_rmrf(d);
}

static void test_open_lock_same_process(void) {
    char d[PATHSZ];
    kvidx *db, *db2, *r1, *r2, *const SENT = (kvidx *)(void *)&g_scale;
    kvidx_options o;
    guard(__func__);
    dcopy(d, t_dir("lock"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK_RC(kvidx_put(db, 1, "one", 3), KVIDX_OK);

    db2 = SENT;
    o = mkopts(KVIDX_CREATE, 8);
    CHECK_RC(kvidx_open(d, &o, &db2), KVIDX_ELOCKED);
    o = mkopts(0, 8);
    CHECK_RC(kvidx_open(d, &o, &db2), KVIDX_ELOCKED);
    o = mkopts(KVIDX_RDONLY, 8);
    CHECK_RC(kvidx_open(d, &o, &db2), KVIDX_ELOCKED);
    CHECK_RC(kvidx_open(d, NULL, &db2), KVIDX_ELOCKED);
    CHECK(db2 == SENT);
    /* The refused opens did not disturb the holder. */
    CHECK_RC(kvidx_put(db, 2, "two", 3), KVIDX_OK);
    CHECK(has_value(db, 1, "one", 3));
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    /* After close the lock is free again. */
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK(has_value(db, 1, "one", 3));
    CHECK(has_value(db, 2, "two", 3));
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    /* Readers share; a writer is refused while they hold it. */
    r1 = xopen(d, KVIDX_RDONLY, 8);
    r2 = xopen(d, KVIDX_RDONLY, 8);
    if (r1 && r2) {
        db2 = SENT;
        o = mkopts(KVIDX_CREATE, 8);
        CHECK_RC(kvidx_open(d, &o, &db2), KVIDX_ELOCKED);
        CHECK(db2 == SENT);
        CHECK(has_value(r1, 1, "one", 3));
        CHECK(has_value(r2, 2, "two", 3));
    }
    if (r1) CHECK_RC(kvidx_close(r1), KVIDX_OK);
    if (r2) CHECK_RC(kvidx_close(r2), KVIDX_OK);

    db = xopen(d, 0, 8);
    if (db) CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

/* Runs fn(dir) in a forked child; returns the child's exit status or -1. */
static int in_child(int (*fn)(const char *), const char *dir) {
    int st;
    pid_t pid;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) _exit(fn(dir));
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    if (!WIFEXITED(st)) {
        fprintf(stderr, "child died (signal %d)\n", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        return -1;
    }
    return WEXITSTATUS(st);
}

static int child_expect_locked(const char *dir) {
    kvidx *db = NULL;
    kvidx_options o;
    int rc1, rc2;
    rc1 = kvidx_open(dir, NULL, &db);
    if (rc1 == KVIDX_OK) kvidx_close(db);
    o = mkopts(KVIDX_RDONLY, 8);
    rc2 = kvidx_open(dir, &o, &db);
    if (rc2 == KVIDX_OK) kvidx_close(db);
    if (rc1 != KVIDX_ELOCKED || rc2 != KVIDX_ELOCKED) {
        fprintf(stderr, "child: open -> %d (%s), RDONLY open -> %d (%s); want ELOCKED twice\n", rc1,
                kvidx_strerror(rc1), rc2, kvidx_strerror(rc2));
        return 1;
    }
    return 0;
}

static int child_expect_open(const char *dir) {
    kvidx *db = NULL;
    int rc = kvidx_open(dir, NULL, &db);
    char buf[8];
    size_t len = 0;
    if (rc != KVIDX_OK) {
        fprintf(stderr, "child: open -> %d (%s), want OK\n", rc, kvidx_strerror(rc));
        return 1;
    }
    rc = kvidx_get(db, 1, buf, sizeof buf, &len);
    if (rc != KVIDX_OK || len != 3 || memcmp(buf, "one", 3)) {
        fprintf(stderr, "child: get 1 -> %d len %zu\n", rc, len);
        kvidx_close(db);
        return 2;
    }
    rc = kvidx_put(db, 2, "from child", 10);
    if (rc != KVIDX_OK) {
        fprintf(stderr, "child: put -> %d\n", rc);
        kvidx_close(db);
        return 3;
    }
    return kvidx_close(db) == KVIDX_OK ? 0 : 4;
}

/* With a reader holding dir: a writer is refused, another reader shares. */
static int child_expect_reader_only(const char *dir) {
    kvidx *db = NULL;
    kvidx_options o;
    int rc1, rc2;
    rc1 = kvidx_open(dir, NULL, &db);
    if (rc1 == KVIDX_OK) kvidx_close(db);
    o = mkopts(KVIDX_RDONLY, 8);
    rc2 = kvidx_open(dir, &o, &db);
    if (rc2 == KVIDX_OK) rc2 = kvidx_close(db) == KVIDX_OK ? KVIDX_OK : -100;
    if (rc1 != KVIDX_ELOCKED || rc2 != KVIDX_OK) {
        fprintf(stderr, "child: open -> %d (%s), RDONLY open -> %d (%s); want ELOCKED, OK\n", rc1,
                kvidx_strerror(rc1), rc2, kvidx_strerror(rc2));
        return 1;
    }
    return 0;
}

static void test_open_lock_fork(void) {
    char d[PATHSZ];
    kvidx *db, *db2 = NULL;
    kvidx_options o;
    guard(__func__);
    dcopy(d, t_dir("lockfork"));
    o = mkopts(KVIDX_CREATE, 4);
    o.sync_interval_ms = 0; /* no background thread while forking */
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_OK);
    REQUIRE(db);
    CHECK_RC(kvidx_put(db, 1, "one", 3), KVIDX_OK);
    CHECK(in_child(child_expect_locked, d) == 0);
    /* The child's death did not release the parent's lock or harm the handle. */
    CHECK_RC(kvidx_open(d, NULL, &db2), KVIDX_ELOCKED);
    CHECK_RC(kvidx_put(db, 3, "three", 5), KVIDX_OK);
    CHECK(has_value(db, 1, "one", 3));
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    /* Closed in the parent: a child may open it now. */
    CHECK(in_child(child_expect_open, d) == 0);
    db = xopen(d, 0, 4);
    if (db) {
        CHECK(has_value(db, 2, "from child", 10));
        CHECK(has_value(db, 3, "three", 5));
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }

    /* A reader in the parent refuses a writer in the child, not a reader. */
    db = xopen(d, KVIDX_RDONLY, 4);
    if (db) {
        CHECK(in_child(child_expect_reader_only, d) == 0);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    t_rmrf(d);
}

static void test_reopen_shards(void) {
    char d[PATHSZ], e[PATHSZ];
    kvidx *db;
    uint64_t k;
    uint8_t v[64];
    guard(__func__);
    dcopy(d, t_dir("shards4"));
    db = xopen(d, KVIDX_CREATE, 4);
    REQUIRE(db);
    CHECK(stat_shards(db) == 4);
    for (k = 0; k < 200; k++) {
        vfill(v, k % 64, k);
        CHECK_RC(kvidx_put(db, k * 7919, v, k % 64), KVIDX_OK);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    db = xopen(d, KVIDX_CREATE, 16);
    REQUIRE(db);
    CHECK(stat_shards(db) == 4);
    CHECK(STAT(db, keys) == 200);
    for (k = 0; k < 200; k++) {
        vfill(v, k % 64, k);
        if (!has_value(db, k * 7919, v, k % 64)) { CHECK(0); break; }
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    db = xopen(d, 0, 1);
    REQUIRE(db);
    CHECK(stat_shards(db) == 4);
    vfill(v, 5, 5);
    CHECK(has_value(db, 5 * 7919, v, 5));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);

    /* shards 0 and NULL options both mean 8. */
    dcopy(e, t_dir("shards0"));
    db = xopen(e, KVIDX_CREATE, 0);
    if (db) {
        CHECK(stat_shards(db) == 8);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    t_rmrf(e);
    db = NULL;
    CHECK_RC(kvidx_open(e, NULL, &db), KVIDX_OK);
    if (db) {
        CHECK(stat_shards(db) == 8);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    t_rmrf(e);
}

static void shard_roundtrip(uint32_t shards) {
    char d[PATHSZ];
    kvidx *db;
    size_t i, n = 2000 / (size_t)g_scale + 50;
    ref *refs = calloc(n, sizeof *refs);
    coll c;
    char name[32];
    memset(&c, 0, sizeof c);
    REQUIRE(refs);
    snprintf(name, sizeof name, "shards%u", shards);
    dcopy(d, t_dir(name));
    db = xopen(d, KVIDX_CREATE, shards);
    if (!db) { free(refs); return; }
    CHECK(stat_shards(db) == shards);
    for (i = 0; i < n; i++) {
        uint8_t v[KVIDX_VALUE_MAX];
        refs[i].key = i < 2 ? (i ? UINT64_MAX : 0) : t_rand();
        refs[i].seed = t_rand();
        refs[i].len = (uint32_t)t_below(KVIDX_VALUE_MAX + 1);
        refs[i].live = 1;
        vfill(v, refs[i].len, refs[i].seed);
        CHECK_RC(kvidx_put(db, refs[i].key, v, refs[i].len), KVIDX_OK);
    }
    qsort(refs, n, sizeof *refs, ref_cmp);
    for (i = 1; i < n; i++) /* 64-bit random keys: a duplicate would be a test bug */
        if (refs[i].key == refs[i - 1].key) { t_case_failures++; fprintf(stderr, "dup key\n"); }
    for (i = 0; i < n; i++)
        if (!ref_has(db, &refs[i])) { CHECK(0); break; }
    coll_reset(&c);
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
    CHECK(coll_matches(&c, refs, n, 0, UINT64_MAX));
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    db = xopen(d, 0, 8);
    if (db) {
        CHECK(stat_shards(db) == shards);
        CHECK(STAT(db, keys) == n);
        for (i = 0; i < n; i++)
            if (!ref_has(db, &refs[i])) { CHECK(0); break; }
        coll_reset(&c);
        CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
        CHECK(coll_matches(&c, refs, n, 0, UINT64_MAX));
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    free(c.r);
    free(refs);
    t_rmrf(d);
}

static void test_shards_1(void) { guard(__func__); shard_roundtrip(1); }
static void test_shards_2(void) { guard(__func__); shard_roundtrip(2); }
static void test_shards_1024(void) { guard(__func__); shard_roundtrip(KVIDX_SHARDS_MAX); }

static void test_rdonly(void) {
    char d[PATHSZ];
    kvidx *db, *ro, *ro2;
    uint8_t big[KVIDX_VALUE_MAX];
    coll c;
    int i;
    guard(__func__);
    memset(&c, 0, sizeof c);
    vfill(big, sizeof big, 99);
    dcopy(d, t_dir("rdonly"));
    db = xopen(d, KVIDX_CREATE, 4);
    REQUIRE(db);
    CHECK_RC(kvidx_put(db, 1, "abc", 3), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 2, NULL, 0), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 3, big, sizeof big), KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    for (i = 0; i < 2; i++) {
        /* RDONLY wins over CREATE on an existing database too. */
        ro = xopen(d, i ? KVIDX_RDONLY | KVIDX_CREATE : KVIDX_RDONLY, 8);
        if (!ro) continue;
        CHECK(has_value(ro, 1, "abc", 3));
        CHECK(has_value(ro, 2, "", 0));
        CHECK(has_value(ro, 3, big, sizeof big));
        CHECK(is_absent(ro, 4));
        CHECK_RC(kvidx_put(ro, 4, "x", 1), KVIDX_ERDONLY);
        CHECK_RC(kvidx_put(ro, 1, "zzz", 3), KVIDX_ERDONLY);
        CHECK_RC(kvidx_put(ro, 5, NULL, 0), KVIDX_ERDONLY);
        CHECK_RC(kvidx_put(ro, 3, big, 17), KVIDX_ERDONLY);
        CHECK_RC(kvidx_delete(ro, 1), KVIDX_ERDONLY);
        CHECK_RC(kvidx_delete(ro, 2), KVIDX_ERDONLY);
        CHECK_RC(kvidx_sync(ro), KVIDX_OK);
        CHECK(has_value(ro, 1, "abc", 3));
        CHECK(has_value(ro, 2, "", 0));
        CHECK(has_value(ro, 3, big, sizeof big));
        CHECK(is_absent(ro, 4));
        CHECK(is_absent(ro, 5));
        CHECK(STAT(ro, keys) == 3);
        CHECK(STAT(ro, puts) == 0);
        CHECK(STAT(ro, deletes) == 0);
        CHECK(stat_shards(ro) == 4);
        coll_reset(&c);
        CHECK_RC(kvidx_scan(ro, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
        CHECK(c.n == 3 && !c.bad);
        if (c.n == 3) CHECK(c.r[0].key == 1 && c.r[1].key == 2 && c.r[2].key == 3);

        /* A second reader at the same time. */
        ro2 = xopen(d, KVIDX_RDONLY, 8);
        if (ro2) {
            CHECK(has_value(ro2, 1, "abc", 3));
            CHECK(has_value(ro, 3, big, sizeof big));
            CHECK_RC(kvidx_close(ro2), KVIDX_OK);
        }
        CHECK(has_value(ro, 1, "abc", 3));
        CHECK_RC(kvidx_close(ro), KVIDX_OK);
    }

    /* Nothing the read-only handles were asked to do happened. */
    db = xopen(d, 0, 8);
    if (db) {
        CHECK(has_value(db, 1, "abc", 3));
        CHECK(has_value(db, 2, "", 0));
        CHECK(has_value(db, 3, big, sizeof big));
        CHECK(is_absent(db, 4));
        CHECK(is_absent(db, 5));
        CHECK(STAT(db, keys) == 3);
        CHECK(STAT(db, records) == 3);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    free(c.r);
    t_rmrf(d);
}

/* ======================================================================
 * put / get / delete
 * ====================================================================== */

static void test_put_get_lengths(void) {
    char d[PATHSZ];
    kvidx *db;
    struct { size_t len; int fill; } cases[] = {
        {0, -2}, {0, 0}, {1, -1}, {2, -1}, {17, -1}, {255, -1}, {256, -1}, {256, 0x00},
        {256, 0xFF}, {128, 0x00}, {7, 0xFF}, {1, 0x00}, {1, 0xFF}, {255, 0x00}, {256, 0x80},
    };
    size_t nc = sizeof cases / sizeof cases[0], i;
    uint8_t vals[sizeof cases / sizeof cases[0]][KVIDX_VALUE_MAX];
    int pass;
    guard(__func__);
    dcopy(d, t_dir("lengths"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    for (i = 0; i < nc; i++) {
        if (cases[i].fill < 0) vfill(vals[i], cases[i].len, 1000 + i);
        else memset(vals[i], cases[i].fill, cases[i].len);
        /* fill -2: val NULL with len 0; otherwise a real pointer */
        CHECK_RC(kvidx_put(db, 100 + i, cases[i].fill == -2 ? NULL : vals[i], cases[i].len),
                 KVIDX_OK);
    }
    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < nc; i++) {
            size_t len = 12345, cap = cases[i].len;
            /* a buffer of exactly the value's size: an overrun shows under ASan */
            uint8_t *buf = cap ? malloc(cap) : NULL;
            int rc = kvidx_get(db, 100 + i, buf, cap, &len);
            if (rc != KVIDX_OK || len != cases[i].len ||
                (cap && memcmp(buf, vals[i], cap) != 0)) {
                t_case_failures++;
                fprintf(stderr, "case %zu (len %zu fill %d, pass %d): rc %d len %zu\n", i,
                        cases[i].len, cases[i].fill, pass, rc, len);
            }
            free(buf);
            if (!has_value(db, 100 + i, vals[i], cases[i].len)) CHECK(0);
        }
        CHECK(STAT(db, keys) == nc);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        db = xopen(d, 0, 8);
        REQUIRE(db);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_put_errors(void) {
    char d[PATHSZ];
    kvidx *db;
    uint8_t v[KVIDX_VALUE_MAX + 64], w[KVIDX_VALUE_MAX + 64];
    guard(__func__);
    vfill(v, sizeof v, 1);
    vfill(w, sizeof w, 2);
    dcopy(d, t_dir("puterr"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK_RC(kvidx_put(db, 5, v, KVIDX_VALUE_MAX), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 5, w, KVIDX_VALUE_MAX + 1), KVIDX_ETOOBIG);
    CHECK(has_value(db, 5, v, KVIDX_VALUE_MAX));
    CHECK_RC(kvidx_put(db, 5, w, KVIDX_VALUE_MAX + 64), KVIDX_ETOOBIG);
    CHECK_RC(kvidx_put(db, 5, w, SIZE_MAX), KVIDX_ETOOBIG);
    CHECK(has_value(db, 5, v, KVIDX_VALUE_MAX));
    CHECK_RC(kvidx_put(db, 6, w, KVIDX_VALUE_MAX + 1), KVIDX_ETOOBIG);
    CHECK(is_absent(db, 6));
    CHECK_RC(kvidx_put(db, 5, NULL, 1), KVIDX_EINVAL);
    CHECK_RC(kvidx_put(db, 5, NULL, KVIDX_VALUE_MAX), KVIDX_EINVAL);
    CHECK(has_value(db, 5, v, KVIDX_VALUE_MAX));
    CHECK_RC(kvidx_put(db, 7, NULL, 5), KVIDX_EINVAL);
    CHECK(is_absent(db, 7));
    CHECK(STAT(db, keys) == 1);
    CHECK(STAT(db, records) == 1);
    CHECK(STAT(db, puts) == 1);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(d, 0, 8);
    if (db) {
        CHECK(has_value(db, 5, v, KVIDX_VALUE_MAX));
        CHECK(is_absent(db, 6));
        CHECK(is_absent(db, 7));
        CHECK(STAT(db, keys) == 1);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    t_rmrf(d);
}

static void test_get_buffers(void) {
    char d[PATHSZ];
    kvidx *db;
    uint8_t v[100], buf[300];
    size_t len, i;
    int untouched;
    guard(__func__);
    vfill(v, sizeof v, 3);
    dcopy(d, t_dir("getbuf"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK_RC(kvidx_put(db, 10, v, sizeof v), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 11, NULL, 0), KVIDX_OK);

    /* Too small: ETOOBIG, the needed length, buf untouched. */
    memset(buf, 0x5A, sizeof buf);
    len = 12345;
    CHECK_RC(kvidx_get(db, 10, buf, 99, &len), KVIDX_ETOOBIG);
    CHECK(len == 100);
    for (untouched = 1, i = 0; i < sizeof buf; i++) untouched &= buf[i] == 0x5A;
    CHECK(untouched);
    len = 12345;
    CHECK_RC(kvidx_get(db, 10, buf, 1, &len), KVIDX_ETOOBIG);
    CHECK(len == 100);
    len = 12345;
    CHECK_RC(kvidx_get(db, 10, buf, 0, &len), KVIDX_ETOOBIG);
    CHECK(len == 100);
    len = 12345;
    CHECK_RC(kvidx_get(db, 10, NULL, 0, &len), KVIDX_ETOOBIG);
    CHECK(len == 100);
    for (untouched = 1, i = 0; i < sizeof buf; i++) untouched &= buf[i] == 0x5A;
    CHECK(untouched);

    /* Exactly big enough, and bigger. */
    len = 0;
    CHECK_RC(kvidx_get(db, 10, buf, 100, &len), KVIDX_OK);
    CHECK(len == 100 && memcmp(buf, v, 100) == 0);
    memset(buf, 0x5A, sizeof buf);
    len = 0;
    CHECK_RC(kvidx_get(db, 10, buf, sizeof buf, &len), KVIDX_OK);
    CHECK(len == 100 && memcmp(buf, v, 100) == 0);

    /* NULL buf with cap > 0, NULL len: EINVAL, outputs untouched. */
    len = 4242;
    CHECK_RC(kvidx_get(db, 10, NULL, 10, &len), KVIDX_EINVAL);
    CHECK(len == 4242);
    memset(buf, 0x5A, sizeof buf);
    CHECK_RC(kvidx_get(db, 10, buf, sizeof buf, NULL), KVIDX_EINVAL);
    CHECK_RC(kvidx_get(db, 10, NULL, 0, NULL), KVIDX_EINVAL);
    CHECK_RC(kvidx_get(db, 12, buf, sizeof buf, NULL), KVIDX_EINVAL);
    for (untouched = 1, i = 0; i < sizeof buf; i++) untouched &= buf[i] == 0x5A;
    CHECK(untouched);

    /* An empty value: OK with no buffer at all. */
    len = 777;
    CHECK_RC(kvidx_get(db, 11, NULL, 0, &len), KVIDX_OK);
    CHECK(len == 0);
    len = 777;
    CHECK_RC(kvidx_get(db, 11, buf, sizeof buf, &len), KVIDX_OK);
    CHECK(len == 0);

    /* Absent: NOTFOUND and *len = 0, buf untouched. */
    memset(buf, 0x5A, sizeof buf);
    len = 777;
    CHECK_RC(kvidx_get(db, 12, buf, sizeof buf, &len), KVIDX_NOTFOUND);
    CHECK(len == 0);
    len = 777;
    CHECK_RC(kvidx_get(db, 12, NULL, 0, &len), KVIDX_NOTFOUND);
    CHECK(len == 0);
    for (untouched = 1, i = 0; i < sizeof buf; i++) untouched &= buf[i] == 0x5A;
    CHECK(untouched);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_delete(void) {
    char d[PATHSZ];
    kvidx *db;
    guard(__func__);
    dcopy(d, t_dir("delete"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK_RC(kvidx_delete(db, 5), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_delete(db, 0), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_delete(db, UINT64_MAX), KVIDX_NOTFOUND);
    CHECK(STAT(db, records) == 0);
    CHECK(STAT(db, keys) == 0);
    CHECK_RC(kvidx_put(db, 5, "five", 4), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 6, NULL, 0), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 7, "seven", 5), KVIDX_OK);
    CHECK_RC(kvidx_delete(db, 5), KVIDX_OK);
    CHECK(is_absent(db, 5));
    CHECK_RC(kvidx_delete(db, 5), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_delete(db, 6), KVIDX_OK);
    CHECK(is_absent(db, 6));
    CHECK(has_value(db, 7, "seven", 5));
    CHECK(STAT(db, keys) == 1);
    /* Re-put after delete. */
    CHECK_RC(kvidx_put(db, 5, "FIVE!", 5), KVIDX_OK);
    CHECK(has_value(db, 5, "FIVE!", 5));
    CHECK_RC(kvidx_put(db, 8, "eight", 5), KVIDX_OK);
    CHECK_RC(kvidx_delete(db, 8), KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(d, 0, 8);
    REQUIRE(db);
    CHECK(has_value(db, 5, "FIVE!", 5));
    CHECK(is_absent(db, 6));
    CHECK(has_value(db, 7, "seven", 5));
    CHECK(is_absent(db, 8));
    CHECK(STAT(db, keys) == 2);
    CHECK_RC(kvidx_delete(db, 8), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_delete(db, 7), KVIDX_OK);
    CHECK(is_absent(db, 7));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(d, 0, 8);
    REQUIRE(db);
    CHECK(is_absent(db, 7));
    CHECK(STAT(db, keys) == 1);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_overwrite_extreme_keys(void) {
    char d[PATHSZ];
    kvidx *db;
    static const uint64_t keys[] = {0, 1, UINT64_MAX, UINT64_MAX - 1, 1ull << 63,
                                    (1ull << 63) - 1, 0xFFFFFFFFull, 0x100000000ull};
    size_t nk = sizeof keys / sizeof keys[0], i;
    int j;
    uint8_t v[KVIDX_VALUE_MAX];
    guard(__func__);
    dcopy(d, t_dir("overwrite"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    for (j = 0; j < 50; j++)
        for (i = 0; i < nk; i++) {
            size_t len = (size_t)((j * 37 + (int)i * 11) % (KVIDX_VALUE_MAX + 1));
            vfill(v, len, (uint64_t)j * 100 + i);
            CHECK_RC(kvidx_put(db, keys[i], v, len), KVIDX_OK);
            if (!has_value(db, keys[i], v, len)) {
                CHECK(0);
                j = 1000;
                break;
            }
        }
    CHECK(STAT(db, keys) == nk);
    /* Distinct keys hold distinct values: nothing aliases 0 and UINT64_MAX. */
    CHECK_RC(kvidx_put(db, 0, "zero", 4), KVIDX_OK);
    CHECK_RC(kvidx_put(db, UINT64_MAX, "max", 3), KVIDX_OK);
    CHECK(has_value(db, 0, "zero", 4));
    CHECK(has_value(db, UINT64_MAX, "max", 3));
    CHECK_RC(kvidx_delete(db, 0), KVIDX_OK);
    CHECK(is_absent(db, 0));
    CHECK(has_value(db, UINT64_MAX, "max", 3));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(d, 0, 8);
    REQUIRE(db);
    CHECK(is_absent(db, 0));
    CHECK(has_value(db, UINT64_MAX, "max", 3));
    CHECK(STAT(db, keys) == nk - 1);
    CHECK_RC(kvidx_put(db, 0, "zero again", 10), KVIDX_OK);
    CHECK(has_value(db, 0, "zero again", 10));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_null_handle(void) {
    uint8_t buf[16];
    size_t len = 4242;
    int calls = 0;
    kvidx_stats st;
    guard(__func__);
    memset(&st, 0, sizeof st);
    st.size = (uint32_t)sizeof st;
    CHECK_RC(kvidx_put(NULL, 1, "a", 1), KVIDX_EINVAL);
    CHECK_RC(kvidx_put(NULL, 1, NULL, 0), KVIDX_EINVAL);
    CHECK_RC(kvidx_get(NULL, 1, buf, sizeof buf, &len), KVIDX_EINVAL);
    CHECK(len == 4242);
    CHECK_RC(kvidx_delete(NULL, 1), KVIDX_EINVAL);
    CHECK_RC(kvidx_scan(NULL, 0, 10, count_fn, &calls), KVIDX_EINVAL);
    CHECK(calls == 0);
    CHECK_RC(kvidx_stat(NULL, &st), KVIDX_EINVAL);
    CHECK_RC(kvidx_sync(NULL), KVIDX_EINVAL);
    CHECK_RC(kvidx_close(NULL), KVIDX_OK);
}

static void misuse_on(kvidx *z, const void *mem, size_t memsz) {
    uint8_t buf[16];
    size_t len = 4242;
    int calls = 0;
    kvidx_stats st;
    void *copy = malloc(memsz);
    REQUIRE(copy);
    memcpy(copy, mem, memsz);
    memset(&st, 0x3C, sizeof st);
    st.size = (uint32_t)sizeof st;
    CHECK_RC(kvidx_put(z, 1, "a", 1), KVIDX_EMISUSE);
    CHECK_RC(kvidx_get(z, 1, buf, sizeof buf, &len), KVIDX_EMISUSE);
    CHECK(len == 4242);
    CHECK_RC(kvidx_delete(z, 1), KVIDX_EMISUSE);
    CHECK_RC(kvidx_scan(z, 0, UINT64_MAX, count_fn, &calls), KVIDX_EMISUSE);
    CHECK(calls == 0);
    CHECK_RC(kvidx_stat(z, &st), KVIDX_EMISUSE);
    CHECK(st.keys == 0x3C3C3C3C3C3C3C3Cull);
    CHECK_RC(kvidx_sync(z), KVIDX_EMISUSE);
    CHECK_RC(kvidx_close(z), KVIDX_EMISUSE);
    /* "nothing is done": the memory is as it was */
    CHECK(memcmp(copy, mem, memsz) == 0);
    free(copy);
}

static void test_zeroed_handle(void) {
    void *mem = NULL;
    guard(__func__);
    REQUIRE(posix_memalign(&mem, 16, 4096) == 0);
    memset(mem, 0, 4096);
    misuse_on((kvidx *)mem, mem, 4096);
    memset(mem, 0xA5, 4096); /* foreign memory */
    misuse_on((kvidx *)mem, mem, 4096);
    free(mem);
}

static void test_persist_reopen(void) {
    char d[PATHSZ];
    kvidx *db;
    size_t n = 3000 / (size_t)g_scale + 20, i, live = 0;
    ref *refs = calloc(n, sizeof *refs);
    coll c;
    int round;
    guard(__func__);
    memset(&c, 0, sizeof c);
    REQUIRE(refs);
    dcopy(d, t_dir("persist"));
    db = xopen(d, KVIDX_CREATE, 8);
    if (!db) { free(refs); return; }
    for (i = 0; i < n; i++) refs[i].key = i * 0x9E3779B97F4A7C15ull; /* distinct: odd multiplier */
    for (round = 0; round < 3; round++) {
        for (i = 0; i < n; i++) {
            uint64_t r = t_below(10);
            if (round > 0 && r < 2) { /* delete */
                int rc = kvidx_delete(db, refs[i].key);
                CHECK_RC(rc, refs[i].live ? KVIDX_OK : KVIDX_NOTFOUND);
                refs[i].live = 0;
            } else if (round == 0 || r < 6) { /* (over)write */
                uint8_t v[KVIDX_VALUE_MAX];
                refs[i].seed = t_rand();
                refs[i].len = (uint32_t)t_below(KVIDX_VALUE_MAX + 1);
                vfill(v, refs[i].len, refs[i].seed);
                CHECK_RC(kvidx_put(db, refs[i].key, v, refs[i].len), KVIDX_OK);
                refs[i].live = 1;
            }
        }
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        db = xopen(d, 0, 8);
        if (!db) break;
        for (live = 0, i = 0; i < n; i++) {
            live += refs[i].live != 0;
            if (!ref_has(db, &refs[i])) {
                t_case_failures++;
                fprintf(stderr, "round %d: key index %zu wrong after reopen\n", round, i);
                break;
            }
        }
        CHECK(STAT(db, keys) == live);
    }
    if (db) {
        qsort(refs, n, sizeof *refs, ref_cmp);
        coll_reset(&c);
        CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
        CHECK(coll_matches(&c, refs, n, 0, UINT64_MAX));
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    free(c.r);
    free(refs);
    t_rmrf(d);
}

/* ======================================================================
 * scan
 * ====================================================================== */

static void test_scan_args(void) {
    char d[PATHSZ];
    kvidx *db;
    int calls = 0;
    guard(__func__);
    dcopy(d, t_dir("scanargs"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK_RC(kvidx_put(db, 5, "x", 1), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 10, "y", 1), KVIDX_OK);
    CHECK_RC(kvidx_scan(db, 10, 5, count_fn, &calls), KVIDX_EINVAL);
    CHECK_RC(kvidx_scan(db, UINT64_MAX, 0, count_fn, &calls), KVIDX_EINVAL);
    CHECK_RC(kvidx_scan(db, 6, 5, count_fn, &calls), KVIDX_EINVAL);
    CHECK(calls == 0);
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, NULL, &calls), KVIDX_EINVAL);
    CHECK_RC(kvidx_scan(db, 0, 10, NULL, NULL), KVIDX_EINVAL);
    /* a scan with a NULL ud is fine */
    CHECK_RC(kvidx_scan(db, 5, 5, count_fn, &calls), KVIDX_OK);
    CHECK(calls == 1);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_scan_order_random(void) {
    char d[PATHSZ];
    kvidx *db;
    size_t n = 5000 / (size_t)g_scale + 10, i, q;
    ref *refs = calloc(n, sizeof *refs);
    coll c;
    guard(__func__);
    memset(&c, 0, sizeof c);
    REQUIRE(refs);
    dcopy(d, t_dir("scanrand"));
    db = xopen(d, KVIDX_CREATE, 8);
    if (!db) { free(refs); return; }
    for (i = 0; i < n; i++) {
        uint8_t v[KVIDX_VALUE_MAX];
        /* 0, UINT64_MAX, two runs of consecutive keys (so batch boundaries
         * fall between neighbours) and random keys */
        refs[i].key = i == 0 ? 0 : i == 1 ? UINT64_MAX : i < n / 4 ? 1000 + i
                    : i < n / 3 ? UINT64_MAX - (i - n / 4) - 1 : t_rand();
        refs[i].seed = t_rand();
        refs[i].len = (uint32_t)t_below(KVIDX_VALUE_MAX + 1);
        refs[i].live = 1;
        vfill(v, refs[i].len, refs[i].seed);
        CHECK_RC(kvidx_put(db, refs[i].key, v, refs[i].len), KVIDX_OK);
    }
    /* delete every 7th, so tombstones sit among live keys */
    for (i = 2; i < n; i += 7) {
        CHECK_RC(kvidx_delete(db, refs[i].key), KVIDX_OK);
        refs[i].live = 0;
    }
    qsort(refs, n, sizeof *refs, ref_cmp);
    coll_reset(&c);
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
    CHECK(coll_matches(&c, refs, n, 0, UINT64_MAX));
    for (q = 0; q < 40; q++) {
        uint64_t a, b;
        if (q % 2) {
            a = refs[t_below(n)].key;
            b = refs[t_below(n)].key;
        } else {
            a = t_rand();
            b = t_rand();
        }
        if (q % 5 == 0) {
            uint64_t w = t_below(5000);
            b = a + w >= a ? a + w : UINT64_MAX;
        }
        if (a > b) { uint64_t x = a; a = b; b = x; }
        coll_reset(&c);
        CHECK_RC(kvidx_scan(db, a, b, coll_fn, &c), KVIDX_OK);
        if (!coll_matches(&c, refs, n, a, b)) { CHECK(0); break; }
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(c.r);
    free(refs);
    t_rmrf(d);
}

static void test_scan_bounds(void) {
    char d[PATHSZ];
    kvidx *db;
    static const uint64_t keys[] = {0, 1, 2, 100, UINT64_MAX - 1, UINT64_MAX};
    struct { uint64_t a, b; size_t first, count; } q[] = {
        {0, 0, 0, 1},
        {0, 1, 0, 2},
        {1, 100, 1, 3},
        {2, 2, 2, 1},
        {3, 99, 0, 0},
        {101, UINT64_MAX - 2, 0, 0},
        {UINT64_MAX - 1, UINT64_MAX, 4, 2},
        {UINT64_MAX, UINT64_MAX, 5, 1},
        {UINT64_MAX - 1, UINT64_MAX - 1, 4, 1},
        {0, UINT64_MAX, 0, 6},
        {1, UINT64_MAX - 1, 1, 4},
        {100, 100, 3, 1},
        {99, 101, 3, 1},
    };
    size_t i, j;
    coll c;
    guard(__func__);
    memset(&c, 0, sizeof c);
    dcopy(d, t_dir("scanbounds"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
        CHECK_RC(kvidx_put(db, keys[i], &keys[i], sizeof keys[i]), KVIDX_OK);
    for (i = 0; i < sizeof q / sizeof q[0]; i++) {
        int ok;
        coll_reset(&c);
        CHECK_RC(kvidx_scan(db, q[i].a, q[i].b, coll_fn, &c), KVIDX_OK);
        ok = !c.bad && c.n == q[i].count;
        for (j = 0; ok && j < c.n; j++)
            ok = c.r[j].key == keys[q[i].first + j] && c.r[j].len == 8 &&
                 memcmp(c.r[j].val, &keys[q[i].first + j], 8) == 0;
        if (!ok) {
            t_case_failures++;
            fprintf(stderr, "scan [%" PRIu64 ", %" PRIu64 "]: got %zu keys, want %zu\n", q[i].a,
                    q[i].b, c.n, q[i].count);
        }
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(c.r);
    t_rmrf(d);
}

static void test_scan_stop_early(void) {
    char d[PATHSZ];
    kvidx *db;
    uint64_t k;
    size_t j;
    coll c;
    guard(__func__);
    memset(&c, 0, sizeof c);
    dcopy(d, t_dir("scanstop"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    for (k = 0; k < 300; k++) CHECK_RC(kvidx_put(db, k * 3, &k, sizeof k), KVIDX_OK);
    coll_reset(&c);
    c.stop_after = 5;
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
    CHECK(c.n == 5);
    for (j = 0; j < c.n && j < 5; j++) CHECK(c.r[j].key == j * 3);
    coll_reset(&c);
    c.stop_after = 1;
    c.stop_ret = -1;
    CHECK_RC(kvidx_scan(db, 10, UINT64_MAX, coll_fn, &c), KVIDX_OK);
    CHECK(c.n == 1 && c.r[0].key == 12);
    coll_reset(&c);
    c.stop_after = 150; /* past any small internal batch */
    c.stop_ret = 7;
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
    CHECK(c.n == 150 && !c.bad);
    if (c.n == 150) CHECK(c.r[149].key == 149 * 3);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    free(c.r);
    t_rmrf(d);
}

/* The callback writes through the same handle. Layout, for i in 1..N:
 *   10i     visited -> deletes itself, puts 10i+1 (ahead) and 10i-1 (behind),
 *           deletes 10i+5 (ahead), reads 10i+7, sometimes nests a scan
 *   10i+5   deleted ahead of the cursor: may be seen (with its old value)
 *   10i+7   never written during the scan: must be seen exactly once */
typedef struct {
    kvidx *db;
    uint64_t n;
    uint64_t last;
    int started;
    unsigned char *seen; /* visit counts by key, keys < 10n + 10 */
    int bad;
    size_t calls;
} wscan;

static void wval(uint8_t *v, size_t *len, uint64_t key, int gen) {
    *len = (size_t)(t_mix64(key * 3 + (uint64_t)gen) % (KVIDX_VALUE_MAX + 1));
    vfill(v, *len, key * 3 + (uint64_t)gen);
}

static int wscan_fn(void *ud, uint64_t key, const void *val, size_t len) {
    wscan *w = ud;
    uint8_t v[KVIDX_VALUE_MAX];
    size_t vl;
    int gen = (key % 10 == 1 || key % 10 == 9) ? 1 : 0;
    w->calls++;
    if (w->started && key <= w->last) {
        fprintf(stderr, "  write-scan: key %" PRIu64 " after %" PRIu64 "\n", key, w->last);
        w->bad++;
    }
    w->started = 1;
    w->last = key;
    if (key >= 10 * w->n + 10) { w->bad++; return 1; }
    if (w->seen[key] < 255) w->seen[key]++;
    wval(v, &vl, key, gen);
    if (len != vl || (len && memcmp(val, v, len))) {
        fprintf(stderr, "  write-scan: key %" PRIu64 " value differs\n", key);
        w->bad++;
    }
    if (key % 10 == 9 || key % 10 == 3) {
        fprintf(stderr, "  write-scan: visited key %" PRIu64 " written behind the cursor\n", key);
        w->bad++;
    }
    if (key % 10 == 0) {
        int rc;
        if ((rc = kvidx_delete(w->db, key)) != KVIDX_OK) { w->bad++; fprintf(stderr, "  delete %d\n", rc); }
        wval(v, &vl, key + 1, 1);
        if ((rc = kvidx_put(w->db, key + 1, v, vl)) != KVIDX_OK) { w->bad++; fprintf(stderr, "  put+1 %d\n", rc); }
        wval(v, &vl, key - 1, 1);
        if ((rc = kvidx_put(w->db, key - 1, v, vl)) != KVIDX_OK) { w->bad++; fprintf(stderr, "  put-1 %d\n", rc); }
        if ((rc = kvidx_delete(w->db, key + 5)) != KVIDX_OK) { w->bad++; fprintf(stderr, "  delete+5 %d\n", rc); }
        /* a key behind the cursor, written and deleted again */
        if ((rc = kvidx_put(w->db, key - 7, "tmp", 3)) != KVIDX_OK) w->bad++;
        if ((rc = kvidx_delete(w->db, key - 7)) != KVIDX_OK) w->bad++;
        wval(v, &vl, key + 7, 0);
        {
            uint8_t g[KVIDX_VALUE_MAX];
            size_t gl = 0;
            rc = kvidx_get(w->db, key + 7, g, sizeof g, &gl);
            if (rc != KVIDX_OK || gl != vl || (vl && memcmp(g, v, vl))) {
                fprintf(stderr, "  write-scan: nested get %" PRIu64 " rc %d\n", key + 7, rc);
                w->bad++;
            }
            rc = kvidx_get(w->db, key, g, sizeof g, &gl);
            if (rc != KVIDX_NOTFOUND) {
                fprintf(stderr, "  write-scan: deleted key %" PRIu64 " still readable (%d)\n", key, rc);
                w->bad++;
            }
        }
        if (key % 500 == 0) { /* a scan nested in a scan */
            coll c;
            memset(&c, 0, sizeof c);
            coll_reset(&c);
            rc = kvidx_scan(w->db, key - 1, key + 9, coll_fn, &c);
            if (rc != KVIDX_OK || c.bad || c.n != 3 || c.r[0].key != key - 1 ||
                c.r[1].key != key + 1 || c.r[2].key != key + 7) {
                fprintf(stderr, "  write-scan: nested scan at %" PRIu64 ": rc %d n %zu\n", key, rc,
                        c.n);
                w->bad++;
            }
            free(c.r);
        }
    }
    return 0;
}

static void test_scan_callback_writes(void) {
    char d[PATHSZ];
    kvidx *db;
    uint64_t i, n = 3000 / (uint64_t)g_scale + 20;
    uint8_t v[KVIDX_VALUE_MAX];
    size_t vl, j;
    wscan w;
    coll c;
    int rc;
    guard_secs(__func__, 180); /* a callback that writes must not deadlock */
    memset(&c, 0, sizeof c);
    memset(&w, 0, sizeof w);
    dcopy(d, t_dir("scanwrite"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    for (i = 1; i <= n; i++) {
        wval(v, &vl, 10 * i, 0);
        CHECK_RC(kvidx_put(db, 10 * i, v, vl), KVIDX_OK);
        wval(v, &vl, 10 * i + 5, 0);
        CHECK_RC(kvidx_put(db, 10 * i + 5, v, vl), KVIDX_OK);
        wval(v, &vl, 10 * i + 7, 0);
        CHECK_RC(kvidx_put(db, 10 * i + 7, v, vl), KVIDX_OK);
    }
    w.db = db;
    w.n = n;
    w.seen = calloc((size_t)(10 * n + 10), 1);
    REQUIRE(w.seen);
    rc = kvidx_scan(db, 0, UINT64_MAX, wscan_fn, &w);
    CHECK_RC(rc, KVIDX_OK);
    CHECK(w.bad == 0);
    for (i = 1; i <= n; i++) {
        if (w.seen[10 * i] != 1 || w.seen[10 * i + 7] != 1 || w.seen[10 * i + 5] > 1 ||
            w.seen[10 * i + 1] > 1) {
            t_case_failures++;
            fprintf(stderr, "group %" PRIu64 ": visits %u,%u,%u,%u (keys +0 +1 +5 +7)\n", i,
                    w.seen[10 * i], w.seen[10 * i + 1], w.seen[10 * i + 5], w.seen[10 * i + 7]);
            break;
        }
    }

    /* The final state: exactly 10i-1, 10i+1, 10i+7. */
    coll_reset(&c);
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c), KVIDX_OK);
    CHECK(!c.bad);
    CHECK(c.n == 3 * n);
    for (j = 0; j < c.n && j < 3 * n; j++) {
        uint64_t g = j / 3 + 1, want = j % 3 == 0 ? 10 * g - 1 : j % 3 == 1 ? 10 * g + 1 : 10 * g + 7;
        wval(v, &vl, want, j % 3 == 2 ? 0 : 1);
        if (c.r[j].key != want || c.r[j].len != vl || memcmp(c.r[j].val, v, vl)) {
            t_case_failures++;
            fprintf(stderr, "after write-scan: item %zu key %" PRIu64 ", want %" PRIu64 "\n", j,
                    c.r[j].key, want);
            break;
        }
    }
    CHECK(STAT(db, keys) == 3 * n);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(d, 0, 8);
    if (db) {
        coll c2;
        memset(&c2, 0, sizeof c2);
        coll_reset(&c2);
        CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, coll_fn, &c2), KVIDX_OK);
        CHECK(c2.n == c.n && !c2.bad);
        for (j = 0; j < c.n && j < c2.n; j++)
            if (c2.r[j].key != c.r[j].key || c2.r[j].len != c.r[j].len ||
                memcmp(c2.r[j].val, c.r[j].val, c.r[j].len)) {
                t_case_failures++;
                fprintf(stderr, "after reopen: item %zu differs\n", j);
                break;
            }
        free(c2.r);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    free(w.seen);
    free(c.r);
    t_rmrf(d);
}

static void test_scan_empty(void) {
    char d[PATHSZ];
    kvidx *db;
    int calls = 0;
    uint64_t k;
    guard(__func__);
    dcopy(d, t_dir("scanempty"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, count_fn, &calls), KVIDX_OK);
    CHECK(calls == 0);
    for (k = 1000; k < 1100; k++) CHECK_RC(kvidx_put(db, k, &k, sizeof k), KVIDX_OK);
    CHECK_RC(kvidx_scan(db, 0, 999, count_fn, &calls), KVIDX_OK);
    CHECK_RC(kvidx_scan(db, 1100, UINT64_MAX, count_fn, &calls), KVIDX_OK);
    CHECK_RC(kvidx_scan(db, 500, 500, count_fn, &calls), KVIDX_OK);
    CHECK(calls == 0);
    for (k = 1000; k < 1100; k++) CHECK_RC(kvidx_delete(db, k), KVIDX_OK);
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, count_fn, &calls), KVIDX_OK);
    CHECK_RC(kvidx_scan(db, 1000, 1099, count_fn, &calls), KVIDX_OK);
    CHECK(calls == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    db = xopen(d, 0, 8);
    if (db) {
        CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, count_fn, &calls), KVIDX_OK);
        CHECK(calls == 0);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    t_rmrf(d);
}

/* ======================================================================
 * stat, sync, log
 * ====================================================================== */

static void test_stat_counts(void) {
    char d[PATHSZ];
    kvidx *db;
    kvidx_stats st;
    uint64_t i, bytes = 0;
    uint8_t v[KVIDX_VALUE_MAX + 1];
    size_t lens[100];
    guard(__func__);
    dcopy(d, t_dir("stat"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    memset(&st, 0xEE, sizeof st);
    st.size = (uint32_t)sizeof st;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.shards == 8);
    CHECK(st.keys == 0 && st.value_bytes == 0 && st.records == 0 && st.garbage_records == 0);
    CHECK(st.puts == 0 && st.deletes == 0);

    for (i = 0; i < 100; i++) {
        lens[i] = (size_t)((i * 37) % (KVIDX_VALUE_MAX + 1));
        vfill(v, lens[i], i);
        CHECK_RC(kvidx_put(db, 1000 + i, v, lens[i]), KVIDX_OK);
    }
    for (i = 0; i < 10; i++) { /* overwrite 10 */
        lens[i] = 200;
        vfill(v, lens[i], i + 5000);
        CHECK_RC(kvidx_put(db, 1000 + i, v, lens[i]), KVIDX_OK);
    }
    for (i = 90; i < 95; i++) { /* delete 5 */
        CHECK_RC(kvidx_delete(db, 1000 + i), KVIDX_OK);
        lens[i] = 0;
    }
    for (i = 0; i < 100; i++) bytes += lens[i];
    /* Failed calls change no counter. */
    CHECK_RC(kvidx_put(db, 5, v, KVIDX_VALUE_MAX + 1), KVIDX_ETOOBIG);
    CHECK_RC(kvidx_put(db, 1000, NULL, 3), KVIDX_EINVAL);
    CHECK_RC(kvidx_delete(db, 1090), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_delete(db, 77), KVIDX_NOTFOUND);

    memset(&st, 0xEE, sizeof st);
    st.size = (uint32_t)sizeof st;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.shards == 8);
    CHECK(st.keys == 95);
    CHECK(st.records == 115);
    CHECK(st.garbage_records == 20);
    CHECK(st.value_bytes == bytes);
    CHECK(st.puts == 110);
    CHECK(st.deletes == 5);
    CHECK(st.key_log_bytes > 0);
    CHECK(st.disk_bytes > 0);
    if (st.keys != 95 || st.records != 115 || st.garbage_records != 20 || st.value_bytes != bytes)
        fprintf(stderr, "  stat: keys %" PRIu64 " records %" PRIu64 " garbage %" PRIu64
                " value_bytes %" PRIu64 " (want %" PRIu64 ")\n", st.keys, st.records,
                st.garbage_records, st.value_bytes, bytes);
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    /* Totals survive a reopen; the since-open counters restart. */
    db = xopen(d, 0, 8);
    REQUIRE(db);
    memset(&st, 0xEE, sizeof st);
    st.size = (uint32_t)sizeof st;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.keys == 95);
    CHECK(st.records == 115);
    CHECK(st.garbage_records == 20);
    CHECK(st.value_bytes == bytes);
    CHECK(st.puts == 0);
    CHECK(st.deletes == 0);
    CHECK_RC(kvidx_put(db, 1000 + 95, "x", 1), KVIDX_OK); /* overwrite */
    CHECK_RC(kvidx_put(db, 7, NULL, 0), KVIDX_OK);        /* new, empty */
    CHECK_RC(kvidx_delete(db, 1000 + 96), KVIDX_OK);
    bytes = bytes - lens[95] + 1 - lens[96];
    memset(&st, 0xEE, sizeof st);
    st.size = (uint32_t)sizeof st;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.keys == 95);
    CHECK(st.records == 118);
    CHECK(st.garbage_records == 23);
    CHECK(st.value_bytes == bytes);
    CHECK(st.puts == 2);
    CHECK(st.deletes == 1);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_stat_partial(void) {
    char d[PATHSZ];
    kvidx *db;
    kvidx_stats st;
    size_t i, cut;
    int untouched;
    uint64_t k;
    guard(__func__);
    dcopy(d, t_dir("statpart"));
    db = xopen(d, KVIDX_CREATE, 4);
    REQUIRE(db);
    for (k = 0; k < 10; k++) CHECK_RC(kvidx_put(db, k, "v", 1), KVIDX_OK);

    cut = offsetof(kvidx_stats, keys) + 8;
    memset(&st, 0xAB, sizeof st);
    st.size = (uint32_t)cut;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.shards == 4);
    CHECK(st.keys == 10);
    for (untouched = 1, i = cut; i < sizeof st; i++) untouched &= ((unsigned char *)&st)[i] == 0xAB;
    CHECK(untouched);

    cut = offsetof(kvidx_stats, flags); /* just the first two fields */
    memset(&st, 0xAB, sizeof st);
    st.size = (uint32_t)cut;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.shards == 4);
    for (untouched = 1, i = cut; i < sizeof st; i++) untouched &= ((unsigned char *)&st)[i] == 0xAB;
    CHECK(untouched);

    for (cut = 0; cut < offsetof(kvidx_stats, flags); cut++) {
        memset(&st, 0xAB, sizeof st);
        st.size = (uint32_t)cut;
        if (kvidx_stat(db, &st) != KVIDX_EINVAL) {
            t_case_failures++;
            fprintf(stderr, "stat with size %zu: not EINVAL\n", cut);
        }
        for (untouched = 1, i = sizeof st.size; i < sizeof st; i++)
            untouched &= ((unsigned char *)&st)[i] == 0xAB;
        CHECK(untouched);
    }
    CHECK_RC(kvidx_stat(db, NULL), KVIDX_EINVAL);

    {   /* a caller that knows a bigger struct (a later release) */
        struct { kvidx_stats s; uint64_t more[8]; } big;
        memset(&big, 0xAB, sizeof big);
        big.s.size = (uint32_t)sizeof big;
        CHECK_RC(kvidx_stat(db, &big.s), KVIDX_OK);
        CHECK(big.s.shards == 4 && big.s.keys == 10);
    }
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

static void test_sync(void) {
    char d[PATHSZ];
    kvidx *db;
    kvidx_options o;
    uint64_t k;
    int pass;
    guard(__func__);
    dcopy(d, t_dir("sync"));
    db = xopen(d, KVIDX_CREATE, 8);
    REQUIRE(db);
    CHECK_RC(kvidx_sync(db), KVIDX_OK); /* nothing written yet */
    CHECK_RC(kvidx_put(db, 1, "a", 1), KVIDX_OK);
    CHECK_RC(kvidx_sync(db), KVIDX_OK);
    CHECK_RC(kvidx_delete(db, 1), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 2, "b", 1), KVIDX_OK);
    CHECK_RC(kvidx_sync(db), KVIDX_OK);
    CHECK(STAT(db, syncs) >= 3);
    CHECK(STAT(db, syncs) != UINT64_MAX);
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    /* KVIDX_SYNC handles and a handle without background sync. */
    for (pass = 0; pass < 2; pass++) {
        o = mkopts(pass ? KVIDX_CREATE : KVIDX_CREATE | KVIDX_SYNC, 8);
        o.sync_interval_ms = pass ? 0 : 1000;
        db = NULL;
        CHECK_RC(kvidx_open(d, &o, &db), KVIDX_OK);
        if (!db) continue;
        for (k = 100; k < 150; k++) CHECK_RC(kvidx_put(db, k + 1000 * (uint64_t)pass, &k, sizeof k), KVIDX_OK);
        for (k = 100; k < 110; k++) CHECK_RC(kvidx_delete(db, k + 1000 * (uint64_t)pass), KVIDX_OK);
        CHECK_RC(kvidx_delete(db, 99), KVIDX_NOTFOUND);
        CHECK_RC(kvidx_put(db, 2, NULL, 0), KVIDX_OK);
        CHECK(has_value(db, 2, "", 0));
        CHECK_RC(kvidx_sync(db), KVIDX_OK);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    db = xopen(d, 0, 8);
    REQUIRE(db);
    CHECK(is_absent(db, 1));
    CHECK(has_value(db, 2, "", 0));
    for (pass = 0; pass < 2; pass++)
        for (k = 100; k < 150; k++) {
            if (k < 110) CHECK(is_absent(db, k + 1000 * (uint64_t)pass));
            else CHECK(has_value(db, k + 1000 * (uint64_t)pass, &k, sizeof k));
        }
    CHECK(STAT(db, keys) == 81);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(d);
}

typedef struct {
    int calls;
    int bad;
} logrec;

static void log_fn(void *ud, const char *msg) {
    logrec *l = ud;
    l->calls++;
    if (!msg) l->bad++;
}

static void test_log_callback(void) {
    char d[PATHSZ];
    kvidx *db = NULL;
    kvidx_options o;
    logrec l;
    guard(__func__);
    memset(&l, 0, sizeof l);
    dcopy(d, t_dir("log"));
    o = mkopts(KVIDX_CREATE, 2);
    o.log = log_fn;
    o.log_ud = &l;
    CHECK_RC(kvidx_open(d, &o, &db), KVIDX_OK);
    REQUIRE(db);
    CHECK_RC(kvidx_put(db, 1, "log", 3), KVIDX_OK);
    CHECK(has_value(db, 1, "log", 3));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK(l.bad == 0); /* if it was called, it got our ud and a message */
    t_rmrf(d);
}

int main(void) {
    const char *s = getenv("KVIDX_TEST_SCALE");
    if (s && atoi(s) > 1) g_scale = atoi(s);
    t_init("test_api");
    T_RUN(test_version_strerror);
    T_RUN(test_options_init);
    T_RUN(test_open_bad_args);
    T_RUN(test_open_dirs);
    T_RUN(test_open_lock_same_process);
    T_RUN(test_open_lock_fork);
    T_RUN(test_reopen_shards);
    T_RUN(test_shards_1);
    T_RUN(test_shards_2);
    T_RUN(test_shards_1024);
    T_RUN(test_rdonly);
    T_RUN(test_put_get_lengths);
    T_RUN(test_put_errors);
    T_RUN(test_get_buffers);
    T_RUN(test_delete);
    T_RUN(test_overwrite_extreme_keys);
    T_RUN(test_null_handle);
    T_RUN(test_zeroed_handle);
    T_RUN(test_persist_reopen);
    T_RUN(test_scan_args);
    T_RUN(test_scan_order_random);
    T_RUN(test_scan_bounds);
    T_RUN(test_scan_stop_early);
    T_RUN(test_scan_callback_writes);
    T_RUN(test_scan_empty);
    T_RUN(test_stat_counts);
    T_RUN(test_stat_partial);
    T_RUN(test_sync);
    T_RUN(test_log_callback);
    alarm(0);
    return t_done();
}
