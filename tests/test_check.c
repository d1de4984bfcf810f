/*
 * test_check.c -- kvidx_check: silent and OK on a sound database; finds
 * and places damage an open cannot see (an overwritten value) and damage
 * it can (records, states, snapshots, headers); and never crashes, leaks
 * or hangs on files damaged at random (flipped bytes, cut or grown files).
 *
 * Includes kvidx.c (built with -DKVIDX_TEST) for the file layout
 * constants. KVIDX_SEED replays a run.
 */
#ifndef KVIDX_TEST
#define KVIDX_TEST
#endif
#include "../kvidx.c"

#include <fcntl.h>
#include <sys/stat.h>

#include "harness.h"

static kvidx_options opts(uint32_t shards) {
    kvidx_options o;
    kvidx_options_init(&o);
    o.shards = shards;
    o.sync_interval_ms = 0;
    o.compact_pct = 0;
    return o;
}

/* The report: lines kept for the test to look into. */
typedef struct report {
    unsigned lines;
    char text[4096];
} report;

static void on_line(void *ud, const char *msg) {
    report *r = ud;
    size_t have = strlen(r->text);
    r->lines++;
    snprintf(r->text + have, sizeof r->text - have, "%s\n", msg);
}

static int check(const char *dir, report *r) {
    memset(r, 0, sizeof *r);
    return kvidx_check_report(dir, on_line, r);
}

static char *path(const char *dir, const char *f) {
    static char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, f);
    return p;
}

static int xor_at(const char *dir, const char *f, uint64_t off, uint8_t mask) {
    int fd = open(path(dir, f), O_RDWR), ok;
    uint8_t b;
    if (fd < 0) return -1;
    ok = pread(fd, &b, 1, (off_t)off) == 1;
    b ^= mask;
    ok = ok && pwrite(fd, &b, 1, (off_t)off) == 1;
    close(fd);
    return ok ? 0 : -1;
}

static int64_t fsize(const char *dir, const char *f) {
    struct stat st;
    return stat(path(dir, f), &st) ? -1 : (int64_t)st.st_size;
}

/* A database with a bit of everything, closed: 2 shards, values written
 * twice (the first versions are garbage), deletes, lists in a snapshot
 * and more list changes in the log after it. */
static void build(const char *dir) {
    kvidx_options o = opts(2);
    kvidx *db;
    uint64_t k, ids[50];
    uint8_t v[100];
    unsigned i;
    t_rmrf(dir);
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) return;
    for (k = 0; k < 3000; k++) {
        memset(v, (int)k, sizeof v);
        kvidx_put(db, k, v, 1 + k % 100);
    }
    for (k = 0; k < 3000; k += 2) kvidx_put(db, k, v, 50);
    for (k = 1; k < 3000; k += 10) kvidx_delete(db, k);
    for (k = 0; k < 20; k++) {
        for (i = 0; i < 50; i++) ids[i] = k * 1000 + i * 3;
        kvidx_list_add(db, k, ids, 50, NULL);
    }
    kvidx_compact(db); /* the list snapshots */
    for (k = 0; k < 20; k++) {
        ids[0] = 999999 + k;
        kvidx_list_add(db, k, ids, 1, NULL);
    }
    for (k = 3000; k < 3100; k++) kvidx_put(db, k, v, 7);
    kvidx_close(db);
}

static void test_sound(void) {
    const char *dir = t_dir("ck_sound");
    report r;
    kvidx_options o = opts(2);
    kvidx *db;
    build(dir);
    CHECK_RC(check(dir, &r), KVIDX_OK);
    CHECK(r.lines == 0);
    if (r.lines) fprintf(stderr, "%s", r.text);
    CHECK_RC(kvidx_check(dir), KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(check(dir, &r), KVIDX_ELOCKED); /* offline only */
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    CHECK_RC(check(t_dir("ck_nothing_here"), &r), KVIDX_EINVAL);
    CHECK_RC(kvidx_check(NULL), KVIDX_EINVAL);
    t_rmrf(dir);
}

/* Each damage: check says ECORRUPT and names the file; then undone, OK. */
static void expect(const char *dir, const char *file, uint64_t off, const char *needle, int opens) {
    report r;
    kvidx_options o = opts(2);
    kvidx *db;
    int rc;
    if (xor_at(dir, file, off, 0x04)) {
        CHECK(!"damage could not be made");
        return;
    }
    rc = kvidx_open(dir, &o, &db);
    if (opens) { /* damage an open does not see: only kvidx_check does */
        CHECK_RC(rc, KVIDX_OK);
        if (rc == KVIDX_OK) kvidx_close(db);
        o.flags = KVIDX_RDONLY;
    } else {
        CHECK_RC(rc, KVIDX_ECORRUPT);
        if (rc == KVIDX_OK) kvidx_close(db);
    }
    CHECK_RC(check(dir, &r), KVIDX_ECORRUPT);
    if (!strstr(r.text, needle)) {
        fprintf(stderr, "  damage in %s at %" PRIu64 ": report lacks \"%s\":\n%s", file, off, needle, r.text);
        CHECK(!"report names the damage");
    }
    xor_at(dir, file, off, 0x04);
    CHECK_RC(check(dir, &r), KVIDX_OK);
}

static void test_finds_damage(void) {
    const char *dir = t_dir("ck_damage");
    int64_t ls;
    build(dir);
    /* An overwritten value's slot: slot 0 held key 0's first value (the
     * compaction kept only live ones: make garbage again first). */
    {
        kvidx_options o = opts(2);
        kvidx *db;
        uint8_t v[100];
        uint64_t k;
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        memset(v, 1, sizeof v);
        for (k = 0; k < 3100; k++) REQUIRE(kvidx_put(db, k, v, 60) == KVIDX_OK);
        REQUIRE(kvidx_close(db) == KVIDX_OK);
    }
    expect(dir, "s0000.2.b", VS_PAGE, "s0000.2: the value of key record", 1);
    expect(dir, "s0001.2.k", VS_PAGE + 40 * VS_REC + 3, "s0001.2.k: a record inside the durable prefix", 0);
    ls = fsize(dir, "s0001.2.ls");
    REQUIRE(ls > 100);
    expect(dir, "s0001.2.ls", (uint64_t)ls - 3, "s0001.2.ls: the body fails its checksum", 0);
    expect(dir, "s0000.2.l", LS_LOG_HDR + 20, "s0000.2.l: a record inside the durable prefix", 0);
    expect(dir, "kvidx.hdr", 20, "kvidx.hdr", 0);
    t_rmrf(dir);
}

/* Random damage, many times over: check and a read-only open return a
 * code (never crash, never hang: the watchdog), and an open that succeeds
 * serves every key and list without crashing. */
static int scan_any(void *ud, uint64_t key, const void *val, size_t len) {
    (void)key, (void)val, (void)len;
    ++*(uint64_t *)ud;
    return 0;
}
static int lscan_any(void *ud, uint64_t key, uint64_t count) {
    (void)key, (void)count;
    ++*(uint64_t *)ud;
    return 0;
}

static void test_random_damage(void) {
    static const char *files[] = {"kvidx.hdr", "s0000.2.k", "s0001.2.k", "s0000.2.v", "s0001.2.b",
                                  "s0000.2.b", "s0000.2.l", "s0001.2.l", "s0000.2.ls", "s0001.2.ls"};
    const char *base = t_dir("ck_fuzz_base"), *dir = t_dir("ck_fuzz");
    unsigned iter, iters = 400 / SAN_SLOW, outcome[4] = {0, 0, 0, 0};
    char cmd[9000];
    t_watchdog("test_random_damage", 600);
    build(base);
    for (iter = 0; iter < iters; iter++) {
        const char *f = files[t_below(sizeof files / sizeof *files)];
        int64_t sz;
        report r;
        int rc, how = (int)t_below(10);
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s'", dir, base, dir);
        REQUIRE(system(cmd) == 0);
        sz = fsize(dir, f);
        if (sz <= 0) continue;
        if (how < 6) { /* flip 1..8 bytes, often near the start where headers are */
            unsigned n = 1 + (unsigned)t_below(8), j;
            for (j = 0; j < n; j++) {
                uint64_t off = t_below(2) ? t_below(sz < 8192 ? (uint64_t)sz : 8192) : t_below((uint64_t)sz);
                xor_at(dir, f, off, (uint8_t)(1u << t_below(8)));
            }
        } else if (how < 9) { /* cut */
            REQUIRE(truncate(path(dir, f), (off_t)t_below((uint64_t)sz)) == 0);
        } else { /* grow with garbage */
            int fd = open(path(dir, f), O_WRONLY | O_APPEND);
            uint8_t junk[300];
            unsigned j;
            for (j = 0; j < sizeof junk; j++) junk[j] = (uint8_t)t_rand();
            REQUIRE(fd >= 0 && write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
            close(fd);
        }
        rc = check(dir, &r);
        if (rc == KVIDX_OK) outcome[0]++;
        else if (rc == KVIDX_ECORRUPT) outcome[1]++;
        else if (rc == KVIDX_EINVAL || rc == KVIDX_EVERSION) outcome[2]++;
        else {
            outcome[3]++;
            fprintf(stderr, "  damage %d to %s: check returned %d (%s)\n", how, f, rc, kvidx_strerror(rc));
        }
        if (rc == KVIDX_ECORRUPT && r.lines == 0) {
            fprintf(stderr, "  damage %d to %s: ECORRUPT without a word of where\n", how, f);
            outcome[3]++;
        }
        {
            kvidx_options o = opts(2);
            kvidx *db;
            o.flags = KVIDX_RDONLY;
            o.log = on_line, o.log_ud = &r;
            if (kvidx_open(dir, &o, &db) == KVIDX_OK) {
                uint64_t n = 0, k;
                uint8_t b[KVIDX_VALUE_MAX];
                size_t len;
                kvidx_scan(db, 0, UINT64_MAX, scan_any, &n);
                kvidx_list_scan(db, 0, UINT64_MAX, lscan_any, &n);
                for (k = 0; k < 3100; k++) (void)kvidx_get(db, k, b, sizeof b, &len);
                kvidx_close(db);
            }
        }
    }
    printf("  %u damaged copies: %u OK (damage in dead bytes or a torn tail), %u ECORRUPT, %u not a database "
           "or a newer format, %u other\n",
           iters, outcome[0], outcome[1], outcome[2], outcome[3]);
    CHECK(outcome[3] == 0);
    CHECK(outcome[1] > iters / 4);
    t_rmrf(dir), t_rmrf(base);
}

int main(void) {
    t_init("test_check");
    T_RUN(test_sound);
    T_RUN(test_finds_damage);
    T_RUN(test_random_damage);
    alarm(0);
    return t_done();
}
