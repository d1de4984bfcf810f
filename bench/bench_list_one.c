/*
 * bench_list_one.c -- one list grown one id per call: the cost of a
 * single add as a list gets long (issue 5: 1M adds must take seconds).
 *
 *   make bench-list-one            1M ids, ascending then random
 *   ./build/bench_list_one N       N ids each
 *
 * Ascending: id i is i * 4096 + a random offset below 4096 (new ids above
 * all others, the common case); random: ids uniform in [0, 2^32). Every
 * id is checked with kvidx_list_contains afterwards, and the whole list
 * is paged back and compared; then close (which folds the log into a
 * snapshot) and reopen are timed, and bytes an id reported.
 */
#include "kvidx.h"
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>

static void die(const char *what, int rc) {
    fprintf(stderr, "bench_list_one: %s: %s\n", what, kvidx_strerror(rc));
    exit(1);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Pages list key back 1000 ids at a time and compares it with want[0, n). */
static void check_list(kvidx *db, uint64_t key, const uint64_t *want, size_t n) {
    uint64_t page[1000], from = 0;
    size_t got = 0, k, i;
    for (;;) {
        int rc = kvidx_list_get(db, key, from, page, 1000, &k);
        if (rc) die("list_get", rc);
        for (i = 0; i < k; i++)
            if (got + i >= n || page[i] != want[got + i]) die("list_get: wrong id", KVIDX_ECORRUPT);
        got += k;
        if (k < 1000) break;
        from = page[k - 1] + 1;
    }
    if (got != n) die("list_get: wrong count", KVIDX_ECORRUPT);
}

int main(int argc, char **argv) {
    const char *dir = "bench/data/list_one";
    size_t n = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 1000000, i, u = 0;
    uint64_t *ids = malloc(n * sizeof *ids), *sorted = malloc(n * sizeof *ids);
    kvidx *db;
    kvidx_stats st;
    char cmd[256];
    double t;
    int rc, pass;
    if (!ids || !sorted || !n) return 1;
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    if ((rc = kvidx_open(dir, NULL, &db))) die("open", rc);
    for (pass = 0; pass < 2; pass++) {
        uint64_t key = (uint64_t)pass + 1;
        for (i = 0; i < n; i++)
            ids[i] = pass == 0 ? (uint64_t)i * 4096 + bench_mix(i) % 4096 : bench_mix(i + n) >> 32;
        t = bench_now_s();
        for (i = 0; i < n; i++)
            if ((rc = kvidx_list_add(db, key, &ids[i], 1, NULL))) die("list_add", rc);
        t = bench_now_s() - t;
        printf("%-10s %zu single-id adds to one list: %.2f s (%.0f adds/s)\n",
               pass ? "random" : "ascending", n, t, (double)n / t);
        memcpy(sorted, ids, n * sizeof *ids);
        qsort(sorted, n, sizeof *sorted, cmp_u64);
        for (i = u = 0; i < n; i++)
            if (!u || sorted[i] != sorted[u - 1]) sorted[u++] = sorted[i];
        t = bench_now_s();
        for (i = 0; i < n; i++)
            if ((rc = kvidx_list_contains(db, key, ids[(i * 7919) % n]))) die("contains", rc);
        t = bench_now_s() - t;
        printf("%-10s contains of every id: %.0f/s\n", "", (double)n / t);
        check_list(db, key, sorted, u);
    }
    st.size = sizeof st;
    if ((rc = kvidx_stat(db, &st))) die("stat", rc);
    printf("RAM %.2f bytes an id (%llu ids)\n", (double)st.list_ram_bytes / (double)st.list_ids,
           (unsigned long long)st.list_ids);
    t = bench_now_s();
    if ((rc = kvidx_close(db))) die("close", rc);
    printf("close (snapshot) %.3f s\n", bench_now_s() - t);
    t = bench_now_s();
    if ((rc = kvidx_open(dir, NULL, &db))) die("reopen", rc);
    printf("reopen %.3f s\n", bench_now_s() - t);
    if ((rc = kvidx_stat(db, &st))) die("stat", rc);
    printf("snapshot %.2f bytes an id\n", (double)st.list_snapshot_bytes / (double)st.list_ids);
    check_list(db, 2, sorted, u); /* the random list, read back after reopen */
    kvidx_close(db);
    free(ids);
    free(sorted);
    return 0;
}
