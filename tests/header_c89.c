/*
 * header_c89.c -- `make check-symbols` compiles this with -std=c89 and
 * -std=c99 (-pedantic -Werror -Wall -Wextra -fsyntax-only): kvidx.h must
 * stay usable from strict C89 (no // comments, no trailing enum commas,
 * no inline, no long long). Uses a few of each kind of declaration:
 * macros, opaque handles, the options and stats structs, callback types,
 * functions.
 */
#include "kvidx.h"

#if KVIDX_VERSION_NUMBER != \
    KVIDX_VERSION_MAJOR * 10000 + KVIDX_VERSION_MINOR * 100 + KVIDX_VERSION_PATCH
#error "KVIDX_VERSION_NUMBER does not match MAJOR.MINOR.PATCH"
#endif

static int on_value(void *ud, uint64_t key, const void *val, size_t len) {
    (void)ud; (void)key; (void)val;
    return len > KVIDX_VALUE_MAX;
}

static int on_list(void *ud, uint64_t key, uint64_t count) {
    (void)ud; (void)key;
    return count == 0;
}

static void on_log(void *ud, const char *msg) {
    (void)ud; (void)msg;
}

int main(void) {
    kvidx *db = NULL;
    kvidx_options o;
    kvidx_stats st;
    kvidx_scan_fn scan = on_value;
    kvidx_list_scan_fn list_scan = on_list;
    kvidx_log_fn log = on_log;
    uint64_t ids[2];
    size_t added = 0;
    int rc;

    ids[0] = 1; ids[1] = 2;
    kvidx_options_init(&o);
    o.flags = KVIDX_CREATE | KVIDX_SYNC;
    o.log = log;
    rc = kvidx_open("dir", &o, &db);
    if (rc == KVIDX_OK) {
        rc = kvidx_put(db, 1, "x", 1);
        rc = kvidx_scan(db, 0, 10, scan, NULL);
        rc = kvidx_list_add(db, 7, ids, 2, &added);
        rc = kvidx_list_scan(db, 0, 10, list_scan, NULL);
        rc = kvidx_stat(db, &st);
        rc = kvidx_close(db);
    }
    return kvidx_strerror(rc)[0] == '\0' || kvidx_version()[0] == '\0';
}
