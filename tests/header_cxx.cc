/*
 * header_cxx.cc -- `make check-symbols` builds this as C++98 and C++17
 * (-pedantic -Werror -Wall -Wextra), links it against libkvidx.a and runs
 * it: kvidx.h must declare C linkage (extern "C") and parse as C++. Exits
 * 0 when the library's version is the header's.
 */
#include "kvidx.h"

#include <cstdio>
#include <cstring>

static int on_value(void *, uint64_t, const void *, size_t len) {
    return len > KVIDX_VALUE_MAX;
}

int main() {
    kvidx_options o;
    kvidx_scan_fn scan = on_value;
    kvidx_options_init(&o);
    if (std::strcmp(kvidx_version(), KVIDX_VERSION_STRING) != 0 || o.size != sizeof o ||
        std::strcmp(kvidx_strerror(KVIDX_NOTFOUND), kvidx_strerror(KVIDX_OK)) == 0 ||
        scan(NULL, 1, "", 0) != 0) {
        std::printf("header_cxx: FAIL: library %s, header %s\n", kvidx_version(),
                    KVIDX_VERSION_STRING);
        return 1;
    }
    std::printf("header_cxx: kvidx %s from C++ (%ld)\n", kvidx_version(), (long)__cplusplus);
    return 0;
}
