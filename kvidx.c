/*
 * kvidx.c -- an embeddable store for integer-keyed data. See kvidx.h for
 * the API and docs/FORMAT.md for every byte on disk.
 *
 * Copyright (c) 2026 the kvidx authors. BSD-2-Clause, see LICENSE.
 *
 * Contents, in the order data flows:
 *   1. Options and portability    compile-time knobs, includes, byte order
 *   2. OS layer (os_)             files, mmap, direct IO, locks, memory;
 *                                 the single place tests inject faults
 *   3. Checksums and hashing      XXH3 for keys, records, values, headers
 *   4. The shard's map (lr_)      hash table for point operations and a
 *                                 B+tree of keys for ordered scans
 *   5. Value store (vs_)          key log, value log, section buffer,
 *                                 recovery, the write path, the read path
 *   6. List store (ls_)           copy-on-write trees of compressed ids,
 *                                 the list log and the snapshot
 *   7. Shards and the public API  open/close/sync, values, lists, scans
 *   8. Maintenance                check, backup, compaction, stats
 *
 * Concurrency: every shard has one mutex that serializes its writers, and
 * two copies of its map (Left-Right, section 4): readers take no lock,
 * make no system call and never wait. Lists are copy-on-write trees the
 * two sides share, freed after the same grace period (section 6). A scan copies a batch of keys and
 * values out inside a read section and calls back with nothing held.
 */

/* ======================================================================
 * 1. Options and portability
 * ====================================================================== */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_DIRECT, fallocate, MAP_* on Linux */
#endif

#include "kvidx.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sched.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#define XXH_INLINE_ALL /* header-only: no link dependency, inlined hashes */
#include <xxhash.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(KVIDX_NO_AVX2)
#include <immintrin.h>
#define CK_AVX2 1 /* ck_value has an AVX2 path, chosen at run time */
#endif

/* Default shard count of a new database (a power of two). */
#ifndef KVIDX_SHARDS_DEFAULT
#define KVIDX_SHARDS_DEFAULT 8
#endif

/* Default garbage percent at which a shard is compacted in the
 * background; shards smaller than KVIDX_COMPACT_MIN are left alone. */
#ifndef KVIDX_COMPACT_PCT_DEFAULT
#define KVIDX_COMPACT_PCT_DEFAULT 50
#endif
#ifndef KVIDX_COMPACT_MIN
#define KVIDX_COMPACT_MIN ((uint64_t)16 << 20)
#endif
/* Default background sync period; bounds what a power cut can take. */
#ifndef KVIDX_SYNC_INTERVAL_DEFAULT
#define KVIDX_SYNC_INTERVAL_DEFAULT 1000
#endif

/* Value slots a shard may use. The on-disk slot number is 32 bits with
 * 0xFFFFFFFF meaning "no slot", so the hard limit is 2^32 - 1; tests build
 * with a small limit to reach KVIDX_EFULL without writing a terabyte. */
#ifndef KVIDX_SLOT_LIMIT
#define KVIDX_SLOT_LIMIT 0xFFFFFFFFull
#endif

/* Keys per B+tree node (a power of two): 64 keys = 512 bytes, searched
 * with 6 branchless halvings; a 1M-key shard is 3 levels deep. */
#ifndef KVIDX_BT_CAP
#define KVIDX_BT_CAP 64
#endif

/* Reader-indicator stripes per half per shard (a power of two is not
 * needed). More stripes: fewer threads share a counter's cache line; the
 * writer reads all of them at each publish. */
#ifndef KVIDX_LR_STRIPES
#define KVIDX_LR_STRIPES 16
#endif

/* A scan's buffers: keys collected per refill, over all shards (8 to 64
 * a shard), and values copied per batch, at most KVIDX_SCAN_BATCH / 8.
 * Bounded so that a scan of a 1024-shard database allocates kilobytes. */
#ifndef KVIDX_SCAN_BATCH
#define KVIDX_SCAN_BATCH 2048
#endif

/* Values a scan copies in its first batch; later batches double. */
#ifndef KVIDX_SCAN_FIRST
#define KVIDX_SCAN_FIRST 16
#endif

/* Open replays shards on up to this many threads (one per CPU) when the
 * key logs hold at least KVIDX_OPEN_PARALLEL bytes; smaller databases
 * open on the calling thread alone. */
#ifndef KVIDX_OPEN_THREADS
#define KVIDX_OPEN_THREADS 64
#endif
#ifndef KVIDX_OPEN_PARALLEL
#define KVIDX_OPEN_PARALLEL ((uint64_t)8 << 20)
#endif

/* Lists: ids per leaf (compressed, 1..8 bytes an id) and children per
 * inner node. A change copies one leaf and its path: bigger leaves cost
 * more per change and less memory per id. */
#ifndef KVIDX_LS_LEAF
#define KVIDX_LS_LEAF 128
#endif
#ifndef KVIDX_LS_FAN
#define KVIDX_LS_FAN 64
#endif

/* When a list log is folded into a snapshot: at open and close once it
 * holds KVIDX_LS_SNAP_MIN bytes (and half the snapshot's size); during
 * writes once it holds KVIDX_LS_SNAP_AUTO (and twice the snapshot). */
#ifndef KVIDX_LS_SNAP_MIN
#define KVIDX_LS_SNAP_MIN ((uint64_t)1 << 20)
#endif
#ifndef KVIDX_LS_SNAP_AUTO
#define KVIDX_LS_SNAP_AUTO ((uint64_t)64 << 20)
#endif
/* After a snapshot during writes failed (a full disk, say), the next try
 * waits until the log has grown by this much: not one try per write. */
#define LS_SNAP_RETRY (KVIDX_LS_SNAP_AUTO / 4)

/* Fixed geometry of format version 1 (written into the header; a database
 * with other values is refused). */
#define VS_PAGE 4096u                       /* file header page; alignment of direct IO */
#define VS_REC 32u                          /* bytes per key record */
#define VS_SLOT 256u                        /* bytes per value slot = KVIDX_VALUE_MAX */
#define VS_SEC_SHIFT 16                     /* 65536 records/slots per section */
#define VS_SEC_N (1u << VS_SEC_SHIFT)
#define VS_KSEC_BYTES ((uint64_t)VS_SEC_N * VS_REC)  /* 2 MiB key section */
#define VS_VSEC_BYTES ((uint64_t)VS_SEC_N * VS_SLOT) /* 16 MiB value section */
#define VS_NOSLOT 0xFFFFFFFFu               /* record without a value slot */
#define VS_FORMAT 1u                        /* on-disk format version */

/* Disk space is reserved ahead of the mmap'd writes: a write into a
 * mapped page the file system cannot back kills the process with SIGBUS,
 * while fallocate reports ENOSPC as an error we can return. Steps start at
 * VS_ALLOC_MIN and double with what is reserved, up to these caps: a
 * fresh shard costs 64 KiB per file, a busy one one call per cap. */
#define VS_ALLOC_MIN ((uint64_t)64 * 1024)
#define VS_KALLOC_STEP ((uint64_t)256 * 1024)  /* key log */
#define VS_BALLOC_STEP ((uint64_t)1024 * 1024) /* buffer */

/* The value log is mapped read-only in chunks of 64 sections (1 GiB) so
 * that a growing log never moves an address a reader holds. */
#define VS_VMAP_SECS 64u
#define VS_VMAP_BYTES ((uint64_t)VS_VMAP_SECS * VS_VSEC_BYTES)
/* A chunk is mapped from file offset c * VS_VMAP_BYTES (2 MiB-aligned, so
 * huge pages can map it; see os_mmap_huge) through the header page's worth
 * past its last section, rounded to 2 MiB. */
#define VS_VMAP_MAP (VS_VMAP_BYTES + ((uint64_t)2 << 20))
#define VS_VMAP_CHUNKS ((uint32_t)(((KVIDX_SLOT_LIMIT >> VS_SEC_SHIFT) + VS_VMAP_SECS) / VS_VMAP_SECS))

#define KVIDX_MAGIC_LIVE 0x6b766964786c6976ull /* "kvidxliv": a live handle */
#define KVIDX_MAGIC_DEAD 0x6b7669647864656eull /* written by close */

#define KVIDX_FLAGS_ALL (KVIDX_CREATE | KVIDX_RDONLY | KVIDX_SYNC)

/* Little-endian encoding: the format is little-endian on every host. */
static void put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_le32(uint8_t *p, uint32_t v) {
    put_le16(p, (uint16_t)v);
    put_le16(p + 2, (uint16_t)(v >> 16));
}
static void put_le64(uint8_t *p, uint64_t v) {
    put_le32(p, (uint32_t)v);
    put_le32(p + 4, (uint32_t)(v >> 32));
}
static uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_le32(const uint8_t *p) {
    return (uint32_t)get_le16(p) | ((uint32_t)get_le16(p + 2) << 16);
}
static uint64_t get_le64(const uint8_t *p) {
    return (uint64_t)get_le32(p) | ((uint64_t)get_le32(p + 4) << 32);
}

/* ======================================================================
 * 2. OS layer
 *
 * Every system call and allocation of the library passes through these
 * functions, so that one place maps errno to kvidx codes and, in test
 * builds (-DKVIDX_TEST), one hook can make any of them fail.
 * ====================================================================== */

typedef enum {
    OS_OPEN, OS_READ, OS_WRITE, OS_SYNC, OS_TRUNC, OS_ALLOC_DISK, OS_MMAP,
    OS_RENAME, OS_UNLINK, OS_MKDIR, OS_LOCK, OS_MALLOC, OS_OP_COUNT
} os_op;

#ifdef KVIDX_TEST
/* Test hooks, process-wide on purpose: tests only, never compiled into
 * the library.
 * os_fault_hook: called before every OS call; a non-zero return is used
 * as the call's errno and the call is not made, except that a write
 * given OS_SHORT | errno first writes half its bytes (a short write, then
 * the error).
 * os_trace_hook: told of every successful open (fd, name; dirfd in off;
 * a dup: name NULL, the original fd in off), mmap (fd, addr, off, len),
 * sync (fdatasync/fsync: fd; msync: addr, len), truncate (fd, len),
 * rename (name -> name2, dirfd in off) and unlink (name, dirfd in off):
 * enough to keep, beside the files, what a power cut would leave. */
#define OS_SHORT 0x40000000
typedef struct os_event {
    os_op op;
    int fd;
    const void *addr;
    uint64_t off, len;
    const char *name, *name2;
} os_event;
static int (*os_fault_hook)(os_op op, const char *what);
static void (*os_trace_hook)(const os_event *ev);
#define OS_FAULT(op, what) (os_fault_hook ? os_fault_hook((op), (what)) : 0)
static void os_trace(os_op op, int fd, const void *addr, uint64_t off, uint64_t len, const char *name,
                     const char *name2) {
    os_event ev;
    if (!os_trace_hook) return;
    ev.op = op, ev.fd = fd, ev.addr = addr, ev.off = off, ev.len = len, ev.name = name, ev.name2 = name2;
    os_trace_hook(&ev);
}
#define OS_TRACE(op, fd, addr, off, len, name, name2) os_trace((op), (fd), (addr), (off), (len), (name), (name2))
#else
#define OS_FAULT(op, what) 0
#define OS_TRACE(op, fd, addr, off, len, name, name2) ((void)0)
#endif

/* Maps an errno from a failed call to a kvidx code: a full disk is
 * KVIDX_EFULL (the caller may free space and retry), memory is ENOMEM,
 * everything else is an I/O error. */
static int os_code(int err) {
    switch (err) {
    case ENOSPC:
    case EDQUOT: return KVIDX_EFULL;
    case ENOMEM: return KVIDX_ENOMEM;
    default: return KVIDX_EIO;
    }
}

static void *os_malloc(size_t n) {
    if (OS_FAULT(OS_MALLOC, "malloc")) return NULL;
    return malloc(n ? n : 1);
}
static void *os_calloc(size_t n, size_t sz) {
    if (OS_FAULT(OS_MALLOC, "calloc")) return NULL;
    return calloc(n ? n : 1, sz ? sz : 1);
}
static void *os_realloc(void *p, size_t n) {
    if (OS_FAULT(OS_MALLOC, "realloc")) return NULL;
    return realloc(p, n ? n : 1);
}
static void os_free(void *p) { free(p); }

/* Zeroed memory for a hash table of n bytes. Tables of 2 MiB and more are
 * mapped on a 2 MiB boundary and offered to transparent huge pages: a
 * random lookup in a large table then costs a cache miss, not also a
 * page walk (on a VM a two-level one). Free with os_table_free(p, n). */
#define OS_HUGE ((size_t)2 << 20)
static void *os_table_alloc(size_t n) {
    size_t len;
    uint8_t *p, *a;
    if (n < OS_HUGE) return os_calloc(1, n);
    if (OS_FAULT(OS_MALLOC, "table")) return NULL;
    len = (n + OS_HUGE - 1) & ~(OS_HUGE - 1);
    p = mmap(NULL, len + OS_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    a = (uint8_t *)(((uintptr_t)p + OS_HUGE - 1) & ~(uintptr_t)(OS_HUGE - 1));
    if (a > p) munmap(p, (size_t)(a - p));
    if (a + len < p + len + OS_HUGE) munmap(a + len, (size_t)(p + len + OS_HUGE - (a + len)));
#ifdef MADV_HUGEPAGE
    madvise(a, len, MADV_HUGEPAGE); /* advice: without THP the table still works */
#endif
    return a;
}
static void os_table_free(void *p, size_t n) {
    if (!p) return;
    if (n < OS_HUGE) free(p);
    else munmap(p, (n + OS_HUGE - 1) & ~(OS_HUGE - 1));
}

/* open(2); returns the fd or -errno. */
static int os_open(int dirfd, const char *name, int flags, int mode) {
    int e = OS_FAULT(OS_OPEN, name), fd;
    if (e) return -e;
    do fd = openat(dirfd, name, flags | O_CLOEXEC, mode);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) return -errno;
    OS_TRACE(OS_OPEN, fd, NULL, (uint64_t)(int64_t)dirfd, 0, name, NULL);
    return fd;
}

/* dup(2), close-on-exec; returns the new fd or -errno. */
static int os_dup(int fd) {
    int e = OS_FAULT(OS_OPEN, "dup"), r;
    if (e) return -e;
    r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (r < 0) return -errno;
    OS_TRACE(OS_OPEN, r, NULL, (uint64_t)fd, 0, NULL, NULL);
    return r;
}

static void os_close(int fd) {
    if (fd >= 0) close(fd);
}

/* Reads exactly n bytes at off; returns 0, or -errno, or -EIO on a short
 * file (the caller checked the size: a short read means it changed). */
static int os_pread(int fd, void *buf, size_t n, uint64_t off) {
    uint8_t *p = buf;
    int e = OS_FAULT(OS_READ, "pread");
    if (e) return -e;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -EIO;
        p += r, n -= (size_t)r, off += (uint64_t)r;
    }
    return 0;
}

/* Writes exactly n bytes at off; returns 0 or -errno. */
static int os_pwrite(int fd, const void *buf, size_t n, uint64_t off) {
    const uint8_t *p = buf;
    int e = OS_FAULT(OS_WRITE, "pwrite");
#ifdef KVIDX_TEST
    if (e & OS_SHORT) { /* half of it, then the error */
        ssize_t r = pwrite(fd, p, n / 2, (off_t)off);
        (void)r;
        return -(e & ~OS_SHORT);
    }
#endif
    if (e) return -e;
    while (n) {
        ssize_t r = pwrite(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -EIO;
        p += r, n -= (size_t)r, off += (uint64_t)r;
    }
    return 0;
}

static int os_fdatasync(int fd) {
    int e = OS_FAULT(OS_SYNC, "fdatasync");
    if (e) return -e;
    if (fdatasync(fd)) return -errno;
    OS_TRACE(OS_SYNC, fd, NULL, 0, 0, NULL, NULL);
    return 0;
}

static int os_fsync(int fd) {
    int e = OS_FAULT(OS_SYNC, "fsync");
    if (e) return -e;
    if (fsync(fd)) return -errno;
    OS_TRACE(OS_SYNC, fd, NULL, 0, 0, NULL, NULL);
    return 0;
}

static int os_ftruncate(int fd, uint64_t size) {
    int e = OS_FAULT(OS_TRUNC, "ftruncate");
    if (e) return -e;
    if (ftruncate(fd, (off_t)size)) return -errno;
    OS_TRACE(OS_TRUNC, fd, NULL, 0, size, NULL, NULL);
    return 0;
}

/* Reserves disk blocks for [off, off+len), growing the file if needed.
 * Where the file system cannot reserve (EOPNOTSUPP), the file is grown
 * sparse instead: correct, only without the ENOSPC-before-SIGBUS guard. */
static int os_fallocate(int fd, uint64_t off, uint64_t len) {
    int e = OS_FAULT(OS_ALLOC_DISK, "fallocate");
    struct stat st;
    if (e) return -e;
    if (fallocate(fd, 0, (off_t)off, (off_t)len) == 0) return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS) return -errno;
    if (fstat(fd, &st)) return -errno;
    if ((uint64_t)st.st_size >= off + len) return 0;
    return ftruncate(fd, (off_t)(off + len)) ? -errno : 0;
}

/* Gives the blocks of [off, off+len) back to the file system; the range
 * reads as zeros afterwards. Best effort: failure only costs space. */
static void os_punch(int fd, uint64_t off, uint64_t len) {
    if (OS_FAULT(OS_ALLOC_DISK, "punch")) return;
    (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
}

/* mmap(2) of a file range; returns NULL and sets *err (-errno) on failure. */
static void *os_mmap(int fd, uint64_t off, uint64_t len, int writable, int *err) {
    void *p;
    int e = OS_FAULT(OS_MMAP, "mmap");
    if (e) {
        *err = -e;
        return NULL;
    }
    p = mmap(NULL, (size_t)len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd,
             (off_t)off);
    if (p == MAP_FAILED) {
        *err = -errno;
        return NULL;
    }
    OS_TRACE(OS_MMAP, fd, p, off, len, NULL, NULL);
    return p;
}

/* A read-only mmap(2) of a file range whose offset is a multiple of
 * 2 MiB, placed at an address that is one too (mmap alone does not
 * promise that), and offered to transparent huge pages: where the page
 * cache holds 2 MiB folios, the kernel can then map them whole, and a
 * random read costs a cache miss without a 4 KiB page walk. */
static void *os_mmap_huge(int fd, uint64_t off, uint64_t len, int *err) {
    uint8_t *p, *a;
    int e = OS_FAULT(OS_MMAP, "mmap");
    if (e) {
        *err = -e;
        return NULL;
    }
    p = mmap(NULL, (size_t)len + OS_HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
             -1, 0);
    if (p == MAP_FAILED) {
        *err = -errno;
        return NULL;
    }
    a = (uint8_t *)(((uintptr_t)p + OS_HUGE - 1) & ~(uintptr_t)(OS_HUGE - 1));
    if (mmap(a, (size_t)len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, (off_t)off) == MAP_FAILED) {
        *err = -errno;
        munmap(p, (size_t)len + OS_HUGE);
        return NULL;
    }
    if (a > p) munmap(p, (size_t)(a - p));
    if (a + len < p + len + OS_HUGE) munmap(a + len, (size_t)(p + len + OS_HUGE - (a + len)));
#ifdef MADV_HUGEPAGE
    madvise(a, (size_t)len, MADV_HUGEPAGE); /* advice: without THP the mapping still works */
#endif
    return a;
}

static void os_munmap(void *p, uint64_t len) {
    if (p) munmap(p, (size_t)len);
}

/* msync(MS_SYNC) of a range that starts anywhere in a mapping. */
static int os_msync(void *p, uint64_t len) {
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(VS_PAGE - 1);
    int e = OS_FAULT(OS_SYNC, "msync");
    if (e) return -e;
    len += (uintptr_t)p - a;
    if (msync((void *)a, (size_t)len, MS_SYNC)) return -errno;
    OS_TRACE(OS_SYNC, -1, (void *)a, 0, len, NULL, NULL);
    return 0;
}

static int os_renameat(int dirfd, const char *from, const char *to) {
    int e = OS_FAULT(OS_RENAME, to);
    if (e) return -e;
    if (renameat(dirfd, from, dirfd, to)) return -errno;
    OS_TRACE(OS_RENAME, -1, NULL, (uint64_t)(int64_t)dirfd, 0, from, to);
    return 0;
}

/* unlinkat(2) of a file; returns 0 or -errno. */
static int os_unlinkat(int dirfd, const char *name) {
    int e = OS_FAULT(OS_UNLINK, name);
    if (e) return -e;
    if (unlinkat(dirfd, name, 0)) return -errno;
    OS_TRACE(OS_UNLINK, -1, NULL, (uint64_t)(int64_t)dirfd, 0, name, NULL);
    return 0;
}

static int os_mkdir(const char *path) {
    int e = OS_FAULT(OS_MKDIR, path);
    if (e) return -e;
    return mkdir(path, 0755) ? -errno : 0;
}

/* flock(2), non-blocking: returns 0 or -errno (-EWOULDBLOCK: held). */
static int os_flock(int fd, int exclusive) {
    int e = OS_FAULT(OS_LOCK, "flock");
    if (e) return -e;
    while (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB)) {
        if (errno == EINTR) continue;
        return -errno;
    }
    return 0;
}

/* Turns O_DIRECT on or off for fd (Linux allows it on an open file). */
static int os_set_direct(int fd, int on) {
    int fl, e = OS_FAULT(OS_OPEN, "direct");
    if (e) return -e;
    fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -errno;
    fl = on ? fl | O_DIRECT : fl & ~O_DIRECT;
    return fcntl(fd, F_SETFL, fl) ? -errno : 0;
}

/* Monotonic nanoseconds (vDSO: no system call on Linux). */
static uint64_t os_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Converts 0 or a negative errno from the functions above into a kvidx
 * code. Only ever applied to -errno values: kvidx codes are negative too,
 * and -EIO == KVIDX_ELOCKED, so the two must never be mixed. */
static int os_rc(int r) { return r >= 0 ? r : os_code(-r); }

/* ======================================================================
 * 3. Checksums and hashing
 *
 * One hash function, XXH3-64, with fixed seeds per use so that a record
 * checksum can never be mistaken for a header checksum.
 * ====================================================================== */

#define CK_SEED_HDR 0x6b76696478686472ull /* "kvidxhdr" */
#define CK_SEED_REC 0x6b76696478726563ull /* "kvidxrec" */
#define CK_SEED_LREC 0x6b766964786c7263ull /* "kvidxlrc": list log records */
#define CK_SEED_SNAP 0x6b76696478736e70ull /* "kvidxsnp": list snapshot bodies */

/* The hash of a key: its low bits pick the shard, its high bits the slot
 * in that shard's hash table. Computed over the key's 8 little-endian
 * bytes so that a database moved to another host keeps its shards. */
static uint64_t ck_key(uint64_t key) {
    uint8_t b[8];
    put_le64(b, key);
    return XXH3_64bits(b, 8);
}

#ifdef CK_AVX2
/* XXH3-64 of 241..1024 bytes, the value XXH3_64bits gives, computed with
 * AVX2 whatever the build's target. Why: a get verifies 256 bytes, and
 * the ~200 instructions of XXH3's SSE2 path fill the CPU's reorder
 * window, so the cache misses of consecutive gets stop overlapping; with
 * a third of the instructions a hot get costs half the time
 * (docs/BENCHMARKS.md). XXH3's long-input algorithm restricted to one
 * block of the default secret (1024 bytes: no scrambling): stripes of 64
 * bytes fold into eight 64-bit lanes, the last 64 bytes once more with
 * the secret's end, then the lanes merge and avalanche. test_recovery
 * checks it against XXH3_64bits at every length. */
__attribute__((__target__("avx2"))) static inline void ck_stripe_avx2(__m256i acc[2],
                                                                       const uint8_t *in,
                                                                       const uint8_t *key,
                                                                       uint8_t *out) {
    int i;
    for (i = 0; i < 2; i++) {
        __m256i d = _mm256_loadu_si256((const __m256i *)(const void *)(in + 32 * i));
        __m256i k = _mm256_xor_si256(d, _mm256_loadu_si256((const __m256i *)(const void *)(key + 32 * i)));
        /* lane += lo32(k) * hi32(k); the neighbouring lane += the data */
        __m256i prod = _mm256_mul_epu32(k, _mm256_shuffle_epi32(k, _MM_SHUFFLE(0, 3, 0, 1)));
        acc[i] = _mm256_add_epi64(acc[i], _mm256_shuffle_epi32(d, _MM_SHUFFLE(1, 0, 3, 2)));
        acc[i] = _mm256_add_epi64(acc[i], prod);
        if (out) _mm256_storeu_si256((__m256i *)(void *)(out + 32 * i), d);
    }
}

__extension__ typedef unsigned __int128 ck_u128;

/* With out, also copies in[0, len) to out: the bytes hashed are the
 * bytes stored, in one pass. */
__attribute__((__target__("avx2"))) static uint64_t ck_long_avx2(const uint8_t *in, size_t len,
                                                                 uint8_t *out) {
    static const uint64_t init[8] = {XXH_PRIME32_3, XXH_PRIME64_1, XXH_PRIME64_2, XXH_PRIME64_3,
                                     XXH_PRIME64_4, XXH_PRIME32_2, XXH_PRIME64_5, XXH_PRIME32_1};
    const uint8_t *sec = XXH3_kSecret;
    uint64_t lane[8], h = (uint64_t)len * XXH_PRIME64_1;
    __m256i acc[2];
    size_t i, n = (len - 1) / 64;
    acc[0] = _mm256_loadu_si256((const __m256i *)(const void *)init);
    acc[1] = _mm256_loadu_si256((const __m256i *)(const void *)(init + 4));
    for (i = 0; i < n; i++) ck_stripe_avx2(acc, in + 64 * i, sec + 8 * i, out ? out + 64 * i : NULL);
    ck_stripe_avx2(acc, in + len - 64, sec + sizeof XXH3_kSecret - 64 - 7,
                   out ? out + len - 64 : NULL); /* overlaps the stripe before: same bytes */
    _mm256_storeu_si256((__m256i *)(void *)lane, acc[0]);
    _mm256_storeu_si256((__m256i *)(void *)(lane + 4), acc[1]);
    for (i = 0; i < 4; i++) {
        uint64_t k[2]; /* x86-64 is little-endian: the bytes are the words */
        ck_u128 m;
        memcpy(k, sec + 11 + 16 * i, sizeof k);
        m = (ck_u128)(lane[2 * i] ^ k[0]) * (lane[2 * i + 1] ^ k[1]);
        h += (uint64_t)m ^ (uint64_t)(m >> 64);
    }
    h ^= h >> 37;
    h *= 0x165667919E3779F9ull;
    return h ^ (h >> 32);
}
#endif

/* Checksum of a value: the low 32 bits of XXH3-64 of its bytes. */
static uint32_t ck_value(const void *val, size_t len) {
#ifdef CK_AVX2
    if (len > 240 && len <= 1024 && __builtin_cpu_supports("avx2"))
        return (uint32_t)ck_long_avx2(val, len, NULL);
#endif
    return (uint32_t)XXH3_64bits(val, len);
}

/* Copies len bytes from src to dst and returns ck_value of the copy. In
 * one pass where it can: a get then checks exactly the bytes it returns
 * without loading them a second time. */
static uint32_t ck_copy(void *dst, const void *src, size_t len) {
#ifdef CK_AVX2
    if (len > 240 && len <= 1024 && __builtin_cpu_supports("avx2"))
        return (uint32_t)ck_long_avx2(src, len, dst);
#endif
    memcpy(dst, src, len);
    return ck_value(dst, len);
}

static uint64_t ck_seeded(const void *p, size_t n, uint64_t seed) {
    return XXH3_64bits_withSeed(p, n, seed);
}

/* ======================================================================
 * 4. The shard's map (lr_)
 *
 * "The shard's ordered map" is two structures kept in step:
 *   - an open-addressing hash table (linear probing, backward-shift
 *     deletion, load <= 3/4) from key to entry, for point operations;
 *   - a B+tree of the keys alone, for ordered scans; only inserts and
 *     deletes of keys touch it, an overwrite changes the table alone.
 * Every change that could need memory reserves it first (lr_map_reserve),
 * so that once the disk write of an operation is done, applying it to the
 * map cannot fail.
 * ====================================================================== */

typedef struct lr_ent {
    uint64_t key;
    uint32_t slot;  /* value slot in the shard's value log, VS_NOSLOT if len == 0 */
    uint16_t len;   /* value length 0..256 */
    uint16_t used;  /* 0: empty cell (tables are zero-initialised) */
    uint32_t vsum;  /* ck_value of the value's bytes */
    uint32_t spare; /* keeps the entry at 24 bytes, 8-aligned */
} lr_ent;

typedef struct lr_ht {
    lr_ent *cell;
    uint64_t cap;  /* power of two */
    unsigned bits; /* log2(cap) */
    uint64_t n;    /* occupied cells */
    lr_ent *grow;  /* reserved doubled array, installed by the next insert */
} lr_ht;

#define LR_HT_MIN_BITS 4

/* The home cell of a key: the top bits of its hash (the low bits chose
 * the shard, so the two never correlate). */
static uint64_t lr_home(const lr_ht *t, uint64_t h) { return h >> (64 - t->bits); }

static int lr_ht_init(lr_ht *t, unsigned bits) {
    t->cell = os_table_alloc(((size_t)1 << bits) * sizeof(lr_ent));
    if (!t->cell) return KVIDX_ENOMEM;
    t->bits = bits;
    t->cap = (uint64_t)1 << bits;
    t->n = 0;
    t->grow = NULL;
    return KVIDX_OK;
}

static lr_ent *lr_ht_find(const lr_ht *t, uint64_t key, uint64_t h) {
    uint64_t m = t->cap - 1, i = lr_home(t, h);
    for (;;) {
        lr_ent *e = &t->cell[i];
        if (!e->used) return NULL;
        if (e->key == key) return e;
        i = (i + 1) & m;
    }
}

/* The cell for key: its own if present, else the empty cell where it goes.
 * The table must have room (lr_ht_room). */
static lr_ent *lr_ht_cell(lr_ht *t, uint64_t key, uint64_t h) {
    uint64_t m = t->cap - 1, i = lr_home(t, h);
    for (;;) {
        lr_ent *e = &t->cell[i];
        if (!e->used || e->key == key) return e;
        i = (i + 1) & m;
    }
}

static int lr_ht_full(const lr_ht *t) { return (t->n + 1) * 4 > t->cap * 3; }

/* Reserves what one more key needs under the 3/4 load bound: the doubled
 * array, allocated but not installed. Touches nothing a reader sees, so it
 * may run on the side readers use. */
static int lr_ht_room(lr_ht *t) {
    if (!lr_ht_full(t) || t->grow) return KVIDX_OK;
    t->grow = os_table_alloc((size_t)t->cap * 2 * sizeof(lr_ent));
    return t->grow ? KVIDX_OK : KVIDX_ENOMEM;
}

/* Installs the reserved doubled array. Only on a side no reader uses: the
 * old array is freed at once. */
static void lr_ht_rehash(lr_ht *t) {
    lr_ht nt;
    uint64_t i;
    nt.cell = t->grow;
    nt.bits = t->bits + 1;
    nt.cap = t->cap * 2;
    nt.n = t->n;
    nt.grow = NULL;
    for (i = 0; i < t->cap; i++) {
        const lr_ent *e = &t->cell[i];
        if (e->used) *lr_ht_cell(&nt, e->key, ck_key(e->key)) = *e;
    }
    os_table_free(t->cell, (size_t)t->cap * sizeof(lr_ent));
    *t = nt;
}

/* Installs the reserved array if one more key needs it. */
static void lr_ht_make_room(lr_ht *t) {
    if (lr_ht_full(t)) lr_ht_rehash(t);
}

/* Grows a table no reader uses until k more keys fit (recovery). */
static int lr_ht_fit(lr_ht *t, uint64_t k) {
    while ((t->n + k) * 4 > t->cap * 3) {
        if (!t->grow && !(t->grow = os_table_alloc((size_t)t->cap * 2 * sizeof(lr_ent))))
            return KVIDX_ENOMEM;
        lr_ht_rehash(t);
    }
    return KVIDX_OK;
}

/* Removes the entry at e by shifting later members of its probe run back
 * (no tombstones: lookups stay as short as the load allows). */
static void lr_ht_remove(lr_ht *t, lr_ent *e) {
    uint64_t m = t->cap - 1, i = (uint64_t)(e - t->cell), j = i;
    for (;;) {
        uint64_t k;
        j = (j + 1) & m;
        if (!t->cell[j].used) break;
        k = lr_home(t, ck_key(t->cell[j].key));
        /* Entry j may move to the hole at i unless its home lies
         * cyclically in (i, j]: then it would become unreachable. */
        if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
            t->cell[i] = t->cell[j];
            i = j;
        }
    }
    memset(&t->cell[i], 0, sizeof t->cell[i]);
    t->n--;
}

/* B+tree of keys. Internal nodes hold, per child, the largest key below
 * it; leaves hold keys. Unused cells hold UINT64_MAX, which is never
 * smaller than a probe, so a rank is one branchless count over all cells
 * (a real key UINT64_MAX sorts last and is found by position). */
typedef struct lr_node {
    uint64_t key[KVIDX_BT_CAP];
    uint32_t n;    /* keys (leaf) or children (internal) in use */
    uint32_t leaf; /* 1: leaf */
    struct lr_node *kid[]; /* internal nodes only */
} lr_node;

typedef struct lr_bt {
    lr_node *root;   /* NULL when empty */
    unsigned height; /* 0 when empty; 1: the root is a leaf */
    lr_node *spare_leaf; /* free lists, linked through key[0] */
    lr_node *spare_inner;
    unsigned nspare_leaf, nspare_inner;
    uint64_t nleaf, ninner; /* nodes in the tree */
} lr_bt;

#define LR_LEAF_BYTES (sizeof(lr_node))
#define LR_INNER_BYTES (sizeof(lr_node) + KVIDX_BT_CAP * sizeof(lr_node *))

/* Number of keys in nd smaller than x: a branchless binary search over
 * all KVIDX_BT_CAP cells (the padding sorts last), 7 compares for 64 keys,
 * each a conditional move. (A linear count measured 1000 instructions per
 * insert: x86-64 without SSE4.2 has no 64-bit unsigned vector compare.) */
static unsigned lr_rank(const lr_node *nd, uint64_t x) {
    const uint64_t *p = nd->key;
    unsigned len = KVIDX_BT_CAP, i;
    /* The halvings load one line after another; a node out of cache
     * would cost a miss per step. Ask for all its lines at once. */
    for (i = 0; i < KVIDX_BT_CAP; i += 64 / sizeof *p) __builtin_prefetch(p + i);
    while (len > 1) {
        unsigned half = len / 2;
        p += p[half - 1] < x ? half : 0;
        len -= half;
    }
    return (unsigned)(p - nd->key) + (*p < x);
}

static lr_node *lr_node_new(int leaf) {
    lr_node *nd = os_malloc(leaf ? LR_LEAF_BYTES : LR_INNER_BYTES);
    unsigned i;
    if (!nd) return NULL;
    for (i = 0; i < KVIDX_BT_CAP; i++) nd->key[i] = UINT64_MAX;
    nd->n = 0;
    nd->leaf = (uint32_t)leaf;
    return nd;
}

static void lr_spare_push(lr_node **list, lr_node *nd) {
    memcpy(&nd->key[0], list, sizeof *list);
    *list = nd;
}

static lr_node *lr_spare_pop(lr_node **list) {
    lr_node *nd = *list;
    unsigned i;
    memcpy(list, &nd->key[0], sizeof *list);
    for (i = 0; i < KVIDX_BT_CAP; i++) nd->key[i] = UINT64_MAX;
    nd->n = 0;
    return nd;
}

/* An insert splits at most one leaf and one node per internal level, and
 * may add a root: keep that many nodes in reserve. */
static int lr_bt_reserve(lr_bt *t) {
    while (t->nspare_leaf < 1) {
        lr_node *nd = lr_node_new(1);
        if (!nd) return KVIDX_ENOMEM;
        lr_spare_push(&t->spare_leaf, nd);
        t->nspare_leaf++;
    }
    while (t->nspare_inner < t->height + 1) {
        lr_node *nd = lr_node_new(0);
        if (!nd) return KVIDX_ENOMEM;
        lr_spare_push(&t->spare_inner, nd);
        t->nspare_inner++;
    }
    return KVIDX_OK;
}

static lr_node *lr_bt_take(lr_bt *t, int leaf) {
    if (leaf) {
        t->nspare_leaf--, t->nleaf++;
        return lr_spare_pop(&t->spare_leaf);
    }
    t->nspare_inner--, t->ninner++;
    {
        lr_node *nd = lr_spare_pop(&t->spare_inner);
        nd->leaf = 0;
        return nd;
    }
}

static void lr_bt_drop(lr_bt *t, lr_node *nd) {
    if (nd->leaf) t->nleaf--;
    else t->ninner--;
    os_free(nd);
}

/* Puts (k, c) at position pos of nd, which has room. */
static void lr_node_insert_at(lr_node *nd, unsigned pos, uint64_t k, lr_node *c) {
    memmove(&nd->key[pos + 1], &nd->key[pos], (nd->n - pos) * sizeof nd->key[0]);
    nd->key[pos] = k;
    if (!nd->leaf) {
        memmove(&nd->kid[pos + 1], &nd->kid[pos], (nd->n - pos) * sizeof nd->kid[0]);
        nd->kid[pos] = c;
    }
    nd->n++;
}

/* Inserts (k, c) at pos of the full node nd, splitting it into nd and a
 * new right sibling, which is returned. An append (pos == CAP) moves only
 * the new key: ascending inserts, the common case, fill nodes to 100%. */
static lr_node *lr_node_split_insert(lr_bt *t, lr_node *nd, unsigned pos, uint64_t k,
                                     lr_node *c) {
    lr_node *r = lr_bt_take(t, (int)nd->leaf);
    unsigned keep = pos == KVIDX_BT_CAP ? KVIDX_BT_CAP : KVIDX_BT_CAP / 2, i;
    r->leaf = nd->leaf;
    r->n = nd->n - keep;
    memcpy(r->key, &nd->key[keep], r->n * sizeof nd->key[0]);
    if (!nd->leaf) memcpy(r->kid, &nd->kid[keep], r->n * sizeof nd->kid[0]);
    for (i = keep; i < KVIDX_BT_CAP; i++) nd->key[i] = UINT64_MAX;
    nd->n = keep;
    if (pos <= keep && pos < KVIDX_BT_CAP) lr_node_insert_at(nd, pos, k, c);
    else lr_node_insert_at(r, pos - keep, k, c);
    return r;
}

/* Inserts the absent key x below nd; returns a new right sibling of nd
 * if nd split, else NULL. Keeps every parent's per-child maximum exact. */
static lr_node *lr_bt_ins(lr_bt *t, lr_node *nd, uint64_t x) {
    unsigned i;
    lr_node *r;
    if (nd->leaf) {
        i = lr_rank(nd, x);
        if (nd->n < KVIDX_BT_CAP) {
            lr_node_insert_at(nd, i, x, NULL);
            return NULL;
        }
        return lr_node_split_insert(t, nd, i, x, NULL);
    }
    i = lr_rank(nd, x);
    if (i == nd->n) i--; /* x is a new maximum: it goes to the last child */
    r = lr_bt_ins(t, nd->kid[i], x);
    nd->key[i] = nd->kid[i]->key[nd->kid[i]->n - 1];
    if (!r) return NULL;
    if (nd->n < KVIDX_BT_CAP) {
        lr_node_insert_at(nd, i + 1, r->key[r->n - 1], r);
        return NULL;
    }
    return lr_node_split_insert(t, nd, i + 1, r->key[r->n - 1], r);
}

/* Inserts the absent key x; cannot fail after lr_bt_reserve. */
static void lr_bt_insert(lr_bt *t, uint64_t x) {
    lr_node *r, *root;
    if (!t->root) {
        t->root = lr_bt_take(t, 1);
        t->height = 1;
    }
    r = lr_bt_ins(t, t->root, x);
    if (!r) return;
    root = lr_bt_take(t, 0);
    root->key[0] = t->root->key[t->root->n - 1];
    root->kid[0] = t->root;
    root->key[1] = r->key[r->n - 1];
    root->kid[1] = r;
    root->n = 2;
    t->root = root;
    t->height++;
}

/* Removes child i of the internal node nd (the child is already freed). */
static void lr_node_remove_at(lr_node *nd, unsigned i) {
    memmove(&nd->key[i], &nd->key[i + 1], (nd->n - i - 1) * sizeof nd->key[0]);
    if (!nd->leaf) memmove(&nd->kid[i], &nd->kid[i + 1], (nd->n - i - 1) * sizeof nd->kid[0]);
    nd->n--;
    nd->key[nd->n] = UINT64_MAX;
}

/* Deletes the present key x below nd. An emptied child is freed; a child
 * that fell under a quarter full is merged with a neighbour when both fit
 * in three quarters of a node, so deletes give memory back. */
static void lr_bt_del(lr_bt *t, lr_node *nd, uint64_t x) {
    unsigned i = lr_rank(nd, x), a, b;
    lr_node *c, *l, *r;
    if (nd->leaf) {
        if (i < nd->n && nd->key[i] == x) lr_node_remove_at(nd, i);
        return;
    }
    if (i == nd->n) return; /* absent: larger than everything */
    c = nd->kid[i];
    lr_bt_del(t, c, x);
    if (c->n == 0) {
        lr_bt_drop(t, c);
        lr_node_remove_at(nd, i);
        return;
    }
    nd->key[i] = c->key[c->n - 1];
    if (c->n >= KVIDX_BT_CAP / 4 || nd->n < 2) return;
    a = i > 0 ? i - 1 : i;
    b = a + 1;
    l = nd->kid[a], r = nd->kid[b];
    if (l->n + r->n > KVIDX_BT_CAP * 3 / 4) return;
    memcpy(&l->key[l->n], r->key, r->n * sizeof r->key[0]);
    if (!l->leaf) memcpy(&l->kid[l->n], r->kid, r->n * sizeof r->kid[0]);
    l->n += r->n;
    nd->key[a] = l->key[l->n - 1];
    lr_bt_drop(t, r);
    lr_node_remove_at(nd, b);
}

static void lr_bt_delete(lr_bt *t, uint64_t x) {
    if (!t->root) return;
    lr_bt_del(t, t->root, x);
    if (t->root->n == 0) {
        lr_bt_drop(t, t->root);
        t->root = NULL;
        t->height = 0;
    } else if (!t->root->leaf && t->root->n == 1) {
        lr_node *old = t->root;
        t->root = old->kid[0];
        t->height--;
        lr_bt_drop(t, old);
    }
}

/* Copies up to max keys of [from, to] into out, ascending; returns the
 * count. O(log n) per leaf visited: the walk re-descends from the root
 * for the next leaf, so leaves need no sibling links. */
static size_t lr_bt_collect(const lr_bt *t, uint64_t from, uint64_t to, uint64_t *out,
                            size_t max) {
    size_t n = 0;
    while (n < max && t->root) {
        const lr_node *nd = t->root;
        unsigned i;
        uint64_t last;
        while (!nd->leaf) {
            i = lr_rank(nd, from);
            if (i == nd->n) return n; /* every key is below from */
            nd = nd->kid[i];
        }
        i = lr_rank(nd, from);
        if (i == nd->n) return n; /* a root leaf with every key below from */
        for (; i < nd->n && n < max; i++) {
            if (nd->key[i] > to) return n;
            out[n++] = nd->key[i];
        }
        last = nd->key[nd->n - 1];
        if (last >= to) break;
        from = last + 1;
    }
    return n;
}

static void lr_bt_free_node(lr_node *nd);

/* Builds the tree of an empty t from n ascending distinct keys, one level
 * at a time, spreading keys (children) evenly over the fewest nodes: O(n),
 * where n inserts would cost O(n log n) and leave nodes half full. */
static int lr_bt_build(lr_bt *t, const uint64_t *keys, size_t n) {
    size_t cnt = (n + KVIDX_BT_CAP - 1) / KVIDX_BT_CAP, i = 0, j, from = 0;
    unsigned height = 1;
    lr_node **lvl;
    if (!n) return KVIDX_OK;
    lvl = os_malloc(cnt * sizeof *lvl);
    if (!lvl) return KVIDX_ENOMEM;
    for (i = 0; i < cnt; i++) {
        size_t take = n / cnt + (i < n % cnt);
        if (!(lvl[i] = lr_node_new(1))) goto fail;
        memcpy(lvl[i]->key, keys + from, take * sizeof *keys);
        lvl[i]->n = (uint32_t)take;
        from += take;
    }
    t->nleaf = cnt;
    while (cnt > 1) {
        size_t up = (cnt + KVIDX_BT_CAP - 1) / KVIDX_BT_CAP;
        for (i = 0, from = 0; i < up; i++) {
            size_t take = cnt / up + (i < cnt % up);
            lr_node *nd = lr_node_new(0);
            if (!nd) goto fail;
            for (j = 0; j < take; j++) {
                const lr_node *c = lvl[from + j];
                nd->kid[j] = lvl[from + j];
                nd->key[j] = c->key[c->n - 1];
            }
            nd->n = (uint32_t)take;
            from += take;
            lvl[i] = nd; /* i < from: the slot's node is already a child */
        }
        t->ninner += up;
        cnt = up;
        height++;
    }
    t->root = lvl[0];
    t->height = height;
    os_free(lvl);
    return KVIDX_OK;
fail:
    /* lvl[0, i) hold built subtrees; above the leaves (nleaf set),
     * lvl[from, cnt) also hold nodes of the level below not yet adopted. */
    for (j = 0; j < i; j++) lr_bt_free_node(lvl[j]);
    if (t->nleaf)
        for (j = from; j < cnt; j++) lr_bt_free_node(lvl[j]);
    t->nleaf = t->ninner = 0;
    os_free(lvl);
    return KVIDX_ENOMEM;
}

static void lr_bt_free_node(lr_node *nd) {
    unsigned i;
    if (!nd) return;
    if (!nd->leaf)
        for (i = 0; i < nd->n; i++) lr_bt_free_node(nd->kid[i]);
    os_free(nd);
}

static void lr_bt_free(lr_bt *t) {
    lr_bt_free_node(t->root);
    while (t->nspare_leaf) {
        t->nspare_leaf--;
        os_free(lr_spare_pop(&t->spare_leaf));
    }
    while (t->nspare_inner) {
        t->nspare_inner--;
        os_free(lr_spare_pop(&t->spare_inner));
    }
    memset(t, 0, sizeof *t);
}

/* The map: table + tree. */
typedef struct lr_map {
    lr_ht ht;
    lr_bt bt;
} lr_map;

static int lr_map_init(lr_map *m) {
    memset(m, 0, sizeof *m);
    return lr_ht_init(&m->ht, LR_HT_MIN_BITS);
}

static void lr_map_free(lr_map *m) {
    os_table_free(m->ht.cell, (size_t)m->ht.cap * sizeof(lr_ent));
    os_table_free(m->ht.grow, (size_t)m->ht.cap * 2 * sizeof(lr_ent));
    lr_bt_free(&m->bt);
    memset(m, 0, sizeof *m);
}

/* Reserves what one lr_map_set may need, without changing what readers
 * of this map see. */
static int lr_map_reserve(lr_map *m) {
    int rc = lr_ht_room(&m->ht);
    return rc ? rc : lr_bt_reserve(&m->bt);
}

static const lr_ent *lr_map_get(const lr_map *m, uint64_t key, uint64_t h) {
    return lr_ht_find(&m->ht, key, h);
}

/* Sets key's entry to *e; *old receives the previous entry (old->used == 0
 * if there was none). Needs lr_map_reserve first; cannot fail. */
static void lr_map_set(lr_map *m, const lr_ent *e, uint64_t h, lr_ent *old) {
    lr_ent *c;
    lr_ht_make_room(&m->ht);
    c = lr_ht_cell(&m->ht, e->key, h);
    *old = *c;
    *c = *e;
    c->used = 1;
    if (!old->used) {
        m->ht.n++;
        lr_bt_insert(&m->bt, e->key);
    }
}

/* Removes key; returns 1 and the old entry if it was present. */
static int lr_map_del(lr_map *m, uint64_t key, uint64_t h, lr_ent *old) {
    lr_ent *c = lr_ht_find(&m->ht, key, h);
    if (!c) return 0;
    *old = *c;
    lr_ht_remove(&m->ht, c);
    lr_bt_delete(&m->bt, key);
    return 1;
}

/* Bytes of memory the map holds (table, tree and reserves). */
static uint64_t lr_map_bytes(const lr_map *m) {
    return (m->ht.cap + (m->ht.grow ? m->ht.cap * 2 : 0)) * sizeof(lr_ent) +
           (m->bt.nleaf + m->bt.nspare_leaf) * (uint64_t)LR_LEAF_BYTES +
           (m->bt.ninner + m->bt.nspare_inner) * (uint64_t)LR_INNER_BYTES;
}

#ifndef KVIDX_BENCH_RWLOCK
/* Makes dst's table a copy of src's (dst freshly initialised, no tree). */
static int lr_map_copy_table(lr_map *dst, const lr_map *src) {
    lr_ent *cell = os_table_alloc((size_t)src->ht.cap * sizeof(lr_ent));
    if (!cell) return KVIDX_ENOMEM;
    memcpy(cell, src->ht.cell, (size_t)src->ht.cap * sizeof(lr_ent));
    os_table_free(dst->ht.cell, (size_t)dst->ht.cap * sizeof(lr_ent));
    dst->ht = src->ht;
    dst->ht.cell = cell;
    dst->ht.grow = NULL;
    return KVIDX_OK;
}
#endif

/* ---- Left-Right: two maps, readers that never wait --------------------
 *
 * Ramalhete & Correia, "Left-Right: A Concurrency Control Technique with
 * Wait-Free Population Oblivious Reads" (2015). Each shard keeps two maps.
 * Readers announce themselves on a reader indicator, load which map to
 * use (`side`) and read it; they never lock, never wait, never retry.
 * The shard's single writer (it holds the shard mutex) changes the map
 * readers do not use, publishes it by flipping `side`, waits until no
 * reader can still be on the old map, and repeats the change there.
 *
 * The wait has two phases over two halves of the indicators, selected by
 * the version index `vi`: a reader arrives on half vi. The writer waits
 * for half !vi to drain, moves vi to it, then waits for half vi to drain.
 * The simpler scheme, one counter per map chosen by the map the reader is
 * about to read, loses a reader that loaded `side` but had not arrived
 * yet: the writer sees an empty counter, publishes twice, and changes
 * the map that reader is about to read. Here a reader arrives *before* it
 * loads `side`, on an indicator the writer waits for.
 *
 * Indicators are striped: KVIDX_LR_STRIPES cache-line-padded counters per
 * half, a thread uses the one its thread id hashes to. Threads never
 * register, so any number of threads and handles work and a thread that
 * exits leaves nothing behind (its counter is back where it found it).
 */

#ifdef KVIDX_TEST
/* Test hook at the points the white-box tests interleave: a reader that
 * has chosen its indicator and not yet arrived on it; a reader that has
 * arrived and not yet loaded the side; a writer about to apply an
 * operation to a side; a writer waiting for a half to drain. */
enum { LR_HOOK_ENTER, LR_HOOK_ARRIVED, LR_HOOK_APPLY, LR_HOOK_WAIT };
static void (*lr_test_hook)(int point, unsigned arg);
#define LR_HOOK(p, a) (lr_test_hook ? lr_test_hook((p), (a)) : (void)0)
#else
#define LR_HOOK(p, a) ((void)0)
#endif

typedef struct lr_slot {
    uint64_t n;        /* readers inside, arrived on this stripe */
    uint8_t pad[56];   /* one counter per 64-byte cache line */
} lr_slot;

/* Allocated 64-byte aligned: the first line is read by every reader and
 * written only at a publish or a section flush. */
typedef struct lr_ctl {
    uint32_t side;   /* the map readers use */
    uint32_t vi;     /* the half of ind readers arrive on */
#ifdef KVIDX_BENCH_RWLOCK
    pthread_rwlock_t rw; /* benchmark build: a rwlock instead of Left-Right */
#endif
    uint8_t pad[56];
    lr_slot ind[2][KVIDX_LR_STRIPES];
} lr_ctl;

static lr_ctl *lr_ctl_new(void) {
    void *p = NULL;
    if (OS_FAULT(OS_MALLOC, "lr_ctl") || posix_memalign(&p, 64, sizeof(lr_ctl))) return NULL;
    memset(p, 0, sizeof(lr_ctl));
#ifdef KVIDX_BENCH_RWLOCK
    pthread_rwlock_init(&((lr_ctl *)p)->rw, NULL);
#endif
    return p;
}

static void lr_ctl_free(lr_ctl *c) {
#ifdef KVIDX_BENCH_RWLOCK
    if (c) pthread_rwlock_destroy(&c->rw);
#endif
    os_free(c);
}

/* The calling thread's stripe: a hash of its thread id (a pointer-sized
 * value on Linux, the same for the thread's whole life). */
static unsigned lr_stripe(void) {
    pthread_t t = pthread_self();
    uint64_t x = 0;
    memcpy(&x, &t, sizeof t < sizeof x ? sizeof t : sizeof x);
    x *= 0x9E3779B97F4A7C15ull; /* descriptors are page-aligned: mix up the high bits */
    return (unsigned)(x >> 40) % KVIDX_LR_STRIPES;
}

/* Enters a read section: returns the indicator to leave through, and the
 * side to read in *side. Wait-free: two loads and one atomic add. */
static lr_slot *lr_arrive(lr_ctl *c, unsigned *side) {
    lr_slot *sl;
#ifdef KVIDX_BENCH_RWLOCK
    pthread_rwlock_rdlock(&c->rw);
    *side = 0;
    return &c->ind[0][0];
#endif
    /* vi: acquire pairs with the writer's seq_cst store in lr_wait_readers;
     * any half is safe to arrive on, the writer waits for both. */
    sl = &c->ind[__atomic_load_n(&c->vi, __ATOMIC_ACQUIRE)][lr_stripe()];
    LR_HOOK(LR_HOOK_ENTER, 0);
    /* Arrive before loading side. seq_cst: this add and the load of side
     * below pair with the writer's seq_cst store of side and its seq_cst
     * loads of the counters (Dekker: either the writer sees us, or we see
     * its new side). */
    __atomic_fetch_add(&sl->n, 1, __ATOMIC_SEQ_CST);
    LR_HOOK(LR_HOOK_ARRIVED, 0);
    *side = __atomic_load_n(&c->side, __ATOMIC_SEQ_CST);
    return sl;
}

/* Leaves a read section. Release: everything this reader read happens
 * before the writer's acquire (seq_cst) load that sees the count drop,
 * so the writer cannot change the map under it. */
static void lr_depart(lr_ctl *c, lr_slot *sl) {
#ifdef KVIDX_BENCH_RWLOCK
    (void)sl;
    pthread_rwlock_unlock(&c->rw);
    return;
#endif
    (void)c;
    __atomic_fetch_sub(&sl->n, 1, __ATOMIC_RELEASE);
}

/* Spins until half h of the indicators is empty. seq_cst loads: they pair
 * with the readers' seq_cst arrive (see lr_arrive) and, being acquire,
 * with their release departure.
 * A read section lasts well under a microsecond, so a short spin nearly
 * always suffices. When it does not, the reader was most likely preempted
 * inside its section and needs a CPU back: the writer yields for up to
 * 100 us (right when the thread sharing its CPU is that reader), then
 * sleeps, 2 us growing to 1 ms (right when other busy threads would take
 * the yielded CPU). Only threads that outnumber the CPUs get here.
 * Measured on 2 CPUs with readers that never pause, writes/s:
 *                       yields only   sleeps only   this
 *   2 readers, 1 writer     123k          7.5k       30k
 *   3 readers, 2 writers      4k           40k       50k
 * (A futex the last reader wakes would do better, at the price of a
 * system call in the read path.) */
static void lr_drain(lr_ctl *c, unsigned h) {
    unsigned i, spins;
    for (i = 0; i < KVIDX_LR_STRIPES; i++) {
        long ns = 2000;
        uint64_t t0 = 0;
        for (spins = 0; __atomic_load_n(&c->ind[h][i].n, __ATOMIC_SEQ_CST) != 0; spins++) {
            LR_HOOK(LR_HOOK_WAIT, h);
            if (spins < 200) continue;
            if (!t0) t0 = os_now_ns();
            if (os_now_ns() - t0 < 100000) {
                sched_yield();
            } else {
                struct timespec ts = {0, ns};
                nanosleep(&ts, NULL);
                if (ns < 1000000) ns *= 2;
            }
        }
    }
}

/* The two-phase wait: returns when every reader that was inside when it
 * was called has left. (A grace period: also what a section flush needs
 * before reusing the buffer.) Writer only. */
static void lr_wait_readers(lr_ctl *c) {
#ifdef KVIDX_BENCH_RWLOCK
    pthread_rwlock_wrlock(&c->rw);
    pthread_rwlock_unlock(&c->rw);
    return;
#endif
    {
        unsigned prev = c->vi, next = prev ^ 1; /* only the writer stores vi */
        lr_drain(c, next);  /* readers left over on next from an earlier cycle */
        /* seq_cst store pairs with the readers' acquire load of vi: from
         * here on they arrive on next. */
        __atomic_store_n(&c->vi, next, __ATOMIC_SEQ_CST);
        lr_drain(c, prev);  /* everyone who arrived before the switch */
    }
}

/* One map operation: set an entry, or delete a key. */
typedef struct lr_op {
    int del;
    uint64_t h;   /* ck_key(e.key) */
    lr_ent e;
} lr_op;

static void lr_map_apply(lr_map *m, const lr_op *op, lr_ent *old) {
    if (op->del) {
        if (!lr_map_del(m, op->e.key, op->h, old)) old->used = 0;
    } else {
        lr_map_set(m, &op->e, op->h, old);
    }
}

/* The writer's half of Left-Right. Both maps were reserved for op (their
 * reserves touch nothing readers see). Writer only, under the shard mutex;
 * when it returns, every read that starts sees op. */
static void lr_write(lr_ctl *c, lr_map *map, const lr_op *op, lr_ent *old) {
#ifdef KVIDX_BENCH_RWLOCK
    pthread_rwlock_wrlock(&c->rw);
    lr_map_apply(&map[0], op, old);
    pthread_rwlock_unlock(&c->rw);
    return;
#endif
    {
        unsigned side = c->side; /* only the writer stores side */
        /* The second apply misses the cache like the first: start loading
         * its table cell now, so the two misses overlap. */
        __builtin_prefetch(&map[side].ht.cell[lr_home(&map[side].ht, op->h)], 1);
        LR_HOOK(LR_HOOK_APPLY, side ^ 1);
        lr_map_apply(&map[side ^ 1], op, old);
        /* Publish. seq_cst: pairs with the readers' seq_cst load of side
         * (they see the change applied above: the store is a release) and
         * orders before lr_drain's loads (see lr_arrive). */
        __atomic_store_n(&c->side, side ^ 1, __ATOMIC_SEQ_CST);
        lr_wait_readers(c);
        LR_HOOK(LR_HOOK_APPLY, side);
        lr_map_apply(&map[side], op, old);
    }
}

/* Sorts n keys ascending: LSD radix, 8 bits a pass, passes on which every
 * key has the same byte skipped (dense key ranges cost few passes).
 * tmp holds n keys. O(n) where a comparison sort would be O(n log n): the
 * tree of a 10M-key database is rebuilt from a sorted array at open. */
static void lr_sort_keys(uint64_t *a, uint64_t *tmp, size_t n) {
    uint64_t *src = a, *dst = tmp, *t;
    unsigned shift;
    for (shift = 0; shift < 64 && n; shift += 8) {
        size_t cnt[256] = {0}, i, sum = 0;
        for (i = 0; i < n; i++) cnt[(src[i] >> shift) & 0xFF]++;
        if (cnt[(src[0] >> shift) & 0xFF] == n) continue;
        for (i = 0; i < 256; i++) {
            size_t c = cnt[i];
            cnt[i] = sum;
            sum += c;
        }
        for (i = 0; i < n; i++) dst[cnt[(src[i] >> shift) & 0xFF]++] = src[i];
        t = src, src = dst, dst = t;
    }
    if (src != a) memcpy(a, src, n * sizeof *a);
}

/* Builds the trees of maps m[0, nm) (empty) from the keys of m[0]'s
 * table, sorted once (recovery). */
static int lr_map_build_trees(lr_map *m, unsigned nm) {
    uint64_t *keys, *tmp, i, n = 0;
    unsigned j;
    int rc = KVIDX_OK;
    if (m[0].ht.n == 0) return KVIDX_OK;
    keys = os_malloc(m[0].ht.n * sizeof *keys);
    tmp = os_malloc(m[0].ht.n * sizeof *tmp);
    if (!keys || !tmp) rc = KVIDX_ENOMEM;
    for (i = 0; !rc && i < m[0].ht.cap; i++)
        if (m[0].ht.cell[i].used) keys[n++] = m[0].ht.cell[i].key;
    if (!rc) lr_sort_keys(keys, tmp, n);
    for (j = 0; !rc && j < nm; j++) rc = lr_bt_build(&m[j].bt, keys, n);
    os_free(keys);
    os_free(tmp);
    return rc;
}

/* ======================================================================
 * 5. Value store (vs_)
 *
 * Per shard and generation g (docs/FORMAT.md has every byte):
 *   sNNNN.g.k  key log: a 4 KiB header page, then 32-byte records in
 *              sections of 65536; the section being written is mmap'd.
 *   sNNNN.g.v  value log: a header page, then 16 MiB sections of 65536
 *              256-byte slots, written whole with O_DIRECT and read
 *              through read-only mappings.
 *   sNNNN.g.b  buffer: a header page holding two copies of the shard's
 *              state (which section the buffer holds, the durable prefix
 *              of the key log, the open epoch), then the 16 MiB section
 *              being filled, mmap'd read-write.
 *
 * A put copies the value into the buffer, then appends its record: a
 * process that dies between the two leaves an unreferenced slot, never a
 * record without its value. A full buffer is written to the value log,
 * synced, and only then does the state say the buffer holds the next
 * section. Recovery replays the key log up to the first record that fails
 * its checks; before the durable prefix that is damage (KVIDX_ECORRUPT),
 * after it a torn tail (dropped).
 * ====================================================================== */

typedef struct vs_rec {
    uint64_t key;
    uint32_t slot; /* VS_NOSLOT: tombstone or empty value */
    uint16_t len;
    uint16_t flags;
    uint32_t vsum;
    uint32_t epoch; /* the shard's open epoch when it was written */
} vs_rec;

#define VS_F_TOMB 0x1u   /* the key was deleted */
#define VS_F_KNOWN 0x1u  /* bits 1 (batch member) and 2 (batch commit) are reserved, zero */

/* The shard's state, stored twice in the buffer's header page. */
typedef struct vs_state {
    uint64_t seq;     /* the copy with the higher seq is current */
    uint64_t section; /* the value section the buffer holds; all below are in the log */
    uint64_t synced;  /* key-log records known durable (a lower bound) */
    uint32_t epoch;   /* bumped at every read-write open */
    uint64_t lsynced; /* list-log bytes known durable (a lower bound) */
    int lnone;        /* decoded from a copy whose list part is all zero: a
                         shard written by 0.1.x, which had no list files */
} vs_state;

#define VS_STATE_SLOT 512u /* second copy one sector after the first */
#define VS_STATE_BYTES 128u /* a copy: the 64-byte header part, then the list part */

static const char VS_MAGIC_DB[8] = {'K', 'V', 'I', 'D', 'X', 'H', 'D', 'R'};
static const char VS_MAGIC_K[8] = {'K', 'V', 'I', 'D', 'X', 'K', 'E', 'Y'};
static const char VS_MAGIC_V[8] = {'K', 'V', 'I', 'D', 'X', 'V', 'A', 'L'};
static const char VS_MAGIC_B[8] = {'K', 'V', 'I', 'D', 'X', 'B', 'U', 'F'};
/* The list files' (section 6). */
static const char LS_MAGIC_L[8] = {'K', 'V', 'I', 'D', 'X', 'L', 'S', 'T'};
static const char LS_MAGIC_S[8] = {'K', 'V', 'I', 'D', 'X', 'S', 'N', 'P'};
#define LS_LOG_HDR 64u  /* the list log's header */
#define LS_SNAP_HDR 64u /* the snapshot's header */

/* Where a shard's values live: what a reader needs to turn a slot into
 * an address. Compaction makes a new store (new files, new slots); each
 * map side points to the store its slots refer to (vs_shard.rs), so a
 * reader always pairs an entry with the files it came from. */
typedef struct vs_store {
    uint8_t *bmap;   /* the whole buffer file: header page + section */
    uint8_t **vmap;  /* VS_VMAP_CHUNKS read-only mappings of the value log */
    uint64_t bsec;   /* the section the buffer holds; all below are in the
                        value log. Readers load it inside their read section */
} vs_store;

typedef struct vs_shard {
    pthread_mutex_t mu;    /* serializes the shard's writers; readers never take it */
    pthread_mutex_t smu;   /* held by a sync, a compaction, a backup: the files stay put; before mu */
    pthread_cond_t sync_cv; /* (with mu) a sync finished */
    int syncing;           /* (mu) a sync of the shard is running */
    uint64_t wseq;         /* writes so far: key records and list records appended */
    uint64_t dseq;         /* wseq covered by the last completed sync */
    lr_ctl *lr;            /* Left-Right control */
    lr_map map[2];         /* the two maps: readers use map[lr->side] */
    uint32_t id, gen;
    int kfd, vfd, bfd;
    int vdirect;           /* vfd writes use O_DIRECT */
    uint8_t *kmap;         /* the key section being written (read-write) */
    uint64_t ksec;         /* its index; UINT64_MAX: none mapped */
    uint64_t kpos;         /* records in the key log = position of the next */
    uint64_t kalloc;       /* record bytes the key log has reserved on disk */
    vs_store *vs;          /* the current store (the writer's) */
    vs_store *rs[2];       /* the store map[i]'s slots refer to; == vs between compactions */
    uint64_t balloc;       /* buffer bytes reserved on disk (kept across flushes) */
    uint64_t next_slot;    /* the next value slot */
    vs_state st;           /* current state (the copy at hslot) */
    unsigned hslot;        /* 0 or 1 */
    unsigned st_dirty;     /* st was written without a sync since */
    uint64_t live_slots;   /* slots live keys point to */
    uint64_t value_bytes;  /* sum of live value lengths */
    uint64_t durable;      /* kpos covered by the last completed sync */
    uint64_t puts, deletes, flushes;
    int err;               /* sticky write error (KVIDX_EIO) */
    /* lists (section 6) */
    struct ls_node *lroot; /* the key index; readers load it (acquire) */
    struct ls_ctx *lcx;    /* the change being made */
    int lfd;               /* list log */
    uint64_t lpos;         /* bytes in the list log: where the next record goes */
    uint64_t ldurable;     /* lpos covered by the last completed sync */
    uint64_t ltrunc;       /* times the log was cut: a sync in flight checks it */
    uint64_t lsn;          /* sequence number of the last list change */
    uint64_t lists, lids;  /* lists and ids */
    uint64_t lbytes;       /* heap bytes of the list trees */
    uint64_t lsnap_bytes;  /* size of the snapshot */
    uint64_t lsnap_retry;  /* lpos before which writes try no snapshot (after a failure) */
    uint64_t lwrites;      /* list changes since open */
    uint64_t compactions;  /* since open */
    uint64_t compact_ms_max; /* the longest a compaction held the mutex */
    uint64_t cp_retry;     /* kpos before which no background compaction is tried */
    /* where an open found damage (vs_damage), for the message it logs */
    const char *bad, *bad_unit;
    char bad_file[8];
    uint64_t bad_at;
    uint8_t *lbuf;         /* scratch: a list log record being encoded */
    size_t lbuf_cap;
} vs_shard;

struct kvidx {
    uint64_t magic; /* KVIDX_MAGIC_LIVE while open */
    uint32_t flags; /* open flags */
    uint32_t nshards;
    int dirfd, lockfd;
    kvidx_options opt;
    vs_shard *sh;
    pthread_mutex_t bg_mu; /* background sync thread: stop flag and wakeup */
    pthread_mutex_t bk_mu; /* one backup or compaction at a time; before any shard's smu */
    int backing_up;        /* atomic: a backup is copying; list logs must not be cut */
    pthread_cond_t bg_cv;
    pthread_t bg;
    int bg_started, bg_stop;
    uint64_t syncs; /* completed syncs; atomic */
    /* the protocol layer's counters (INFO); atomic, relaxed: statistics */
    uint64_t sessions, sessions_total, client_ids, commands, hits, misses;
    uint64_t opened_ns; /* os_now_ns() at open: INFO's uptime */
};

/* One warning line to the application's log (or stderr). */
static void db_log(const kvidx *db, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (db->opt.log) db->opt.log(db->opt.log_ud, msg);
    else fprintf(stderr, "kvidx: %s\n", msg);
}

static void vs_name(char *buf, size_t n, uint32_t shard, uint32_t gen, char ext) {
    snprintf(buf, n, "s%04u.%u.%c", (unsigned)shard, (unsigned)gen, ext);
}

/* Notes the first damage an open of shard s finds: in file sNNNN.G.<file>,
 * what, and (unit != NULL) at which record or byte. Returns
 * KVIDX_ECORRUPT; vs_open_shard logs the note. */
static int vs_damage(vs_shard *s, const char *file, const char *what, const char *unit, uint64_t at) {
    if (!s->bad) {
        snprintf(s->bad_file, sizeof s->bad_file, "%s", file);
        s->bad = what, s->bad_unit = unit, s->bad_at = at;
    }
    return KVIDX_ECORRUPT;
}

/* Records a write-path I/O error: the shard refuses writes from now on
 * (after a failed sync the kernel may have dropped the dirty pages, so
 * carrying on would acknowledge writes that can vanish). A full disk is
 * not sticky: nothing was written and a retry after freeing space works. */
static int vs_fail(vs_shard *s, int rc) {
    if (rc == KVIDX_EIO) s->err = rc;
    return rc;
}

/* A failed fdatasync or msync is always sticky, whatever its errno (even
 * ENOSPC): the kernel may have marked the unwritten pages clean, so a
 * later sync could succeed without them ever reaching the disk. */
static int vs_fail_sync(vs_shard *s) {
    s->err = KVIDX_EIO;
    return KVIDX_EIO;
}

static void vs_rec_encode(uint8_t *p, const vs_rec *r) {
    put_le64(p, r->key);
    put_le32(p + 8, r->slot);
    put_le16(p + 12, r->len);
    put_le16(p + 14, r->flags);
    put_le32(p + 16, r->vsum);
    put_le32(p + 20, r->epoch);
    put_le64(p + 24, ck_seeded(p, 24, CK_SEED_REC));
}

/* Returns 1 if the 32 bytes at p are a record with a valid checksum. */
static int vs_rec_decode(const uint8_t *p, vs_rec *r) {
    if (get_le64(p + 24) != ck_seeded(p, 24, CK_SEED_REC)) return 0;
    r->key = get_le64(p);
    r->slot = get_le32(p + 8);
    r->len = get_le16(p + 12);
    r->flags = get_le16(p + 14);
    r->vsum = get_le32(p + 16);
    r->epoch = get_le32(p + 20);
    return 1;
}

/* The 64-byte header of a .k or .v file (and the common part of a state
 * copy): magic, format, shard, shards, generation. */
static void vs_fhdr_encode(uint8_t *p, const char *magic, uint32_t shard, uint32_t shards,
                           uint32_t gen) {
    memset(p, 0, 64);
    memcpy(p, magic, 8);
    put_le32(p + 8, VS_FORMAT);
    put_le32(p + 12, shard);
    put_le32(p + 16, shards);
    put_le32(p + 20, gen);
}

static void vs_hdr_seal(uint8_t *p) { put_le64(p + 56, ck_seeded(p, 56, CK_SEED_HDR)); }

/* Checks a 64-byte header: magic, then format (a newer one may lay out the
 * rest differently, so it is refused before the checksum is trusted),
 * then checksum and identity. */
static int vs_fhdr_check(const uint8_t *p, const char *magic, uint32_t shard, uint32_t shards,
                         uint32_t gen) {
    if (memcmp(p, magic, 8)) return KVIDX_ECORRUPT;
    if (get_le32(p + 8) > VS_FORMAT) return KVIDX_EVERSION;
    if (get_le64(p + 56) != ck_seeded(p, 56, CK_SEED_HDR)) return KVIDX_ECORRUPT;
    if (get_le32(p + 8) != VS_FORMAT || get_le32(p + 12) != shard ||
        get_le32(p + 16) != shards || get_le32(p + 20) != gen)
        return KVIDX_ECORRUPT;
    return KVIDX_OK;
}

static void vs_state_encode(uint8_t *p, const vs_shard *s, uint32_t shards, const vs_state *st) {
    uint8_t b[VS_STATE_BYTES];
    vs_fhdr_encode(b, VS_MAGIC_B, s->id, shards, s->gen);
    put_le64(b + 24, st->seq);
    put_le64(b + 32, st->section);
    put_le64(b + 40, st->synced);
    put_le32(b + 48, st->epoch);
    vs_hdr_seal(b);
    memset(b + 64, 0, 64);
    put_le64(b + 64, st->lsynced);
    put_le64(b + 120, ck_seeded(b + 64, 56, CK_SEED_HDR));
    memcpy(p, b, VS_STATE_BYTES); /* one copy into the mapping: a torn copy fails a checksum */
}

static int vs_all_zero(const uint8_t *p, size_t n) {
    while (n && !*p) p++, n--;
    return n == 0;
}

static int vs_state_decode(const uint8_t *p, const vs_shard *s, uint32_t shards, vs_state *st) {
    int rc = vs_fhdr_check(p, VS_MAGIC_B, s->id, shards, s->gen);
    if (rc) return rc;
    st->seq = get_le64(p + 24);
    st->section = get_le64(p + 32);
    st->synced = get_le64(p + 40);
    st->epoch = get_le32(p + 48);
    st->lnone = vs_all_zero(p + 64, VS_STATE_BYTES - 64);
    if (!st->lnone && get_le64(p + 120) != ck_seeded(p + 64, 56, CK_SEED_HDR)) return KVIDX_ECORRUPT;
    st->lsynced = get_le64(p + 64); /* 0 when lnone: a lower bound, so always safe */
    if (st->section > (KVIDX_SLOT_LIMIT >> VS_SEC_SHIFT)) return KVIDX_ECORRUPT;
    return KVIDX_OK;
}

/* Loads the newer valid copy of the state. */
static int vs_state_load(vs_shard *s, uint32_t shards) {
    vs_state a, b;
    int ra = vs_state_decode(s->vs->bmap, s, shards, &a);
    int rb = vs_state_decode(s->vs->bmap + VS_STATE_SLOT, s, shards, &b);
    if (ra == KVIDX_OK && (rb != KVIDX_OK || a.seq >= b.seq)) s->st = a, s->hslot = 0;
    else if (rb == KVIDX_OK) s->st = b, s->hslot = 1;
    else return ra == KVIDX_EVERSION || rb == KVIDX_EVERSION ? KVIDX_EVERSION : KVIDX_ECORRUPT;
    return KVIDX_OK;
}

/* Writes s->st (with the next seq) over the older copy, so the newer one
 * stays intact if this write tears; durable: msync before returning. */
static int vs_state_write(vs_shard *s, uint32_t shards, int durable) {
    uint8_t *p = s->vs->bmap + (s->hslot ? 0 : VS_STATE_SLOT);
    int r;
    s->st.seq++;
    vs_state_encode(p, s, shards, &s->st);
    s->hslot ^= 1;
    s->st_dirty = !durable;
    if (!durable) return KVIDX_OK;
    r = os_msync(p, VS_STATE_BYTES);
    return r ? vs_fail_sync(s) : KVIDX_OK;
}

/* Creates one file of a new shard: its header (hdr bytes of page), then
 * size bytes in all (sparse), synced. */
static int vs_create_file(int dirfd, const char *name, const uint8_t *page, uint32_t hdr,
                          uint64_t size) {
    int fd = os_open(dirfd, name, O_RDWR | O_CREAT | O_TRUNC, 0644), r;
    if (fd < 0) return os_rc(fd);
    r = os_pwrite(fd, page, hdr, 0);
    if (!r && size > hdr) r = os_ftruncate(fd, size);
    if (!r) r = os_fsync(fd);
    os_close(fd);
    return os_rc(r);
}

/* Creates the empty list log of generation gen of shard id. */
static int ls_create_log(kvidx *db, uint32_t id, uint32_t gen) {
    uint8_t page[LS_LOG_HDR];
    char name[32];
    memset(page, 0, sizeof page);
    vs_fhdr_encode(page, LS_MAGIC_L, id, db->nshards, gen);
    vs_hdr_seal(page);
    vs_name(name, sizeof name, id, gen, 'l');
    return vs_create_file(db->dirfd, name, page, LS_LOG_HDR, LS_LOG_HDR);
}

/* Creates the files of generation gen of shard id, empty. */
static int vs_create_shard(kvidx *db, uint32_t id, uint32_t gen) {
    uint8_t page[VS_PAGE];
    char name[32];
    vs_shard tmp;
    vs_state st = {1, 0, 0, 0, 0, 0};
    int rc;
    memset(&tmp, 0, sizeof tmp);
    tmp.id = id, tmp.gen = gen;
    memset(page, 0, sizeof page);
    vs_fhdr_encode(page, VS_MAGIC_K, id, db->nshards, gen);
    vs_hdr_seal(page);
    vs_name(name, sizeof name, id, gen, 'k');
    if ((rc = vs_create_file(db->dirfd, name, page, VS_PAGE, VS_PAGE))) return rc;
    vs_fhdr_encode(page, VS_MAGIC_V, id, db->nshards, gen);
    vs_hdr_seal(page);
    vs_name(name, sizeof name, id, gen, 'v');
    if ((rc = vs_create_file(db->dirfd, name, page, VS_PAGE, VS_PAGE))) return rc;
    if ((rc = ls_create_log(db, id, gen))) return rc;
    memset(page, 0, VS_STATE_BYTES);
    vs_state_encode(page, &tmp, db->nshards, &st);
    vs_name(name, sizeof name, id, gen, 'b');
    return vs_create_file(db->dirfd, name, page, VS_PAGE, VS_PAGE + VS_VSEC_BYTES);
}

/* Address of a value slot, given bsec, the section the buffer holds (a
 * reader loads it inside its read section): the buffer for that section,
 * else the read-only mapping of the value log. */
static const uint8_t *vs_slot_ptr(const vs_store *v, uint64_t bsec, uint32_t slot) {
    uint64_t sec = slot >> VS_SEC_SHIFT, in = (uint64_t)(slot & (VS_SEC_N - 1)) * VS_SLOT;
    if (sec == bsec) return v->bmap + VS_PAGE + in;
    return v->vmap[sec / VS_VMAP_SECS] + VS_PAGE + (sec % VS_VMAP_SECS) * VS_VSEC_BYTES + in;
}

/* Maps the value-log chunk holding section sec if it is not mapped yet.
 * A chunk is mapped at its full size even where the file is shorter:
 * only slots of written sections are ever read, and the addresses of a
 * chunk never change while the handle lives. */
static int vs_vmap_ensure(vs_store *v, int vfd, uint64_t sec) {
    uint64_t c = sec / VS_VMAP_SECS;
    int err = 0;
    if (v->vmap[c]) return KVIDX_OK;
    v->vmap[c] = os_mmap_huge(vfd, c * VS_VMAP_BYTES, VS_VMAP_MAP, &err);
    return v->vmap[c] ? KVIDX_OK : os_rc(err);
}

static vs_store *vs_store_new(void) {
    vs_store *v = os_calloc(1, sizeof *v);
    if (v && !(v->vmap = os_calloc(VS_VMAP_CHUNKS, sizeof *v->vmap))) {
        os_free(v);
        v = NULL;
    }
    return v;
}

/* Unmaps what store v maps and frees it. NULL is ignored. */
static void vs_store_free(vs_store *v) {
    uint32_t c;
    if (!v) return;
    os_munmap(v->bmap, VS_PAGE + VS_VSEC_BYTES);
    for (c = 0; c < VS_VMAP_CHUNKS; c++) os_munmap(v->vmap[c], VS_VMAP_MAP);
    os_free(v->vmap);
    os_free(v);
}

/* Reserves disk blocks so that [0, need) of an area that has reserved
 * *have bytes is backed, in steps growing from VS_ALLOC_MIN to max_step. */
static int vs_reserve(int fd, uint64_t base, uint64_t *have, uint64_t need, uint64_t max_step) {
    uint64_t to, step = *have < VS_ALLOC_MIN ? VS_ALLOC_MIN : *have < max_step ? *have : max_step;
    int r;
    if (need <= *have) return KVIDX_OK;
    to = (need + step - 1) / step * step;
    r = os_fallocate(fd, base + *have, to - *have);
    if (r) return os_rc(r);
    *have = to;
    return KVIDX_OK;
}

/* Writes the full buffer to its place in the value log and syncs it,
 * then records that the buffer holds the next section (durably, so that
 * its new values can never be taken for the old section's after a power
 * cut), and gives the buffer's blocks back to the file system. */
static int vs_flush(kvidx *db, vs_shard *s) {
    uint64_t bsec = s->vs->bsec, off = VS_PAGE + bsec * VS_VSEC_BYTES;
    int r = vs_vmap_ensure(s->vs, s->vfd, bsec);
    if (r) return r;
    r = os_pwrite(s->vfd, s->vs->bmap + VS_PAGE, VS_VSEC_BYTES, off);
    if (r == -EINVAL && s->vdirect) {
        /* The file system accepted O_DIRECT at open but refuses this
         * write: fall back to buffered IO for good. */
        r = os_set_direct(s->vfd, 0);
        if (!r) {
            s->vdirect = 0;
            db_log(db, "shard %u: O_DIRECT write refused, value log falls back to buffered IO",
                   (unsigned)s->id);
            r = os_pwrite(s->vfd, s->vs->bmap + VS_PAGE, VS_VSEC_BYTES, off);
        }
    }
    if (r) return vs_fail(s, os_rc(r)); /* nothing committed: the next try rewrites it all */
    if (os_fdatasync(s->vfd)) return vs_fail_sync(s);
    s->st.section = bsec + 1;
    r = vs_state_write(s, db->nshards, 1);
    if (r) return r;
    /* Readers find section bsec in the value log from now on. seq_cst
     * store: pairs with the seq_cst load of bsec in a read section (see
     * lr_arrive); then wait until every reader that may still copy from
     * the buffer as section bsec has left, before it is overwritten. */
    __atomic_store_n(&s->vs->bsec, bsec + 1, __ATOMIC_SEQ_CST);
    lr_wait_readers(s->lr);
    /* The buffer keeps its pages and blocks for the next section: the old
     * values in it are never read (readers only reach slots below
     * next_slot), recovery checks buffered values against their records,
     * and refilling touches no page fault and no allocation. Close gives
     * the unused part back (vs_trim). */
    s->flushes++;
    return KVIDX_OK;
}

/* Makes room for one record at kpos: maps its section, reserves disk. */
static int vs_key_room(vs_shard *s) {
    uint64_t sec = s->kpos >> VS_SEC_SHIFT;
    int err = 0;
    if (sec != s->ksec) {
        uint8_t *p = os_mmap(s->kfd, VS_PAGE + sec * VS_KSEC_BYTES, VS_KSEC_BYTES, 1, &err);
        if (!p) return vs_fail(s, os_rc(err));
        os_munmap(s->kmap, VS_KSEC_BYTES);
        s->kmap = p;
        s->ksec = sec;
    }
    return vs_fail(s, vs_reserve(s->kfd, VS_PAGE, &s->kalloc, (s->kpos + 1) * VS_REC,
                                 VS_KALLOC_STEP));
}

/* Makes room for one value at next_slot: flushes a full buffer, reserves. */
static int vs_value_room(kvidx *db, vs_shard *s) {
    int r;
    if (s->next_slot >= KVIDX_SLOT_LIMIT) return KVIDX_EFULL;
    if ((s->next_slot >> VS_SEC_SHIFT) != s->vs->bsec && (r = vs_flush(db, s))) return r;
    return vs_fail(s, vs_reserve(s->bfd, VS_PAGE, &s->balloc,
                                 ((s->next_slot & (VS_SEC_N - 1)) + 1) * VS_SLOT,
                                 VS_BALLOC_STEP));
}

/* Appends r to the key log (room was made). */
static void vs_append(vs_shard *s, const vs_rec *r) {
    uint8_t b[VS_REC];
    vs_rec_encode(b, r);
    memcpy(s->kmap + (s->kpos & (VS_SEC_N - 1)) * VS_REC, b, VS_REC);
    s->kpos++;
    s->wseq++;
}

static void vs_account(vs_shard *s, const lr_ent *old, int sign) {
    if (!old->used) return;
    if (old->slot != VS_NOSLOT) s->live_slots += (uint64_t)(int64_t)sign;
    s->value_bytes += (uint64_t)((int64_t)sign * old->len);
}

/* The write path of a put; the caller holds s->mu. */
static int vs_put(kvidx *db, vs_shard *s, uint64_t key, uint64_t h, const void *val, size_t len) {
    vs_rec r;
    lr_op op;
    lr_ent old;
    int rc;
    if (s->err) return s->err;
    if ((rc = lr_map_reserve(&s->map[0])) || (rc = lr_map_reserve(&s->map[1]))) return rc;
    if (len && (rc = vs_value_room(db, s))) return rc;
    if ((rc = vs_key_room(s))) return rc;
    r.key = key;
    r.len = (uint16_t)len;
    r.flags = 0;
    r.epoch = s->st.epoch;
    if (len) {
        uint8_t *dst = s->vs->bmap + VS_PAGE + (s->next_slot & (VS_SEC_N - 1)) * VS_SLOT;
        memcpy(dst, val, len);
        r.slot = (uint32_t)s->next_slot++;
        r.vsum = ck_value(dst, len); /* of the stored bytes: what reads verify */
    } else {
        r.slot = VS_NOSLOT;
        r.vsum = ck_value(NULL, 0);
    }
    vs_append(s, &r);
    memset(&op, 0, sizeof op);
    op.h = h;
    op.e.key = key, op.e.slot = r.slot, op.e.len = r.len, op.e.vsum = r.vsum, op.e.used = 1;
    lr_write(s->lr, s->map, &op, &old);
    vs_account(s, &old, -1);
    vs_account(s, &op.e, 1);
    s->puts++;
    return KVIDX_OK;
}

/* The write path of a delete; the caller holds s->mu. */
static int vs_del(vs_shard *s, uint64_t key, uint64_t h) {
    vs_rec r;
    lr_op op;
    lr_ent old = {0, 0, 0, 0, 0, 0};
    int rc;
    if (s->err) return s->err;
    /* The writer's own view: both maps agree between writes. */
    if (!lr_map_get(&s->map[s->lr->side], key, h)) return KVIDX_NOTFOUND;
    if ((rc = vs_key_room(s))) return rc;
    r.key = key, r.slot = VS_NOSLOT, r.len = 0, r.flags = VS_F_TOMB, r.vsum = 0;
    r.epoch = s->st.epoch;
    vs_append(s, &r);
    memset(&op, 0, sizeof op);
    op.del = 1, op.h = h, op.e.key = key;
    lr_write(s->lr, s->map, &op, &old);
    vs_account(s, &old, -1);
    s->deletes++;
    return KVIDX_OK;
}

/* Inside a read section: copies the value of e (found in the same
 * section, bsec loaded in it) into buf, which has room, and returns the
 * checksum of the copy; the caller compares it with e->vsum after
 * leaving the section: what it returns is exactly what was checked. */
static uint32_t vs_copy(const vs_store *v, uint64_t bsec, const lr_ent *e, void *buf) {
    return e->len ? ck_copy(buf, vs_slot_ptr(v, bsec, e->slot), e->len) : e->vsum;
}

/* Enters a read section of shard s: *side is the map to use, *v the
 * store its slots refer to, *bsec the section that store's buffer holds.
 * Wait-free; pair with lr_depart. */
static lr_slot *vs_read_begin(vs_shard *s, unsigned *side, const vs_store **v, uint64_t *bsec) {
    lr_slot *sl = lr_arrive(s->lr, side);
    /* acquire: rs[side] was stored before side was published (seq_cst),
     * and is not changed while a reader may be on that side. */
    *v = __atomic_load_n(&s->rs[*side], __ATOMIC_ACQUIRE);
    /* seq_cst: pairs with vs_flush's seq_cst store of bsec, like side in
     * lr_arrive: either the flush waits for us or we see its new bsec. */
    *bsec = __atomic_load_n(&(*v)->bsec, __ATOMIC_SEQ_CST);
    return sl;
}

/* Makes the shard's writes durable up to write number upto (s->wseq
 * after the caller's write; UINT64_MAX: every write so far): the files
 * written since the last sync (buffer with the values and the state, key
 * log, list log), then raises the durable prefixes in the state, which
 * the next sync of the buffer file persists (they only ever lag).
 * Group commit: one sync of a shard runs at a time (syncing); a caller
 * that finds one running waits for it and returns if it covered its write,
 * so writers with KVIDX_SYNC that arrive together share one fdatasync of
 * each file; else it runs the next one. The syncs run without the mutex
 * (writers go on) and under smu, which compaction and backup hold while
 * they swap or copy files. */
static int vs_sync_upto(kvidx *db, vs_shard *s, uint64_t upto) {
    uint64_t pos, lpos, ltrunc, seq;
    int r, sb, sk, sl;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if ((r = s->err)) break;
        if (upto != UINT64_MAX && s->dseq >= upto) { /* a sync covered it */
            r = 1;
            break;
        }
        if (!s->syncing) {
            if (s->kpos == s->durable && s->lpos == s->ldurable) r = 1; /* nothing new */
            break;
        }
        pthread_cond_wait(&s->sync_cv, &s->mu); /* a sync runs: it may cover us */
    }
    if (r) {
        pthread_mutex_unlock(&s->mu);
        return r < 0 ? r : KVIDX_OK;
    }
    s->syncing = 1;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&s->smu);
    pthread_mutex_lock(&s->mu);
    pos = s->kpos, lpos = s->lpos, ltrunc = s->ltrunc, seq = s->wseq;
    sk = pos != s->durable, sl = lpos != s->ldurable, sb = sk || s->st_dirty;
    pthread_mutex_unlock(&s->mu);
    r = sb ? os_fdatasync(s->bfd) : 0;
    if (!r && sk) r = os_fdatasync(s->kfd);
    if (!r && sl) r = os_fdatasync(s->lfd);
    pthread_mutex_lock(&s->mu);
    if (r) {
        r = vs_fail_sync(s);
    } else {
        int dirty = 0;
        if (sb) s->st_dirty = 0; /* the state as of before this sync is on disk */
        if (ltrunc != s->ltrunc) lpos = 0; /* the log was cut meanwhile: lpos is stale */
        if (pos > s->st.synced) s->st.synced = pos, dirty = 1;
        if (lpos > s->st.lsynced) s->st.lsynced = lpos, dirty = 1;
        if (dirty) vs_state_write(s, db->nshards, 0);
        if (pos > s->durable) s->durable = pos;
        if (lpos > s->ldurable) s->ldurable = lpos;
        if (seq > s->dseq) s->dseq = seq;
    }
    s->syncing = 0;
    pthread_cond_broadcast(&s->sync_cv);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->smu);
    return r;
}

static int vs_sync(kvidx *db, vs_shard *s) { return vs_sync_upto(db, s, UINT64_MAX); }

/* Checks a replayed record against what the log may hold at this point. */
static int vs_rec_sane(const vs_shard *s, const vs_rec *r, uint32_t prev_epoch,
                       uint64_t last_slot) {
    if (r->flags & ~VS_F_KNOWN) return 0;
    if (r->epoch < prev_epoch || r->epoch > s->st.epoch) return 0; /* stale or future */
    if (r->len > VS_SLOT) return 0;
    if (r->flags & VS_F_TOMB) return r->slot == VS_NOSLOT && r->len == 0;
    if (r->len == 0) return r->slot == VS_NOSLOT;
    return r->slot != VS_NOSLOT && r->slot < KVIDX_SLOT_LIMIT &&
           (last_slot == UINT64_MAX || r->slot > last_slot) &&
           (r->slot >> VS_SEC_SHIFT) <= s->vs->bsec;
}

/* Rebuilds the shard's table from its key log (newest record wins,
 * tombstones remove). Stops at the first record that fails its checksum
 * or its checks: inside the durable prefix that is KVIDX_ECORRUPT, after
 * it a torn tail. A record past the durable prefix whose value lives in
 * the buffer must also find its value intact (a power cut may have
 * persisted the record but not the value page). */
#define VS_REPLAY_BATCH 32u

static int vs_replay(vs_shard *s, uint64_t fsize, int rw) {
    const uint64_t chunk = 32768; /* records per read: 1 MiB */
    uint64_t nrec = (fsize - VS_PAGE) / VS_REC, pos = 0, last_slot = UINT64_MAX, i;
    uint32_t prev_epoch = 0;
    uint8_t *buf = os_malloc(chunk * VS_REC);
    int rc = KVIDX_OK, torn = 0;
    if (!buf) return KVIDX_ENOMEM;
    while (pos < nrec && !torn && !rc) {
        uint64_t n = nrec - pos < chunk ? nrec - pos : chunk;
        int r = os_pread(s->kfd, buf, n * VS_REC, VS_PAGE + pos * VS_REC);
        if (r) {
            rc = os_rc(r);
            break;
        }
        for (i = 0; i < n && !torn && !rc;) {
            /* Up to VS_REPLAY_BATCH records are checked, then their table
             * cells are prefetched together and the records applied in
             * order: the cache misses of a batch overlap. */
            vs_rec rec[VS_REPLAY_BATCH];
            uint64_t h[VS_REPLAY_BATCH];
            unsigned m = 0, j;
            lr_ht *t = &s->map[0].ht;
            for (; m < VS_REPLAY_BATCH && i < n; i++, m++) {
                vs_rec *rp = &rec[m];
                int ok = vs_rec_decode(buf + i * VS_REC, rp) && vs_rec_sane(s, rp, prev_epoch, last_slot);
                if (ok && rp->slot != VS_NOSLOT && pos + m >= s->st.synced &&
                    (rp->slot >> VS_SEC_SHIFT) == s->vs->bsec)
                    ok = ck_value(vs_slot_ptr(s->vs, s->vs->bsec, rp->slot), rp->len) == rp->vsum;
                if (!ok) {
                    if (pos + m < s->st.synced)
                        rc = vs_damage(s, "k", "a record inside the durable prefix fails its checks", "record",
                                       pos + m);
                    else torn = 1;
                    break;
                }
                prev_epoch = rp->epoch;
                if (rp->slot != VS_NOSLOT) last_slot = rp->slot;
                h[m] = ck_key(rp->key);
            }
            if (rc || (rc = lr_ht_fit(t, m))) break; /* damage: apply nothing more (and never
                                                       into a table without room) */
            for (j = 0; j < m; j++) __builtin_prefetch(&t->cell[lr_home(t, h[j])], 1);
            for (j = 0; j < m; j++) {
                lr_ent *c;
                if (rec[j].flags & VS_F_TOMB) {
                    if ((c = lr_ht_find(t, rec[j].key, h[j]))) lr_ht_remove(t, c);
                    continue;
                }
                c = lr_ht_cell(t, rec[j].key, h[j]);
                if (!c->used) t->n++;
                c->key = rec[j].key, c->slot = rec[j].slot, c->len = rec[j].len;
                c->vsum = rec[j].vsum, c->used = 1;
            }
            pos += m;
        }
    }
    if (!rc && pos < s->st.synced) /* the log is shorter than its durable prefix */
        rc = vs_damage(s, "k", "the log ends inside its durable prefix", "record", pos);
    if (!rc && rw && pos < nrec) {
        /* Clear the dropped tail so that no stale record survives past
         * the new end (the epoch check guards a power cut that undoes
         * this: records written after it carry a higher epoch). */
        uint64_t at = VS_PAGE + pos * VS_REC;
        memset(buf, 0, chunk * VS_REC);
        while (!rc && at < fsize) {
            uint64_t n = fsize - at < chunk * VS_REC ? fsize - at : chunk * VS_REC;
            rc = os_rc(os_pwrite(s->kfd, buf, n, at));
            at += n;
        }
    }
    os_free(buf);
    if (rc) return rc;
    s->kpos = pos;
    s->kalloc = 0; /* the first write reserves [0, end) again: a sparse copy lost it */
    s->next_slot = last_slot == UINT64_MAX ? 0 : last_slot + 1;
    if (s->next_slot < s->vs->bsec << VS_SEC_SHIFT) s->next_slot = s->vs->bsec << VS_SEC_SHIFT;
    for (i = 0; i < s->map[0].ht.cap; i++) {
        const lr_ent *e = &s->map[0].ht.cell[i];
        vs_account(s, e, 1);
    }
#ifdef KVIDX_BENCH_RWLOCK /* that benchmark build reads and writes map[0] only */
    return lr_map_build_trees(s->map, 1);
#else
    /* The second map starts as a copy of the first. */
    rc = lr_map_copy_table(&s->map[1], &s->map[0]);
    return rc ? rc : lr_map_build_trees(s->map, 2);
#endif
}

/* Opens a file of the shard; a missing file is damage, not absence. */
static int vs_open_file(kvidx *db, vs_shard *s, char ext, int rw, int *fd, uint64_t *size) {
    char name[32];
    struct stat st;
    vs_name(name, sizeof name, s->id, s->gen, ext);
    *fd = os_open(db->dirfd, name, rw ? O_RDWR : O_RDONLY, 0);
    if (*fd < 0) {
        char f[2] = {ext, 0};
        return *fd == -ENOENT ? vs_damage(s, f, "missing", NULL, 0) : os_rc(*fd);
    }
    if (fstat(*fd, &st)) return os_rc(-errno);
    *size = (uint64_t)st.st_size;
    return KVIDX_OK;
}

/* Reads and checks the header page of a .k or .v file. */
static int vs_check_fhdr(kvidx *db, vs_shard *s, int fd, uint64_t size, const char *magic) {
    uint8_t h[64];
    const char *f = magic == VS_MAGIC_K ? "k" : "v";
    int r;
    if (size < VS_PAGE) return vs_damage(s, f, "shorter than its header page", NULL, 0);
    r = os_pread(fd, h, sizeof h, 0);
    if (r) return os_rc(r);
    r = vs_fhdr_check(h, magic, s->id, db->nshards, s->gen);
    if (r == KVIDX_ECORRUPT) vs_damage(s, f, "header invalid (magic, checksum, format, shard or generation)", NULL, 0);
    return r;
}

/* The list store (section 6) opens, folds and frees its part of a shard. */
static int ls_open(kvidx *db, vs_shard *s, int rw);
static int ls_log_large(const vs_shard *s, int writing);
static int ls_snapshot(kvidx *db, vs_shard *s);
static void ls_release(vs_shard *s);

/* Opens shard s (id and gen set): maps the buffer, loads the state,
 * checks the value log, replays the key log; read-write handles then
 * start a new epoch. On error the caller releases what was set up. */
static int vs_open_files(kvidx *db, vs_shard *s) {
    int rw = !(db->flags & KVIDX_RDONLY), rc, err = 0;
    uint64_t bsize, vsize, ksize, need, sec;
    if ((rc = vs_open_file(db, s, 'b', rw, &s->bfd, &bsize))) return rc;
    if (bsize != VS_PAGE + VS_VSEC_BYTES) return vs_damage(s, "b", "size is not 4 KiB + 16 MiB", NULL, 0);
    s->vs->bmap = os_mmap(s->bfd, 0, bsize, rw, &err);
    if (!s->vs->bmap) return os_rc(err);
    if ((rc = vs_state_load(s, db->nshards)) == KVIDX_ECORRUPT)
        return vs_damage(s, "b", "neither copy of the shard state is valid", NULL, 0);
    if (rc) return rc;
    s->vs->bsec = s->st.section; /* no reader yet */

    if ((rc = vs_open_file(db, s, 'v', rw, &s->vfd, &vsize))) return rc;
    if ((rc = vs_check_fhdr(db, s, s->vfd, vsize, VS_MAGIC_V))) return rc;
    need = VS_PAGE + s->vs->bsec * VS_VSEC_BYTES;
    if (vsize < need) /* a section the state calls flushed is missing */
        return vs_damage(s, "v", "shorter than the sections the shard state says are in it", NULL, 0);
    if (rw && vsize > need && (rc = os_rc(os_ftruncate(s->vfd, need)))) return rc; /* an interrupted flush */
    for (sec = 0; sec < s->vs->bsec; sec += VS_VMAP_SECS)
        if ((rc = vs_vmap_ensure(s->vs, s->vfd, sec))) return rc;
    if (rw) {
        int r = os_set_direct(s->vfd, 1);
        s->vdirect = r == 0;
        if (r) db_log(db, "shard %u: O_DIRECT refused by the file system, value log uses buffered IO",
                      (unsigned)s->id);
    }

    if ((rc = vs_open_file(db, s, 'k', rw, &s->kfd, &ksize))) return rc;
    if ((rc = vs_check_fhdr(db, s, s->kfd, ksize, VS_MAGIC_K))) return rc;
    if ((rc = vs_replay(s, ksize, rw))) return rc;
    s->durable = s->st.synced;
    if ((rc = ls_open(db, s, rw))) return rc;
    if (rw) {
        /* A new epoch before any write of this handle: records it writes
         * can never be confused with stale ones of an earlier session. */
        if (s->st.epoch == UINT32_MAX) return KVIDX_EFULL;
        s->st.epoch++;
        if ((rc = vs_state_write(s, db->nshards, 1))) return rc;
        /* Fold a large log into a snapshot. A failure to write one loses
         * nothing (the log stays); a failure to cut the log after it is a
         * write error on the shard, and the open reports it. */
        if (ls_log_large(s, 0) && (rc = ls_snapshot(db, s))) {
            if (s->err) return rc;
            db_log(db, "shard %u: list snapshot at open failed: %s", (unsigned)s->id,
                   kvidx_strerror(rc));
        }
    }
    return KVIDX_OK;
}

/* Opens shard s (id and gen set); damage is logged with where it is. */
static int vs_open_shard(kvidx *db, vs_shard *s) {
    int rc = vs_open_files(db, s);
    if (rc == KVIDX_ECORRUPT && s->bad && s->bad_unit)
        db_log(db, "shard %u: damage: s%04u.%u.%s: %s (%s %llu)", (unsigned)s->id, (unsigned)s->id,
               (unsigned)s->gen, s->bad_file, s->bad, s->bad_unit, (unsigned long long)s->bad_at);
    else if (rc == KVIDX_ECORRUPT && s->bad)
        db_log(db, "shard %u: damage: s%04u.%u.%s: %s", (unsigned)s->id, (unsigned)s->id,
               (unsigned)s->gen, s->bad_file, s->bad);
    return rc;
}

/* Unmaps and closes whatever of s was set up; frees its map. */
static void vs_release_shard(vs_shard *s) {
    os_munmap(s->kmap, VS_KSEC_BYTES);
    vs_store_free(s->vs);
    s->vs = s->rs[0] = s->rs[1] = NULL;
    os_close(s->kfd);
    os_close(s->vfd);
    os_close(s->bfd);
    lr_map_free(&s->map[0]);
    lr_map_free(&s->map[1]);
    ls_release(s);
    lr_ctl_free(s->lr);
    s->lr = NULL;
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->smu);
    pthread_cond_destroy(&s->sync_cv);
    s->kmap = NULL;
    s->kfd = s->vfd = s->bfd = -1;
}

/* ======================================================================
 * 6. List store (ls_)
 *
 * A list (a sorted set of distinct ids under a key) is a B+tree of
 * immutable nodes: leaves hold up to KVIDX_LS_LEAF ids compressed as
 * offsets from their first id in 1..8 bytes each (frame of reference),
 * inner nodes hold up to KVIDX_LS_FAN children with each child's first
 * id and the count of ids below. A shard's lists hang off one more tree
 * of the same shape, the key index: its leaves hold (list key, list
 * root) pairs.
 *
 * Readers and writers: the structure is copy-on-write. A change builds
 * new nodes for the path it touches (a leaf and its ancestors; nodes it
 * does not touch are shared by old and new versions), publishes them
 * with one atomic store (a new root of the key index, or a list's new
 * root in its key-leaf cell), waits until every reader that could hold
 * an old node has left (lr_wait_readers: the shard's Left-Right grace
 * period, same indicators as the value maps), then frees the replaced
 * nodes. So both sides of the shard see one copy of every list: no list
 * body is stored twice. Readers arrive and depart like value readers and
 * never wait. Only the shard's writer (under its mutex) changes anything.
 *
 * On disk (docs/FORMAT.md): sNNNN.g.l, the list log, one checksummed
 * record per change (op, sequence number, key, ids delta-encoded as
 * varints), appended with pwrite: in the page cache before the call
 * returns, so it survives kill -9; and sNNNN.g.ls, the snapshot (keys
 * ascending, each list's count and ids as varints), written to a
 * temporary, synced and renamed into place, after which the log is
 * truncated. Open loads the snapshot, replays the log records after it,
 * and drops a torn tail.
 * ====================================================================== */

enum { LS_IDS, LS_KEYS, LS_INNER };

typedef struct ls_node {
    uint16_t n;     /* ids (LS_IDS), lists (LS_KEYS) or children (LS_INNER) */
    uint8_t kind;   /* LS_IDS, LS_KEYS, LS_INNER */
    uint8_t width;  /* LS_IDS: bytes per id offset, 1..8 */
    uint32_t pad;
    uint64_t x;     /* LS_IDS: the first id; LS_INNER: ids (or lists) below */
    uint64_t u[];   /* LS_IDS: n - 1 offsets from x, little-endian, width
                       bytes each, then 7 zero bytes (offsets are read 8
                       bytes at a time); LS_KEYS, LS_INNER: key[n] (LS_INNER:
                       the first key below each child), then ptr[n] */
} ls_node;

/* A vector of (key, value) pairs: children being assembled, or nodes. */
typedef struct ls_vec {
    uint64_t *k, *v;
    size_t n, cap;
} ls_vec;

/* One change in the making: the nodes it made (freed if it fails) and
 * the nodes it replaces (freed once it is published and readers left). */
typedef struct ls_ctx {
    vs_shard *s;
    ls_vec fresh;
    ls_vec old;
    ls_node *old_tree; /* a whole list the change drops (put, delete) */
} ls_ctx;

#define LS_PTR(v) ((ls_node *)(uintptr_t)(v))
#define LS_VAL(p) ((uint64_t)(uintptr_t)(p))
#define LS_REC_HDR 32u  /* a list log record's fixed part; 8 checksum bytes follow the ids */

enum { LS_OP_PUT = 1, LS_OP_ADD = 2, LS_OP_REMOVE = 3, LS_OP_DELETE = 4 };

static ls_node *ls_ptr(const ls_node *nd, unsigned i) { return LS_PTR(nd->u[nd->n + i]); }

/* A list root from a key leaf: the writer changes these cells in place. */
static ls_node *ls_root_at(const ls_node *nd, unsigned i) {
    return LS_PTR(__atomic_load_n(&nd->u[nd->n + i], __ATOMIC_ACQUIRE));
}

static uint64_t ls_count(const ls_node *nd) { return nd->kind == LS_INNER ? nd->x : nd->n; }

static size_t ls_size(unsigned kind, unsigned n, unsigned width) {
    if (kind == LS_IDS) return sizeof(ls_node) + (n > 1 ? (size_t)(n - 1) * width + 7 : 0);
    return sizeof(ls_node) + (size_t)n * 16;
}

/* What the allocator hands out for a request of sz bytes (glibc: 8 bytes
 * of header, 16-byte granules, 32 at least): the RAM a node costs. */
static uint64_t ls_ram(size_t sz) {
    sz = (sz + 8 + 15) & ~(size_t)15;
    return sz < 32 ? 32 : sz;
}

static uint64_t ls_mask(unsigned w) { return w >= 8 ? UINT64_MAX : (UINT64_C(1) << (8 * w)) - 1; }

/* Id i of leaf nd. */
static uint64_t ls_id(const ls_node *nd, unsigned i) {
    if (i == 0) return nd->x;
    return nd->x + (get_le64((const uint8_t *)nd->u + (size_t)(i - 1) * nd->width) & ls_mask(nd->width));
}

static unsigned ls_decode(const ls_node *nd, uint64_t *out) {
    const uint8_t *p = (const uint8_t *)nd->u;
    uint64_t m = ls_mask(nd->width);
    unsigned i, w = nd->width;
    out[0] = nd->x;
    for (i = 1; i < nd->n; i++, p += w) out[i] = nd->x + (get_le64(p) & m);
    return nd->n;
}

/* First position in leaf nd whose id is >= x (nd->n if none). */
static unsigned ls_lower(const ls_node *nd, uint64_t x) {
    unsigned lo = 0, hi = nd->n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (ls_id(nd, mid) < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Number of keys of the pair node nd that are <= x. */
static unsigned ls_upper(const ls_node *nd, uint64_t x) {
    unsigned lo = 0, hi = nd->n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (nd->u[mid] <= x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The child of inner node nd to look for x in (the first if x is below
 * them all). */
static unsigned ls_child(const ls_node *nd, uint64_t x) {
    unsigned i = ls_upper(nd, x);
    return i ? i - 1 : 0;
}

/* ---- reading (inside a read section, or by the writer) --------------- */

/* The root of list key in the key index idx, or NULL; *cell receives the
 * key-leaf cell holding it (writer only). */
static ls_node *ls_find(const ls_node *idx, uint64_t key, uint64_t **cell) {
    const ls_node *nd = idx;
    while (nd) {
        unsigned i = ls_upper(nd, key);
        if (nd->kind == LS_KEYS) {
            if (!i || nd->u[i - 1] != key) return NULL;
            if (cell) *cell = (uint64_t *)&nd->u[nd->n + i - 1];
            return ls_root_at(nd, i - 1);
        }
        if (!i) return NULL;
        nd = ls_ptr(nd, i - 1);
    }
    return NULL;
}

/* 1 if list root holds id. */
static int ls_has(const ls_node *root, uint64_t id) {
    const ls_node *nd = root;
    unsigned i;
    while (nd->kind == LS_INNER) nd = ls_ptr(nd, ls_child(nd, id));
    i = ls_lower(nd, id);
    return i < nd->n && ls_id(nd, i) == id;
}

/* The leaf of the tree at nd where keys (ids) >= from begin; *next
 * receives the first key of the leaf after it, *more whether there is one.
 * Leaves are found from the root: no sibling links to keep. */
static const ls_node *ls_leaf_for(const ls_node *nd, uint64_t from, uint64_t *next, int *more) {
    *more = 0;
    while (nd->kind == LS_INNER) {
        unsigned i = ls_child(nd, from);
        if (i + 1 < nd->n) *more = 1, *next = nd->u[i + 1]; /* the deepest is the nearest */
        nd = ls_ptr(nd, i);
    }
    return nd;
}

/* Copies up to cap ids >= from of list root into out; returns how many. */
static size_t ls_page(const ls_node *root, uint64_t from, uint64_t *out, size_t cap) {
    size_t got = 0;
    while (got < cap) {
        uint64_t next = 0;
        int more;
        const ls_node *nd = ls_leaf_for(root, from, &next, &more);
        unsigned i;
        for (i = ls_lower(nd, from); i < nd->n && got < cap; i++) out[got++] = ls_id(nd, i);
        if (got == cap || !more) break;
        from = next;
    }
    return got;
}

/* Copies up to max (key, count) pairs of lists with keys in [from, to]
 * from key index idx; returns how many. */
static size_t ls_collect(const ls_node *idx, uint64_t from, uint64_t to, uint64_t *keys,
                         uint64_t *counts, size_t max) {
    size_t n = 0;
    while (idx && n < max) {
        uint64_t next = 0;
        int more;
        const ls_node *nd = ls_leaf_for(idx, from, &next, &more);
        unsigned i;
        for (i = from ? ls_upper(nd, from - 1) : 0; i < nd->n && n < max; i++) {
            if (nd->u[i] > to) return n;
            keys[n] = nd->u[i];
            counts[n++] = ls_count(ls_root_at(nd, i));
        }
        if (n == max || !more || next > to) break;
        from = next;
    }
    return n;
}

/* ---- building and changing (the shard's writer) ----------------------- */

static void ls_vec_free(ls_vec *v) {
    os_free(v->k);
    os_free(v->v);
    memset(v, 0, sizeof *v);
}

static int ls_vec_push(ls_vec *v, uint64_t k, uint64_t val) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        uint64_t *nk = os_malloc(cap * sizeof *nk), *nv = os_malloc(cap * sizeof *nv);
        if (!nk || !nv) {
            os_free(nk);
            os_free(nv);
            return KVIDX_ENOMEM;
        }
        if (v->n) {
            memcpy(nk, v->k, v->n * sizeof *nk);
            memcpy(nv, v->v, v->n * sizeof *nv);
        }
        os_free(v->k);
        os_free(v->v);
        v->k = nk, v->v = nv, v->cap = cap;
    }
    v->k[v->n] = k;
    v->v[v->n++] = val;
    return KVIDX_OK;
}

static void ls_node_free(vs_shard *s, ls_node *nd) {
    s->lbytes -= ls_ram(ls_size(nd->kind, nd->n, nd->width));
    os_free(nd);
}

/* Frees a whole tree: a list, or the key index with its lists. */
static void ls_tree_free(vs_shard *s, ls_node *nd) {
    unsigned i;
    if (!nd) return;
    if (nd->kind != LS_IDS)
        for (i = 0; i < nd->n; i++) ls_tree_free(s, ls_ptr(nd, i));
    ls_node_free(s, nd);
}

static ls_node *ls_alloc(ls_ctx *cx, unsigned kind, unsigned n, unsigned width) {
    size_t sz = ls_size(kind, n, width);
    ls_node *nd = os_malloc(sz);
    if (!nd) return NULL;
    if (ls_vec_push(&cx->fresh, 0, LS_VAL(nd))) {
        os_free(nd);
        return NULL;
    }
    cx->s->lbytes += ls_ram(sz);
    nd->n = (uint16_t)n, nd->kind = (uint8_t)kind, nd->width = (uint8_t)width, nd->pad = 0;
    return nd;
}

/* Node nd is replaced by the change. */
static int ls_retire(ls_ctx *cx, const ls_node *nd) { return ls_vec_push(&cx->old, 0, LS_VAL(nd)); }

/* Ready for the next change; the vectors keep their room unless large. */
static void ls_ctx_reset(ls_ctx *cx) {
    if (cx->fresh.cap > 4096) ls_vec_free(&cx->fresh);
    if (cx->old.cap > 4096) ls_vec_free(&cx->old);
    cx->fresh.n = cx->old.n = 0;
    cx->old_tree = NULL;
}

/* The change failed: frees what it made; the old version is untouched. */
static void ls_abort(ls_ctx *cx) {
    size_t i;
    for (i = 0; i < cx->fresh.n; i++) ls_node_free(cx->s, LS_PTR(cx->fresh.v[i]));
    ls_ctx_reset(cx);
}

/* The change is published and no reader can hold what it replaced. */
static void ls_commit(ls_ctx *cx) {
    size_t i;
    for (i = 0; i < cx->old.n; i++) ls_node_free(cx->s, LS_PTR(cx->old.v[i]));
    ls_tree_free(cx->s, cx->old_tree);
    ls_ctx_reset(cx);
}

/* A leaf of ids[0, n) (ascending, 1 <= n <= KVIDX_LS_LEAF), appended to
 * out as (first id, node). Each offset is stored with an 8-byte write
 * that the next one partly overwrites: the slack takes the last. */
static int ls_leaf(ls_ctx *cx, const uint64_t *ids, size_t n, ls_vec *out) {
    uint64_t span = ids[n - 1] - ids[0];
    unsigned w = 1;
    size_t i;
    ls_node *nd;
    uint8_t *p;
    while (w < 8 && (span >> (8 * w))) w++;
    nd = ls_alloc(cx, LS_IDS, (unsigned)n, w);
    if (!nd) return KVIDX_ENOMEM;
    nd->x = ids[0];
    p = (uint8_t *)nd->u;
    if (n > 1) memset(p + (n - 1) * w, 0, 7);
    for (i = 1; i < n; i++) put_le64(p + (i - 1) * w, ids[i] - ids[0]);
    return ls_vec_push(out, ids[0], LS_VAL(nd));
}

/* The fewest leaves for ids[0, n), filled evenly. */
static int ls_leaves(ls_ctx *cx, const uint64_t *ids, size_t n, ls_vec *out) {
    size_t k = (n + KVIDX_LS_LEAF - 1) / KVIDX_LS_LEAF, i, at = 0;
    int rc = KVIDX_OK;
    for (i = 0; i < k && !rc; i++) {
        size_t take = n / k + (i < n % k);
        rc = ls_leaf(cx, ids + at, take, out);
        at += take;
    }
    return rc;
}

/* The fewest nodes of kind (LS_KEYS or LS_INNER) for the pairs
 * k[0, n), v[0, n), filled evenly, appended to out. */
static int ls_pairs(ls_ctx *cx, unsigned kind, const uint64_t *k, const uint64_t *v, size_t n,
                    ls_vec *out) {
    size_t cnt = (n + KVIDX_LS_FAN - 1) / KVIDX_LS_FAN, i, j, at = 0;
    for (i = 0; i < cnt; i++) {
        size_t take = n / cnt + (i < n % cnt);
        ls_node *nd = ls_alloc(cx, kind, (unsigned)take, 0);
        uint64_t below = 0;
        if (!nd) return KVIDX_ENOMEM;
        memcpy(nd->u, k + at, take * sizeof *k);
        memcpy(nd->u + take, v + at, take * sizeof *v);
        for (j = 0; kind == LS_INNER && j < take; j++) below += ls_count(LS_PTR(v[at + j]));
        nd->x = kind == LS_INNER ? below : take;
        if (ls_vec_push(out, k[at], LS_VAL(nd))) return KVIDX_ENOMEM;
        at += take;
    }
    return KVIDX_OK;
}

/* Makes one root of the nodes in v (all of one height): adds levels
 * while there are several, drops a root with a single child. *root is
 * NULL when v is empty. Empties v. */
static int ls_top(ls_ctx *cx, ls_vec *v, ls_node **root) {
    int rc = KVIDX_OK;
    while (v->n > 1 && !rc) {
        ls_vec up = {0, 0, 0, 0};
        rc = ls_pairs(cx, LS_INNER, v->k, v->v, v->n, &up);
        ls_vec_free(v);
        *v = up;
    }
    *root = v->n ? LS_PTR(v->v[0]) : NULL;
    while (!rc && *root && (*root)->kind == LS_INNER && (*root)->n == 1) {
        ls_node *only = ls_ptr(*root, 0);
        rc = ls_retire(cx, *root); /* a fresh node: retired, it is freed at commit */
        *root = only;
    }
    ls_vec_free(v);
    return rc;
}

/* A list of ids[0, n) (ascending, distinct, n >= 1). */
static int ls_build(ls_ctx *cx, const uint64_t *ids, size_t n, ls_node **root) {
    ls_vec v = {0, 0, 0, 0};
    int rc = ls_leaves(cx, ids, n, &v);
    if (rc) {
        ls_vec_free(&v);
        return rc;
    }
    return ls_top(cx, &v, root);
}

/* Below this many entries a node is merged with a neighbour after a
 * removal, so that removals give memory back. */
static unsigned ls_min(unsigned kind) {
    return kind == LS_IDS ? KVIDX_LS_LEAF / 4 : KVIDX_LS_FAN / 4;
}

/* Replaces the neighbours v[i], v[i + 1] (same kind and height) by the
 * one or two nodes holding their entries. */
static int ls_merge(ls_ctx *cx, ls_vec *v, size_t i) {
    ls_node *a = LS_PTR(v->v[i]), *b = LS_PTR(v->v[i + 1]);
    ls_vec m = {0, 0, 0, 0};
    size_t j;
    int rc;
    if ((rc = ls_retire(cx, a)) || (rc = ls_retire(cx, b))) return rc;
    if (a->kind == LS_IDS) {
        uint64_t ids[2 * KVIDX_LS_LEAF];
        unsigned n = ls_decode(a, ids);
        n += ls_decode(b, ids + n);
        rc = ls_leaves(cx, ids, n, &m);
    } else {
        uint64_t k[2 * KVIDX_LS_FAN], val[2 * KVIDX_LS_FAN];
        for (j = 0; j < a->n; j++) k[j] = a->u[j], val[j] = a->u[a->n + j];
        for (j = 0; j < b->n; j++) k[a->n + j] = b->u[j], val[a->n + j] = b->u[b->n + j];
        rc = ls_pairs(cx, a->kind, k, val, (size_t)a->n + b->n, &m);
    }
    if (!rc) {
        /* m holds one or two nodes: put them where a and b were. */
        v->k[i] = m.k[0], v->v[i] = m.v[0];
        if (m.n == 2) {
            v->k[i + 1] = m.k[1], v->v[i + 1] = m.v[1];
        } else {
            memmove(v->k + i + 1, v->k + i + 2, (v->n - i - 2) * sizeof *v->k);
            memmove(v->v + i + 1, v->v + i + 2, (v->n - i - 2) * sizeof *v->v);
            v->n--;
        }
    }
    ls_vec_free(&m);
    return rc;
}

/* The children kv of a changed inner node, which the change retires:
 * after a removal, small children are merged with a neighbour; then the
 * children are spread over the fewest inner nodes, appended to out. */
static int ls_finish(ls_ctx *cx, const ls_node *nd, ls_vec *kv, int shrank, ls_vec *out) {
    int rc = ls_retire(cx, nd);
    size_t i = 0;
    while (!rc && shrank && i < kv->n && kv->n > 1) {
        const ls_node *c = LS_PTR(kv->v[i]);
        if (c->n >= ls_min(c->kind)) {
            i++;
            continue;
        }
        rc = ls_merge(cx, kv, i + 1 < kv->n ? i : i - 1);
        if (i == kv->n) i--; /* merged into its left neighbour: check that */
    }
    if (!rc && kv->n) rc = ls_pairs(cx, LS_INNER, kv->k, kv->v, kv->n, out);
    return rc;
}

/* Adds (add) or removes the ascending distinct ids b[0, nb) in the
 * subtree nd: appends to out the nodes replacing nd, at nd's height (nd
 * itself if nothing changed), and adds to *changed the ids added or
 * removed. */
static int ls_edit(ls_ctx *cx, ls_node *nd, const uint64_t *b, size_t nb, int add, int last,
                   ls_vec *out, size_t *changed) {
    int rc = KVIDX_OK;
    if (nd->kind == LS_IDS) {
        uint64_t have[KVIDX_LS_LEAF], stack[2 * KVIDX_LS_LEAF], *m = stack;
        unsigned n = ls_decode(nd, have), i = 0;
        size_t j = 0, k = 0;
        if (add && last && n == KVIDX_LS_LEAF && b[0] > have[n - 1]) {
            /* Ids past the list's last leaf, full (ascending arrivals):
             * keep the leaf, start new ones, so leaves stay full. Not for
             * a leaf with a successor: ids arriving in descending order
             * would leave a trail of one-id leaves behind it. */
            *changed += nb;
            rc = ls_vec_push(out, nd->x, LS_VAL(nd));
            return rc ? rc : ls_leaves(cx, b, nb, out);
        }
        if (add && n + nb > 2 * KVIDX_LS_LEAF && !(m = os_malloc((n + nb) * sizeof *m)))
            return KVIDX_ENOMEM;
        if (add) {
            while (i < n || j < nb) {
                if (j == nb || (i < n && have[i] < b[j])) m[k++] = have[i++];
                else if (i == n || b[j] < have[i]) m[k++] = b[j++];
                else m[k++] = have[i++], j++;
            }
        } else {
            for (; i < n; i++) {
                while (j < nb && b[j] < have[i]) j++;
                if (j == nb || b[j] != have[i]) m[k++] = have[i];
            }
        }
        if (k == n) {
            rc = ls_vec_push(out, nd->x, LS_VAL(nd)); /* no change */
        } else {
            *changed += add ? k - n : n - k;
            rc = ls_retire(cx, nd);
            if (!rc && k) rc = ls_leaves(cx, m, k, out);
        }
        if (m != stack) os_free(m);
        return rc;
    }
    {
        ls_vec kv = {0, 0, 0, 0};
        size_t lo = 0, before = *changed;
        unsigned i;
        for (i = 0; i < nd->n && !rc; i++) {
            size_t hi = nb;
            if (i + 1 < nd->n) { /* the ids below the next child's first */
                size_t a = lo, z = nb;
                while (a < z) {
                    size_t mid = a + (z - a) / 2;
                    if (b[mid] < nd->u[i + 1]) a = mid + 1;
                    else z = mid;
                }
                hi = a;
            }
            if (hi == lo) rc = ls_vec_push(&kv, nd->u[i], nd->u[nd->n + i]);
            else rc = ls_edit(cx, ls_ptr(nd, i), b + lo, hi - lo, add, last && i + 1 == nd->n, &kv,
                              changed);
            lo = hi;
        }
        if (!rc) {
            if (*changed == before) rc = ls_vec_push(out, nd->u[0], LS_VAL(nd));
            else rc = ls_finish(cx, nd, &kv, !add, out);
        }
        ls_vec_free(&kv);
        return rc;
    }
}

/* Inserts (root != NULL) the absent list key, or removes the present
 * one, in the key-index subtree nd, appending its replacements to out. */
static int ls_edit_key(ls_ctx *cx, const ls_node *nd, uint64_t key, const ls_node *root,
                       ls_vec *out) {
    ls_vec kv = {0, 0, 0, 0};
    unsigned i;
    int rc = KVIDX_OK;
    if (nd->kind == LS_KEYS) {
        unsigned pos = key ? ls_upper(nd, key - 1) : 0; /* keys below key */
        for (i = 0; i < nd->n && !rc; i++) {
            if (i == pos) {
                if (!root) continue; /* the key removed */
                rc = ls_vec_push(&kv, key, LS_VAL(root));
            }
            if (!rc) rc = ls_vec_push(&kv, nd->u[i], nd->u[nd->n + i]);
        }
        if (!rc && root && pos == nd->n) rc = ls_vec_push(&kv, key, LS_VAL(root));
        if (!rc) rc = ls_retire(cx, nd);
        if (!rc && kv.n) rc = ls_pairs(cx, LS_KEYS, kv.k, kv.v, kv.n, out);
    } else {
        unsigned at = ls_child(nd, key);
        for (i = 0; i < nd->n && !rc; i++) {
            if (i == at) rc = ls_edit_key(cx, ls_ptr(nd, i), key, root, &kv);
            else rc = ls_vec_push(&kv, nd->u[i], nd->u[nd->n + i]);
        }
        if (!rc) rc = ls_finish(cx, nd, &kv, !root, out);
    }
    ls_vec_free(&kv);
    return rc;
}

/* One change to shard s's lists: op with the ascending distinct ids
 * b[0, nb) (LS_OP_PUT: nb >= 1). The caller holds s->mu, or is the open
 * (log == 0: replaying, no reader yet). With log, the change is appended
 * to the list log before it is published. *changed: ids added (add, put),
 * removed (remove, delete). KVIDX_NOTFOUND: remove or delete of a list
 * that does not exist. On error nothing changed. */
static int ls_apply(vs_shard *s, unsigned op, uint64_t key, const uint64_t *b,
                    size_t nb, size_t *changed, int log);

static void ls_name(char *buf, size_t n, const vs_shard *s, const char *ext) {
    snprintf(buf, n, "s%04u.%u.%s", (unsigned)s->id, (unsigned)s->gen, ext);
}

/* ---- varints: 7 bits a byte, low bits first, high bit = more follow;
 * the ninth byte, if reached, holds the last 8 bits whole, so no value
 * takes more than 9 bytes (as SQLite's varints, low bits first). ------ */

static size_t ls_put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    while (n < 8 && v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v; /* n == 9: v < 256 after 56 bits */
    return n;
}

/* Reads a varint at *p (before end); 0 if truncated. */
static int ls_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    unsigned i;
    for (i = 0; i < 9 && *p < end; i++) {
        uint8_t c = *(*p)++;
        if (i == 8) {
            *v = x | (uint64_t)c << 56;
            return 1;
        }
        x |= (uint64_t)(c & 0x7F) << (7 * i);
        if (!(c & 0x80)) {
            *v = x;
            return 1;
        }
    }
    return 0;
}

/* Ascending distinct ids as varints: the first id, then each gap - 1. */
static size_t ls_put_ids(uint8_t *p, const uint64_t *ids, size_t n) {
    size_t at = 0, i;
    for (i = 0; i < n; i++) at += ls_put_varint(p + at, i ? ids[i] - ids[i - 1] - 1 : ids[0]);
    return at;
}

/* Decodes n ids encoded by ls_put_ids; 0 if malformed. */
static int ls_get_ids(const uint8_t **p, const uint8_t *end, uint64_t *ids, size_t n) {
    size_t i;
    uint64_t v;
    for (i = 0; i < n; i++) {
        if (!ls_get_varint(p, end, &v)) return 0;
        if (!i) {
            ids[0] = v;
        } else {
            if (v >= UINT64_MAX - ids[i - 1]) return 0; /* past UINT64_MAX */
            ids[i] = ids[i - 1] + v + 1;
        }
    }
    return 1;
}

/* Makes room for n ids in *ids (*cap of them); the old contents go. */
static int ls_ids_room(uint64_t **ids, uint64_t *cap, uint64_t n) {
    if (n <= *cap) return KVIDX_OK;
    os_free(*ids);
    *cap = n < 1024 ? 1024 : n;
    if (!(*ids = os_malloc(*cap * sizeof **ids))) {
        *cap = 0;
        return KVIDX_ENOMEM;
    }
    return KVIDX_OK;
}

/* Grows the shard's scratch buffer to n bytes. */
#define LS_SCRATCH_KEEP ((size_t)1 << 20) /* a larger record buffer is freed after use */
static int ls_scratch(vs_shard *s, size_t n) {
    uint8_t *p;
    if (n <= s->lbuf_cap) return KVIDX_OK;
    if (!(p = os_malloc(n))) return KVIDX_ENOMEM;
    os_free(s->lbuf);
    s->lbuf = p;
    s->lbuf_cap = n;
    return KVIDX_OK;
}

/* ---- the list log -------------------------------------------------------
 *   0  u32  L: bytes of ids
 *   4  u8   op (LS_OP_*)      5 u8 flags (0)      6 u16 reserved (0)
 *   8  u64  lsn: 1, 2, 3 ... over the shard's list changes
 *  16  u64  key
 *  24  u64  n: ids
 *  32  L    ids (ls_put_ids)
 * 32+L u64  XXH3-64 of bytes [0, 32 + L), seeded */

static int ls_log_append(vs_shard *s, unsigned op, uint64_t key, const uint64_t *ids, size_t n) {
    uint8_t *p;
    size_t len;
    int r = ls_scratch(s, LS_REC_HDR + n * 9 + 8);
    if (r) return r;
    p = s->lbuf;
    len = ls_put_ids(p + LS_REC_HDR, ids, n);
    put_le32(p, (uint32_t)len);
    p[4] = (uint8_t)op, p[5] = 0;
    put_le16(p + 6, 0);
    put_le64(p + 8, s->lsn + 1);
    put_le64(p + 16, key);
    put_le64(p + 24, n);
    put_le64(p + LS_REC_HDR + len, ck_seeded(p, LS_REC_HDR + len, CK_SEED_LREC));
    r = os_pwrite(s->lfd, p, LS_REC_HDR + len + 8, s->lpos);
    if (s->lbuf_cap > LS_SCRATCH_KEEP) { /* one big put does not pin its buffer */
        os_free(s->lbuf);
        s->lbuf = NULL, s->lbuf_cap = 0;
    }
    if (r) return vs_fail(s, os_rc(r)); /* the next record overwrites a partial one */
    s->lpos += LS_REC_HDR + len + 8;
    s->lsn++;
    s->wseq++;
    return KVIDX_OK;
}

/* Empties the list log (everything in it is in the snapshot): first the
 * durable mark comes down (durably), then the file is cut and synced, so
 * that no sync can vouch for bytes that are gone. */
static int ls_log_cut(kvidx *db, vs_shard *s, uint64_t to) {
    int r;
    if (s->st.lsynced > to) {
        s->st.lsynced = to;
        if ((r = vs_state_write(s, db->nshards, 1))) return r;
    }
    s->ltrunc++; /* a sync in flight must not raise the mark for the old bytes */
    r = os_ftruncate(s->lfd, to);
    if (!r) r = os_fsync(s->lfd);
    if (r) return vs_fail_sync(s); /* the log's state on disk is unknown: stop writing */
    s->lpos = s->ldurable = to;
    return KVIDX_OK;
}

/* Replays the list log (mapped at m, fsize bytes) over the snapshot,
 * which holds changes up to snap_lsn. Records must follow each other
 * (lsn + 1); those up to snap_lsn are skipped. Replay stops at the first
 * record that fails a check: before the durable mark that is damage
 * (KVIDX_ECORRUPT), after it a torn tail, dropped (and cut off when rw). */
static int ls_replay(kvidx *db, vs_shard *s, const uint8_t *m, uint64_t fsize, uint64_t snap_lsn,
                     int rw) {
    uint64_t pos = LS_LOG_HDR, prev = 0, applied = 0, *ids = NULL, ids_cap = 0;
    int rc = KVIDX_OK;
    while (pos < fsize && !rc) {
        const uint8_t *p = m + pos, *q, *end;
        uint64_t len, lsn, key, n, left = fsize - pos;
        size_t changed;
        unsigned op;
        if (left < LS_REC_HDR + 8) break;
        len = get_le32(p), op = p[4], lsn = get_le64(p + 8), key = get_le64(p + 16), n = get_le64(p + 24);
        if (len > left - LS_REC_HDR - 8 || op < LS_OP_PUT || op > LS_OP_DELETE || p[5] ||
            get_le16(p + 6) || get_le64(p + LS_REC_HDR + len) != ck_seeded(p, LS_REC_HDR + len, CK_SEED_LREC))
            break;
        if (lsn == 0 || (prev ? lsn != prev + 1 : lsn > snap_lsn + 1)) break; /* stale or missing */
        if (op == LS_OP_DELETE ? (n || len) : (!n || n > len)) break;
        if ((ck_key(key) & (db->nshards - 1)) != s->id) { /* whole, but not this shard's */
            rc = vs_damage(s, "l", "a whole record holds a key of another shard", "byte", pos);
            break;
        }
        if ((rc = ls_ids_room(&ids, &ids_cap, n))) break;
        q = p + LS_REC_HDR, end = q + len;
        if (!ls_get_ids(&q, end, ids, n) || q != end) break;
        if (lsn > snap_lsn) {
            rc = ls_apply(s, op, key, ids, n, &changed, 0);
            if (rc == KVIDX_NOTFOUND) /* the log disagrees with itself */
                rc = vs_damage(s, "l", "a record removes from a list that does not exist", "byte", pos);
            applied++;
        }
        prev = lsn;
        pos += LS_REC_HDR + len + 8;
    }
    os_free(ids);
    if (rc) return rc;
    if (pos < s->st.lsynced) /* damage where the log was durable */
        return vs_damage(s, "l", "a record inside the durable prefix fails its checks", "byte", pos);
    s->lsn = prev > snap_lsn ? prev : snap_lsn;
    s->lpos = pos;
    s->ldurable = s->st.lsynced;
    if (!rw) return KVIDX_OK;
    /* A log whose records the snapshot all holds starts over empty (its
     * next record, snap_lsn + 1, must not follow an older one). */
    if (!applied) pos = LS_LOG_HDR;
    if (pos < fsize) {
        db_log(db, "shard %u: list log: %llu bytes after offset %llu dropped (torn tail or covered by the snapshot)",
                   (unsigned)s->id, (unsigned long long)(fsize - pos), (unsigned long long)pos);
        return ls_log_cut(db, s, pos);
    }
    return KVIDX_OK;
}

/* ---- the snapshot ------------------------------------------------------
 * A 64-byte header (magic KVIDXSNP, format, shard, shards, generation;
 * 24: lsn of the last change it holds; 32: lists; 40: ids; 48: XXH3-64 of
 * the body; 56: of the header), then per list, keys ascending: the key
 * (the first as is, then the gap - 1 to the previous key), the count, the
 * ids (ls_put_ids), all varints. */

typedef struct ls_out {
    XXH3_state_t h; /* of the body, as written */
    int fd, rc;
    uint64_t off;   /* file offset of buf[0] */
    uint8_t *buf;
    size_t n;
    uint64_t prev;  /* previous key or id written */
} ls_out;

#define LS_OUT_BUF ((size_t)1 << 20)

static void ls_out_flush(ls_out *o) {
    if (!o->rc && o->n) {
        XXH3_64bits_update(&o->h, o->buf, o->n);
        o->rc = os_rc(os_pwrite(o->fd, o->buf, o->n, o->off));
        o->off += o->n;
    }
    o->n = 0;
}

static void ls_out_varint(ls_out *o, uint64_t v) {
    if (o->n + 9 > LS_OUT_BUF) ls_out_flush(o);
    o->n += ls_put_varint(o->buf + o->n, v);
}

static void ls_out_ids(ls_out *o, const ls_node *nd, int *first) {
    unsigned i;
    if (nd->kind == LS_INNER) {
        for (i = 0; i < nd->n; i++) ls_out_ids(o, ls_ptr(nd, i), first);
        return;
    }
    for (i = 0; i < nd->n; i++) {
        uint64_t id = ls_id(nd, i);
        ls_out_varint(o, *first ? id : id - o->prev - 1);
        *first = 0;
        o->prev = id;
    }
}

static void ls_out_lists(ls_out *o, const ls_node *nd, uint64_t *prev_key, int *first) {
    unsigned i;
    for (i = 0; i < nd->n && !o->rc; i++) {
        const ls_node *root = ls_ptr(nd, i);
        int first_id = 1;
        if (nd->kind == LS_INNER) {
            ls_out_lists(o, root, prev_key, first);
            continue;
        }
        ls_out_varint(o, *first ? nd->u[i] : nd->u[i] - *prev_key - 1);
        *first = 0;
        *prev_key = nd->u[i];
        ls_out_varint(o, ls_count(root));
        ls_out_ids(o, root, &first_id);
    }
}

/* Writes the snapshot of all of s's lists as generation gen's
 * (temporary, sync, rename, sync the directory); *bytes = its size.
 * Writer (s->mu held). On failure no snapshot of gen changed. */
static int ls_snapshot_write(kvidx *db, vs_shard *s, uint32_t gen, uint64_t *bytes) {
    char name[48], tmp[48];
    uint8_t h[LS_SNAP_HDR];
    uint64_t prev_key = 0;
    int first = 1, rc;
    ls_out *o = NULL;
    void *mem = NULL;
    snprintf(name, sizeof name, "s%04u.%u.ls", (unsigned)s->id, (unsigned)gen);
    snprintf(tmp, sizeof tmp, "s%04u.%u.ls.tmp", (unsigned)s->id, (unsigned)gen);
    /* XXH3_state_t wants 64-byte alignment: carve o out of a larger block. */
    if (!(mem = os_malloc(sizeof *o + 64))) return KVIDX_ENOMEM;
    o = (ls_out *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    memset(o, 0, sizeof *o);
    if (!(o->buf = os_malloc(LS_OUT_BUF))) {
        os_free(mem);
        return KVIDX_ENOMEM;
    }
    o->fd = os_open(db->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (o->fd < 0) o->rc = os_rc(o->fd);
    o->off = LS_SNAP_HDR;
    XXH3_64bits_reset_withSeed(&o->h, CK_SEED_SNAP);
    if (s->lroot) ls_out_lists(o, s->lroot, &prev_key, &first);
    ls_out_flush(o);
    vs_fhdr_encode(h, LS_MAGIC_S, s->id, db->nshards, gen);
    put_le64(h + 24, s->lsn);
    put_le64(h + 32, s->lists);
    put_le64(h + 40, s->lids);
    put_le64(h + 48, XXH3_64bits_digest(&o->h));
    vs_hdr_seal(h);
    rc = o->rc;
    if (!rc) rc = os_rc(os_pwrite(o->fd, h, sizeof h, 0));
    if (!rc) rc = os_rc(os_fsync(o->fd));
    os_close(o->fd);
    if (!rc) rc = os_rc(os_renameat(db->dirfd, tmp, name));
    if (!rc) rc = os_rc(os_fsync(db->dirfd));
    if (!rc) *bytes = o->off;
    os_free(o->buf);
    os_free(mem);
    if (rc) os_unlinkat(db->dirfd, tmp);
    return rc;
}

/* Writes the snapshot of all of s's lists, then empties the log. Writer
 * (s->mu held). A failure before the rename leaves the log as it was:
 * nothing is lost. */
static int ls_snapshot(kvidx *db, vs_shard *s) {
    int rc = ls_snapshot_write(db, s, s->gen, &s->lsnap_bytes);
    if (rc) return rc;
    s->lsnap_retry = 0;
    return ls_log_cut(db, s, LS_LOG_HDR);
}

/* Loads the snapshot, if there is one: sets s->lroot and the counts, and
 * *snap_lsn (0 without a snapshot). */
static int ls_load(kvidx *db, vs_shard *s, uint64_t *snap_lsn) {
    char name[48];
    struct stat st;
    const uint8_t *m, *p, *end;
    uint64_t lists, nids, i, prev_key = 0, *ids = NULL, ids_cap = 0, total = 0;
    ls_vec kv = {0, 0, 0, 0}, lv = {0, 0, 0, 0};
    ls_ctx *cx = s->lcx;
    int fd, rc, err = 0;
    *snap_lsn = 0;
    ls_name(name, sizeof name, s, "ls");
    fd = os_open(db->dirfd, name, O_RDONLY, 0);
    if (fd == -ENOENT) return KVIDX_OK;
    if (fd < 0) return os_rc(fd);
    if (fstat(fd, &st)) {
        os_close(fd);
        return os_rc(-errno);
    }
    if ((uint64_t)st.st_size < LS_SNAP_HDR) {
        os_close(fd);
        return vs_damage(s, "ls", "shorter than its header", NULL, 0);
    }
    m = os_mmap(fd, 0, (uint64_t)st.st_size, 0, &err);
    os_close(fd);
    if (!m) return os_rc(err);
    end = m + st.st_size;
    rc = vs_fhdr_check(m, LS_MAGIC_S, s->id, db->nshards, s->gen);
    if (rc == KVIDX_ECORRUPT) vs_damage(s, "ls", "header invalid", NULL, 0);
    if (!rc && get_le64(m + 48) != ck_seeded(m + LS_SNAP_HDR, (size_t)st.st_size - LS_SNAP_HDR, CK_SEED_SNAP))
        rc = vs_damage(s, "ls", "the body fails its checksum", NULL, 0);
    lists = get_le64(m + 32), nids = get_le64(m + 40);
    if (!rc && (lists > (uint64_t)st.st_size || nids > (uint64_t)st.st_size))
        rc = vs_damage(s, "ls", "impossible counts in the header", NULL, 0);
    p = m + LS_SNAP_HDR;
    for (i = 0; i < lists && !rc; i++) {
        uint64_t key, n;
        ls_node *root;
        if (!ls_get_varint(&p, end, &key) || !ls_get_varint(&p, end, &n) || n == 0 ||
            n > (uint64_t)(end - p) || (i && key >= UINT64_MAX - prev_key)) {
            rc = vs_damage(s, "ls", "a list's key or count is malformed", "byte", (uint64_t)(p - m));
            break;
        }
        key = i ? prev_key + key + 1 : key;
        prev_key = key;
        if ((ck_key(key) & (db->nshards - 1)) != s->id) {
            rc = vs_damage(s, "ls", "a list's key belongs to another shard", "byte", (uint64_t)(p - m));
            break;
        }
        if ((rc = ls_ids_room(&ids, &ids_cap, n))) break;
        if (!ls_get_ids(&p, end, ids, n)) {
            rc = vs_damage(s, "ls", "a list's ids are malformed", "byte", (uint64_t)(p - m));
            break;
        }
        rc = ls_build(cx, ids, n, &root);
        if (!rc) rc = ls_vec_push(&kv, key, LS_VAL(root));
        if (rc) ls_abort(cx); /* the partial list */
        else ls_commit(cx);   /* keeps it: the list is in kv */
        total += n;
    }
    if (!rc && (p != end || total != nids))
        rc = vs_damage(s, "ls", "the lists disagree with the header's counts", NULL, 0);
    if (!rc && kv.n) {
        rc = ls_pairs(cx, LS_KEYS, kv.k, kv.v, kv.n, &lv);
        if (!rc) rc = ls_top(cx, &lv, &s->lroot);
        if (rc) ls_abort(cx);
        else ls_commit(cx);
    }
    if (rc) {
        for (i = 0; i < kv.n; i++) ls_tree_free(s, LS_PTR(kv.v[i]));
        s->lroot = NULL;
    } else {
        s->lists = lists, s->lids = nids, s->lsn = *snap_lsn = get_le64(m + 24);
        s->lsnap_bytes = (uint64_t)st.st_size;
    }
    ls_vec_free(&kv);
    ls_vec_free(&lv);
    os_free(ids);
    os_munmap((void *)m, (uint64_t)st.st_size);
    return rc;
}

/* Opens the lists of shard s: the snapshot, then the log. */
static int ls_open(kvidx *db, vs_shard *s, int rw) {
    char name[48];
    uint64_t snap_lsn, size;
    uint8_t h[64];
    const uint8_t *m;
    int rc, err = 0;
    if (rw) {
        ls_name(name, sizeof name, s, "ls.tmp"); /* a snapshot that never finished */
        os_unlinkat(db->dirfd, name);
    }
    rc = vs_open_file(db, s, 'l', rw, &s->lfd, &size);
    if (rc == KVIDX_ECORRUPT && s->lfd == -ENOENT && s->st.lnone) {
        /* A shard of 0.1.x: no list log yet. Read-only: no lists; read-
         * write: the empty log, made durable before the state that the
         * open writes next marks the shard as having one. */
        s->lfd = -1;
        if (!rw) {
            s->lpos = LS_LOG_HDR;
            return KVIDX_OK;
        }
        if ((rc = ls_create_log(db, s->id, s->gen))) return rc;
        if ((rc = os_rc(os_fsync(db->dirfd)))) return rc;
        rc = vs_open_file(db, s, 'l', rw, &s->lfd, &size);
    }
    if (rc) return rc;
    s->bad = NULL; /* a missing log of 0.1 was no damage */
    if (size < LS_LOG_HDR) return vs_damage(s, "l", "shorter than its header", NULL, 0);
    if ((rc = os_rc(os_pread(s->lfd, h, sizeof h, 0)))) return rc;
    if ((rc = vs_fhdr_check(h, LS_MAGIC_L, s->id, db->nshards, s->gen)))
        return rc == KVIDX_ECORRUPT ? vs_damage(s, "l", "header invalid", NULL, 0) : rc;
    if ((rc = ls_load(db, s, &snap_lsn))) return rc;
    m = os_mmap(s->lfd, 0, size, 0, &err);
    if (!m) return os_rc(err);
    rc = ls_replay(db, s, m, size, snap_lsn, rw);
    os_munmap((void *)m, size);
    return rc;
}

/* The log is worth folding into a snapshot: at close and open when it
 * holds KVIDX_LS_SNAP_MIN bytes and half the snapshot's size; while
 * writing, at KVIDX_LS_SNAP_AUTO bytes and twice the snapshot's size. */
static int ls_log_large(const vs_shard *s, int writing) {
    uint64_t log = s->lpos - LS_LOG_HDR;
    if (writing) return log >= KVIDX_LS_SNAP_AUTO && log >= 2 * s->lsnap_bytes;
    return log >= KVIDX_LS_SNAP_MIN && log >= s->lsnap_bytes / 2;
}

static int ls_apply(vs_shard *s, unsigned op, uint64_t key, const uint64_t *b,
                    size_t nb, size_t *changed, int log) {
    ls_ctx *cx = s->lcx;
    uint64_t *cell = NULL, before;
    ls_node *root = ls_find(s->lroot, key, &cell), *nr = NULL, *idx = NULL;
    ls_vec v = {0, 0, 0, 0};
    size_t ch = 0;
    int rc = KVIDX_OK;
    *changed = 0;
    if (!root && (op == LS_OP_REMOVE || op == LS_OP_DELETE)) return KVIDX_NOTFOUND;
    if (!nb && op != LS_OP_DELETE) return KVIDX_OK; /* nothing to add or remove */
    before = root ? ls_count(root) : 0;
    if (op == LS_OP_PUT || (op == LS_OP_ADD && !root)) {
        rc = ls_build(cx, b, nb, &nr);
        cx->old_tree = root;
        ch = nb;
    } else if (op == LS_OP_DELETE) {
        cx->old_tree = root;
        ch = (size_t)before;
    } else {
        rc = ls_edit(cx, root, b, nb, op == LS_OP_ADD, 1, &v, &ch);
        if (!rc) rc = ls_top(cx, &v, &nr);
        ls_vec_free(&v);
        if (!rc && !ch) { /* nothing changed: nothing to write */
            ls_abort(cx);
            return KVIDX_OK;
        }
    }
    if (!rc && !root != !nr) { /* the list appears or goes: the key index changes */
        if (!s->lroot) {
            uint64_t k = key, val = LS_VAL(nr);
            rc = ls_pairs(cx, LS_KEYS, &k, &val, 1, &v);
        } else {
            rc = ls_edit_key(cx, s->lroot, key, nr, &v);
        }
        if (!rc) rc = ls_top(cx, &v, &idx);
        ls_vec_free(&v);
    }
    if (!rc && log) rc = ls_log_append(s, op, key, b, nb);
    if (rc) {
        cx->old_tree = NULL;
        ls_abort(cx);
        return rc;
    }
    /* Publish (release: the new nodes' contents before the pointer), let
     * every reader that may hold a replaced node leave, free them. */
    if (!root != !nr) __atomic_store_n(&s->lroot, idx, __ATOMIC_RELEASE);
    else __atomic_store_n(cell, LS_VAL(nr), __ATOMIC_RELEASE);
    if (log) lr_wait_readers(s->lr);
    ls_commit(cx);
    s->lists = s->lists + (nr != NULL) - (root != NULL);
    s->lids = s->lids + (nr ? ls_count(nr) : 0) - before;
    if (log) s->lwrites++;
    *changed = ch;
    return KVIDX_OK;
}

/* Frees the lists of s and closes its list log. */
static void ls_release(vs_shard *s) {
    ls_tree_free(s, s->lroot);
    s->lroot = NULL;
    if (s->lcx) {
        ls_vec_free(&s->lcx->fresh);
        ls_vec_free(&s->lcx->old);
        os_free(s->lcx);
        s->lcx = NULL;
    }
    os_close(s->lfd);
    s->lfd = -1;
    os_free(s->lbuf);
    s->lbuf = NULL;
    s->lbuf_cap = 0;
}

/* ======================================================================
 * 7. Shards and the public API
 * ====================================================================== */

#define DB_HDR_NAME "kvidx.hdr"
#define DB_HDR_TMP "kvidx.hdr.tmp"
#define DB_LOCK_NAME "kvidx.lock"
#define DB_HDR_INCOMPLETE 0x1u /* creation has not finished: redo it */

const char *kvidx_version(void) { return KVIDX_VERSION_STRING; }

const char *kvidx_strerror(int rc) {
    switch (rc) {
    case KVIDX_OK: return "ok";
    case KVIDX_NOTFOUND: return "not found";
    case KVIDX_CLOSED: return "session closed by the peer";
    case KVIDX_EINVAL: return "invalid argument";
    case KVIDX_ENOMEM: return "out of memory";
    case KVIDX_EIO: return "I/O error";
    case KVIDX_ECORRUPT: return "database file is damaged";
    case KVIDX_ELOCKED: return "database is open elsewhere";
    case KVIDX_EVERSION: return "database uses a newer format";
    case KVIDX_EFULL: return "database or disk is full";
    case KVIDX_ERDONLY: return "handle is read-only";
    case KVIDX_ETOOBIG: return "value or buffer size out of range";
    case KVIDX_EMISUSE: return "not a live kvidx handle";
    case KVIDX_EPROTO: return "protocol error";
    default: return "unknown error";
    }
}

void kvidx_options_init(kvidx_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->size = (uint32_t)sizeof *o;
    o->flags = KVIDX_CREATE;
    o->shards = KVIDX_SHARDS_DEFAULT;
    o->sync_interval_ms = KVIDX_SYNC_INTERVAL_DEFAULT;
    o->compact_pct = KVIDX_COMPACT_PCT_DEFAULT;
}

/* KVIDX_OK for a live handle. The magic is checked on every call so that a
 * zeroed, foreign or closed handle is refused rather than followed. */
static int db_check(const kvidx *db) {
    if (!db) return KVIDX_EINVAL;
    return db->magic == KVIDX_MAGIC_LIVE ? KVIDX_OK : KVIDX_EMISUSE;
}

static vs_shard *db_shard(kvidx *db, uint64_t h) { return &db->sh[h & (db->nshards - 1)]; }

static void db_hdr_encode(uint8_t *p, uint32_t shards, uint32_t flags) {
    memset(p, 0, 64);
    memcpy(p, VS_MAGIC_DB, 8);
    put_le32(p + 8, VS_FORMAT);
    put_le32(p + 12, flags);
    put_le32(p + 16, shards);
    put_le32(p + 20, VS_REC);
    put_le32(p + 24, VS_SLOT);
    put_le32(p + 28, VS_SEC_N);
    put_le32(p + 32, VS_PAGE);
    put_le64(p + 40, (uint64_t)time(NULL));
    vs_hdr_seal(p);
}

/* Replaces kvidx.hdr atomically: write a temporary, sync, rename, sync
 * the directory. */
static int db_hdr_write(kvidx *db, uint32_t flags) {
    uint8_t h[64];
    int fd, r;
    db_hdr_encode(h, db->nshards, flags);
    fd = os_open(db->dirfd, DB_HDR_TMP, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return os_rc(fd);
    r = os_pwrite(fd, h, sizeof h, 0);
    if (!r) r = os_fsync(fd);
    os_close(fd);
    if (!r) r = os_renameat(db->dirfd, DB_HDR_TMP, DB_HDR_NAME);
    if (!r) r = os_fsync(db->dirfd);
    return os_rc(r);
}

/* Reads kvidx.hdr: sets db->nshards and *flags. KVIDX_NOTFOUND if absent. */
static int db_hdr_read(kvidx *db, uint32_t *flags) {
    uint8_t h[64];
    struct stat st;
    int fd = os_open(db->dirfd, DB_HDR_NAME, O_RDONLY, 0), r;
    uint32_t n;
    if (fd == -ENOENT) return KVIDX_NOTFOUND;
    if (fd < 0) return os_rc(fd);
    if (fstat(fd, &st)) r = -errno;
    else if (st.st_size < 64) r = -EBADMSG;
    else r = os_pread(fd, h, sizeof h, 0);
    os_close(fd);
    if (r == -EBADMSG) { /* shorter than a header */
        db_log(db, "damage: %s: shorter than its 64 bytes", DB_HDR_NAME);
        return KVIDX_ECORRUPT;
    }
    if (r) return os_rc(r);
    if (memcmp(h, VS_MAGIC_DB, 8)) return KVIDX_EINVAL; /* not a kvidx database */
    if (get_le32(h + 8) > VS_FORMAT) return KVIDX_EVERSION;
    n = get_le32(h + 16);
    if (get_le64(h + 56) != ck_seeded(h, 56, CK_SEED_HDR) || get_le32(h + 8) != VS_FORMAT || n == 0 ||
        n > KVIDX_SHARDS_MAX || (n & (n - 1)) || get_le32(h + 20) != VS_REC ||
        get_le32(h + 24) != VS_SLOT || get_le32(h + 28) != VS_SEC_N || get_le32(h + 32) != VS_PAGE) {
        db_log(db, "damage: %s: fails its checksum or holds impossible values", DB_HDR_NAME);
        return KVIDX_ECORRUPT;
    }
    db->nshards = n;
    *flags = get_le32(h + 12);
    return KVIDX_OK;
}

/* 1 if the directory holds nothing but our lock file (and a header
 * temporary left by an interrupted creation); 0 if it holds anything
 * else; negative errno on failure. */
static int db_dir_is_empty(int dirfd) {
    int fd = dup(dirfd), empty = 1;
    DIR *d;
    struct dirent *de;
    if (fd < 0) return -errno;
    d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    rewinddir(d); /* the dup shares its offset with dirfd: start over */
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, DB_LOCK_NAME) ||
            !strcmp(n, DB_HDR_TMP))
            continue;
        empty = 0;
        break;
    }
    closedir(d);
    return empty;
}

/* Finds each shard's generation: the highest g with an sNNNN.g.b file
 * (a compaction commits a generation by creating its buffer file last).
 * A shard without one is KVIDX_ECORRUPT. */
static int db_find_gens(kvidx *db) {
    int fd = dup(db->dirfd);
    uint32_t i;
    DIR *d;
    struct dirent *de;
    if (fd < 0) return os_rc(-errno);
    d = fdopendir(fd);
    if (!d) {
        close(fd);
        return os_rc(-errno);
    }
    rewinddir(d); /* the dup shares its offset with dirfd: start over */
    while ((de = readdir(d))) {
        unsigned id, gen;
        char ext, canon[32];
        if (sscanf(de->d_name, "s%4u.%u.%c", &id, &gen, &ext) != 3 || ext != 'b') continue;
        vs_name(canon, sizeof canon, id, gen, 'b');
        if (strcmp(canon, de->d_name) || id >= db->nshards || gen == 0) continue;
        if (gen > db->sh[id].gen) db->sh[id].gen = gen;
    }
    for (i = 0; i < db->nshards; i++)
        if (!db->sh[i].gen) {
            db_log(db, "shard %u: damage: no buffer file (s%04u.G.b) of any generation", (unsigned)i, (unsigned)i);
            closedir(d);
            return KVIDX_ECORRUPT;
        }
    closedir(d);
    return KVIDX_OK;
}

/* After a read-write open has opened every shard: removes the files of
 * every other generation (the old one of a compaction that committed, the
 * new one of one that did not). Only then: should the chosen generation
 * prove damaged, the other is still there to look at. Best effort. */
static void db_clean_gens(kvidx *db) {
    int fd = dup(db->dirfd), removed = 0;
    DIR *d;
    struct dirent *de;
    if (fd < 0) return;
    if (!(d = fdopendir(fd))) {
        close(fd);
        return;
    }
    rewinddir(d);
    {
        while ((de = readdir(d))) {
            unsigned id, gen;
            int at = 0;
            char canon[32];
            if (sscanf(de->d_name, "s%4u.%u.%n", &id, &gen, &at) != 2 || !at || id >= db->nshards ||
                gen == db->sh[id].gen)
                continue;
            snprintf(canon, sizeof canon, "s%04u.%u.", id, gen);
            if (strncmp(canon, de->d_name, (size_t)at) || strlen(canon) != (size_t)at) continue;
            removed += os_unlinkat(db->dirfd, de->d_name) == 0;
        }
        if (removed) (void)os_fsync(db->dirfd);
    }
    closedir(d);
}

/* Creates (or finishes creating) the database: header marked incomplete,
 * every shard's files, then the final header. A crash anywhere leaves a
 * directory that the next read-write open finishes. */
static int db_create(kvidx *db) {
    uint32_t i;
    int rc = db_hdr_write(db, DB_HDR_INCOMPLETE);
    for (i = 0; !rc && i < db->nshards; i++) rc = vs_create_shard(db, i, 1);
    if (!rc) rc = os_rc(os_fsync(db->dirfd));
    if (!rc) rc = db_hdr_write(db, 0);
    return rc;
}

static void *db_bg_main(void *arg);
static int vs_compact(kvidx *db, vs_shard *s);
static int db_sync_all(kvidx *db);

/* Frees a handle in any state of construction. */
static void db_free(kvidx *db) {
    uint32_t i;
    if (db->sh)
        for (i = 0; i < db->nshards; i++) vs_release_shard(&db->sh[i]);
    os_free(db->sh);
    os_close(db->lockfd);
    os_close(db->dirfd);
    pthread_mutex_destroy(&db->bg_mu);
    pthread_mutex_destroy(&db->bk_mu);
    pthread_cond_destroy(&db->bg_cv);
    db->magic = KVIDX_MAGIC_DEAD;
    os_free(db);
}

/* Opening shards in parallel: one thread per CPU, each taking the next
 * shard not yet taken. Every shard is opened (or fails) exactly as alone;
 * the error of the lowest-numbered failing shard is returned. */
typedef struct db_opener {
    kvidx *db;
    uint32_t next; /* atomic: the next shard to take */
    int *rc;       /* per shard */
} db_opener;

static void *db_open_worker(void *arg) {
    db_opener *o = arg;
    uint32_t i;
    while ((i = __atomic_fetch_add(&o->next, 1, __ATOMIC_RELAXED)) < o->db->nshards)
        o->rc[i] = vs_open_shard(o->db, &o->db->sh[i]);
    return NULL;
}

/* Bytes of key log over all shards: is the open worth threads? */
static uint64_t db_key_bytes(const kvidx *db) {
    uint64_t sum = 0;
    uint32_t i;
    for (i = 0; i < db->nshards; i++) {
        char name[32];
        struct stat st;
        vs_name(name, sizeof name, db->sh[i].id, db->sh[i].gen, 'k');
        if (!fstatat(db->dirfd, name, &st, 0)) sum += (uint64_t)st.st_size;
    }
    return sum;
}

static int db_open_shards(kvidx *db) {
    pthread_t th[KVIDX_OPEN_THREADS];
    db_opener o;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t i, nt = 0, want = cpus > 1 ? (uint32_t)cpus - 1 : 0;
    int rc = KVIDX_OK;
    if (want > db->nshards - 1) want = db->nshards - 1;
    if (want > KVIDX_OPEN_THREADS) want = KVIDX_OPEN_THREADS;
    if (want && db_key_bytes(db) + 1 <= KVIDX_OPEN_PARALLEL) want = 0;
    o.db = db;
    o.next = 0;
    o.rc = os_calloc(db->nshards, sizeof *o.rc);
    if (!o.rc) return KVIDX_ENOMEM;
    for (nt = 0; nt < want; nt++) /* fewer threads than asked is fine */
        if (pthread_create(&th[nt], NULL, db_open_worker, &o)) break;
    db_open_worker(&o);
    for (i = 0; i < nt; i++) pthread_join(th[i], NULL);
    for (i = 0; i < db->nshards && !rc; i++) rc = o.rc[i];
    os_free(o.rc);
    return rc;
}

static int db_open(kvidx *db, const char *dir) {
    int rw = !(db->flags & KVIDX_RDONLY), create = rw && (db->flags & KVIDX_CREATE), rc;
    uint32_t i, hflags = 0;
    struct stat st;

    if (stat(dir, &st)) {
        if (errno != ENOENT) return os_rc(-errno);
        if (!create) return KVIDX_EINVAL; /* no database here */
        rc = os_mkdir(dir);
        if (rc && rc != -EEXIST) return rc == -ENOENT ? KVIDX_EINVAL : os_rc(rc);
    } else if (!S_ISDIR(st.st_mode)) {
        return KVIDX_EINVAL;
    }
    db->dirfd = os_open(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY, 0);
    if (db->dirfd < 0) return db->dirfd == -ENOTDIR ? KVIDX_EINVAL : os_rc(db->dirfd);

    /* The lock file exists in every database. Where it does not, nothing
     * is created unless we may create and the directory is empty: a
     * refused open leaves a directory exactly as it found it. */
    db->lockfd = os_open(db->dirfd, DB_LOCK_NAME, rw ? O_RDWR : O_RDONLY, 0);
    if (db->lockfd == -ENOENT) {
        int empty;
        db->lockfd = -1;
        if (!create) return KVIDX_EINVAL; /* no database here */
        empty = db_dir_is_empty(db->dirfd);
        if (empty < 0) return os_rc(empty);
        if (!empty) return KVIDX_EINVAL; /* somebody else's files: do not scribble on them */
        db->lockfd = os_open(db->dirfd, DB_LOCK_NAME, O_RDWR | O_CREAT, 0644);
    }
    if (db->lockfd < 0) return os_rc(db->lockfd);
    rc = os_flock(db->lockfd, rw);
    if (rc) return rc == -EWOULDBLOCK ? KVIDX_ELOCKED : os_rc(rc);

    rc = db_hdr_read(db, &hflags);
    if (rc == KVIDX_NOTFOUND) {
        int empty;
        if (!create) return KVIDX_EINVAL;
        empty = db_dir_is_empty(db->dirfd);
        if (empty < 0) return os_rc(empty);
        if (!empty) return KVIDX_EINVAL; /* somebody else's files: do not scribble on them */
        db->nshards = db->opt.shards;
        if ((rc = db_create(db))) return rc;
    } else if (rc) {
        return rc;
    } else if (hflags & DB_HDR_INCOMPLETE) {
        if (!rw) return KVIDX_EINVAL; /* creation was interrupted: not a database yet */
        if ((rc = db_create(db))) return rc;
    } else if (hflags) {
        db_log(db, "damage: %s: unknown flags 0x%x", DB_HDR_NAME, (unsigned)hflags);
        return KVIDX_ECORRUPT;
    }

    db->sh = os_calloc(db->nshards, sizeof *db->sh);
    if (!db->sh) return KVIDX_ENOMEM;
    for (i = 0; i < db->nshards; i++) {
        vs_shard *s = &db->sh[i];
        s->id = i;
        s->kfd = s->vfd = s->bfd = s->lfd = -1;
        s->ksec = UINT64_MAX;
        pthread_mutex_init(&s->mu, NULL);
        pthread_mutex_init(&s->smu, NULL);
        pthread_cond_init(&s->sync_cv, NULL);
        if ((rc = lr_map_init(&s->map[0])) || (rc = lr_map_init(&s->map[1]))) return rc;
        if (!(s->lr = lr_ctl_new())) return KVIDX_ENOMEM;
        if (!(s->vs = vs_store_new())) return KVIDX_ENOMEM;
        s->rs[0] = s->rs[1] = s->vs;
        if (!(s->lcx = os_calloc(1, sizeof *s->lcx))) return KVIDX_ENOMEM;
        s->lcx->s = s;
    }
    if ((rc = db_find_gens(db))) return rc;
    if ((rc = db_open_shards(db))) return rc;
    if (rw) db_clean_gens(db);
    return KVIDX_OK;
}

int kvidx_open(const char *dir, const kvidx_options *o, kvidx **out) {
    kvidx *db;
    kvidx_options opt;
    int rc;
    if (!dir || !out || !*dir) return KVIDX_EINVAL;
    kvidx_options_init(&opt);
    if (o) {
        if (o->size < offsetof(kvidx_options, log)) return KVIDX_EINVAL;
        memcpy(&opt, o, o->size < sizeof opt ? o->size : sizeof opt);
        opt.size = (uint32_t)sizeof opt;
    }
    if (opt.shards == 0) opt.shards = KVIDX_SHARDS_DEFAULT;
    if (opt.shards > KVIDX_SHARDS_MAX || (opt.shards & (opt.shards - 1))) return KVIDX_EINVAL;
    if (opt.flags & ~KVIDX_FLAGS_ALL) return KVIDX_EINVAL;
    if (opt.compact_pct > 99 || opt.reserved) return KVIDX_EINVAL;

    db = os_calloc(1, sizeof *db);
    if (!db) return KVIDX_ENOMEM;
    db->opt = opt;
    db->flags = opt.flags;
    db->dirfd = db->lockfd = -1;
    pthread_mutex_init(&db->bg_mu, NULL);
    pthread_mutex_init(&db->bk_mu, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&db->bg_cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    rc = db_open(db, dir);
    if (!rc && !(db->flags & KVIDX_RDONLY) && (opt.sync_interval_ms || opt.compact_pct)) {
        if (pthread_create(&db->bg, NULL, db_bg_main, db)) rc = KVIDX_ENOMEM;
        else db->bg_started = 1;
    }
    if (rc) {
        db_free(db);
        return rc;
    }
    db->opened_ns = os_now_ns();
    db->magic = KVIDX_MAGIC_LIVE;
    *out = db;
    return KVIDX_OK;
}

/* Syncs every shard; the first error wins, all shards are tried. */
static int db_sync_all(kvidx *db) {
    uint32_t i;
    int rc = KVIDX_OK;
    if (db->flags & KVIDX_RDONLY) return KVIDX_OK;
    for (i = 0; i < db->nshards; i++) {
        int r = vs_sync(db, &db->sh[i]);
        if (r && !rc) rc = r;
    }
    /* relaxed: a statistic read by kvidx_stat; it orders nothing. */
    if (!rc) __atomic_fetch_add(&db->syncs, 1, __ATOMIC_RELAXED);
    return rc;
}

/* The shard's value store holds enough garbage for a background
 * compaction (compact_pct of its bytes, and KVIDX_COMPACT_MIN in all). */
static int vs_wants_compact(const kvidx *db, vs_shard *s) {
    uint64_t total, garbage;
    int err;
    pthread_mutex_lock(&s->mu);
    total = s->next_slot * VS_SLOT + s->kpos * VS_REC;
    garbage = (s->next_slot - s->live_slots) * VS_SLOT + (s->kpos - s->map[s->lr->side].ht.n) * VS_REC;
    err = s->err || s->kpos < s->cp_retry;
    pthread_mutex_unlock(&s->mu);
    return !err && total >= KVIDX_COMPACT_MIN && garbage * 100 >= total * db->opt.compact_pct;
}

/* The background thread: a sync every sync_interval_ms, and (with
 * compact_pct) a look at every shard's garbage as often (every second
 * without syncs), until close. */
static void *db_bg_main(void *arg) {
    kvidx *db = arg;
    uint32_t period = db->opt.sync_interval_ms ? db->opt.sync_interval_ms : 1000, i;
    pthread_mutex_lock(&db->bg_mu);
    while (!db->bg_stop) {
        struct timespec ts;
        int r = 0;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += period / 1000;
        ts.tv_nsec += (long)(period % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        while (!db->bg_stop && r != ETIMEDOUT) r = pthread_cond_timedwait(&db->bg_cv, &db->bg_mu, &ts);
        if (db->bg_stop) break;
        pthread_mutex_unlock(&db->bg_mu);
        if (db->opt.sync_interval_ms) (void)db_sync_all(db); /* a failure is sticky in the shard */
        for (i = 0; db->opt.compact_pct && i < db->nshards; i++) {
            vs_shard *s = &db->sh[i];
            if (__atomic_load_n(&db->bg_stop, __ATOMIC_RELAXED) || !vs_wants_compact(db, s)) continue;
            r = vs_compact(db, s);
            if (r) {
                /* not again until the key log has grown by a quarter */
                pthread_mutex_lock(&s->mu);
                s->cp_retry = s->kpos + s->kpos / 4 + VS_SEC_N;
                pthread_mutex_unlock(&s->mu);
                db_log(db, "shard %u: background compaction failed: %s", (unsigned)s->id, kvidx_strerror(r));
            }
        }
        pthread_mutex_lock(&db->bg_mu);
    }
    pthread_mutex_unlock(&db->bg_mu);
    return NULL;
}

/* Gives back the disk blocks of the buffer beyond the slots in use (the
 * rest of a flushed section's old values): a closed database holds only
 * what it stores. Best effort. */
static void vs_trim(vs_shard *s) {
    uint64_t used = (uint64_t)(s->next_slot & (VS_SEC_N - 1)) * VS_SLOT;
    if ((s->next_slot >> VS_SEC_SHIFT) != s->vs->bsec) return; /* full, not yet flushed: all in use */
    used = (used + VS_PAGE - 1) / VS_PAGE * VS_PAGE;
    if (used < VS_VSEC_BYTES) os_punch(s->bfd, VS_PAGE + used, VS_VSEC_BYTES - used);
}

int kvidx_close(kvidx *db) {
    int rc;
    uint32_t i;
    if (!db) return KVIDX_OK;
    if ((rc = db_check(db))) return rc;
    if (db->bg_started) {
        pthread_mutex_lock(&db->bg_mu);
        __atomic_store_n(&db->bg_stop, 1, __ATOMIC_RELAXED); /* read outside bg_mu too */
        pthread_cond_signal(&db->bg_cv);
        pthread_mutex_unlock(&db->bg_mu);
        pthread_join(db->bg, NULL);
    }
    /* A large list log is folded into a snapshot, so the next open loads
     * it rather than replaying changes. A failure loses nothing. */
    for (i = 0; !(db->flags & KVIDX_RDONLY) && i < db->nshards; i++) {
        vs_shard *s = &db->sh[i];
        int r = s->err || !ls_log_large(s, 0) ? KVIDX_OK : ls_snapshot(db, s);
        if (r) db_log(db, "shard %u: list snapshot at close failed: %s", (unsigned)s->id, kvidx_strerror(r));
    }
    rc = db_sync_all(db);
    /* Persist the state the syncs updated (the durable prefix): the next
     * open then checks the whole log as durable. */
    for (i = 0; !rc && i < db->nshards; i++)
        if (db->sh[i].st_dirty && os_fdatasync(db->sh[i].bfd)) rc = KVIDX_EIO;
    if (!(db->flags & KVIDX_RDONLY))
        for (i = 0; i < db->nshards; i++) vs_trim(&db->sh[i]);
    db_free(db);
    return rc;
}

int kvidx_sync(kvidx *db) {
    int rc = db_check(db);
    return rc ? rc : db_sync_all(db);
}

int kvidx_put(kvidx *db, uint64_t key, const void *val, size_t len) {
    int rc = db_check(db);
    uint64_t h, seq;
    vs_shard *s;
    if (rc) return rc;
    if (len > KVIDX_VALUE_MAX) return KVIDX_ETOOBIG;
    if (!val && len) return KVIDX_EINVAL;
    if (db->flags & KVIDX_RDONLY) return KVIDX_ERDONLY;
    h = ck_key(key);
    s = db_shard(db, h);
    pthread_mutex_lock(&s->mu);
    rc = vs_put(db, s, key, h, val, len);
    seq = s->wseq;
    pthread_mutex_unlock(&s->mu);
    if (!rc && (db->flags & KVIDX_SYNC)) rc = vs_sync_upto(db, s, seq);
    return rc;
}

/* The read path: no lock, no allocation, no system call. The value is
 * copied inside the read section and checked after leaving it. */
int kvidx_get(kvidx *db, uint64_t key, void *buf, size_t cap, size_t *len) {
    int rc = db_check(db);
    uint64_t h, bsec;
    unsigned side;
    vs_shard *s;
    const vs_store *v;
    const lr_ent *e;
    lr_ent ent;
    lr_slot *sl;
    uint32_t sum = 0;
    if (rc) return rc;
    if (!len || (!buf && cap)) return KVIDX_EINVAL;
    h = ck_key(key);
    s = db_shard(db, h);
    sl = vs_read_begin(s, &side, &v, &bsec);
    e = lr_map_get(&s->map[side], key, h);
    if (e) {
        ent = *e;
        if (ent.len <= cap) sum = vs_copy(v, bsec, &ent, buf);
    }
    lr_depart(s->lr, sl);
    if (!e) {
        *len = 0;
        return KVIDX_NOTFOUND;
    }
    *len = ent.len; /* also on ETOOBIG: the length needed */
    if (ent.len > cap) return KVIDX_ETOOBIG;
    return sum == ent.vsum ? KVIDX_OK : KVIDX_ECORRUPT;
}

int kvidx_delete(kvidx *db, uint64_t key) {
    int rc = db_check(db);
    uint64_t h, seq;
    vs_shard *s;
    if (rc) return rc;
    if (db->flags & KVIDX_RDONLY) return KVIDX_ERDONLY;
    h = ck_key(key);
    s = db_shard(db, h);
    pthread_mutex_lock(&s->mu);
    rc = vs_del(s, key, h);
    seq = s->wseq;
    pthread_mutex_unlock(&s->mu);
    if (!rc && (db->flags & KVIDX_SYNC)) rc = vs_sync_upto(db, s, seq);
    return rc;
}

/* ---- lists: the public API ------------------------------------------- */

/* Most ids one list call takes: its log record must stay under 4 GiB. */
#define LS_CALL_MAX ((size_t)1 << 28)
#define LS_QUIET 0x100u /* with LS_OP_DELETE: an absent list is no error (put of nothing) */

/* Sorts and de-duplicates ids[0, n) into *out (stack if it fits in
 * stack_n, else allocated: the caller frees it when *out != stack). */
static int ls_sorted(const uint64_t *ids, size_t n, uint64_t *stack, size_t stack_n,
                     uint64_t **out, size_t *nout) {
    uint64_t *a = n <= stack_n ? stack : os_malloc(n * sizeof *a);
    size_t i, k = 0;
    if (!a) return KVIDX_ENOMEM;
    memcpy(a, ids, n * sizeof *a);
    for (i = 1; i < n && a[i - 1] < a[i]; i++) {}
    if (i < n) { /* not ascending already */
        if (n <= 32) {
            for (i = 1; i < n; i++) {
                uint64_t x = a[i];
                size_t j = i;
                for (; j > 0 && a[j - 1] > x; j--) a[j] = a[j - 1];
                a[j] = x;
            }
        } else {
            uint64_t *tmp = os_malloc(n * sizeof *tmp);
            if (!tmp) {
                if (a != stack) os_free(a);
                return KVIDX_ENOMEM;
            }
            lr_sort_keys(a, tmp, n);
            os_free(tmp);
        }
    }
    for (i = 0; i < n; i++)
        if (!k || a[i] != a[k - 1]) a[k++] = a[i];
    *out = a;
    *nout = k;
    return KVIDX_OK;
}

/* Every list write: checks, sorts, applies under the shard mutex. */
static int ls_write(kvidx *db, unsigned op, uint64_t key, const uint64_t *ids, size_t n,
                    size_t *changed) {
    uint64_t stack[32], *b = NULL, h, seq;
    size_t nb = 0, ch = 0;
    vs_shard *s;
    int rc = db_check(db);
    if (rc) return rc;
    if (!ids && n) return KVIDX_EINVAL;
    if (db->flags & KVIDX_RDONLY) return KVIDX_ERDONLY;
    if (n > LS_CALL_MAX) return KVIDX_ETOOBIG;
    if (n && (rc = ls_sorted(ids, n, stack, sizeof stack / sizeof *stack, &b, &nb))) return rc;
    if (op == LS_OP_PUT && !nb) op = LS_OP_DELETE | LS_QUIET;
    h = ck_key(key);
    s = db_shard(db, h);
    pthread_mutex_lock(&s->mu);
    rc = s->err ? s->err : ls_apply(s, op & 0xFF, key, b, nb, &ch, 1);
    seq = s->wseq;
    if (!rc && ch && s->lpos >= s->lsnap_retry && ls_log_large(s, 1) &&
        !__atomic_load_n(&db->backing_up, __ATOMIC_RELAXED)) { /* a backup copies the log as it is */
        /* The log outgrew the snapshot: fold it in (a stall for this
         * shard's writers, readers go on). A failure loses nothing; the
         * next try waits until the log has grown by LS_SNAP_RETRY. */
        int r = ls_snapshot(db, s);
        if (r) {
            s->lsnap_retry = s->lpos + LS_SNAP_RETRY;
            db_log(db, "shard %u: list snapshot failed: %s", (unsigned)s->id, kvidx_strerror(r));
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (b != stack) os_free(b);
    if (rc == KVIDX_NOTFOUND && (op & LS_QUIET)) rc = KVIDX_OK;
    if (!rc && ch && (db->flags & KVIDX_SYNC)) rc = vs_sync_upto(db, s, seq);
    if ((!rc || rc == KVIDX_NOTFOUND) && changed) *changed = ch; /* 0 on NOTFOUND */
    return rc;
}

int kvidx_list_put(kvidx *db, uint64_t key, const uint64_t *ids, size_t n) {
    return ls_write(db, LS_OP_PUT, key, ids, n, NULL);
}

int kvidx_list_add(kvidx *db, uint64_t key, const uint64_t *ids, size_t n, size_t *added) {
    return ls_write(db, LS_OP_ADD, key, ids, n, added);
}

int kvidx_list_remove(kvidx *db, uint64_t key, const uint64_t *ids, size_t n, size_t *removed) {
    return ls_write(db, LS_OP_REMOVE, key, ids, n, removed);
}

int kvidx_list_delete(kvidx *db, uint64_t key) {
    return ls_write(db, LS_OP_DELETE, key, NULL, 0, NULL);
}

/* Enters a read section of shard s for its lists: *idx is the key index
 * to read until lr_depart. Wait-free, like vs_read_begin. */
static lr_slot *ls_read_begin(vs_shard *s, const ls_node **idx) {
    unsigned side;
    lr_slot *sl = lr_arrive(s->lr, &side);
    /* acquire: pairs with the writer's release store in ls_apply */
    *idx = __atomic_load_n(&s->lroot, __ATOMIC_ACQUIRE);
    return sl;
}

int kvidx_list_get(kvidx *db, uint64_t key, uint64_t from, uint64_t *out, size_t cap, size_t *n) {
    int rc = db_check(db);
    const ls_node *idx, *root;
    vs_shard *s;
    lr_slot *sl;
    size_t got = 0;
    if (rc) return rc;
    if (!n || (!out && cap)) return KVIDX_EINVAL;
    s = db_shard(db, ck_key(key));
    sl = ls_read_begin(s, &idx);
    root = ls_find(idx, key, NULL);
    if (root) got = ls_page(root, from, out, cap);
    lr_depart(s->lr, sl);
    *n = got;
    return root ? KVIDX_OK : KVIDX_NOTFOUND;
}

int kvidx_list_count(kvidx *db, uint64_t key, uint64_t *count) {
    int rc = db_check(db);
    const ls_node *idx, *root;
    vs_shard *s;
    lr_slot *sl;
    if (rc) return rc;
    if (!count) return KVIDX_EINVAL;
    s = db_shard(db, ck_key(key));
    sl = ls_read_begin(s, &idx);
    root = ls_find(idx, key, NULL);
    *count = root ? ls_count(root) : 0;
    lr_depart(s->lr, sl);
    return root ? KVIDX_OK : KVIDX_NOTFOUND;
}

int kvidx_list_contains(kvidx *db, uint64_t key, uint64_t id) {
    int rc = db_check(db), has;
    const ls_node *idx, *root;
    vs_shard *s;
    lr_slot *sl;
    if (rc) return rc;
    s = db_shard(db, ck_key(key));
    sl = ls_read_begin(s, &idx);
    root = ls_find(idx, key, NULL);
    has = root && ls_has(root, id);
    lr_depart(s->lr, sl);
    return has ? KVIDX_OK : KVIDX_NOTFOUND;
}

/* A scan merges one cursor of keys per shard: a cursor is refilled from
 * its shard's tree inside a read section (keys only: cheap). The merge
 * takes the next batch of keys in order; then one read section on each
 * shard of the batch, all held together, covers the lookups and value
 * copies of the whole batch, prefetched a pass at a time so that their
 * cache misses overlap; the callback runs on the copies with nothing
 * held. Only keys about to be delivered cost a value fetch, and batches
 * start small and double: a scan that stops after a few keys fetches few
 * values. A key deleted between its cursor's refill and its batch's
 * fetch is skipped, as if deleted before. */
typedef struct scan_item {
    uint64_t key;
    lr_ent ent;    /* its entry, found by the fetch */
    uint32_t sec;  /* its shard's read section in the batch */
    uint32_t len;  /* SCAN_GONE: deleted meanwhile */
    uint32_t diff; /* checksum of the copy ^ the record's: 0 when intact */
    uint8_t val[VS_SLOT];
} scan_item;

#define SCAN_GONE UINT32_MAX

/* A read section held by a batch on one shard. */
typedef struct scan_sec {
    vs_shard *s;
    lr_slot *sl;
    const lr_map *map;
    const vs_store *v;
    uint64_t bsec;
} scan_sec;

typedef struct scan_cur {
    uint64_t *keys;
    uint64_t *counts; /* list scans: each list's id count */
    size_t n, i;
    uint64_t next; /* refill from here */
    int done;      /* no keys left in range */
    int sec;       /* its read section in the current batch, or -1 */
} scan_cur;

/* After a refill of c->n keys of at most cap: where the next one starts. */
static void scan_refilled(scan_cur *c, uint64_t to, size_t cap) {
    c->i = 0;
    if (c->n < cap || c->keys[c->n - 1] >= to) c->done = 1;
    else c->next = c->keys[c->n - 1] + 1;
}

/* Refills cursor c of shard s with up to cap keys in [c->next, to]. */
static void scan_refill(vs_shard *s, scan_cur *c, uint64_t to, size_t cap) {
    uint64_t bsec;
    unsigned side;
    const vs_store *v;
    lr_slot *sl = vs_read_begin(s, &side, &v, &bsec);
    c->n = lr_bt_collect(&s->map[side].bt, c->next, to, c->keys, cap);
    lr_depart(s->lr, sl);
    scan_refilled(c, to, cap);
}

/* Refills list cursor c of shard s with up to cap lists in [c->next, to]. */
static void ls_refill(vs_shard *s, scan_cur *c, uint64_t to, size_t cap) {
    const ls_node *idx;
    lr_slot *sl = ls_read_begin(s, &idx);
    c->n = ls_collect(idx, c->next, to, c->keys, c->counts, cap);
    lr_depart(s->lr, sl);
    scan_refilled(c, to, cap);
}

/* Fetches the values of items it[0, n) inside read sections sec[0, ns)
 * (shards already set). */
static void scan_fetch(scan_item *it, size_t n, scan_sec *sec, size_t ns) {
    size_t i;
    for (i = 0; i < ns; i++) {
        unsigned side;
        sec[i].sl = vs_read_begin(sec[i].s, &side, &sec[i].v, &sec[i].bsec);
        sec[i].map = &sec[i].s->map[side];
    }
    for (i = 0; i < n; i++) {
        const lr_ht *t = &sec[it[i].sec].map->ht;
        __builtin_prefetch(&t->cell[lr_home(t, ck_key(it[i].key))]);
    }
    for (i = 0; i < n; i++) {
        const scan_sec *c = &sec[it[i].sec];
        const lr_ent *e = lr_map_get(c->map, it[i].key, ck_key(it[i].key));
        unsigned j;
        it[i].len = e ? e->len : SCAN_GONE;
        if (!e) continue;
        it[i].ent = *e;
        for (j = 0; j < e->len; j += 64) __builtin_prefetch(vs_slot_ptr(c->v, c->bsec, e->slot) + j);
    }
    for (i = 0; i < n; i++)
        if (it[i].len != SCAN_GONE) {
            const scan_sec *c = &sec[it[i].sec];
            it[i].diff = vs_copy(c->v, c->bsec, &it[i].ent, it[i].val) ^ it[i].ent.vsum;
        }
    for (i = 0; i < ns; i++) lr_depart(sec[i].s->lr, sec[i].sl);
}

/* Binary heap of cursor indexes ordered by their current key. */
static uint64_t scan_head(const scan_cur *c, size_t j) { return c[j].keys[c[j].i]; }

static void scan_sift(const scan_cur *c, size_t *heap, size_t n, size_t at) {
    for (;;) {
        size_t l = 2 * at + 1, m = at, t;
        if (l < n && scan_head(c, heap[l]) < scan_head(c, heap[m])) m = l;
        if (l + 1 < n && scan_head(c, heap[l + 1]) < scan_head(c, heap[m])) m = l + 1;
        if (m == at) return;
        t = heap[m], heap[m] = heap[at], heap[at] = t;
        at = m;
    }
}

int kvidx_scan(kvidx *db, uint64_t from, uint64_t to, kvidx_scan_fn fn, void *ud) {
    int rc = db_check(db);
    size_t per, ns, i, nh = 0, *heap = NULL, want = KVIDX_SCAN_FIRST, maxb;
    scan_cur *cur = NULL;
    scan_item *it = NULL;
    scan_sec *sec = NULL;
    uint64_t *keys = NULL;
    if (rc) return rc;
    if (!fn || from > to) return KVIDX_EINVAL;
    ns = db->nshards;
    /* Keys per cursor refill: KVIDX_SCAN_BATCH split over the shards,
     * 8..64; values per batch: up to KVIDX_SCAN_BATCH / 8. */
    per = KVIDX_SCAN_BATCH / ns;
    per = per < 8 ? 8 : per > 64 ? 64 : per;
    maxb = KVIDX_SCAN_BATCH / 8;
    cur = os_calloc(ns, sizeof *cur);
    heap = os_calloc(ns, sizeof *heap);
    keys = os_malloc(ns * per * sizeof *keys);
    sec = os_malloc((maxb < ns ? maxb : ns) * sizeof *sec);
    it = os_malloc(maxb * sizeof *it);
    if (!cur || !heap || !keys || !sec || !it) {
        rc = KVIDX_ENOMEM;
        goto out;
    }
    for (i = 0; i < ns; i++) {
        cur[i].sec = -1;
        cur[i].keys = keys + i * per;
        cur[i].next = from;
        scan_refill(&db->sh[i], &cur[i], to, per);
        if (cur[i].n) heap[nh++] = i;
    }
    for (i = nh; i-- > 0;) scan_sift(cur, heap, nh, i);
    while (nh && !rc) {
        size_t nb = 0, nsec = 0, k;
        /* The next batch of keys, in order, and the shards it touches. */
        while (nh && nb < want) {
            size_t sh = heap[0];
            scan_cur *c = &cur[sh];
            if (c->sec < 0) {
                c->sec = (int)nsec;
                sec[nsec++].s = &db->sh[sh];
            }
            it[nb].key = c->keys[c->i];
            it[nb++].sec = (uint32_t)c->sec;
            if (++c->i == c->n) {
                if (!c->done) scan_refill(&db->sh[sh], c, to, per);
                if (c->i == c->n) {
                    heap[0] = heap[--nh];
                    if (!nh) break;
                }
            }
            scan_sift(cur, heap, nh, 0);
        }
        scan_fetch(it, nb, sec, nsec);
        for (k = 0; k < nsec; k++) cur[sec[k].s->id].sec = -1;
        for (k = 0; k < nb; k++) {
            if (it[k].len == SCAN_GONE) continue;
            if (it[k].diff) {
                rc = KVIDX_ECORRUPT; /* every key below was delivered */
                break;
            }
            if (fn(ud, it[k].key, it[k].val, it[k].len)) goto out;
        }
        want = want * 2 < maxb ? want * 2 : maxb; /* short scans fetch little */
    }
out:
    os_free(cur);
    os_free(heap);
    os_free(keys);
    os_free(sec);
    os_free(it);
    return rc;
}

/* A list scan merges one cursor of (key, count) pairs per shard, like
 * kvidx_scan; the counts come with the keys, so there is nothing more to
 * fetch, and the callback runs on the copies with nothing held. */
int kvidx_list_scan(kvidx *db, uint64_t from, uint64_t to, kvidx_list_scan_fn fn, void *ud) {
    int rc = db_check(db);
    size_t per, ns, i, nh = 0, *heap = NULL;
    scan_cur *cur = NULL;
    uint64_t *keys = NULL, *counts = NULL;
    if (rc) return rc;
    if (!fn || from > to) return KVIDX_EINVAL;
    ns = db->nshards;
    per = KVIDX_SCAN_BATCH / ns;
    per = per < 8 ? 8 : per > 64 ? 64 : per;
    cur = os_calloc(ns, sizeof *cur);
    heap = os_calloc(ns, sizeof *heap);
    keys = os_malloc(ns * per * sizeof *keys);
    counts = os_malloc(ns * per * sizeof *counts);
    if (!cur || !heap || !keys || !counts) {
        rc = KVIDX_ENOMEM;
        goto out;
    }
    for (i = 0; i < ns; i++) {
        cur[i].keys = keys + i * per;
        cur[i].counts = counts + i * per;
        cur[i].next = from;
        ls_refill(&db->sh[i], &cur[i], to, per);
        if (cur[i].n) heap[nh++] = i;
    }
    for (i = nh; i-- > 0;) scan_sift(cur, heap, nh, i);
    while (nh) {
        size_t sh = heap[0];
        scan_cur *c = &cur[sh];
        uint64_t key = c->keys[c->i], count = c->counts[c->i];
        if (++c->i == c->n) {
            if (!c->done) ls_refill(&db->sh[sh], c, to, per);
            if (c->i == c->n) heap[0] = heap[--nh];
        }
        if (nh) scan_sift(cur, heap, nh, 0);
        if (fn(ud, key, count)) break;
    }
out:
    os_free(cur);
    os_free(heap);
    os_free(keys);
    os_free(counts);
    return rc;
}

/* ======================================================================
 * 8. Maintenance
 * ====================================================================== */

/* ---- compaction ---------------------------------------------------------
 * A shard is compacted into its next generation: new files holding only
 * what is live, written beside the old ones; the rename of the new
 * buffer file (sNNNN.g+1.b.tmp -> .b) is the commit (open takes each
 * shard's highest generation that has a buffer file, and deletes the
 * files of any other). Readers go on throughout: the maps' entries are
 * repointed at the new slots one side at a time through the Left-Right
 * publish, each side with the store its slots refer to. Writers of the
 * shard wait (it holds smu and mu); writers of other shards do not. */

typedef struct cp_file {
    int fd;
    char name[48];
} cp_file;

/* The new generation being written. */
typedef struct cp_gen {
    uint32_t gen;
    cp_file k, v, b, l;  /* b is written as .b.tmp */
    vs_store *vs;        /* its store: bmap = the new buffer; vmap filled at the end */
    uint8_t *kbuf;       /* key records being staged */
    uint64_t nrec, kstaged, next_slot, bsec, lsnap;
} cp_gen;

#define CP_KBUF_RECS 32768u /* 1 MiB of key records per write */

static int cp_open(kvidx *db, cp_file *f, uint32_t id, uint32_t gen, const char *ext) {
    snprintf(f->name, sizeof f->name, "s%04u.%u.%s", (unsigned)id, (unsigned)gen, ext);
    f->fd = os_open(db->dirfd, f->name, O_RDWR | O_CREAT | O_TRUNC, 0644);
    return f->fd < 0 ? os_rc(f->fd) : KVIDX_OK;
}

/* Writes the staged key records. */
static int cp_kflush(cp_gen *g) {
    uint64_t n = g->kstaged;
    int r;
    if (!n) return KVIDX_OK;
    r = os_pwrite(g->k.fd, g->kbuf, n * VS_REC, VS_PAGE + (g->nrec - n) * VS_REC);
    g->kstaged = 0;
    return os_rc(r);
}

/* Writes the new buffer's full section to the new value log. */
static int cp_vflush(cp_gen *g) {
    int r = os_pwrite(g->v.fd, g->vs->bmap + VS_PAGE, VS_VSEC_BYTES, VS_PAGE + g->bsec * VS_VSEC_BYTES);
    if (r) return os_rc(r);
    g->bsec++;
    return KVIDX_OK;
}

/* Appends key's entry e (value at src, checked) to the new generation;
 * *slot = its new slot. */
static int cp_add(cp_gen *g, const lr_ent *e, const uint8_t *src, uint32_t epoch, uint32_t *slot) {
    vs_rec r;
    int rc;
    r.key = e->key, r.len = e->len, r.flags = 0, r.vsum = e->vsum, r.epoch = epoch;
    r.slot = VS_NOSLOT;
    if (e->len) {
        if ((g->next_slot >> VS_SEC_SHIFT) != g->bsec && (rc = cp_vflush(g))) return rc;
        memcpy(g->vs->bmap + VS_PAGE + (g->next_slot & (VS_SEC_N - 1)) * VS_SLOT, src, e->len);
        r.slot = (uint32_t)g->next_slot++;
    }
    vs_rec_encode(g->kbuf + g->kstaged * VS_REC, &r);
    g->kstaged++, g->nrec++;
    *slot = r.slot;
    return g->kstaged == CP_KBUF_RECS ? cp_kflush(g) : KVIDX_OK;
}

/* Writes generation s->gen + 1 of shard s: the live values of map[side]
 * in key order (keys[i] gets slots[i]), the list snapshot and an empty
 * list log, all synced, the buffer file still under its temporary name.
 * Writer (smu and mu held). */
static int cp_write(kvidx *db, vs_shard *s, cp_gen *g, const uint64_t *keys, uint32_t *slots,
                    uint64_t n) {
    const lr_map *m = &s->map[s->lr->side];
    uint8_t page[VS_PAGE];
    vs_shard tmp;
    vs_state st;
    uint64_t i;
    int rc, err = 0;
    memset(page, 0, sizeof page);
    vs_fhdr_encode(page, VS_MAGIC_K, s->id, db->nshards, g->gen);
    vs_hdr_seal(page);
    if ((rc = cp_open(db, &g->k, s->id, g->gen, "k")) || (rc = os_rc(os_pwrite(g->k.fd, page, VS_PAGE, 0))))
        return rc;
    vs_fhdr_encode(page, VS_MAGIC_V, s->id, db->nshards, g->gen);
    vs_hdr_seal(page);
    if ((rc = cp_open(db, &g->v, s->id, g->gen, "v")) || (rc = os_rc(os_pwrite(g->v.fd, page, VS_PAGE, 0))))
        return rc;
    /* The buffer file is written through a mapping: its blocks are
     * reserved first, so a full disk is KVIDX_EFULL here, not a SIGBUS. */
    if ((rc = cp_open(db, &g->b, s->id, g->gen, "b.tmp")) ||
        (rc = os_rc(os_fallocate(g->b.fd, 0, VS_PAGE + VS_VSEC_BYTES))))
        return rc;
    g->vs->bmap = os_mmap(g->b.fd, 0, VS_PAGE + VS_VSEC_BYTES, 1, &err);
    if (!g->vs->bmap) return os_rc(err);
    if (!(g->kbuf = os_malloc(CP_KBUF_RECS * VS_REC))) return KVIDX_ENOMEM;
    for (i = 0; i < n; i++) {
        const lr_ent *e = lr_map_get(m, keys[i], ck_key(keys[i]));
        const uint8_t *src = NULL;
        if (!e) return KVIDX_EIO; /* the map's tree and table disagree: a bug */
        if (e->len) {
            src = vs_slot_ptr(s->vs, s->vs->bsec, e->slot);
            if (ck_value(src, e->len) != e->vsum) { /* never copy damage into the new files */
                db_log(db, "shard %u: compaction: the value of key %llu fails its checksum (slot %u)",
                       (unsigned)s->id, (unsigned long long)keys[i], (unsigned)e->slot);
                return KVIDX_ECORRUPT;
            }
        }
        if ((rc = cp_add(g, e, src, s->st.epoch, &slots[i]))) return rc;
    }
    if ((rc = cp_kflush(g))) return rc;
    /* A full last section goes to the log: the buffer then holds the next. */
    if (g->next_slot && (g->next_slot >> VS_SEC_SHIFT) != g->bsec && (rc = cp_vflush(g))) return rc;
    /* Always a snapshot, empty or not: it carries the list sequence number
     * the new log's first record follows. */
    if ((rc = ls_snapshot_write(db, s, g->gen, &g->lsnap))) return rc;
    if ((rc = ls_create_log(db, s->id, g->gen))) return rc;
    snprintf(g->l.name, sizeof g->l.name, "s%04u.%u.l", (unsigned)s->id, (unsigned)g->gen);
    g->l.fd = os_open(db->dirfd, g->l.name, O_RDWR, 0);
    if (g->l.fd < 0) return os_rc(g->l.fd);
    memset(&tmp, 0, sizeof tmp);
    tmp.id = s->id, tmp.gen = g->gen;
    memset(&st, 0, sizeof st);
    st.seq = 1, st.section = g->bsec, st.synced = g->nrec, st.epoch = s->st.epoch;
    st.lsynced = LS_LOG_HDR;
    vs_state_encode(g->vs->bmap, &tmp, db->nshards, &st);
    g->vs->bsec = g->bsec;
    for (i = 0; i < g->bsec; i += VS_VMAP_SECS)
        if ((rc = vs_vmap_ensure(g->vs, g->v.fd, i))) return rc;
    if ((rc = os_rc(os_fdatasync(g->k.fd))) || (rc = os_rc(os_fdatasync(g->v.fd))) ||
        (rc = os_rc(os_msync(g->vs->bmap, VS_PAGE + VS_VSEC_BYTES))) || (rc = os_rc(os_fsync(g->b.fd))))
        return rc;
    /* Every new file's directory entry durable before the commit names
     * the generation: a power cut must not keep the rename without them. */
    return os_rc(os_fsync(db->dirfd));
}

/* Unlinks the files of generation gen of shard id (those that exist). */
static void cp_unlink_gen(kvidx *db, uint32_t id, uint32_t gen) {
    static const char *const ext[] = {"k", "v", "b", "b.tmp", "l", "ls", "ls.tmp"};
    unsigned i;
    for (i = 0; i < sizeof ext / sizeof *ext; i++) {
        char name[48];
        snprintf(name, sizeof name, "s%04u.%u.%s", (unsigned)id, (unsigned)gen, ext[i]);
        os_unlinkat(db->dirfd, name);
    }
}

/* Points every entry of map m at its new slot (keys[i] -> slots[i]). */
static void cp_repoint(lr_map *m, const uint64_t *keys, const uint32_t *slots, uint64_t n) {
    uint64_t i;
    for (i = 0; i < n; i++) {
        lr_ent *e = lr_ht_find(&m->ht, keys[i], ck_key(keys[i]));
        e->slot = slots[i];
    }
}

/* Compacts shard s (see above). On failure before the commit the new
 * files are removed and the shard goes on as it was; a failure to make
 * the commit durable (the directory sync) leaves the shard on the new
 * generation with a sticky write error. */
static int vs_compact(kvidx *db, vs_shard *s) {
    cp_gen g;
    uint64_t *keys = NULL, n, got;
    uint32_t *slots = NULL, old_gen = s->gen;
    vs_store *old;
    unsigned side;
    int rc, kfd, vfd, bfd, lfd;
    uint64_t t0;
    memset(&g, 0, sizeof g);
    g.k.fd = g.v.fd = g.b.fd = g.l.fd = -1;
    pthread_mutex_lock(&db->bk_mu);
    pthread_mutex_lock(&s->smu);
    pthread_mutex_lock(&s->mu);
    t0 = os_now_ns();
    rc = s->err;
    if (!rc && s->gen == UINT32_MAX) rc = KVIDX_EFULL;
    n = s->map[s->lr->side].ht.n;
    g.gen = s->gen + 1;
    if (!rc && (!(keys = os_malloc(n * sizeof *keys)) || !(slots = os_malloc(n * sizeof *slots)) ||
                !(g.vs = vs_store_new())))
        rc = KVIDX_ENOMEM;
    if (!rc) {
        got = lr_bt_collect(&s->map[s->lr->side].bt, 0, UINT64_MAX, keys, n);
        if (got != n) rc = KVIDX_EIO; /* the map's tree and table disagree: a bug */
    }
    if (!rc) rc = cp_write(db, s, &g, keys, slots, n);
    if (!rc) {
        char name[48];
        snprintf(name, sizeof name, "s%04u.%u.b", (unsigned)s->id, (unsigned)g.gen);
        rc = os_rc(os_renameat(db->dirfd, g.b.name, name)); /* the commit */
    }
    os_free(g.kbuf);
    if (rc) {
        os_close(g.k.fd), os_close(g.v.fd), os_close(g.b.fd), os_close(g.l.fd);
        vs_store_free(g.vs);
        cp_unlink_gen(db, s->id, g.gen);
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&s->smu);
        pthread_mutex_unlock(&db->bk_mu);
        os_free(keys), os_free(slots);
        return rc;
    }
    /* Committed. Repoint the side readers do not use, publish it, wait for
     * the readers of the other, repoint that one. */
    side = s->lr->side;
    cp_repoint(&s->map[side ^ 1], keys, slots, n);
    __atomic_store_n(&s->rs[side ^ 1], g.vs, __ATOMIC_RELEASE);
    __atomic_store_n(&s->lr->side, side ^ 1, __ATOMIC_SEQ_CST);
    lr_wait_readers(s->lr);
    cp_repoint(&s->map[side], keys, slots, n);
    __atomic_store_n(&s->rs[side], g.vs, __ATOMIC_RELEASE);
    old = s->vs;
    kfd = s->kfd, vfd = s->vfd, bfd = s->bfd, lfd = s->lfd;
    os_munmap(s->kmap, VS_KSEC_BYTES);
    s->vs = g.vs;
    s->kfd = g.k.fd, s->vfd = g.v.fd, s->bfd = g.b.fd, s->lfd = g.l.fd;
    s->gen = g.gen;
    s->kmap = NULL, s->ksec = UINT64_MAX;
    s->kpos = s->durable = g.nrec;
    s->kalloc = s->balloc = 0; /* the next writes reserve again */
    s->next_slot = s->live_slots = g.next_slot;
    s->st.seq = 1, s->st.section = g.bsec, s->st.synced = g.nrec; /* epoch stays */
    s->st.lnone = 0;
    s->hslot = 0, s->st_dirty = 0;
    s->lpos = s->ldurable = s->st.lsynced = LS_LOG_HDR;
    s->ltrunc++;
    s->lsnap_bytes = g.lsnap, s->lsnap_retry = 0;
    s->dseq = s->wseq;
    vs_trim(s); /* the new buffer was reserved whole; keep only its used part, as close does */
    s->vdirect = os_set_direct(s->vfd, 1) == 0;
    if (!s->vdirect)
        db_log(db, "shard %u: O_DIRECT refused by the file system, value log uses buffered IO", (unsigned)s->id);
    s->compactions++;
    s->cp_retry = 0;
    if (os_fsync(db->dirfd)) rc = vs_fail_sync(s); /* the commit may not survive a power cut */
    t0 = (os_now_ns() - t0) / 1000000u;
    if (t0 > s->compact_ms_max) s->compact_ms_max = t0;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->smu);
    pthread_mutex_unlock(&db->bk_mu);
    vs_store_free(old);
    os_close(kfd), os_close(vfd), os_close(bfd), os_close(lfd);
    cp_unlink_gen(db, s->id, old_gen);
    (void)os_fsync(db->dirfd); /* if the unlinks come back after a power cut, open removes them */
    os_free(keys), os_free(slots);
    return rc;
}

/* ---- check ------------------------------------------------------------------
 * kvidx_check opens the database read only, which verifies every header,
 * the shard states, every key record up to the end of the log, the value
 * log's length, the list snapshot (every entry) and the list log, and
 * rebuilds the maps; the open logs where it found damage. Then it checks
 * what an open takes on trust: every key record's value against its
 * checksum, the two maps against each other, and the list trees. */

/* Checks the subtree nd (leaves of kind leaf: LS_IDS in a list, LS_KEYS in
 * the key index, whose lists it checks too): keys ascending across leaves
 * (*prev, *first), inner nodes' first keys and counts exact, leaves at one
 * depth, node sizes in range. *count += the ids (or lists) below; *ids +=
 * the ids of the lists below (LS_KEYS). Returns the height (leaves 0), or
 * -1 if broken. */
static int ls_tree_check(const ls_node *nd, unsigned leaf, uint64_t *prev, int *first, uint64_t *count,
                         uint64_t *ids) {
    unsigned i;
    int h = -2;
    if (nd->kind == LS_IDS && leaf == LS_IDS) {
        if (nd->n == 0 || nd->n > KVIDX_LS_LEAF || nd->width < 1 || nd->width > 8) return -1;
        if (nd->n > 1 && ((ls_id(nd, nd->n - 1) - nd->x) & ~ls_mask(nd->width))) return -1;
        for (i = 0; i < nd->n; i++) {
            uint64_t id = ls_id(nd, i);
            if (!*first && id <= *prev) return -1;
            *first = 0, *prev = id;
        }
        *count += nd->n;
        return 0;
    }
    if (nd->kind == LS_KEYS && leaf == LS_KEYS) {
        if (nd->n == 0 || nd->n > KVIDX_LS_FAN || nd->x != nd->n) return -1;
        for (i = 0; i < nd->n; i++) {
            const ls_node *root = ls_ptr(nd, i);
            uint64_t p = 0, c = 0;
            int f = 1;
            if (!*first && nd->u[i] <= *prev) return -1;
            *first = 0, *prev = nd->u[i];
            if (!root || (root->kind == LS_INNER && root->n < 2)) return -1;
            if (ls_tree_check(root, LS_IDS, &p, &f, &c, NULL) < 0 || c != ls_count(root)) return -1;
            *ids += c;
        }
        *count += nd->n;
        return 0;
    }
    if (nd->kind != LS_INNER || nd->n == 0 || nd->n > KVIDX_LS_FAN) return -1;
    {
        uint64_t below = 0;
        for (i = 0; i < nd->n; i++) {
            const ls_node *c = ls_ptr(nd, i);
            int ch;
            if (nd->u[i] != (c->kind == LS_IDS ? c->x : c->u[0])) return -1;
            ch = ls_tree_check(c, leaf, prev, first, &below, ids);
            if (ch < 0 || (h != -2 && ch != h)) return -1;
            h = ch;
        }
        if (below != nd->x) return -1;
        *count += below;
    }
    return h + 1;
}

/* Reports one problem of shard s (the first 10 of a shard; the others
 * are counted). */
static void ck_problem(const kvidx *db, const vs_shard *s, uint64_t *n, const char *what, uint64_t a,
                       uint64_t b) {
    if ((*n)++ < 10)
        db_log(db, "shard %u: damage: s%04u.%u: %s (%llu, %llu)", (unsigned)s->id, (unsigned)s->id,
               (unsigned)s->gen, what, (unsigned long long)a, (unsigned long long)b);
}

/* Checks shard s of a read-only handle (see above); returns the problems
 * found; *err: KVIDX_ENOMEM or KVIDX_EIO if the check itself could not
 * finish. */
static uint64_t ck_shard(kvidx *db, vs_shard *s, int *err) {
    const uint64_t chunk = 32768;
    uint8_t *buf = os_malloc(chunk * VS_REC);
    uint64_t bad = 0, pos, i, *keys = NULL, n;
    unsigned side;
    if (!buf) {
        *err = KVIDX_ENOMEM;
        return 0;
    }
    /* Every record's value, live or not: slots are never reused. */
    for (pos = 0; pos < s->kpos && !bad; pos += chunk) {
        uint64_t m = s->kpos - pos < chunk ? s->kpos - pos : chunk;
        if (os_pread(s->kfd, buf, m * VS_REC, VS_PAGE + pos * VS_REC)) {
            *err = KVIDX_EIO;
            break;
        }
        for (i = 0; i < m; i++) {
            vs_rec r;
            if (!vs_rec_decode(buf + i * VS_REC, &r)) ck_problem(db, s, &bad, "key record changed since open", pos + i, 0);
            else if (r.slot != VS_NOSLOT && ck_value(vs_slot_ptr(s->vs, s->vs->bsec, r.slot), r.len) != r.vsum)
                ck_problem(db, s, &bad, "the value of key record (record, key) fails its checksum", pos + i, r.key);
        }
    }
    os_free(buf);
    /* The maps: each side's tree holds exactly its table's keys, ascending,
     * and the two sides hold the same entries. */
    n = s->map[0].ht.n;
    if (s->map[1].ht.n != n) ck_problem(db, s, &bad, "the two maps hold different counts", n, s->map[1].ht.n);
    keys = os_malloc((n + 1) * sizeof *keys);
    for (side = 0; keys && side < 2; side++) {
        uint64_t got = lr_bt_collect(&s->map[side].bt, 0, UINT64_MAX, keys, n + 1);
        if (got != n) ck_problem(db, s, &bad, "a map's tree and table hold different counts (side, keys)", side, got);
        for (i = 0; i < got; i++) {
            const lr_ent *e = lr_map_get(&s->map[side], keys[i], ck_key(keys[i]));
            const lr_ent *o = lr_map_get(&s->map[side ^ 1], keys[i], ck_key(keys[i]));
            if (i && keys[i] <= keys[i - 1]) ck_problem(db, s, &bad, "a map's tree is out of order (side, key)", side, keys[i]);
            if (!e || !o || e->slot != o->slot || e->len != o->len || e->vsum != o->vsum)
                ck_problem(db, s, &bad, "the maps disagree on a key (side, key)", side, keys[i]);
        }
    }
    if (!keys) *err = KVIDX_ENOMEM;
    os_free(keys);
    /* The lists. */
    if (s->lroot) {
        uint64_t prev = 0, lists = 0, ids = 0;
        int first = 1;
        if (ls_tree_check(s->lroot, LS_KEYS, &prev, &first, &lists, &ids) < 0)
            ck_problem(db, s, &bad, "the list index is malformed (lists, ids)", s->lists, s->lids);
        else if (lists != s->lists || ids != s->lids)
            ck_problem(db, s, &bad, "the lists disagree with their counts (lists, ids)", lists, ids);
    }
    return bad;
}

int kvidx_check_report(const char *dir, kvidx_log_fn fn, void *ud) {
    kvidx_options o;
    kvidx *db;
    uint64_t bad = 0;
    uint32_t i;
    int rc, err = 0;
    kvidx_options_init(&o);
    o.flags = KVIDX_RDONLY, o.sync_interval_ms = 0, o.compact_pct = 0;
    o.log = fn, o.log_ud = ud;
    if ((rc = kvidx_open(dir, &o, &db))) return rc;
    for (i = 0; i < db->nshards && !err; i++) bad += ck_shard(db, &db->sh[i], &err);
    kvidx_close(db);
    return err ? err : bad ? KVIDX_ECORRUPT : KVIDX_OK; /* err: the check could not finish */
}

int kvidx_check(const char *dir) { return kvidx_check_report(dir, NULL, NULL); }

/* ---- backup -----------------------------------------------------------------
 * One moment: with every shard's smu and mu held (writers wait, for as
 * long as it takes to copy the buffers' used parts), each shard's
 * positions are taken, its buffer copied, its files' descriptors
 * duplicated (a compaction can then unlink nothing from under the copy:
 * it waits for bk_mu anyway) and list-log cuts held off (backing_up).
 * Then, with the writers going on, the files are copied up to those
 * positions: key records, value sections and the list log are append-only
 * below them. The copy gets its own shard state (everything durable) and
 * finally its header, so it is a database only once complete. */

typedef struct bk_shard {
    int kfd, vfd, lfd, sfd; /* duplicates, -1: none */
    uint32_t gen, epoch;
    uint64_t kpos, bsec, lpos;
    uint8_t *buf;           /* the buffer section's used part */
    uint64_t blen;
} bk_shard;

#define BK_CHUNK ((uint64_t)1 << 20)

/* Copies len bytes at off of fd from to the same offset of fd to. */
static int bk_copy(int from, int to, uint64_t off, uint64_t len, uint8_t *tmp) {
    while (len) {
        uint64_t n = len < BK_CHUNK ? len : BK_CHUNK;
        int r = os_pread(from, tmp, n, off);
        if (!r) r = os_pwrite(to, tmp, n, off);
        if (r) return os_rc(r);
        off += n, len -= n;
    }
    return KVIDX_OK;
}

/* Writes shard i's files into directory dfd. */
static int bk_write_shard(kvidx *db, int dfd, uint32_t i, const bk_shard *b, uint8_t *tmp) {
    char name[48];
    int fd, rc;
    uint8_t page[VS_PAGE];
    vs_shard sh;
    vs_state st;
    static const char ext[] = "kvbl";
    unsigned e;
    for (e = 0; e < 5; e++) {
        int src = e == 0 ? b->kfd : e == 1 ? b->vfd : e == 3 ? b->lfd : e == 4 ? b->sfd : -1;
        if (e == 4 && src < 0) break; /* no snapshot */
        if (e < 4) vs_name(name, sizeof name, i, b->gen, ext[e]);
        else snprintf(name, sizeof name, "s%04u.%u.ls", (unsigned)i, (unsigned)b->gen);
        fd = os_open(dfd, name, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return os_rc(fd);
        switch (e) {
        case 0: rc = bk_copy(src, fd, 0, VS_PAGE + b->kpos * VS_REC, tmp); break;
        case 1: rc = bk_copy(src, fd, 0, VS_PAGE + b->bsec * VS_VSEC_BYTES, tmp); break;
        case 2:
            memset(page, 0, sizeof page);
            memset(&sh, 0, sizeof sh);
            memset(&st, 0, sizeof st);
            sh.id = i, sh.gen = b->gen;
            st.seq = 1, st.section = b->bsec, st.synced = b->kpos, st.epoch = b->epoch, st.lsynced = b->lpos;
            vs_state_encode(page, &sh, db->nshards, &st);
            rc = os_rc(os_pwrite(fd, page, VS_PAGE, 0));
            if (!rc && b->blen) rc = os_rc(os_pwrite(fd, b->buf, b->blen, VS_PAGE));
            if (!rc) rc = os_rc(os_ftruncate(fd, VS_PAGE + VS_VSEC_BYTES));
            break;
        case 3:
            if (src >= 0) {
                rc = bk_copy(src, fd, 0, b->lpos, tmp);
                break;
            }
            memset(page, 0, LS_LOG_HDR); /* a read-only handle on a 0.1 shard: an empty log */
            vs_fhdr_encode(page, LS_MAGIC_L, i, db->nshards, b->gen);
            vs_hdr_seal(page);
            rc = os_rc(os_pwrite(fd, page, LS_LOG_HDR, 0));
            break;
        default: {
            struct stat sst;
            rc = fstat(src, &sst) ? os_rc(-errno) : bk_copy(src, fd, 0, (uint64_t)sst.st_size, tmp);
        }
        }
        if (!rc) rc = os_rc(os_fsync(fd));
        os_close(fd);
        if (rc) return rc;
    }
    return KVIDX_OK;
}

/* Takes the moment (see above) into bk[0, nshards). */
static int bk_capture(kvidx *db, bk_shard *bk) {
    uint32_t i;
    int rc = KVIDX_OK;
    for (i = 0; i < db->nshards; i++) pthread_mutex_lock(&db->sh[i].smu);
    for (i = 0; i < db->nshards; i++) pthread_mutex_lock(&db->sh[i].mu);
    for (i = 0; i < db->nshards && !rc; i++) {
        vs_shard *s = &db->sh[i];
        bk_shard *b = &bk[i];
        uint64_t used = s->next_slot - (s->vs->bsec << VS_SEC_SHIFT); /* slots in the buffer */
        b->gen = s->gen, b->epoch = s->st.epoch;
        b->kpos = s->kpos, b->bsec = s->vs->bsec, b->lpos = s->lpos;
        b->blen = used * VS_SLOT;
        if (s->err) rc = s->err; /* the shard's files may not be what it says */
        if (!rc && b->blen && !(b->buf = os_malloc(b->blen))) rc = KVIDX_ENOMEM;
        if (!rc && b->blen) memcpy(b->buf, s->vs->bmap + VS_PAGE, b->blen);
        if (!rc && (b->kfd = os_dup(s->kfd)) < 0) rc = os_rc(b->kfd);
        if (!rc && (b->vfd = os_dup(s->vfd)) < 0) rc = os_rc(b->vfd);
        if (!rc && s->lfd >= 0 && (b->lfd = os_dup(s->lfd)) < 0) rc = os_rc(b->lfd);
        if (!rc && s->lsnap_bytes) {
            char name[48];
            ls_name(name, sizeof name, s, "ls");
            if ((b->sfd = os_open(db->dirfd, name, O_RDONLY, 0)) < 0) rc = os_rc(b->sfd);
        }
    }
    if (!rc) __atomic_store_n(&db->backing_up, 1, __ATOMIC_RELAXED); /* under every mu */
    for (i = db->nshards; i-- > 0;) pthread_mutex_unlock(&db->sh[i].mu);
    for (i = db->nshards; i-- > 0;) pthread_mutex_unlock(&db->sh[i].smu);
    return rc;
}

int kvidx_backup(kvidx *db, const char *dest) {
    bk_shard *bk;
    kvidx hd;
    uint8_t *mem = NULL, *tmp;
    uint32_t i;
    int rc = db_check(db), dfd = -1, fd, empty;
    struct stat st;
    if (rc) return rc;
    if (!dest || !*dest) return KVIDX_EINVAL;
    if (stat(dest, &st)) {
        if (errno != ENOENT) return os_rc(-errno);
        if ((rc = os_mkdir(dest))) return rc == -ENOENT ? KVIDX_EINVAL : os_rc(rc);
    } else if (!S_ISDIR(st.st_mode)) {
        return KVIDX_EINVAL;
    }
    dfd = os_open(AT_FDCWD, dest, O_RDONLY | O_DIRECTORY, 0);
    if (dfd < 0) return os_rc(dfd);
    empty = db_dir_is_empty(dfd);
    fd = os_open(dfd, DB_LOCK_NAME, O_RDONLY, 0);
    if (empty <= 0 || fd >= 0) { /* something there already: a backup never overwrites */
        os_close(fd), os_close(dfd);
        return empty < 0 ? os_rc(empty) : KVIDX_EINVAL;
    }
    if (!(bk = os_calloc(db->nshards, sizeof *bk)) || !(mem = os_malloc(BK_CHUNK + VS_PAGE))) {
        os_free(bk), os_close(dfd);
        return KVIDX_ENOMEM;
    }
    /* aligned: the value log's descriptor reads with O_DIRECT */
    tmp = (uint8_t *)(((uintptr_t)mem + VS_PAGE - 1) & ~(uintptr_t)(VS_PAGE - 1));
    for (i = 0; i < db->nshards; i++) bk[i].kfd = bk[i].vfd = bk[i].lfd = bk[i].sfd = -1;
    pthread_mutex_lock(&db->bk_mu);
    rc = bk_capture(db, bk);
    for (i = 0; !rc && i < db->nshards; i++) rc = bk_write_shard(db, dfd, i, &bk[i], tmp);
    __atomic_store_n(&db->backing_up, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&db->bk_mu);
    for (i = 0; i < db->nshards; i++) {
        os_close(bk[i].kfd), os_close(bk[i].vfd), os_close(bk[i].lfd), os_close(bk[i].sfd);
        os_free(bk[i].buf);
    }
    os_free(bk), os_free(mem);
    if (!rc) { /* the lock file, then the header: now it is a database */
        fd = os_open(dfd, DB_LOCK_NAME, O_RDWR | O_CREAT, 0644);
        rc = fd < 0 ? os_rc(fd) : KVIDX_OK;
        os_close(fd);
    }
    if (!rc) rc = os_rc(os_fsync(dfd));
    if (!rc) {
        memset(&hd, 0, sizeof hd);
        hd.dirfd = dfd, hd.nshards = db->nshards, hd.opt = db->opt;
        rc = db_hdr_write(&hd, 0);
    }
    os_close(dfd);
    return rc;
}

int kvidx_compact(kvidx *db) {
    uint32_t i;
    int rc = db_check(db);
    if (rc) return rc;
    if (db->flags & KVIDX_RDONLY) return KVIDX_ERDONLY;
    for (i = 0; i < db->nshards; i++) {
        int r = vs_compact(db, &db->sh[i]);
        if (r && !rc) rc = r;
    }
    return rc;
}

static uint64_t db_file_blocks(int fd, uint64_t *size) {
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) return 0;
    if (size) *size += (uint64_t)st.st_size;
    return (uint64_t)st.st_blocks * 512u;
}

/* Adds shard s's figures to *st (a snapshot of one moment: under s->mu). */
static void db_stat_shard(kvidx *db, vs_shard *s, kvidx_stats *st) {
    uint64_t keys;
    pthread_mutex_lock(&s->mu);
    if (!s->vdirect) st->flags &= ~(uint64_t)KVIDX_STAT_DIRECT_IO;
    keys = s->map[s->lr->side].ht.n;
    st->keys += keys;
    st->value_bytes += s->value_bytes;
    st->records += s->kpos;
    st->garbage_records += s->kpos - keys;
    st->slots += s->next_slot;
    st->garbage_slots += s->next_slot - s->live_slots;
    st->live_bytes += keys * VS_REC + s->live_slots * VS_SLOT;
    st->garbage_bytes += (s->kpos - keys) * VS_REC + (s->next_slot - s->live_slots) * VS_SLOT;
    st->disk_bytes += db_file_blocks(s->kfd, &st->key_log_bytes);
    st->disk_bytes += db_file_blocks(s->vfd, &st->value_log_bytes);
    st->disk_bytes += db_file_blocks(s->bfd, &st->buffer_bytes);
    st->map_bytes += lr_map_bytes(&s->map[0]) + lr_map_bytes(&s->map[1]);
    st->puts += s->puts;
    st->deletes += s->deletes;
    st->flushes += s->flushes;
    st->lists += s->lists;
    st->list_ids += s->lids;
    st->list_ram_bytes += s->lbytes;
    st->disk_bytes += db_file_blocks(s->lfd, &st->list_log_bytes);
    st->list_snapshot_bytes += s->lsnap_bytes;
    st->list_writes += s->lwrites;
    st->compactions += s->compactions;
    if (s->compact_ms_max > st->compact_ms_max) st->compact_ms_max = s->compact_ms_max;
    if (s->lsnap_bytes) { /* under the mutex: no snapshot is being renamed in */
        char name[48];
        struct stat ls;
        ls_name(name, sizeof name, s, "ls");
        if (fstatat(db->dirfd, name, &ls, 0) == 0) st->disk_bytes += (uint64_t)ls.st_blocks * 512u;
    }
    pthread_mutex_unlock(&s->mu);
}

/* kvidx_stat (shard == UINT32_MAX: all) and kvidx_stat_shard. */
static int db_stat(kvidx *db, uint32_t shard, kvidx_stats *out) {
    kvidx_stats st;
    uint32_t i;
    int rc = db_check(db);
    if (rc) return rc;
    if (!out || out->size < offsetof(kvidx_stats, flags)) return KVIDX_EINVAL;
    if (shard != UINT32_MAX && shard >= db->nshards) return KVIDX_EINVAL;
    memset(&st, 0, sizeof st);
    st.size = out->size < sizeof st ? out->size : (uint32_t)sizeof st;
    st.shards = db->nshards;
    st.flags = KVIDX_STAT_DIRECT_IO;
    st.shard = shard == UINT32_MAX ? UINT64_MAX : shard;
    for (i = 0; i < db->nshards; i++)
        if (shard == UINT32_MAX || shard == i) db_stat_shard(db, &db->sh[i], &st);
    if (shard == UINT32_MAX) {
        struct stat hs;
        if (fstatat(db->dirfd, DB_HDR_NAME, &hs, 0) == 0) st.disk_bytes += (uint64_t)hs.st_blocks * 512u;
    }
    st.syncs = __atomic_load_n(&db->syncs, __ATOMIC_RELAXED); /* pairs with db_sync_all: a count only */
    memcpy(out, &st, st.size);
    return KVIDX_OK;
}

int kvidx_stat(kvidx *db, kvidx_stats *out) { return db_stat(db, UINT32_MAX, out); }

int kvidx_stat_shard(kvidx *db, uint32_t shard, kvidx_stats *out) {
    return db_stat(db, shard == UINT32_MAX ? UINT32_MAX - 1 : shard, out);
}

/* ---- protocol: RESP2 requests over the application's transport -------- */

/* The application moves bytes; a session parses them into requests,
 * executes each through the public API (so the protocol adds no lock and
 * reads stay lock-free) and batches the replies into one write a feed.
 * The parser is incremental: its state survives a request cut anywhere,
 * and the bytes of an incomplete request are kept (at most RESP_REQ_MAX
 * plus the framing) until the rest arrives. docs/PROTOCOL.md is the
 * contract; the limits below are its table. */

#define RESP_BULK_MAX ((size_t)64 << 10)   /* longest bulk string argument */
#define RESP_ARGS_MAX ((long long)1 << 20) /* most arguments a request */
#define RESP_INLINE_MAX ((size_t)64 << 10) /* longest inline request line */
#define RESP_REQ_MAX ((size_t)64 << 20)    /* most argument bytes a request */
#define RESP_LINE_MAX 64                   /* longest "*N" / "$N" line */
#define RESP_OUT_CUT ((size_t)1 << 20)     /* a batch of replies is written at this size */
#define RESP_COUNT_MAX 100000              /* most keys/ids a SCAN/SSCAN reply holds */
#define RESP_NAME_MAX 40                   /* bytes of a name or member quoted in an error */

/* Parser states between feeds. */
enum { RESP_START, RESP_HDR, RESP_DATA, RESP_SKIP, RESP_INLINE_SKIP };

/* Errors of command helpers beside kvidx codes (-1..-11): which error
 * reply to send. */
#define RESP_ENOTINT (-100)  /* "value is not an integer or out of range" */
#define RESP_EOVERFLOW (-101) /* "increment or decrement would overflow" */

typedef struct resp_arg {
    size_t off, len; /* from the start of the request's bytes */
} resp_arg;

struct kvidx_session {
    kvidx *db;
    kvidx_transport t;
    uint8_t *in;           /* bytes of the request being read (and any after it) */
    size_t in_len, in_cap;
    size_t pos;            /* where parsing resumes in in */
    /* the request being read */
    int state;
    long long nargs;       /* elements of the array */
    long long argi;        /* elements read */
    size_t bulk;           /* RESP_DATA: bytes of the bulk; RESP_SKIP: bytes left to drop */
    size_t req_bytes;      /* argument bytes kept so far */
    const char *limit;     /* a limit was passed: the error reply; the request is dropped */
    resp_arg *args;
    size_t args_cap;
    /* the request being executed */
    const uint8_t **av;    /* argument pointers */
    size_t *al;            /* argument lengths */
    size_t av_cap;
    uint8_t *ibuf;         /* an inline request's words, unquoted */
    size_t ibuf_cap;
    /* replies not yet written */
    uint8_t *out;
    size_t out_len, out_cap;
    int oom;               /* a reply could not be buffered */
    int dead;              /* a non-OK feed ended the session */
    uint64_t id;           /* CLIENT ID */
    char *name;            /* CLIENT SETNAME */
    uint64_t commands, hits, misses; /* added to the db's counters each feed */
};

/* -- replies */

static int resp_room(kvidx_session *s, size_t n) {
    size_t cap;
    uint8_t *p;
    if (s->oom) return -1;
    if (s->out_cap - s->out_len >= n) return 0;
    cap = s->out_cap ? s->out_cap : 4096;
    while (cap - s->out_len < n) cap *= 2;
    p = os_realloc(s->out, cap);
    if (!p) {
        s->oom = 1;
        return -1;
    }
    s->out = p, s->out_cap = cap;
    return 0;
}

static void resp_raw(kvidx_session *s, const void *p, size_t n) {
    if (!n || resp_room(s, n)) return; /* p may be NULL when n == 0 */
    memcpy(s->out + s->out_len, p, n);
    s->out_len += n;
}

/* A "<c><number>\r\n" line: ':' integer, '*' array, '$' bulk length. */
static void resp_num(kvidx_session *s, char c, long long v) {
    char b[32];
    int n = snprintf(b, sizeof b, "%c%lld\r\n", c, v);
    resp_raw(s, b, (size_t)n);
}

static void resp_int(kvidx_session *s, long long v) { resp_num(s, ':', v); }
static void resp_arr(kvidx_session *s, size_t n) { resp_num(s, '*', (long long)n); }
static void resp_nil(kvidx_session *s) { resp_raw(s, "$-1\r\n", 5); }
static void resp_ok(kvidx_session *s) { resp_raw(s, "+OK\r\n", 5); }

static void resp_bulk(kvidx_session *s, const void *p, size_t n) {
    resp_num(s, '$', (long long)n);
    resp_raw(s, p, n);
    resp_raw(s, "\r\n", 2);
}

/* A uint64 as a bulk string: keys, ids and cursors. */
static void resp_u64(kvidx_session *s, uint64_t v) {
    char b[24];
    int n = snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    resp_bulk(s, b, (size_t)n);
}

static void resp_err(kvidx_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void resp_err(kvidx_session *s, const char *fmt, ...) {
    char b[256];
    va_list ap;
    size_t n, i;
    memcpy(b, "-ERR ", 5);
    va_start(ap, fmt);
    vsnprintf(b + 5, sizeof b - 7, fmt, ap);
    va_end(ap);
    n = strlen(b);
    for (i = 5; i < n; i++) /* an error is one line: quoted names may hold anything */
        if (b[i] == '\r' || b[i] == '\n') b[i] = ' ';
    memcpy(b + n, "\r\n", 2);
    resp_raw(s, b, n + 2);
}

/* The reply to a kvidx error code (or a RESP_E* of a helper). */
static void resp_fail(kvidx_session *s, int rc) {
    if (rc == RESP_ENOTINT) resp_err(s, "value is not an integer or out of range");
    else if (rc == RESP_EOVERFLOW) resp_err(s, "increment or decrement would overflow");
    else resp_err(s, "kvidx: %s", kvidx_strerror(rc));
}

/* Hands the buffered replies to the transport. Returns 0, or -1 when the
 * transport failed (or took nothing: it would never take the rest). */
static int resp_flush(kvidx_session *s) {
    size_t off = 0;
    while (off < s->out_len) {
        ptrdiff_t r = s->t.write(s->t.ctx, s->out + off, s->out_len - off);
        if (r <= 0 || (size_t)r > s->out_len - off) return -1;
        off += (size_t)r;
    }
    s->out_len = 0;
    if (s->out_cap > RESP_OUT_CUT * 4) { /* one huge reply: do not keep its buffer */
        os_free(s->out);
        s->out = NULL, s->out_cap = 0;
    }
    return 0;
}

/* -- arguments */

/* A string of 1 to 20 decimal digits whose value fits in uint64_t. */
static int resp_dec(const uint8_t *p, size_t n, uint64_t *v) {
    uint64_t x = 0;
    size_t i;
    if (n < 1 || n > 20) return -1;
    for (i = 0; i < n; i++) {
        unsigned d = (unsigned)p[i] - '0';
        if (d > 9) return -1;
        if (x > (UINT64_MAX - d) / 10) return -1;
        x = x * 10 + d;
    }
    *v = x;
    return 0;
}

/* A key string to its key: decimal, else XXH3-64 of the bytes. */
static uint64_t resp_key(const uint8_t *p, size_t n) {
    uint64_t k;
    return resp_dec(p, n, &k) ? XXH3_64bits(p, n) : k;
}

/* A strict int64 in decimal: -?[0-9]+, no '+', no leading zeros. */
static int resp_i64(const uint8_t *p, size_t n, long long *v) {
    int neg = n > 0 && p[0] == '-';
    uint64_t x;
    if (resp_dec(p + neg, n - (size_t)neg, &x)) return -1;
    if (n - (size_t)neg > 1 && p[neg] == '0') return -1;
    if (neg ? x > (uint64_t)LLONG_MAX + 1 : x > (uint64_t)LLONG_MAX) return -1;
    if (neg && x == 0) return -1; /* "-0" */
    *v = neg ? (long long)(0 - x) : (long long)x;
    return 0;
}

static int resp_is(const uint8_t *p, size_t n, const char *word) {
    size_t i;
    if (strlen(word) != n) return 0;
    for (i = 0; i < n; i++)
        if ((p[i] | 0x20) != word[i] && p[i] != word[i]) return 0;
    return 1;
}

/* Parses the ids av[from..ac) into *out (s->... scratch: the caller frees
 * *out). Replies with the error and returns -1 on a bad member. */
static int resp_ids(kvidx_session *s, int ac, int from, uint64_t **out) {
    uint64_t *ids = os_malloc((size_t)(ac - from) * sizeof *ids);
    int i;
    if (!ids) {
        resp_fail(s, KVIDX_ENOMEM);
        return -1;
    }
    for (i = from; i < ac; i++)
        if (resp_dec(s->av[i], s->al[i], &ids[i - from])) {
            resp_err(s, "member is not a decimal uint64 id: '%.*s'",
                     (int)(s->al[i] < RESP_NAME_MAX ? s->al[i] : RESP_NAME_MAX), (const char *)s->av[i]);
            os_free(ids);
            return -1;
        }
    *out = ids;
    return 0;
}

/* -- commands: each gets the arguments in s->av/s->al (av[0] the name) */

typedef void (*resp_cmd_fn)(kvidx_session *s, int ac);

static int resp_has_value(kvidx *db, uint64_t key) {
    size_t len;
    int rc = kvidx_get(db, key, NULL, 0, &len);
    return rc == KVIDX_OK || rc == KVIDX_ETOOBIG;
}

static void cmd_ping(kvidx_session *s, int ac) {
    if (ac > 2) resp_err(s, "wrong number of arguments for 'ping' command");
    else if (ac == 2) resp_bulk(s, s->av[1], s->al[1]);
    else resp_raw(s, "+PONG\r\n", 7);
}

static void cmd_echo(kvidx_session *s, int ac) {
    (void)ac;
    resp_bulk(s, s->av[1], s->al[1]);
}

static void cmd_quit(kvidx_session *s, int ac) {
    (void)ac;
    resp_ok(s);
    s->dead = KVIDX_CLOSED;
}

static void cmd_select(kvidx_session *s, int ac) {
    long long n;
    (void)ac;
    if (resp_i64(s->av[1], s->al[1], &n)) resp_err(s, "value is not an integer or out of range");
    else if (n != 0) resp_err(s, "DB index is out of range");
    else resp_ok(s);
}

static int dbsize_cb(void *ud, uint64_t key, uint64_t count) {
    void **a = ud;
    (void)count;
    if (resp_has_value(a[0], key)) ++*(uint64_t *)a[1];
    return 0;
}

static void cmd_dbsize(kvidx_session *s, int ac) {
    kvidx_stats st;
    uint64_t both = 0;
    void *a[2];
    int rc;
    (void)ac;
    st.size = sizeof st;
    a[0] = s->db, a[1] = &both;
    if ((rc = kvidx_stat(s->db, &st)) || (rc = kvidx_list_scan(s->db, 0, UINT64_MAX, dbsize_cb, a)))
        resp_fail(s, rc);
    else resp_int(s, (long long)(st.keys + st.lists - both));
}

/* A growable text for INFO. */
typedef struct resp_text {
    char *p;
    size_t len, cap;
    int oom;
} resp_text;

static void text_add(resp_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(resp_text *t, const char *fmt, ...) {
    va_list ap;
    int n;
    for (;;) {
        size_t room = t->cap - t->len;
        va_start(ap, fmt);
        n = vsnprintf(t->p ? t->p + t->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if ((size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        {
            size_t cap = t->cap ? t->cap * 2 : 1024;
            char *q;
            while (cap - t->len <= (size_t)n) cap *= 2;
            if (!(q = os_realloc(t->p, cap))) {
                t->oom = 1;
                return;
            }
            t->p = q, t->cap = cap;
        }
    }
}

/* Whether INFO's arguments ask for section name. */
static int info_wants(kvidx_session *s, int ac, const char *name) {
    int i;
    if (ac == 1) return 1;
    for (i = 1; i < ac; i++)
        if (resp_is(s->av[i], s->al[i], name) || resp_is(s->av[i], s->al[i], "all") ||
            resp_is(s->av[i], s->al[i], "everything") || resp_is(s->av[i], s->al[i], "default"))
            return 1;
    return 0;
}

static void cmd_info(kvidx_session *s, int ac) {
    kvidx *db = s->db;
    kvidx_stats st;
    resp_text t = {NULL, 0, 0, 0};
    int rc;
    st.size = sizeof st;
    if ((rc = kvidx_stat(db, &st))) {
        resp_fail(s, rc);
        return;
    }
#define RELAXED(x) (unsigned long long)__atomic_load_n(&db->x, __ATOMIC_RELAXED)
    if (info_wants(s, ac, "server"))
        text_add(&t, "# Server\r\nredis_version:7.0.0\r\nkvidx_version:%s\r\nredis_mode:standalone\r\n"
                     "os:Linux\r\narch_bits:%u\r\nprocess_id:%ld\r\nuptime_in_seconds:%llu\r\n\r\n",
                 KVIDX_VERSION_STRING, (unsigned)(sizeof(void *) * 8), (long)getpid(),
                 (unsigned long long)((os_now_ns() - db->opened_ns) / 1000000000u));
    if (info_wants(s, ac, "clients"))
        text_add(&t, "# Clients\r\nconnected_clients:%llu\r\n\r\n", RELAXED(sessions));
    if (info_wants(s, ac, "memory"))
        text_add(&t, "# Memory\r\nused_memory:%llu\r\nkvidx_map_bytes:%llu\r\nkvidx_list_ram_bytes:%llu\r\n\r\n",
                 (unsigned long long)(st.map_bytes + st.list_ram_bytes), (unsigned long long)st.map_bytes,
                 (unsigned long long)st.list_ram_bytes);
    if (info_wants(s, ac, "persistence"))
        text_add(&t, "# Persistence\r\nloading:0\r\nkvidx_syncs:%llu\r\nkvidx_disk_bytes:%llu\r\n\r\n",
                 (unsigned long long)st.syncs, (unsigned long long)st.disk_bytes);
    if (info_wants(s, ac, "stats"))
        text_add(&t, "# Stats\r\ntotal_connections_received:%llu\r\ntotal_commands_processed:%llu\r\n"
                     "keyspace_hits:%llu\r\nkeyspace_misses:%llu\r\nkvidx_puts:%llu\r\nkvidx_deletes:%llu\r\n"
                     "kvidx_list_writes:%llu\r\nkvidx_compactions:%llu\r\n\r\n",
                 RELAXED(sessions_total), RELAXED(commands) + (unsigned long long)s->commands,
                 RELAXED(hits) + (unsigned long long)s->hits, RELAXED(misses) + (unsigned long long)s->misses,
                 (unsigned long long)st.puts, (unsigned long long)st.deletes, (unsigned long long)st.list_writes,
                 (unsigned long long)st.compactions);
    if (info_wants(s, ac, "keyspace"))
        text_add(&t, "# Keyspace\r\ndb0:keys=%llu,expires=0,avg_ttl=0\r\n\r\n",
                 (unsigned long long)(st.keys + st.lists));
#undef RELAXED
    if (info_wants(s, ac, "kvidx")) {
#define F(x) (unsigned long long)st.x
        text_add(&t, "# kvidx\r\nkvidx_shards:%u\r\nkvidx_keys:%llu\r\nkvidx_value_bytes:%llu\r\n"
                     "kvidx_records:%llu\r\nkvidx_garbage_records:%llu\r\nkvidx_slots:%llu\r\n"
                     "kvidx_garbage_slots:%llu\r\nkvidx_key_log_bytes:%llu\r\nkvidx_value_log_bytes:%llu\r\n"
                     "kvidx_buffer_bytes:%llu\r\nkvidx_disk_bytes:%llu\r\nkvidx_map_bytes:%llu\r\n"
                     "kvidx_puts:%llu\r\nkvidx_deletes:%llu\r\nkvidx_flushes:%llu\r\nkvidx_syncs:%llu\r\n"
                     "kvidx_lists:%llu\r\nkvidx_list_ids:%llu\r\nkvidx_list_ram_bytes:%llu\r\n"
                     "kvidx_list_log_bytes:%llu\r\nkvidx_list_snapshot_bytes:%llu\r\nkvidx_list_writes:%llu\r\n"
                     "kvidx_live_bytes:%llu\r\nkvidx_garbage_bytes:%llu\r\nkvidx_compactions:%llu\r\n"
                     "kvidx_compact_ms_max:%llu\r\n\r\n",
                 (unsigned)st.shards, F(keys), F(value_bytes), F(records), F(garbage_records), F(slots),
                 F(garbage_slots), F(key_log_bytes), F(value_log_bytes), F(buffer_bytes), F(disk_bytes),
                 F(map_bytes), F(puts), F(deletes), F(flushes), F(syncs), F(lists), F(list_ids),
                 F(list_ram_bytes), F(list_log_bytes), F(list_snapshot_bytes), F(list_writes), F(live_bytes),
                 F(garbage_bytes), F(compactions), F(compact_ms_max));
#undef F
    }
    if (t.oom) resp_fail(s, KVIDX_ENOMEM);
    else resp_bulk(s, t.p, t.len >= 2 ? t.len - 2 : t.len); /* no blank line at the end */
    os_free(t.p);
}

static size_t resp_cmd_count(void); /* COMMAND COUNT */

static void cmd_command(kvidx_session *s, int ac) {
    if (ac >= 2 && resp_is(s->av[1], s->al[1], "count")) resp_int(s, (long long)resp_cmd_count());
    else resp_arr(s, 0);
}

static void cmd_config(kvidx_session *s, int ac) {
    if (resp_is(s->av[1], s->al[1], "get")) {
        if (ac < 3) resp_err(s, "wrong number of arguments for 'config|get' command");
        else resp_arr(s, 0);
    } else {
        resp_err(s, "CONFIG %.*s is not supported", (int)(s->al[1] < RESP_NAME_MAX ? s->al[1] : RESP_NAME_MAX),
                 (const char *)s->av[1]);
    }
}

static void cmd_client(kvidx_session *s, int ac) {
    const uint8_t *sub = s->av[1];
    size_t n = s->al[1];
    if (resp_is(sub, n, "setname") && ac == 3) {
        char *name = os_malloc(s->al[2] + 1);
        if (!name) {
            resp_fail(s, KVIDX_ENOMEM);
            return;
        }
        memcpy(name, s->av[2], s->al[2]);
        name[s->al[2]] = 0;
        os_free(s->name);
        s->name = name;
        resp_ok(s);
    } else if (resp_is(sub, n, "setinfo") && ac == 4) {
        resp_ok(s);
    } else if (resp_is(sub, n, "getname") && ac == 2) {
        if (s->name) resp_bulk(s, s->name, strlen(s->name));
        else resp_nil(s);
    } else if (resp_is(sub, n, "id") && ac == 2) {
        resp_int(s, (long long)s->id);
    } else if (resp_is(sub, n, "setname") || resp_is(sub, n, "setinfo") || resp_is(sub, n, "getname") ||
               resp_is(sub, n, "id")) {
        resp_err(s, "wrong number of arguments for 'client|%.*s' command", (int)n, (const char *)sub);
    } else {
        resp_err(s, "CLIENT %.*s is not supported", (int)(n < RESP_NAME_MAX ? n : RESP_NAME_MAX),
                 (const char *)sub);
    }
}

/* GET's work, also MGET's: a bulk, nil or an error. */
static void resp_get(kvidx_session *s, const uint8_t *k, size_t kn) {
    uint8_t v[KVIDX_VALUE_MAX];
    size_t len;
    int rc = kvidx_get(s->db, resp_key(k, kn), v, sizeof v, &len);
    if (rc == KVIDX_OK) {
        s->hits++;
        resp_bulk(s, v, len);
    } else if (rc == KVIDX_NOTFOUND) {
        s->misses++;
        resp_nil(s);
    } else {
        resp_fail(s, rc);
    }
}

static void cmd_get(kvidx_session *s, int ac) {
    (void)ac;
    resp_get(s, s->av[1], s->al[1]);
}

static void cmd_mget(kvidx_session *s, int ac) {
    int i;
    resp_arr(s, (size_t)ac - 1);
    for (i = 1; i < ac; i++) resp_get(s, s->av[i], s->al[i]);
}

/* SET with NX, XX or GET: decided on the current value under the shard's
 * mutex (db_update). */
typedef struct set_ctx {
    const uint8_t *val;
    size_t len;
    int nx, xx, get;
    int found;                    /* out: the key had a value */
    uint8_t old[KVIDX_VALUE_MAX]; /* out: that value (get) */
    size_t old_len;
} set_ctx;

static int set_decide(void *ud, const uint8_t *cur, size_t cur_len, int found, uint8_t *nv, size_t *nlen) {
    set_ctx *c = ud;
    c->found = found;
    if (found && c->get) memcpy(c->old, cur, cur_len), c->old_len = cur_len;
    if ((c->nx && found) || (c->xx && !found)) return 0;
    memcpy(nv, c->val, c->len);
    *nlen = c->len;
    return 1;
}

/* Read-modify-write of key's value, atomic against every other write of
 * it: under the shard's mutex (every writer of the shard holds it, so the
 * lock-free read inside sees the latest value), fn(ud, cur, cur_len,
 * found, nv, &nlen) returns 1 to store nv (nlen <= KVIDX_VALUE_MAX), 0
 * to leave the value, or a negative code, returned as is. *wrote = 1 when
 * nv was stored. KVIDX_SYNC syncs as kvidx_put does. */
static int db_update(kvidx *db, uint64_t key, int (*fn)(void *, const uint8_t *, size_t, int, uint8_t *, size_t *),
                     void *ud, int *wrote) {
    uint8_t cur[KVIDX_VALUE_MAX], nv[KVIDX_VALUE_MAX];
    size_t cur_len = 0, nlen = 0;
    uint64_t h, seq;
    vs_shard *sh;
    int rc = db_check(db);
    *wrote = 0;
    if (rc) return rc;
    if (db->flags & KVIDX_RDONLY) return KVIDX_ERDONLY;
    h = ck_key(key);
    sh = db_shard(db, h);
    pthread_mutex_lock(&sh->mu);
    rc = kvidx_get(db, key, cur, sizeof cur, &cur_len);
    if (rc == KVIDX_OK || rc == KVIDX_NOTFOUND) {
        int r = fn(ud, cur, cur_len, rc == KVIDX_OK, nv, &nlen);
        if (r == 1) {
            rc = vs_put(db, sh, key, h, nv, nlen);
            *wrote = !rc;
        } else {
            rc = r < 0 ? r : KVIDX_OK;
        }
    }
    seq = sh->wseq;
    pthread_mutex_unlock(&sh->mu);
    if (*wrote && (db->flags & KVIDX_SYNC)) rc = vs_sync_upto(db, sh, seq);
    return rc;
}

static void cmd_set(kvidx_session *s, int ac) {
    set_ctx c;
    int i, rc, wrote = 0;
    memset(&c, 0, sizeof c);
    c.val = s->av[2], c.len = s->al[2];
    for (i = 3; i < ac; i++) {
        const uint8_t *o = s->av[i];
        size_t n = s->al[i];
        if (resp_is(o, n, "nx") && !c.xx) c.nx = 1;
        else if (resp_is(o, n, "xx") && !c.nx) c.xx = 1;
        else if (resp_is(o, n, "get")) c.get = 1;
        else if (resp_is(o, n, "ex") || resp_is(o, n, "px") || resp_is(o, n, "exat") || resp_is(o, n, "pxat") ||
                 resp_is(o, n, "keepttl")) {
            resp_err(s, "SET option '%.*s' is not supported: kvidx keys do not expire", (int)n, (const char *)o);
            return;
        } else {
            resp_err(s, "syntax error");
            return;
        }
    }
    if (c.len > KVIDX_VALUE_MAX) {
        resp_err(s, "value exceeds %d bytes", KVIDX_VALUE_MAX);
        return;
    }
    if (!c.nx && !c.xx && !c.get) {
        rc = kvidx_put(s->db, resp_key(s->av[1], s->al[1]), c.val, c.len);
        if (rc) resp_fail(s, rc);
        else resp_ok(s);
        return;
    }
    rc = db_update(s->db, resp_key(s->av[1], s->al[1]), set_decide, &c, &wrote);
    if (rc) resp_fail(s, rc);
    else if (c.get) c.found ? resp_bulk(s, c.old, c.old_len) : resp_nil(s);
    else if (wrote) resp_ok(s);
    else resp_nil(s);
}

static void cmd_mset(kvidx_session *s, int ac) {
    int i, rc;
    if (ac % 2 == 0) {
        resp_err(s, "wrong number of arguments for 'mset' command");
        return;
    }
    for (i = 2; i < ac; i += 2)
        if (s->al[i] > KVIDX_VALUE_MAX) {
            resp_err(s, "value exceeds %d bytes", KVIDX_VALUE_MAX);
            return;
        }
    for (i = 1; i < ac; i += 2)
        if ((rc = kvidx_put(s->db, resp_key(s->av[i], s->al[i]), s->av[i + 1], s->al[i + 1]))) {
            resp_fail(s, rc);
            return;
        }
    resp_ok(s);
}

static void cmd_del(kvidx_session *s, int ac) {
    long long n = 0;
    int i;
    for (i = 1; i < ac; i++) {
        uint64_t k = resp_key(s->av[i], s->al[i]);
        int a = kvidx_delete(s->db, k), b;
        if (a < 0) {
            resp_fail(s, a);
            return;
        }
        b = kvidx_list_delete(s->db, k);
        if (b < 0) {
            resp_fail(s, b);
            return;
        }
        n += a == KVIDX_OK || b == KVIDX_OK;
    }
    resp_int(s, n);
}

static void cmd_exists(kvidx_session *s, int ac) {
    long long n = 0;
    uint64_t cnt;
    int i;
    for (i = 1; i < ac; i++) {
        uint64_t k = resp_key(s->av[i], s->al[i]);
        n += resp_has_value(s->db, k) || kvidx_list_count(s->db, k, &cnt) == KVIDX_OK;
    }
    resp_int(s, n);
}

static void cmd_type(kvidx_session *s, int ac) {
    uint64_t k = resp_key(s->av[1], s->al[1]), cnt;
    (void)ac;
    if (resp_has_value(s->db, k)) resp_raw(s, "+string\r\n", 9);
    else if (kvidx_list_count(s->db, k, &cnt) == KVIDX_OK) resp_raw(s, "+set\r\n", 6);
    else resp_raw(s, "+none\r\n", 7);
}

/* INCR and friends: the value as a strict decimal int64 plus (or, dec:
 * minus) by; the result goes back in by. */
typedef struct incr_ctx {
    long long by;
    int dec;
} incr_ctx;

static int incr_decide(void *ud, const uint8_t *cur, size_t cur_len, int found, uint8_t *nv, size_t *nlen) {
    incr_ctx *c = ud;
    long long v = 0, by = c->by;
    if (found && resp_i64(cur, cur_len, &v)) return RESP_ENOTINT;
    if (c->dec ? (by > 0 && v < LLONG_MIN + by) || (by < 0 && v > LLONG_MAX + by)
               : (by > 0 && v > LLONG_MAX - by) || (by < 0 && v < LLONG_MIN - by))
        return RESP_EOVERFLOW;
    c->by = c->dec ? v - by : v + by;
    *nlen = (size_t)snprintf((char *)nv, KVIDX_VALUE_MAX, "%lld", c->by);
    return 1;
}

/* INCR, DECR, INCRBY, DECRBY: the amount is av[2] when by_arg. */
static void resp_incr(kvidx_session *s, int by_arg, int dec) {
    incr_ctx c;
    int wrote, rc;
    c.by = 1, c.dec = dec;
    if (by_arg && resp_i64(s->av[2], s->al[2], &c.by)) {
        resp_fail(s, RESP_ENOTINT);
        return;
    }
    rc = db_update(s->db, resp_key(s->av[1], s->al[1]), incr_decide, &c, &wrote);
    if (rc) resp_fail(s, rc);
    else resp_int(s, c.by);
}

static void cmd_incr(kvidx_session *s, int ac) { resp_incr(s, ac == 3, 0); }
static void cmd_decr(kvidx_session *s, int ac) { resp_incr(s, ac == 3, 1); }

/* SCAN/SSCAN: the cursor at av[at] and the options after it. Returns 0
 * or replies with the error and returns -1. */
static int resp_cursor(kvidx_session *s, int ac, int at, uint64_t *cursor, size_t *count) {
    int i;
    if (resp_dec(s->av[at], s->al[at], cursor)) {
        resp_err(s, "invalid cursor");
        return -1;
    }
    *count = 10;
    for (i = at + 1; i < ac; i++) {
        if (i + 1 < ac && resp_is(s->av[i], s->al[i], "count")) {
            long long n;
            if (resp_i64(s->av[i + 1], s->al[i + 1], &n)) {
                resp_fail(s, RESP_ENOTINT);
                return -1;
            }
            if (n < 1) {
                resp_err(s, "syntax error");
                return -1;
            }
            *count = n > RESP_COUNT_MAX ? RESP_COUNT_MAX : (size_t)n;
            i++;
        } else if (i + 1 < ac && resp_is(s->av[i], s->al[i], "match")) {
            if (s->al[i + 1] != 1 || s->av[i + 1][0] != '*') {
                resp_err(s, "MATCH patterns other than '*' are not supported");
                return -1;
            }
            i++;
        } else {
            resp_err(s, "syntax error");
            return -1;
        }
    }
    return 0;
}

/* Up to cap keys from a value or list scan, ascending. */
typedef struct scan_keys {
    uint64_t *k;
    size_t n, cap;
} scan_keys;

static int scan_val_cb(void *ud, uint64_t key, const void *val, size_t len) {
    scan_keys *c = ud;
    (void)val, (void)len;
    c->k[c->n++] = key;
    return c->n == c->cap;
}

static int scan_list_cb(void *ud, uint64_t key, uint64_t count) {
    scan_keys *c = ud;
    (void)count;
    c->k[c->n++] = key;
    return c->n == c->cap;
}

static void cmd_scan(kvidx_session *s, int ac) {
    uint64_t cursor, *buf;
    size_t count, i = 0, j = 0, n = 0;
    scan_keys a, b;
    int rc;
    if (resp_cursor(s, ac, 1, &cursor, &count)) return;
    /* count + 1 of each: the first key past the reply is the next cursor */
    buf = os_malloc((count + 1) * 3 * sizeof *buf);
    if (!buf) {
        resp_fail(s, KVIDX_ENOMEM);
        return;
    }
    a.k = buf, a.n = 0, a.cap = count + 1;
    b.k = buf + count + 1, b.n = 0, b.cap = count + 1;
    if ((rc = kvidx_scan(s->db, cursor, UINT64_MAX, scan_val_cb, &a)) ||
        (rc = kvidx_list_scan(s->db, cursor, UINT64_MAX, scan_list_cb, &b))) {
        resp_fail(s, rc);
        os_free(buf);
        return;
    }
    {
        uint64_t *m = buf + 2 * (count + 1); /* the union, ascending */
        while ((i < a.n || j < b.n) && n < count + 1) {
            uint64_t x;
            if (j == b.n || (i < a.n && a.k[i] < b.k[j])) x = a.k[i++];
            else if (i == a.n || b.k[j] < a.k[i]) x = b.k[j++];
            else x = a.k[i++], j++;
            m[n++] = x;
        }
        resp_arr(s, 2);
        resp_u64(s, n > count ? m[count] : 0);
        if (n > count) n = count;
        resp_arr(s, n);
        for (i = 0; i < n; i++) resp_u64(s, m[i]);
    }
    os_free(buf);
}

/* The whole list of key, one version of it: *ids (the caller frees it),
 * *n. Returns KVIDX_OK, KVIDX_NOTFOUND (*n = 0, *ids NULL) or an error. */
static int resp_list(kvidx *db, uint64_t key, uint64_t **ids, size_t *n) {
    uint64_t count;
    int rc;
    *ids = NULL, *n = 0;
    if ((rc = kvidx_list_count(db, key, &count))) return rc;
    for (;;) {
        /* room for writers that grow the list between the count and the get */
        size_t cap = (size_t)count + 64 + (size_t)(count / 8);
        uint64_t *p = os_malloc(cap * sizeof *p);
        if (!p) return KVIDX_ENOMEM;
        rc = kvidx_list_get(db, key, 0, p, cap, n);
        if (rc || *n < cap) {
            if (rc) os_free(p);
            else *ids = p;
            return rc;
        }
        os_free(p);
        count = cap * 2;
    }
}

static void resp_id_array(kvidx_session *s, const uint64_t *ids, size_t n) {
    size_t i;
    resp_arr(s, n);
    for (i = 0; i < n; i++) resp_u64(s, ids[i]);
}

static void cmd_smembers(kvidx_session *s, int ac) {
    uint64_t *ids;
    size_t n;
    int rc = resp_list(s->db, resp_key(s->av[1], s->al[1]), &ids, &n);
    (void)ac;
    if (rc < 0) resp_fail(s, rc);
    else resp_id_array(s, ids, n);
    os_free(ids);
}

static void cmd_sscan(kvidx_session *s, int ac) {
    uint64_t cursor, *ids;
    size_t count, n;
    int rc;
    if (resp_cursor(s, ac, 2, &cursor, &count)) return;
    if (!(ids = os_malloc((count + 1) * sizeof *ids))) {
        resp_fail(s, KVIDX_ENOMEM);
        return;
    }
    rc = kvidx_list_get(s->db, resp_key(s->av[1], s->al[1]), cursor, ids, count + 1, &n);
    if (rc < 0) {
        resp_fail(s, rc);
    } else {
        resp_arr(s, 2);
        resp_u64(s, n > count ? ids[count] : 0);
        resp_id_array(s, ids, n > count ? count : n);
    }
    os_free(ids);
}

static void cmd_scard(kvidx_session *s, int ac) {
    uint64_t count;
    int rc = kvidx_list_count(s->db, resp_key(s->av[1], s->al[1]), &count);
    (void)ac;
    if (rc < 0) resp_fail(s, rc);
    else resp_int(s, (long long)count);
}

static void cmd_sismember(kvidx_session *s, int ac) {
    uint64_t *id;
    int rc;
    if (resp_ids(s, ac, 2, &id)) return;
    rc = kvidx_list_contains(s->db, resp_key(s->av[1], s->al[1]), id[0]);
    if (rc < 0) resp_fail(s, rc);
    else resp_int(s, rc == KVIDX_OK);
    os_free(id);
}

static void cmd_smismember(kvidx_session *s, int ac) {
    uint64_t key = resp_key(s->av[1], s->al[1]), *ids;
    int i, rc;
    if (resp_ids(s, ac, 2, &ids)) return;
    resp_arr(s, (size_t)ac - 2);
    for (i = 0; i < ac - 2; i++) {
        rc = kvidx_list_contains(s->db, key, ids[i]);
        resp_int(s, rc == KVIDX_OK);
    }
    os_free(ids);
}

static void cmd_sadd(kvidx_session *s, int ac) {
    uint64_t *ids;
    size_t added;
    int rc;
    if (resp_ids(s, ac, 2, &ids)) return;
    rc = kvidx_list_add(s->db, resp_key(s->av[1], s->al[1]), ids, (size_t)ac - 2, &added);
    if (rc < 0) resp_fail(s, rc);
    else resp_int(s, (long long)added);
    os_free(ids);
}

static void cmd_srem(kvidx_session *s, int ac) {
    uint64_t *ids;
    size_t removed;
    int rc;
    if (resp_ids(s, ac, 2, &ids)) return;
    rc = kvidx_list_remove(s->db, resp_key(s->av[1], s->al[1]), ids, (size_t)ac - 2, &removed);
    if (rc < 0) resp_fail(s, rc);
    else resp_int(s, rc == KVIDX_OK ? (long long)removed : 0);
    os_free(ids);
}

/* SINTER: the smallest list, filtered by membership in the others. */
static void cmd_sinter(kvidx_session *s, int ac) {
    uint64_t *ids = NULL, count, least = UINT64_MAX;
    size_t n = 0, i, kept = 0;
    int k, small = 1, rc;
    for (k = 1; k < ac; k++) {
        rc = kvidx_list_count(s->db, resp_key(s->av[k], s->al[k]), &count);
        if (rc == KVIDX_NOTFOUND) {
            resp_arr(s, 0);
            return;
        }
        if (rc) {
            resp_fail(s, rc);
            return;
        }
        if (count < least) least = count, small = k;
    }
    rc = resp_list(s->db, resp_key(s->av[small], s->al[small]), &ids, &n);
    if (rc < 0) {
        resp_fail(s, rc);
        return;
    }
    for (i = 0; i < n; i++) {
        int all = 1;
        for (k = 1; k < ac && all; k++)
            if (k != small && kvidx_list_contains(s->db, resp_key(s->av[k], s->al[k]), ids[i]) != KVIDX_OK)
                all = 0;
        if (all) ids[kept++] = ids[i];
    }
    resp_id_array(s, ids, kept);
    os_free(ids);
}

typedef struct flush_ctx {
    kvidx *db;
    int rc;
} flush_ctx;

static int flush_value(void *ud, uint64_t key, const void *val, size_t len) {
    flush_ctx *c = ud;
    int r = kvidx_delete(c->db, key);
    (void)val, (void)len;
    if (r < 0) c->rc = r;
    return r < 0;
}

static int flush_list(void *ud, uint64_t key, uint64_t count) {
    flush_ctx *c = ud;
    int r = kvidx_list_delete(c->db, key);
    (void)count;
    if (r < 0) c->rc = r;
    return r < 0;
}

static void cmd_flushall(kvidx_session *s, int ac) {
    flush_ctx c;
    int rc;
    if (ac > 2 || (ac == 2 && !resp_is(s->av[1], s->al[1], "async") && !resp_is(s->av[1], s->al[1], "sync"))) {
        resp_err(s, "syntax error");
        return;
    }
    if (!(s->t.flags & KVIDX_PROTO_FLUSH)) {
        resp_err(s, "%s is disabled (start the server with --allow-flush)",
                 resp_is(s->av[0], s->al[0], "flushdb") ? "FLUSHDB" : "FLUSHALL");
        return;
    }
    c.db = s->db, c.rc = KVIDX_OK;
    if (!(rc = kvidx_scan(s->db, 0, UINT64_MAX, flush_value, &c))) rc = c.rc;
    if (!rc && !(rc = kvidx_list_scan(s->db, 0, UINT64_MAX, flush_list, &c))) rc = c.rc;
    if (rc) resp_fail(s, rc);
    else resp_ok(s);
}

/* The commands, sorted by name (bsearch). arity: exact argument count
 * with the name if > 0, at least -arity if < 0. */
typedef struct resp_cmd {
    const char *name;
    int arity;
    resp_cmd_fn fn;
} resp_cmd;

static const resp_cmd resp_cmds[] = {
    {"client", -2, cmd_client},     {"command", -1, cmd_command},     {"config", -2, cmd_config},
    {"dbsize", 1, cmd_dbsize},      {"decr", 2, cmd_decr},            {"decrby", 3, cmd_decr},
    {"del", -2, cmd_del},           {"echo", 2, cmd_echo},            {"exists", -2, cmd_exists},
    {"flushall", -1, cmd_flushall}, {"flushdb", -1, cmd_flushall},    {"get", 2, cmd_get},
    {"incr", 2, cmd_incr},          {"incrby", 3, cmd_incr},        {"info", -1, cmd_info},
    {"mget", -2, cmd_mget},         {"mset", -3, cmd_mset},           {"ping", -1, cmd_ping},
    {"quit", -1, cmd_quit},         {"sadd", -3, cmd_sadd},           {"scan", -2, cmd_scan},
    {"scard", 2, cmd_scard},        {"select", 2, cmd_select},        {"set", -3, cmd_set},
    {"sinter", -2, cmd_sinter},     {"sismember", 3, cmd_sismember},  {"smembers", 2, cmd_smembers},
    {"smismember", -3, cmd_smismember}, {"srem", -3, cmd_srem},       {"sscan", -3, cmd_sscan},
    {"type", 2, cmd_type},
};
static const size_t resp_ncmds = sizeof resp_cmds / sizeof resp_cmds[0];
static size_t resp_cmd_count(void) { return resp_ncmds; }

static int resp_cmd_cmp(const void *key, const void *elem) {
    return strcmp(key, ((const resp_cmd *)elem)->name);
}

/* Executes the request in s->av/s->al (ac >= 1). */
static void resp_exec(kvidx_session *s, int ac) {
    char name[16];
    size_t n = s->al[0], i;
    const resp_cmd *c = NULL;
    s->commands++;
    if (n < sizeof name) {
        for (i = 0; i < n; i++) {
            uint8_t b = s->av[0][i];
            name[i] = (char)(b >= 'A' && b <= 'Z' ? b | 0x20 : b);
        }
        name[n] = 0;
        if (strlen(name) == n) c = bsearch(name, resp_cmds, resp_ncmds, sizeof *c, resp_cmd_cmp);
    }
    if (!c) {
        resp_err(s, "unknown command '%.*s'", (int)(n < RESP_NAME_MAX ? n : RESP_NAME_MAX), (const char *)s->av[0]);
        return;
    }
    if (c->arity > 0 ? ac != c->arity : ac < -c->arity) {
        resp_err(s, "wrong number of arguments for '%s' command", c->name);
        return;
    }
    c->fn(s, ac);
}

/* -- the parser */

/* Room for n arguments' pointers. */
static int resp_av_room(kvidx_session *s, size_t n) {
    const uint8_t **av;
    size_t *al, cap = s->av_cap ? s->av_cap : 16;
    if (n <= s->av_cap) return 0;
    while (cap < n) cap *= 2;
    if (!(av = os_realloc(s->av, cap * sizeof *av))) return -1;
    s->av = av;
    if (!(al = os_realloc(s->al, cap * sizeof *al))) return -1;
    s->al = al, s->av_cap = cap;
    return 0;
}

/* Splits an inline line into words (Redis's rules: spaces and tabs
 * separate; "..." with \n \r \t \b \a \\ \" \xHH escapes and '...' with
 * \' quote a word, which must be followed by a space or the end) into
 * s->ibuf, s->av/s->al. Returns the word count, or -1 on unbalanced
 * quotes, -2 out of memory. */
static int resp_inline_split(kvidx_session *s, const uint8_t *p, size_t n) {
    size_t i = 0, o = 0, w = 0;
    if (s->ibuf_cap < n + 1) {
        uint8_t *b = os_realloc(s->ibuf, n + 1);
        if (!b) return -2;
        s->ibuf = b, s->ibuf_cap = n + 1;
    }
    for (;;) {
        size_t start;
        int dq = 0, sq = 0;
        while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\v' || p[i] == '\f')) i++;
        if (i == n) break;
        start = o;
        for (;;) {
            if (dq) {
                if (i == n) return -1;
                if (p[i] == '\\' && i + 3 < n && p[i + 1] == 'x' && isxdigit(p[i + 2]) && isxdigit(p[i + 3])) {
                    char hx[3] = {(char)p[i + 2], (char)p[i + 3], 0};
                    s->ibuf[o++] = (uint8_t)strtoul(hx, NULL, 16);
                    i += 4;
                } else if (p[i] == '\\' && i + 1 < n) {
                    uint8_t c = p[i + 1];
                    s->ibuf[o++] = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c == 'b' ? '\b'
                                 : c == 'a' ? '\a' : c;
                    i += 2;
                } else if (p[i] == '"') {
                    i++;
                    if (i < n && p[i] != ' ' && p[i] != '\t' && p[i] != '\r') return -1;
                    break;
                } else {
                    s->ibuf[o++] = p[i++];
                }
            } else if (sq) {
                if (i == n) return -1;
                if (p[i] == '\\' && i + 1 < n && p[i + 1] == '\'') {
                    s->ibuf[o++] = '\'';
                    i += 2;
                } else if (p[i] == '\'') {
                    i++;
                    if (i < n && p[i] != ' ' && p[i] != '\t' && p[i] != '\r') return -1;
                    break;
                } else {
                    s->ibuf[o++] = p[i++];
                }
            } else {
                if (i == n || p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\v' || p[i] == '\f') break;
                if (p[i] == '"') dq = 1, i++;
                else if (p[i] == '\'') sq = 1, i++;
                else s->ibuf[o++] = p[i++];
            }
        }
        if (resp_av_room(s, w + 1)) return -2;
        s->av[w] = NULL; /* pointers are set once ibuf stops moving */
        s->al[w] = o - start;
        w++;
    }
    {
        size_t k, off = 0;
        for (k = 0; k < w; k++) {
            s->av[k] = s->ibuf + off;
            off += s->al[k];
        }
    }
    return (int)w;
}

/* Reads "<number>\r\n" at b[p..end) after the type byte. Returns 1 with
 * *v and *next set, 0 if the line is not complete, -1 if the line is not
 * a number or longer than RESP_LINE_MAX. */
static int resp_line_num(const uint8_t *b, size_t p, size_t end, long long *v, size_t *next) {
    size_t i, lim = end - p > RESP_LINE_MAX ? p + RESP_LINE_MAX : end;
    long long x = 0;
    int neg = 0, digits = 0;
    for (i = p; i < lim && b[i] != '\r'; i++) {
        if (i == p && b[i] == '-') {
            neg = 1;
            continue;
        }
        if (b[i] < '0' || b[i] > '9' || x > (LLONG_MAX - 9) / 10) return -1;
        x = x * 10 + (b[i] - '0');
        digits++;
    }
    if (i == lim) return lim == end ? 0 : -1;
    if (i + 1 == end) return 0;
    if (b[i + 1] != '\n' || !digits) return -1;
    *v = neg ? -x : x;
    *next = i + 2;
    return 1;
}

/* Ends the session with a protocol error reply. */
static size_t resp_broken(kvidx_session *s, const char *what, int c) {
    if (c >= 0) resp_err(s, "Protocol error: %s '%c'", what, c >= 32 && c < 127 ? c : '?');
    else resp_err(s, "Protocol error: %s", what);
    s->dead = KVIDX_EPROTO;
    return 0;
}

/* Keeps argument i of the request being read: b[off, off + len) from the
 * request's start. */
static int resp_arg_add(kvidx_session *s, size_t off, size_t len) {
    if ((size_t)s->argi == s->args_cap) {
        size_t cap = s->args_cap ? s->args_cap * 2 : 16;
        resp_arg *a = os_realloc(s->args, cap * sizeof *a);
        if (!a) return -1;
        s->args = a, s->args_cap = cap;
    }
    s->args[s->argi].off = off, s->args[s->argi].len = len;
    return 0;
}

/* Parses and executes the requests in b[0, end), resuming at *pos with
 * the state of earlier feeds (the request being read starts at b[0] when
 * its arguments are kept). Stops at the end of the bytes or when the
 * session dies. Returns where the bytes to keep for the next feed start:
 * the start of an incomplete request, or *pos when nothing before it is
 * needed (a request over a limit is dropped as it arrives). */
static size_t resp_parse(kvidx_session *s, const uint8_t *b, size_t end, size_t *pos) {
    size_t p = *pos, rs = 0, next;
    long long v;
    int r;
    while (!s->dead) {
        if (s->out_len >= RESP_OUT_CUT && resp_flush(s)) {
            s->dead = KVIDX_EPROTO;
            break;
        }
        switch (s->state) {
        case RESP_START:
            rs = p;
            if (p == end) goto out;
            if (b[p] == '*') {
                r = resp_line_num(b, p + 1, end, &v, &next);
                if (r == 0) goto out;
                if (r < 0) {
                    resp_broken(s, "invalid multibulk length", -1);
                    goto out;
                }
                p = next;
                if (v <= 0) continue; /* *0, *-1: nothing to do */
                s->nargs = v, s->argi = 0, s->req_bytes = 0;
                s->limit = v > RESP_ARGS_MAX ? "request exceeds 1048576 arguments" : NULL;
                s->state = RESP_HDR;
            } else {
                size_t look = end - p < RESP_INLINE_MAX + 2 ? end - p : RESP_INLINE_MAX + 2, len;
                const uint8_t *nl = memchr(b + p, '\n', look);
                if (!nl) {
                    if (look < RESP_INLINE_MAX + 2) goto out;
                    s->limit = "inline request exceeds 65536 bytes";
                    s->state = RESP_INLINE_SKIP; /* drops the line up to its newline */
                    p += look;
                    continue;
                }
                len = (size_t)(nl - (b + p));
                next = p + len + 1;
                if (len && b[p + len - 1] == '\r') len--;
                if (len > RESP_INLINE_MAX) {
                    resp_err(s, "inline request exceeds 65536 bytes");
                } else {
                    int w = resp_inline_split(s, b + p, len);
                    if (w == -1) {
                        resp_broken(s, "unbalanced quotes in request", -1);
                        goto out;
                    }
                    if (w == -2) {
                        s->dead = KVIDX_ENOMEM;
                        goto out;
                    }
                    if (w > 0) resp_exec(s, w);
                }
                p = next;
            }
            break;
        case RESP_INLINE_SKIP: {
            const uint8_t *nl = memchr(b + p, '\n', end - p);
            if (!nl) {
                p = end;
                goto out;
            }
            p = (size_t)(nl - b) + 1;
            resp_err(s, "%s", s->limit);
            s->limit = NULL;
            s->state = RESP_START;
            break;
        }
        case RESP_HDR:
            if (p == end) goto out;
            if (b[p] != '$') {
                resp_broken(s, "expected '$', got", b[p]);
                goto out;
            }
            r = resp_line_num(b, p + 1, end, &v, &next);
            if (r == 0) goto out;
            if (r < 0 || v < 0) {
                resp_broken(s, "invalid bulk length", -1);
                goto out;
            }
            p = next;
            if (!s->limit && (size_t)v > RESP_BULK_MAX) s->limit = "bulk string exceeds 65536 bytes";
            if (!s->limit && s->req_bytes + (size_t)v > RESP_REQ_MAX) s->limit = "request exceeds 67108864 bytes";
            s->bulk = (size_t)v;
            s->state = s->limit ? RESP_SKIP : RESP_DATA;
            if (s->limit) s->bulk += 2; /* the data and its CRLF are dropped unread */
            break;
        case RESP_DATA:
            if (end - p < s->bulk + 2) goto out;
            if (b[p + s->bulk] != '\r' || b[p + s->bulk + 1] != '\n') {
                resp_broken(s, "expected CRLF after bulk data", -1);
                goto out;
            }
            if (resp_arg_add(s, p - rs, s->bulk)) {
                s->dead = KVIDX_ENOMEM;
                goto out;
            }
            s->req_bytes += s->bulk;
            p += s->bulk + 2;
            goto arg_done;
        case RESP_SKIP: {
            size_t take = end - p < s->bulk ? end - p : s->bulk;
            p += take;
            s->bulk -= take;
            if (s->bulk) goto out;
            goto arg_done;
        }
        }
        continue;
    arg_done:
        if (++s->argi < s->nargs) {
            s->state = RESP_HDR;
            continue;
        }
        s->state = RESP_START;
        if (s->limit) {
            resp_err(s, "%s", s->limit);
            s->limit = NULL;
            continue;
        }
        if (resp_av_room(s, (size_t)s->nargs)) {
            s->dead = KVIDX_ENOMEM;
            break;
        }
        {
            long long i;
            for (i = 0; i < s->nargs; i++) {
                s->av[i] = b + rs + s->args[i].off;
                s->al[i] = s->args[i].len;
            }
        }
        resp_exec(s, (int)s->nargs);
    }
out:
    *pos = p;
    return s->state == RESP_START ? rs : s->limit ? p : rs;
}

/* Room for n bytes of kept input. */
static int resp_in_room(kvidx_session *s, size_t n) {
    size_t cap = s->in_cap ? s->in_cap : 4096;
    uint8_t *p;
    if (n <= s->in_cap) return 0;
    while (cap < n) cap *= 2;
    if (!(p = os_realloc(s->in, cap))) return -1;
    s->in = p, s->in_cap = cap;
    return 0;
}

int kvidx_session_open(kvidx *db, const kvidx_transport *t, kvidx_session **out) {
    int rc = db_check(db);
    kvidx_session *s;
    if (rc) return rc;
    if (!t || !t->write || !out) return KVIDX_EINVAL;
    if (!(s = os_calloc(1, sizeof *s))) return KVIDX_ENOMEM;
    s->db = db;
    s->t = *t;
    s->state = RESP_START;
    /* relaxed: counters for INFO and CLIENT ID, which order nothing */
    s->id = __atomic_add_fetch(&db->client_ids, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&db->sessions, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&db->sessions_total, 1, __ATOMIC_RELAXED);
    *out = s;
    return KVIDX_OK;
}

int kvidx_session_feed(kvidx_session *s, const void *in, size_t n) {
    const uint8_t *b = in;
    size_t len = n, pos = 0, keep;
    if (!s || (!in && n)) return KVIDX_EINVAL;
    if (s->dead) return s->dead;
    if (s->in_len) { /* the rest of a request: parse the kept bytes and these together */
        if (resp_in_room(s, s->in_len + n)) return s->dead = KVIDX_ENOMEM;
        if (n) memcpy(s->in + s->in_len, in, n);
        s->in_len += n;
        b = s->in, len = s->in_len;
        pos = s->pos;
    }
    keep = resp_parse(s, b, len, &pos);
    if (b == s->in) {
        if (keep && len > keep) memmove(s->in, s->in + keep, len - keep); /* keep 0: already in place */
    } else if (len > keep) {
        if (resp_in_room(s, len - keep)) s->dead = KVIDX_ENOMEM;
        else memcpy(s->in, b + keep, len - keep);
    }
    s->in_len = s->dead ? 0 : len - keep;
    s->pos = s->dead ? 0 : pos - keep;
    if (!s->in_len && s->in_cap > RESP_OUT_CUT) { /* a large request: do not keep its buffer */
        os_free(s->in);
        s->in = NULL, s->in_cap = 0;
    }
    /* relaxed: statistics */
    __atomic_fetch_add(&s->db->commands, s->commands, __ATOMIC_RELAXED);
    __atomic_fetch_add(&s->db->hits, s->hits, __ATOMIC_RELAXED);
    __atomic_fetch_add(&s->db->misses, s->misses, __ATOMIC_RELAXED);
    s->commands = s->hits = s->misses = 0;
    /* a reply that could not be buffered leaves the peer's replies out of
     * step with its requests: the connection must end */
    if (s->oom && !s->dead) s->dead = KVIDX_ENOMEM;
    if (s->out_len && !s->oom && resp_flush(s) && (!s->dead || s->dead == KVIDX_CLOSED)) s->dead = KVIDX_EPROTO;
    return s->dead;
}

void kvidx_session_close(kvidx_session *s) {
    if (!s) return;
    __atomic_fetch_sub(&s->db->sessions, 1, __ATOMIC_RELAXED);
    os_free(s->in);
    os_free(s->args);
    os_free(s->av);
    os_free(s->al);
    os_free(s->ibuf);
    os_free(s->out);
    os_free(s->name);
    os_free(s);
}

#define RESP_READ 65536 /* bytes kvidx_serve asks read for */

int kvidx_serve(kvidx *db, const kvidx_transport *t) {
    kvidx_session *s;
    uint8_t *buf;
    int rc;
    if (!t || !t->read) return db_check(db) ? db_check(db) : KVIDX_EINVAL;
    if ((rc = kvidx_session_open(db, t, &s))) return rc;
    if (!(buf = os_malloc(RESP_READ))) {
        kvidx_session_close(s);
        return KVIDX_ENOMEM;
    }
    for (;;) {
        ptrdiff_t r = t->read(t->ctx, buf, RESP_READ);
        if (r == 0) break;
        if (r < 0 || r > RESP_READ) {
            rc = KVIDX_EPROTO;
            break;
        }
        rc = kvidx_session_feed(s, buf, (size_t)r);
        if (rc) break;
    }
    if (rc == KVIDX_CLOSED) rc = KVIDX_OK;
    os_free(buf);
    kvidx_session_close(s);
    return rc;
}
