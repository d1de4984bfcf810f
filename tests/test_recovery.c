/*
 * test_recovery.c -- white-box tests of the value store's files: torn
 * tails, crashes during a section flush, bit flips, headers, versions,
 * interrupted creation, the slot limit, the O_DIRECT fallback, and the
 * map's hash table and B+tree against a reference.
 *
 * Includes kvidx.c itself (built with -DKVIDX_TEST) to reach the fault
 * hook and the internal structures; the slot limit is lowered so that
 * KVIDX_EFULL is reachable in seconds.
 */
#ifndef KVIDX_TEST
#define KVIDX_TEST
#endif
#define KVIDX_SLOT_LIMIT (3u * 65536u + 1000u)
#include "../kvidx.c"

#include <signal.h>
#include <sys/wait.h>

#include "harness.h"

/* ---- helpers ------------------------------------------------------------ */

/* The deterministic value of (key, ver): length and bytes. */
static size_t val_of(uint64_t key, uint32_t ver, uint8_t *out) {
    uint64_t x = key * 0x9E3779B97F4A7C15ull ^ ((uint64_t)ver << 17) ^ 0x5bd1e995u;
    size_t len = (size_t)((x >> 7) % (KVIDX_VALUE_MAX + 1)), i;
    for (i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        out[i] = (uint8_t)x;
    }
    return len;
}

static int has_val(kvidx *db, uint64_t key, uint32_t ver) {
    uint8_t want[KVIDX_VALUE_MAX], got[KVIDX_VALUE_MAX];
    size_t wl = val_of(key, ver, want), gl = 0;
    int rc = kvidx_get(db, key, got, sizeof got, &gl);
    return rc == KVIDX_OK && gl == wl && memcmp(got, want, wl) == 0;
}

static kvidx_options opts(uint32_t shards) {
    kvidx_options o;
    kvidx_options_init(&o);
    o.shards = shards;
    o.sync_interval_ms = 0; /* syncs happen only where a test says */
    return o;
}

static void path_of(char *buf, size_t n, const char *dir, const char *file) {
    snprintf(buf, n, "%s/%s", dir, file);
}

static int file_xor(const char *dir, const char *file, uint64_t off, uint8_t mask) {
    char p[4200];
    uint8_t b;
    int fd, ok;
    path_of(p, sizeof p, dir, file);
    fd = open(p, O_RDWR);
    if (fd < 0) return -1;
    ok = pread(fd, &b, 1, (off_t)off) == 1;
    b ^= mask;
    ok = ok && pwrite(fd, &b, 1, (off_t)off) == 1;
    close(fd);
    return ok ? 0 : -1;
}

static int file_write(const char *dir, const char *file, uint64_t off, const void *p, size_t n) {
    char path[4200];
    int fd, ok;
    path_of(path, sizeof path, dir, file);
    fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    ok = pwrite(fd, p, n, (off_t)off) == (ssize_t)n;
    close(fd);
    return ok ? 0 : -1;
}

static int file_read(const char *dir, const char *file, uint64_t off, void *p, size_t n) {
    char path[4200];
    int fd, ok;
    path_of(path, sizeof path, dir, file);
    fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ok = pread(fd, p, n, (off_t)off) == (ssize_t)n;
    close(fd);
    return ok ? 0 : -1;
}

static int64_t file_size(const char *dir, const char *file) {
    char path[4200];
    struct stat st;
    path_of(path, sizeof path, dir, file);
    return stat(path, &st) ? -1 : (int64_t)st.st_size;
}

static int file_truncate(const char *dir, const char *file, uint64_t size) {
    char path[4200];
    path_of(path, sizeof path, dir, file);
    return truncate(path, (off_t)size);
}

/* Runs fn(db, arg) in a child that opened dir and then dies without
 * closing (as kill -9 would: nothing after the last write runs).
 * Returns the child's exit status (0: fn ran to the end). */
typedef void (*child_fn)(kvidx *db, uint64_t arg);
static int in_child(const char *dir, uint32_t shards, child_fn fn, uint64_t arg) {
    pid_t pid = fork();
    int st = 0;
    if (pid == 0) {
        kvidx_options o = opts(shards);
        kvidx *db;
        if (kvidx_open(dir, &o, &db) != KVIDX_OK) _exit(3);
        fn(db, arg);
        _exit(0); /* no close: the files are as a dead process leaves them */
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Child body: puts keys [0, arg) at version 1, syncing after the first
 * half so that the second half lies past the durable prefix. */
static void put_range(kvidx *db, uint64_t n) {
    uint8_t v[KVIDX_VALUE_MAX];
    uint64_t k;
    for (k = 0; k < n; k++) {
        size_t len = val_of(k, 1, v);
        if (kvidx_put(db, k, v, len) != KVIDX_OK) _exit(4);
        if (k + 1 == n / 2 && kvidx_sync(db) != KVIDX_OK) _exit(5);
    }
}

static uint64_t rec_off(uint64_t pos) { return VS_PAGE + pos * VS_REC; }

/* The slot of the record at pos of shard 0's key log. */
static uint32_t rec_slot(const char *dir, uint64_t pos) {
    uint8_t r[VS_REC];
    if (file_read(dir, "s0000.1.k", rec_off(pos), r, sizeof r)) return VS_NOSLOT;
    return get_le32(r + 8);
}

static int count_keys(void *ud, uint64_t key, const void *val, size_t len) {
    (void)key, (void)val, (void)len;
    ++*(uint64_t *)ud;
    return 0;
}

static uint64_t scan_count(kvidx *db) {
    uint64_t n = 0;
    if (kvidx_scan(db, 0, UINT64_MAX, count_keys, &n) != KVIDX_OK) return UINT64_MAX;
    return n;
}

/* Opens dir with shards=1 and checks keys [0, keep) hold version 1 and
 * [keep, n) are absent. */
static void expect_prefix(const char *dir, uint64_t keep, uint64_t n) {
    kvidx_options o = opts(1);
    kvidx *db;
    uint64_t k, bad = 0;
    size_t len;
    uint8_t b[KVIDX_VALUE_MAX];
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_OK);
    if (!db) return;
    for (k = 0; k < keep; k++) bad += !has_val(db, k, 1);
    for (k = keep; k < n; k++) bad += kvidx_get(db, k, b, sizeof b, &len) != KVIDX_NOTFOUND;
    CHECK(bad == 0);
    CHECK(scan_count(db) == keep);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
}

/* ---- torn tails ------------------------------------------------------- */

static void test_torn_record(void) {
    const char *dir = t_dir("torn_record");
    uint8_t z[16] = {0};
    REQUIRE(in_child(dir, 1, put_range, 1000) == 0);
    /* Half of the last record never reached the file. */
    REQUIRE(file_write(dir, "s0000.1.k", rec_off(999) + 16, z, sizeof z) == 0);
    expect_prefix(dir, 999, 1000);
    /* The store goes on from there and keeps what it writes next. */
    REQUIRE(in_child(dir, 1, put_range, 10) == 0);
    expect_prefix(dir, 999, 1000);
    t_rmrf(dir);
}

static void test_truncated_key_log(void) {
    const char *dir = t_dir("torn_trunc");
    REQUIRE(in_child(dir, 1, put_range, 1000) == 0);
    REQUIRE(file_truncate(dir, "s0000.1.k", rec_off(998) + 11) == 0);
    expect_prefix(dir, 998, 1000);
    t_rmrf(dir);
}

static void test_torn_value(void) {
    const char *dir = t_dir("torn_value");
    uint32_t slot;
    uint64_t k = 900;
    uint8_t v[KVIDX_VALUE_MAX];
    REQUIRE(in_child(dir, 1, put_range, 1000) == 0);
    /* Record 900 is past the durable prefix (500) and its value page did
     * not reach the disk: the record and everything after it go. Pick a
     * key with a non-empty value. */
    while (val_of(k, 1, v) == 0) k++;
    slot = rec_slot(dir, k);
    REQUIRE(slot != VS_NOSLOT);
    REQUIRE(file_xor(dir, "s0000.1.b", VS_PAGE + (uint64_t)slot * VS_SLOT, 0x40) == 0);
    expect_prefix(dir, k, 1000);
    t_rmrf(dir);
}

/* A dropped tail must stay dropped even if a power cut undoes the zeroing
 * that recovery wrote over it: the next session's records carry a higher
 * epoch, so an older record after them ends the log. */
static void test_stale_tail_after_recovery(void) {
    const char *dir = t_dir("stale_tail");
    static uint8_t saved[500 * VS_REC];
    uint8_t z[VS_REC] = {0};
    REQUIRE(in_child(dir, 1, put_range, 1000) == 0);
    REQUIRE(file_read(dir, "s0000.1.k", rec_off(500), saved, sizeof saved) == 0);
    REQUIRE(file_write(dir, "s0000.1.k", rec_off(500), z, sizeof z) == 0); /* torn at 500 */
    expect_prefix(dir, 500, 1000);
    REQUIRE(in_child(dir, 1, put_range, 10) == 0); /* rewrites keys 0..9 at 500..509 */
    /* The power cut: the old records 510..999 are back on disk. */
    REQUIRE(file_write(dir, "s0000.1.k", rec_off(510), saved + 10 * VS_REC,
                       sizeof saved - 10 * VS_REC) == 0);
    expect_prefix(dir, 500, 1000);
    t_rmrf(dir);
}

/* A bad record inside the durable prefix is damage, not a torn tail. */
static void test_bitflip_durable_record(void) {
    const char *dir = t_dir("flip_rec");
    kvidx_options o = opts(1);
    kvidx *db = NULL;
    REQUIRE(in_child(dir, 1, put_range, 1000) == 0);
    REQUIRE(file_xor(dir, "s0000.1.k", rec_off(123) + 3, 0x08) == 0); /* < 500: synced */
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_ECORRUPT);
    /* And after a clean close everything is durable. */
    REQUIRE(file_xor(dir, "s0000.1.k", rec_off(123) + 3, 0x08) == 0);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    REQUIRE(file_xor(dir, "s0000.1.k", rec_off(990) + 30, 0x01) == 0);
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_ECORRUPT);
    t_rmrf(dir);
}

/* Values failing their checksum: the get (and a scan over it) reports
 * KVIDX_ECORRUPT; every other key reads fine. Both in the value log and
 * in the buffer. */
static void test_bitflip_values(void) {
    const char *dir = t_dir("flip_val");
    kvidx_options o = opts(1);
    kvidx *db;
    uint8_t v[KVIDX_VALUE_MAX], b[KVIDX_VALUE_MAX];
    uint64_t k, n = 70000, kv = 10, kb = 69000, bad = 0;
    size_t len;
    uint32_t sv, sb;
    REQUIRE(in_child(dir, 1, put_range, n) == 0);
    while (val_of(kv, 1, v) == 0) kv++;
    while (val_of(kb, 1, v) == 0) kb++;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK); /* syncs everything on close */
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    sv = rec_slot(dir, kv), sb = rec_slot(dir, kb);
    REQUIRE(sv >> VS_SEC_SHIFT == 0 && sb >> VS_SEC_SHIFT == 1); /* log and buffer */
    REQUIRE(file_xor(dir, "s0000.1.v", VS_PAGE + (uint64_t)sv * VS_SLOT, 0x10) == 0);
    REQUIRE(file_xor(dir, "s0000.1.b", VS_PAGE + (uint64_t)(sb & 0xFFFF) * VS_SLOT, 0x10) == 0);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_get(db, kv, b, sizeof b, &len), KVIDX_ECORRUPT);
    CHECK_RC(kvidx_get(db, kb, b, sizeof b, &len), KVIDX_ECORRUPT);
    for (k = 0; k < n; k++)
        if (k != kv && k != kb) bad += !has_val(db, k, 1);
    CHECK(bad == 0);
    /* A scan delivers every key below the first damaged one, then stops. */
    {
        uint64_t seen = 0;
        CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, count_keys, &seen), KVIDX_ECORRUPT);
        CHECK(seen == kv); /* keys 0 .. kv-1 */
        seen = 0;
        CHECK_RC(kvidx_scan(db, kv + 1, kb - 1, count_keys, &seen), KVIDX_OK);
        CHECK(seen == kb - kv - 1);
    }
    /* Overwriting a damaged value heals the key. */
    CHECK_RC(kvidx_put(db, kv, "ok", 2), KVIDX_OK);
    CHECK_RC(kvidx_get(db, kv, b, sizeof b, &len), KVIDX_OK);
    CHECK(len == 2 && memcmp(b, "ok", 2) == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* ---- headers, versions, missing files ------------------------------------ */

static void make_db(const char *dir, uint32_t shards, uint64_t n) {
    kvidx_options o = opts(shards);
    kvidx *db;
    uint8_t v[KVIDX_VALUE_MAX];
    uint64_t k;
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) return;
    for (k = 0; k < n; k++) kvidx_put(db, k, v, val_of(k, 1, v));
    kvidx_close(db);
}

static int open_rc(const char *dir) {
    kvidx_options o = opts(1);
    kvidx *db = NULL;
    int rc = kvidx_open(dir, &o, &db);
    if (rc == KVIDX_OK) kvidx_close(db);
    return rc;
}

/* Writes a new format version into a 64-byte header and reseals it. */
static int set_version(const char *dir, const char *file, uint64_t off, uint32_t ver) {
    uint8_t h[64];
    if (file_read(dir, file, off, h, sizeof h)) return -1;
    put_le32(h + 8, ver);
    vs_hdr_seal(h);
    return file_write(dir, file, off, h, sizeof h);
}

static void test_headers(void) {
    const char *dir = t_dir("headers");
    uint8_t h[64];
    make_db(dir, 2, 100);
    REQUIRE(open_rc(dir) == KVIDX_OK);

    /* Damage in the database header. */
    REQUIRE(file_xor(dir, "kvidx.hdr", 17, 0x01) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    REQUIRE(file_xor(dir, "kvidx.hdr", 17, 0x01) == 0);
    REQUIRE(file_truncate(dir, "kvidx.hdr", 40) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    t_rmrf(dir);

    make_db(dir, 2, 100);
    REQUIRE(file_read(dir, "kvidx.hdr", 0, h, sizeof h) == 0);
    /* Not a kvidx header at all. */
    REQUIRE(file_write(dir, "kvidx.hdr", 0, "NOTKVIDX", 8) == 0);
    CHECK_RC(open_rc(dir), KVIDX_EINVAL);
    REQUIRE(file_write(dir, "kvidx.hdr", 0, h, sizeof h) == 0);
    CHECK_RC(open_rc(dir), KVIDX_OK);

    /* A newer format, in the database header or in a shard file. */
    REQUIRE(set_version(dir, "kvidx.hdr", 0, VS_FORMAT + 1) == 0);
    CHECK_RC(open_rc(dir), KVIDX_EVERSION);
    REQUIRE(set_version(dir, "kvidx.hdr", 0, VS_FORMAT) == 0);
    CHECK_RC(open_rc(dir), KVIDX_OK);
    REQUIRE(set_version(dir, "s0001.1.k", 0, VS_FORMAT + 1) == 0);
    CHECK_RC(open_rc(dir), KVIDX_EVERSION);
    REQUIRE(set_version(dir, "s0001.1.k", 0, VS_FORMAT) == 0);
    CHECK_RC(open_rc(dir), KVIDX_OK);

    /* Damaged shard file headers. */
    REQUIRE(file_xor(dir, "s0000.1.k", 20, 0x02) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    REQUIRE(file_xor(dir, "s0000.1.k", 20, 0x02) == 0);
    REQUIRE(file_xor(dir, "s0001.1.v", 30, 0x80) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    REQUIRE(file_xor(dir, "s0001.1.v", 30, 0x80) == 0);
    CHECK_RC(open_rc(dir), KVIDX_OK);
    t_rmrf(dir);
}

/* The state is kept twice: one damaged copy is survived, two are not. */
static void test_state_copies(void) {
    const char *dir = t_dir("state");
    kvidx_options o = opts(1);
    kvidx *db;
    uint64_t k, bad = 0;
    make_db(dir, 1, 300);
    REQUIRE(file_xor(dir, "s0000.1.b", 33, 0x01) == 0);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (k = 0; k < 300; k++) bad += !has_val(db, k, 1);
    CHECK(bad == 0);
    REQUIRE(kvidx_close(db) == KVIDX_OK);
    /* The open and close above rewrote the copies; damage both now. */
    REQUIRE(file_xor(dir, "s0000.1.b", 33, 0x01) == 0);
    REQUIRE(file_xor(dir, "s0000.1.b", VS_STATE_SLOT + 33, 0x01) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    t_rmrf(dir);
}

static void test_missing_and_short_files(void) {
    const char *dir = t_dir("missing");
    char p[4200], moved[4200];
    snprintf(moved, sizeof moved, "%s.moved", dir);
    make_db(dir, 2, 100);
    path_of(p, sizeof p, dir, "s0001.1.b");
    REQUIRE(rename(p, moved) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    REQUIRE(rename(moved, p) == 0);
    CHECK_RC(open_rc(dir), KVIDX_OK);
    path_of(p, sizeof p, dir, "s0001.1.k");
    REQUIRE(rename(p, moved) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    REQUIRE(rename(moved, p) == 0);
    REQUIRE(file_truncate(dir, "s0001.1.b", 4096) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    t_rmrf(dir);

    /* A value log shorter than the sections the state calls flushed. */
    make_db(dir, 1, 70000);
    REQUIRE(file_size(dir, "s0000.1.v") == (int64_t)(VS_PAGE + VS_VSEC_BYTES));
    REQUIRE(file_truncate(dir, "s0000.1.v", VS_PAGE + VS_VSEC_BYTES - 4096) == 0);
    CHECK_RC(open_rc(dir), KVIDX_ECORRUPT);
    t_rmrf(dir);
}

/* ---- faults: crash inside a flush, interrupted creation, fallback -------- */

static int fault_mode, fault_count;
static char flush_vpath[4200]; /* the child's value log, for mode 2 */

/* Dies (as a crash would) at the chosen point of a section flush:
 * 1: before the section write; 2: after half of it was written;
 * 3: after the write, before its sync. */
static int crash_in_flush(os_op op, const char *what) {
    (void)what;
    if (op == OS_WRITE && fault_mode == 1) _exit(0);
    if (op == OS_WRITE && fault_mode == 2) {
        /* Half a section of junk where the section goes. */
        static uint8_t junk[1 << 20];
        int vfd = open(flush_vpath, O_WRONLY), i;
        memset(junk, 0xA5, sizeof junk);
        for (i = 0; vfd >= 0 && i < 8; i++)
            if (pwrite(vfd, junk, sizeof junk, VS_PAGE + (off_t)i * sizeof junk) < 0) break;
        if (vfd >= 0) close(vfd);
        _exit(0);
    }
    if (op == OS_SYNC && fault_mode == 3 && fault_count++ == 0) _exit(0);
    return 0;
}

static void flush_child(kvidx *db, uint64_t n) {
    uint8_t v[KVIDX_VALUE_MAX];
    uint64_t k;
    for (k = 0; k < n; k++) {
        size_t len = val_of(k, 1, v);
        if (len == 0) v[0] = 1, len = 1; /* every put takes a slot */
        if (k == VS_SEC_N) os_fault_hook = crash_in_flush; /* this put flushes */
        if (kvidx_put(db, k, v, len) != KVIDX_OK) _exit(4);
    }
}

static void test_crash_during_flush(void) {
    int mode;
    for (mode = 1; mode <= 3; mode++) {
        const char *dir = t_dir("flush_crash");
        kvidx_options o = opts(1);
        kvidx *db;
        uint64_t k, bad = 0;
        uint8_t v[KVIDX_VALUE_MAX], b[KVIDX_VALUE_MAX];
        size_t len;
        snprintf(flush_vpath, sizeof flush_vpath, "%s/s0000.1.v", dir);
        fault_mode = mode, fault_count = 0;
        REQUIRE(in_child(dir, 1, flush_child, VS_SEC_N + 5) == 0);
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        for (k = 0; k < VS_SEC_N; k++) {
            size_t wl = val_of(k, 1, v);
            if (wl == 0) v[0] = 1, wl = 1;
            bad += kvidx_get(db, k, b, sizeof b, &len) != KVIDX_OK || len != wl ||
                   memcmp(b, v, wl) != 0;
        }
        CHECK(bad == 0);
        CHECK_RC(kvidx_get(db, VS_SEC_N, b, sizeof b, &len), KVIDX_NOTFOUND);
        /* The flush that was cut short happens again, completely. */
        for (k = VS_SEC_N; k < VS_SEC_N + 100; k++) {
            size_t wl = val_of(k, 2, v);
            CHECK_RC(kvidx_put(db, k, v, wl), KVIDX_OK);
        }
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        CHECK(file_size(dir, "s0000.1.v") == (int64_t)(VS_PAGE + VS_VSEC_BYTES));
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        for (k = 0; k < VS_SEC_N + 100; k += 97)
            bad += k < VS_SEC_N ? (kvidx_get(db, k, b, sizeof b, &len) != KVIDX_OK)
                                : !has_val(db, k, 2);
        CHECK(bad == 0);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        if (t_case_failures) fprintf(stderr, "  (flush crash mode %d)\n", mode);
        t_rmrf(dir);
    }
    os_fault_hook = NULL;
}

static const char *fail_name;
static int fail_errno;
static int fail_named(os_op op, const char *what) {
    (void)op;
    return fail_name && !strcmp(what, fail_name) ? fail_errno : 0;
}

static void test_interrupted_create(void) {
    const char *dir = t_dir("create");
    kvidx_options o = opts(4);
    kvidx *db = NULL;
    kvidx_stats st;
    fail_name = "s0002.1.v", fail_errno = EIO;
    os_fault_hook = fail_named;
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_EIO);
    os_fault_hook = NULL;
    /* Read-only: not a database yet. */
    o.flags = KVIDX_RDONLY;
    CHECK_RC(kvidx_open(dir, &o, &db), KVIDX_EINVAL);
    /* The next read-write open finishes the creation. */
    o.flags = KVIDX_CREATE;
    o.shards = 8; /* ignored: the interrupted creation chose 4 */
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_put(db, 1, "x", 1), KVIDX_OK);
    st.size = sizeof st;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.shards == 4);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    /* A disk that fills while creating is reported as full. */
    t_rmrf(dir);
    fail_name = "fallocate", fail_errno = ENOSPC;
    os_fault_hook = fail_named;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_put(db, 1, "x", 1), KVIDX_EFULL);
    CHECK_RC(kvidx_put(db, 1, NULL, 0), KVIDX_EFULL); /* the key log cannot grow either */
    os_fault_hook = NULL;
    CHECK_RC(kvidx_put(db, 1, "y", 1), KVIDX_OK); /* not sticky: space came back */
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

static int logged;
static void count_log(void *ud, const char *msg) {
    (void)ud;
    logged += strstr(msg, "O_DIRECT") != NULL;
}

static void direct_roundtrip(const char *dir, kvidx_options *o, uint64_t expect_direct) {
    kvidx *db;
    kvidx_stats st;
    uint8_t v[KVIDX_VALUE_MAX];
    uint64_t k, bad = 0, n = VS_SEC_N + 1000;
    REQUIRE(kvidx_open(dir, o, &db) == KVIDX_OK);
    for (k = 0; k < n; k++) CHECK_RC(kvidx_put(db, k, v, val_of(k, 3, v)), KVIDX_OK);
    for (k = 0; k < n; k++) bad += !has_val(db, k, 3);
    CHECK(bad == 0);
    st.size = sizeof st;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK((st.flags & KVIDX_STAT_DIRECT_IO) == expect_direct);
    CHECK(st.flushes >= 1);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
}

static int refuse_direct_write;
static int einval_write(os_op op, const char *what) {
    (void)what;
    return op == OS_WRITE && refuse_direct_write-- > 0 ? EINVAL : 0;
}

static void test_direct_io_fallback(void) {
    const char *dir = t_dir("direct");
    kvidx_options o = opts(1);
    o.log = count_log;
    /* The file system refuses O_DIRECT at open. */
    fail_name = "direct", fail_errno = EINVAL, logged = 0;
    os_fault_hook = fail_named;
    direct_roundtrip(dir, &o, 0);
    os_fault_hook = NULL;
    CHECK(logged >= 1);
    t_rmrf(dir);
    /* It accepts the flag but refuses the write (hooked after creation,
     * which writes headers through the same call). */
    REQUIRE(open_rc(dir) == KVIDX_OK);
    logged = 0, refuse_direct_write = 1;
    os_fault_hook = einval_write;
    direct_roundtrip(dir, &o, 0);
    os_fault_hook = NULL;
    CHECK(logged == 1);
    t_rmrf(dir);
    /* And the normal case uses it where the file system can. */
    {
        kvidx *db;
        kvidx_stats st;
        logged = 0;
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        st.size = sizeof st;
        CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
        CHECK(kvidx_close(db) == KVIDX_OK);
        CHECK(!!(st.flags & KVIDX_STAT_DIRECT_IO) == (logged == 0));
        direct_roundtrip(dir, &o, logged ? 0 : KVIDX_STAT_DIRECT_IO);
    }
    t_rmrf(dir);
}

/* ---- write errors are sticky --------------------------------------------- */

static int fail_sync(os_op op, const char *what) {
    (void)what;
    return op == OS_SYNC ? EIO : 0;
}

static void test_sticky_io_error(void) {
    const char *dir = t_dir("sticky");
    kvidx_options o = opts(1);
    kvidx *db;
    uint8_t b[8];
    size_t len;
    o.flags |= KVIDX_SYNC;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_put(db, 1, "one", 3), KVIDX_OK);
    os_fault_hook = fail_sync;
    CHECK_RC(kvidx_put(db, 2, "two", 3), KVIDX_EIO); /* its sync failed */
    os_fault_hook = NULL;
    CHECK_RC(kvidx_put(db, 3, "three", 5), KVIDX_EIO); /* refused from now on */
    CHECK_RC(kvidx_delete(db, 1), KVIDX_EIO);
    CHECK_RC(kvidx_get(db, 1, b, sizeof b, &len), KVIDX_OK); /* reads go on */
    CHECK(len == 3 && !memcmp(b, "one", 3));
    CHECK_RC(kvidx_sync(db), KVIDX_EIO);
    kvidx_close(db);
    /* A reopen recovers. */
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_get(db, 1, b, sizeof b, &len), KVIDX_OK);
    CHECK_RC(kvidx_put(db, 3, "three", 5), KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* ---- the slot limit --------------------------------------------------- */

static void test_slot_limit(void) {
    const char *dir = t_dir("efull");
    kvidx_options o = opts(1);
    kvidx *db;
    uint8_t v[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[8];
    uint64_t k, fails = 0;
    size_t len;
    kvidx_stats st;
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    for (k = 0; k < KVIDX_SLOT_LIMIT; k++) fails += kvidx_put(db, k, v, 8) != KVIDX_OK;
    CHECK(fails == 0);
    CHECK_RC(kvidx_put(db, k, v, 8), KVIDX_EFULL);
    CHECK_RC(kvidx_put(db, 5, v, 1), KVIDX_EFULL); /* an overwrite needs a slot too */
    CHECK_RC(kvidx_get(db, 5, b, sizeof b, &len), KVIDX_OK);
    CHECK(len == 8); /* unchanged */
    CHECK_RC(kvidx_get(db, k, b, sizeof b, &len), KVIDX_NOTFOUND);
    CHECK_RC(kvidx_put(db, k, NULL, 0), KVIDX_OK); /* empty values take no slot */
    CHECK_RC(kvidx_delete(db, 7), KVIDX_OK);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
    CHECK_RC(kvidx_put(db, k + 1, v, 8), KVIDX_EFULL);
    st.size = sizeof st;
    CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
    CHECK(st.keys == KVIDX_SLOT_LIMIT); /* - key 7 + key k */
    CHECK(st.slots == KVIDX_SLOT_LIMIT);
    CHECK(st.garbage_slots == 1);
    CHECK(st.garbage_records == 2); /* key 7's record and its tombstone */
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* ---- the map against a reference -------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Random inserts and deletes in several key patterns; after each phase
 * the tree's full and partial walks equal the sorted reference, and the
 * table finds exactly the reference's keys. */
static void test_map_model(void) {
    enum { N = 60000 };
    static uint64_t ref[N], out[N];
    int pattern;
    for (pattern = 0; pattern < 4; pattern++) {
        lr_map m;
        size_t n = 0, i, j, got;
        uint64_t bad = 0;
        REQUIRE(lr_map_init(&m) == KVIDX_OK);
        for (i = 0; i < N; i++) {
            uint64_t k = pattern == 0   ? i                       /* ascending */
                         : pattern == 1 ? UINT64_MAX - i          /* descending */
                         : pattern == 2 ? t_rand()                /* random */
                                        : t_below(N * 4);         /* dense, repeats */
            lr_ent e, old;
            if (lr_map_get(&m, k, ck_key(k))) continue;
            memset(&e, 0, sizeof e);
            e.key = k, e.len = 1;
            REQUIRE(lr_map_reserve(&m) == KVIDX_OK);
            lr_map_set(&m, &e, ck_key(k), &old);
            bad += old.used != 0;
            ref[n++] = k;
        }
        /* Delete a random two thirds, in random order. */
        for (i = n; i > 1; i--) {
            uint64_t t;
            j = (size_t)t_below(i);
            t = ref[i - 1], ref[i - 1] = ref[j], ref[j] = t;
        }
        for (i = 0; i < n * 2 / 3; i++) {
            lr_ent old;
            bad += lr_map_del(&m, ref[n - 1 - i], ck_key(ref[n - 1 - i]), &old) != 1;
        }
        n -= n * 2 / 3;
        qsort(ref, n, sizeof *ref, cmp_u64);
        got = lr_bt_collect(&m.bt, 0, UINT64_MAX, out, N);
        CHECK(got == n);
        CHECK(got != n || memcmp(out, ref, n * sizeof *ref) == 0);
        CHECK(m.ht.n == n);
        for (i = 0; i < n; i++) bad += lr_map_get(&m, ref[i], ck_key(ref[i])) == NULL;
        /* Partial walks: from each of 200 random points, 50 keys. */
        for (i = 0; i < 200 && n; i++) {
            size_t at = (size_t)t_below(n), want = n - at < 50 ? n - at : 50;
            uint64_t from = ref[at] - (at && ref[at] > ref[at - 1] + 1 ? 1 : 0);
            got = lr_bt_collect(&m.bt, from, UINT64_MAX, out, 50);
            bad += got != want || memcmp(out, &ref[at], want * sizeof *ref) != 0;
            got = lr_bt_collect(&m.bt, ref[at], ref[at], out, 50);
            bad += got != 1 || out[0] != ref[at];
        }
        CHECK(bad == 0);
        /* Delete the rest: the tree gives its nodes back. */
        for (i = 0; i < n; i++) {
            lr_ent old;
            bad += lr_map_del(&m, ref[i], ck_key(ref[i]), &old) != 1;
        }
        CHECK(bad == 0);
        CHECK(m.bt.root == NULL && m.bt.nleaf == 0 && m.bt.ninner == 0 && m.ht.n == 0);
        if (t_case_failures) fprintf(stderr, "  (map pattern %d)\n", pattern);
        lr_map_free(&m);
    }
}

/* Walks that start past the last key end at once, whatever the tree's
 * height (a root leaf has no parent to say so). */
static void test_collect_past_end(void) {
    uint64_t out[8], k;
    lr_map m;
    REQUIRE(lr_map_init(&m) == KVIDX_OK);
    CHECK(lr_bt_collect(&m.bt, 0, UINT64_MAX, out, 8) == 0);
    for (k = 1; k <= 5000; k++) {
        lr_ent e, old;
        memset(&e, 0, sizeof e);
        e.key = k * 10;
        REQUIRE(lr_map_reserve(&m) == KVIDX_OK);
        lr_map_set(&m, &e, ck_key(e.key), &old);
        if (k == 20 || k == 5000) {
            CHECK(lr_bt_collect(&m.bt, k * 10 + 1, UINT64_MAX, out, 8) == 0);
            CHECK(lr_bt_collect(&m.bt, k * 10, UINT64_MAX, out, 8) == 1 && out[0] == k * 10);
            CHECK(lr_bt_collect(&m.bt, 0, 9, out, 8) == 0);
            CHECK(lr_bt_collect(&m.bt, 15, 45, out, 8) == 3 && out[0] == 20 && out[2] == 40);
        }
    }
    lr_map_free(&m);
}

/* Checks the shape of the subtree at nd (depth levels above the leaves):
 * counts in range, padding UINT64_MAX, keys ascending, each parent key
 * the maximum of its child; counts nodes. Returns the number of faults. */
static unsigned bt_shape(const lr_node *nd, unsigned depth, uint64_t *leaves, uint64_t *inner) {
    unsigned bad = 0, i;
    bad += nd->n < 1 || nd->n > KVIDX_BT_CAP;
    bad += (nd->leaf != 0) != (depth == 0);
    for (i = nd->n; i < KVIDX_BT_CAP; i++) bad += nd->key[i] != UINT64_MAX;
    for (i = 1; i < nd->n; i++) bad += nd->key[i - 1] >= nd->key[i];
    if (nd->leaf) {
        ++*leaves;
        return bad;
    }
    ++*inner;
    for (i = 0; i < nd->n; i++) {
        const lr_node *c = nd->kid[i];
        bad += c->key[c->n - 1] != nd->key[i];
        bad += bt_shape(c, depth - 1, leaves, inner);
    }
    return bad;
}

static unsigned bt_check(const lr_bt *t) {
    uint64_t leaves = 0, inner = 0;
    unsigned bad;
    if (!t->root) return t->height != 0 || t->nleaf || t->ninner;
    bad = bt_shape(t->root, t->height - 1, &leaves, &inner);
    return bad + (leaves != t->nleaf) + (inner != t->ninner);
}

static int fail_after_n;
static int fail_malloc_after(os_op op, const char *what) {
    (void)what;
    return op == OS_MALLOC && fail_after_n-- == 0 ? ENOMEM : 0;
}

/* Every allocation and every mapping an open makes, failed in turn: the
 * open returns an error (nothing leaks, under ASan) until none fails, and
 * the database then reads back whole. 4 shards, enough keys that the
 * tables grow and the buffers hold sections. */
static int fail_kind;
static int fail_nth(os_op op, const char *what) {
    (void)what;
    if (op != (os_op)fail_kind) return 0;
    return fail_after_n-- == 0 ? ENOMEM : 0;
}

static void test_open_failures(void) {
    const char *dir = t_dir("openfail");
    static const int kinds[] = {OS_MALLOC, OS_MMAP};
    unsigned ki, bad = 0;
    t_rmrf(dir);
    make_db(dir, 4, 3000);
    for (ki = 0; ki < 2; ki++) {
        int i;
        for (i = 0;; i++) {
            kvidx_options o = opts(4);
            kvidx *db = NULL;
            int rc;
            fail_kind = kinds[ki];
            fail_after_n = i;
            os_fault_hook = fail_nth;
            rc = kvidx_open(dir, &o, &db);
            os_fault_hook = NULL;
            if (rc == KVIDX_OK) {
                uint64_t k;
                for (k = 0; k < 3000; k++) bad += !has_val(db, k, 1);
                CHECK_RC(kvidx_close(db), KVIDX_OK);
                break;
            }
            bad += rc != KVIDX_ENOMEM;
            if (i > 10000) break;
        }
        CHECK(i > 0 && i <= 10000);
    }
    CHECK(bad == 0);
    t_rmrf(dir);
}

/* The tree built at open from sorted keys: every size around node
 * boundaries, the shape of a tree built by inserts, later inserts and
 * deletes working on it, and a failed allocation at every point of the
 * build leaving nothing behind (ASan's leak check). */
static void test_bt_build(void) {
    enum { N = 300000 };
    static uint64_t keys[N], out[N];
    static const size_t sizes[] = {0, 1, 2, 63, 64, 65, 127, 128, 129, 4095, 4096, 4097,
                                   64 * 64 * 2 + 1, 262144, N};
    size_t si, i, n, got;
    uint64_t k = 0;
    for (i = 0; i < N; i++) keys[i] = k += 2 + 2 * t_below(500); /* even */
    for (si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        lr_bt t;
        unsigned bad = 0;
        n = sizes[si];
        memset(&t, 0, sizeof t);
        REQUIRE(lr_bt_build(&t, keys, n) == KVIDX_OK);
        bad += bt_check(&t);
        got = lr_bt_collect(&t, 0, UINT64_MAX, out, N);
        bad += got != n || memcmp(out, keys, n * sizeof *keys) != 0;
        /* Odd keys go in between the built (even) ones, then every other
         * built key goes out. */
        for (i = 0; i < n && i < 5000; i++) {
            REQUIRE(lr_bt_reserve(&t) == KVIDX_OK);
            lr_bt_insert(&t, keys[i] + 1);
        }
        bad += bt_check(&t);
        for (i = 0; i < n; i += 2) lr_bt_delete(&t, keys[i]);
        bad += bt_check(&t);
        got = lr_bt_collect(&t, 0, UINT64_MAX, out, N);
        bad += got != n / 2 + (n < 5000 ? n : 5000);
        CHECK(bad == 0);
        if (bad) fprintf(stderr, "  (build of %zu keys)\n", n);
        lr_bt_free(&t);
    }
    /* Allocation failure at each allocation of a build of 64*64+1 keys:
     * the level array, 65 leaves, 2 internal nodes, the root. */
    n = 64 * 64 + 1;
    for (i = 0;; i++) {
        lr_bt t;
        int rc;
        memset(&t, 0, sizeof t);
        fail_after_n = (int)i;
        os_fault_hook = fail_malloc_after;
        rc = lr_bt_build(&t, keys, n);
        os_fault_hook = NULL;
        if (rc == KVIDX_OK) {
            CHECK(bt_check(&t) == 0);
            lr_bt_free(&t);
            break;
        }
        CHECK_RC(rc, KVIDX_ENOMEM);
        CHECK(t.root == NULL && t.nleaf == 0 && t.ninner == 0);
    }
    CHECK(i == 69);
}

static int64_t file_blocks(const char *dir, const char *file) {
    char path[4200];
    struct stat st;
    path_of(path, sizeof path, dir, file);
    return stat(path, &st) ? -1 : (int64_t)st.st_blocks * 512;
}

/* The buffer keeps its blocks across flushes; close gives back what lies
 * past the slots in use, and nothing else: a partly filled second section
 * and a full section not yet flushed both read back whole. */
static void test_buffer_trim(void) {
    const char *dir = t_dir("trim");
    int round;
    for (round = 0; round < 2; round++) {
        uint64_t n = round == 0 ? VS_SEC_N + 1000 : 2 * (uint64_t)VS_SEC_N, k, bad = 0;
        uint64_t used = round == 0 ? (1000 * VS_SLOT + VS_PAGE - 1) / VS_PAGE * VS_PAGE : VS_VSEC_BYTES;
        kvidx_options o = opts(1);
        kvidx_stats st;
        kvidx *db;
        uint8_t v[VS_SLOT], got[VS_SLOT];
        size_t len;
        t_rmrf(dir);
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        for (k = 0; k < n; k++) {
            uint64_t x = t_mix64(k);
            size_t i;
            for (i = 0; i < sizeof v; i += 8) memcpy(v + i, &x, 8), x += k;
            bad += kvidx_put(db, k, v, sizeof v) != KVIDX_OK;
        }
        CHECK(bad == 0);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        /* (64 KiB of slack: the file system's own extent blocks count) */
        if (round == 0) CHECK(file_blocks(dir, "s0000.1.b") <= (int64_t)(VS_PAGE + used + 65536));
        else CHECK(file_blocks(dir, "s0000.1.b") >= (int64_t)(VS_PAGE + used));
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        st.size = sizeof st;
        CHECK_RC(kvidx_stat(db, &st), KVIDX_OK);
        CHECK(st.keys == n);
        for (k = 0; k < n; k++) {
            uint64_t x = t_mix64(k);
            size_t i;
            for (i = 0; i < sizeof v; i += 8) memcpy(v + i, &x, 8), x += k;
            bad += kvidx_get(db, k, got, sizeof got, &len) != KVIDX_OK || len != sizeof v ||
                   memcmp(got, v, sizeof v) != 0;
        }
        CHECK(bad == 0);
        CHECK_RC(kvidx_close(db), KVIDX_OK);
    }
    t_rmrf(dir);
}

/* The AVX2 path of the value checksum gives XXH3_64bits's value at every
 * length it takes, on random bytes and at many alignments; its copying
 * form copies exactly the bytes it hashes. */
static void test_value_checksum(void) {
#ifdef CK_AVX2
    static uint8_t buf[1024 + 64], out[1024 + 64];
    size_t len, i;
    unsigned bad = 0;
    if (!__builtin_cpu_supports("avx2")) {
        printf("  (no AVX2 on this CPU: the portable path alone is used)\n");
        return;
    }
    for (len = 241; len <= 1024; len++) {
        size_t off = len % 61;
        for (i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)t_rand();
        bad += ck_long_avx2(buf + off, len, NULL) != XXH3_64bits(buf + off, len);
        bad += ck_value(buf + off, len) != (uint32_t)XXH3_64bits(buf + off, len);
        /* the copying pass: same checksum, every byte copied, none past */
        memset(out, 0xA5, sizeof out);
        bad += ck_copy(out + 3, buf + off, len) != (uint32_t)XXH3_64bits(buf + off, len);
        bad += memcmp(out + 3, buf + off, len) != 0 || out[2] != 0xA5 || out[3 + len] != 0xA5;
    }
    memset(buf, 0xFF, sizeof buf);
    bad += ck_long_avx2(buf, 256, NULL) != XXH3_64bits(buf, 256);
    CHECK(bad == 0);
#else
    printf("  (built without the AVX2 path)\n");
#endif
}

static void test_radix_sort(void) {
    enum { N = 5000 };
    static uint64_t a[N], b[N], tmp[N];
    size_t i, n;
    for (n = 0; n < N; n = n * 3 + 1) {
        for (i = 0; i < n; i++) a[i] = b[i] = (i & 1) ? t_rand() : t_below(1000);
        lr_sort_keys(a, tmp, n);
        qsort(b, n, sizeof *b, cmp_u64);
        CHECK(memcmp(a, b, n * sizeof *a) == 0);
    }
}

int main(void) {
    t_init("test_recovery");
    T_RUN(test_map_model);
    T_RUN(test_collect_past_end);
    T_RUN(test_radix_sort);
    T_RUN(test_value_checksum);
    T_RUN(test_buffer_trim);
    T_RUN(test_bt_build);
    T_RUN(test_open_failures);
    T_RUN(test_torn_record);
    T_RUN(test_truncated_key_log);
    T_RUN(test_torn_value);
    T_RUN(test_stale_tail_after_recovery);
    T_RUN(test_bitflip_durable_record);
    T_RUN(test_bitflip_values);
    T_RUN(test_headers);
    T_RUN(test_state_copies);
    T_RUN(test_missing_and_short_files);
    T_RUN(test_crash_during_flush);
    T_RUN(test_interrupted_create);
    T_RUN(test_direct_io_fallback);
    T_RUN(test_sticky_io_error);
    T_RUN(test_slot_limit);
    return t_done();
}
