/*
 * quickstart.c -- what `make demo` runs: open a database in
 * ./kvidx-demo-data, write a few values, read them back, scan, delete.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "kvidx.h"

static int print_pair(void *ud, uint64_t key, const void *val, size_t len) {
    int *count = ud;
    printf("  %" PRIu64 " = \"%.*s\"\n", key, (int)len, (const char *)val);
    return ++*count >= 10; /* non-zero stops the scan */
}

int main(void) {
    kvidx *db;
    char buf[KVIDX_VALUE_MAX];
    size_t len;
    uint64_t key;
    int rc, count = 0;

    rc = kvidx_open("kvidx-demo-data", NULL, &db);
    if (rc != KVIDX_OK) {
        fprintf(stderr, "open: %s\n", kvidx_strerror(rc));
        return 1;
    }
    printf("kvidx %s: opened ./kvidx-demo-data\n", kvidx_version());

    /* Values: uint64 keys -> up to 256 bytes. */
    for (key = 1; key <= 100; key++) {
        char v[32];
        int n = snprintf(v, sizeof v, "user-%" PRIu64, key * 7);
        if ((rc = kvidx_put(db, key, v, (size_t)n)) != KVIDX_OK) {
            fprintf(stderr, "put: %s\n", kvidx_strerror(rc));
            kvidx_close(db);
            return 1;
        }
    }
    printf("wrote 100 values\n");

    rc = kvidx_get(db, 42, buf, sizeof buf, &len);
    printf("get 42 -> %s \"%.*s\"\n", kvidx_strerror(rc), rc == KVIDX_OK ? (int)len : 0, buf);

    kvidx_delete(db, 42);
    rc = kvidx_get(db, 42, buf, sizeof buf, &len);
    printf("after delete, get 42 -> %s\n", kvidx_strerror(rc));

    printf("scan [40, 60], first 10 keys in order:\n");
    kvidx_scan(db, 40, 60, print_pair, &count);

    /* Everything so far survives a power cut once this returns. */
    rc = kvidx_sync(db);
    printf("sync -> %s\n", kvidx_strerror(rc));
    rc = kvidx_close(db);
    printf("close -> %s\n", kvidx_strerror(rc));
    return rc == KVIDX_OK ? 0 : 1;
}
