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

#endif
