/* bench.h -- what every kvidx benchmark needs: a clock, a mixer, values. */
#ifndef KVIDX_BENCH_H
#define KVIDX_BENCH_H

#include <stdint.h>
#include <string.h>
#include <time.h>

static inline uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double bench_now_s(void) { return (double)bench_now_ns() * 1e-9; }

/* splitmix64's finalizer: keys and value bytes derived from a seed. */
static inline uint64_t bench_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The 256-byte value of (key, version) every value benchmark writes and
 * checks: cheap to make, different for every key and version. */
#define BENCH_VLEN 256
static inline void bench_make_val(uint64_t key, uint32_t ver, uint8_t *v) {
    uint64_t x = bench_mix(key ^ ((uint64_t)ver << 56));
    int i;
    for (i = 0; i < BENCH_VLEN; i += 8) {
        memcpy(v + i, &x, 8);
        x += 0x9E3779B97F4A7C15ull;
    }
}


/* ---- files: mkdir -p, rm -r, bytes on disk --------------------------------
 * For the benchmarks that keep data directories (bench_kv, bench_lists).
 * The including file defines BENCH_FILES before this header, builds with
 * _GNU_SOURCE (for nftw) and defines fail(fmt, ...): print and exit. */
#ifdef BENCH_FILES
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>

#define BENCH_PATH_CAP 4096

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* out = a/b; out has BENCH_PATH_CAP bytes. */
static inline void bench_path_join(char *out, const char *a, const char *b) {
    if (snprintf(out, BENCH_PATH_CAP, "%s/%s", a, b) >= BENCH_PATH_CAP) fail("path too long: %s/%s", a, b);
}

static inline void bench_mkdir_p(const char *path) {
    char p[BENCH_PATH_CAP];
    size_t i, len = strlen(path);
    if (len >= sizeof p) fail("path too long: %s", path);
    memcpy(p, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        p[i] = '\0';
        if (mkdir(p, 0755) && errno != EEXIST) fail("mkdir %s: %s", p, strerror(errno));
        if (i < len) p[i] = '/';
    }
}

static inline int bench_rm_cb(const char *p, const struct stat *st, int type, struct FTW *f) {
    (void)st, (void)type, (void)f;
    if (remove(p)) fail("remove %s: %s", p, strerror(errno));
    return 0;
}

/* rm -r path; a missing path is fine. */
static inline void bench_rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) && errno == ENOENT) return;
    if (nftw(path, bench_rm_cb, 16, FTW_DEPTH | FTW_PHYS)) fail("remove %s: %s", path, strerror(errno));
}

/* What bench_du adds up (nftw has no user pointer: the one accumulator). */
static struct {
    uint64_t blocks; /* st_blocks * 512 of every file: what df loses */
    uint64_t l, ls;  /* st_size of the kvidx list logs (*.l) and snapshots (*.ls) */
} g_bench_du;

static inline int bench_ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static inline int bench_du_cb(const char *p, const struct stat *st, int type, struct FTW *f) {
    (void)f;
    if (type != FTW_F) return 0;
    g_bench_du.blocks += (uint64_t)st->st_blocks * 512;
    if (bench_ends_with(p, ".l")) g_bench_du.l += (uint64_t)st->st_size;
    if (bench_ends_with(p, ".ls")) g_bench_du.ls += (uint64_t)st->st_size;
    return 0;
}

/* Fills g_bench_du for every file under path. */
static inline void bench_du(const char *path) {
    memset(&g_bench_du, 0, sizeof g_bench_du);
    if (nftw(path, bench_du_cb, 16, FTW_PHYS)) fail("walk %s: %s", path, strerror(errno));
}
#endif /* BENCH_FILES */

#endif
