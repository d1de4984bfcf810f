/*
 * kvidx.h -- an embeddable store for integer-keyed data.
 *
 * Quick start:
 *
 *     kvidx *db;
 *     if (kvidx_open("./data", NULL, &db) != KVIDX_OK) return 1;
 *     kvidx_put(db, 42, "hello", 5);
 *     char buf[KVIDX_VALUE_MAX]; size_t len;
 *     if (kvidx_get(db, 42, buf, sizeof buf, &len) == KVIDX_OK)
 *         printf("%.*s\n", (int)len, buf);
 *     kvidx_close(db);
 *
 * Build: compile kvidx.c with your program (needs xxhash.h from Debian's
 * libxxhash-dev and -lpthread), or link libkvidx (pkg-config kvidx).
 *
 * WHAT IT STORES
 *   Values: uint64_t keys -> byte strings of 0..KVIDX_VALUE_MAX (256) bytes,
 *   exact length preserved, every byte pattern legal. Keys are kept in
 *   power-of-two shards; kvidx_scan visits them in ascending numeric order.
 *   Lists: uint64_t keys -> sorted sets of distinct uint64_t ids, in a
 *   keyspace of their own (a key may hold a value and a list), kept in
 *   memory in compressed copy-on-write chunks (measured: 2.4-3.5 bytes an
 *   id in long lists, 5.4 over a follower-like population; bench/).
 *
 * THREADING
 *   A kvidx handle may be used from any number of threads at once; every
 *   function below is safe to call concurrently on one handle, except
 *   kvidx_close, which must be the last call on it (no call may run during
 *   or after it). Reads (kvidx_get, kvidx_scan, the list reads) never lock
 *   and never wait: each shard keeps two copies of its index (Left-Right),
 *   readers use one while the shard's writer changes the other; lists are
 *   copy-on-write trees both copies share, freed only after every reader
 *   that could see them has left. Writes to one shard are
 *   serialized by its mutex and wait for the readers of the copy they
 *   change next; writes to different shards run in parallel. A write is
 *   visible to every read that starts after it returned, from any thread.
 *   Two handles on two directories share no state. Scan callbacks run with
 *   no lock held and may call any function on the same handle, writes
 *   included.
 *
 * DURABILITY
 *   - A write that returned survives the death of the process (kill -9):
 *     its bytes are in shared file pages the kernel writes out.
 *   - On power loss, what was written before the last kvidx_sync(), or
 *     before the last background sync (every sync_interval_ms, default
 *     1000), survives. With KVIDX_SYNC every write that returned survives
 *     (writers of a shard that wait for a sync together share it).
 *   - A torn tail left by a crash is detected by checksums at open and
 *     dropped; everything before it is kept. Open never fails on a torn
 *     tail and never returns bytes that were not written.
 *   - Values are checksummed and verified on every read: damage gives
 *     KVIDX_ECORRUPT, never wrong bytes.
 *
 * CAVEATS
 *   - One process at a time: a second open of a directory, from this or
 *     another process, gets KVIDX_ELOCKED (read-only opens may share).
 *   - Overwrites and deletes append: the space they leave is counted
 *     (kvidx_stat) and given back by kvidx_compact, which a background
 *     thread runs on a shard once half of it is garbage (compact_pct).
 *     List changes append to a per-shard log that is folded into a
 *     snapshot at open and close (log >= 1 MiB), while writing (log >=
 *     64 MiB) and by compaction.
 *   - Linux only for now (flock, fallocate, O_DIRECT, mmap).
 *
 * Return codes: 0 is OK, positive values are statuses (KVIDX_NOTFOUND),
 * negative values are errors. Outputs are written only on success unless a
 * function says otherwise. The caller owns every buffer it passes; the
 * library frees everything it allocates.
 *
 * Copyright (c) 2026 the kvidx authors. BSD-2-Clause, see LICENSE.
 */
#ifndef KVIDX_H
#define KVIDX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version --------------------------------------------------------- */

#define KVIDX_VERSION_MAJOR 0
#define KVIDX_VERSION_MINOR 5
#define KVIDX_VERSION_PATCH 0
#define KVIDX_VERSION_NUMBER \
    (KVIDX_VERSION_MAJOR * 10000 + KVIDX_VERSION_MINOR * 100 + KVIDX_VERSION_PATCH)
#define KVIDX_VERSION_STRING "0.5.0"

/* ---- limits ----------------------------------------------------------- */

#define KVIDX_VALUE_MAX 256     /* largest value, in bytes */
#define KVIDX_SHARDS_MAX 1024   /* largest shard count */

/* ---- return codes ----------------------------------------------------- */

#define KVIDX_OK        0    /* success */
#define KVIDX_NOTFOUND  1    /* status: the key is absent */
#define KVIDX_CLOSED    2    /* status: the peer asked to close the session (QUIT) */
#define KVIDX_EINVAL   (-1)  /* bad argument, or a directory that is not a kvidx database */
#define KVIDX_ENOMEM   (-2)  /* out of memory */
#define KVIDX_EIO      (-3)  /* an I/O call failed; that shard refuses writes until reopen */
#define KVIDX_ECORRUPT (-4)  /* a checksum or a structure check failed */
#define KVIDX_ELOCKED  (-5)  /* the directory is open elsewhere */
#define KVIDX_EVERSION (-6)  /* the files use a newer format than this library reads */
#define KVIDX_EFULL    (-7)  /* a shard's 2^32-1 value slots are used up, or the disk is full */
#define KVIDX_ERDONLY  (-8)  /* write on a handle opened with KVIDX_RDONLY */
#define KVIDX_ETOOBIG  (-9)  /* a value longer than KVIDX_VALUE_MAX, a buffer too small,
                                or more than 2^28 ids in one list write */
#define KVIDX_EPROTO   (-10) /* protocol: a request whose framing is broken (the connection
                                must close), or a transport read/write error */
#define KVIDX_EMISUSE  (-11) /* not a live kvidx handle: zeroed or foreign memory (a closed
                                handle is freed: using it is undefined, caught where detectable) */

/* A static, human-readable description of rc; never NULL (unknown codes
 * get "unknown error"). Thread-safe. */
const char *kvidx_strerror(int rc);

/* The library's version, e.g. "0.5.0"; equals KVIDX_VERSION_STRING of the
 * header it was built with. Thread-safe. */
const char *kvidx_version(void);

/* ---- lifecycle -------------------------------------------------------- */

typedef struct kvidx kvidx; /* opaque; one per open directory; thread-safe */

#define KVIDX_CREATE 0x1u /* create the directory (not its parents) and the database if missing */
#define KVIDX_RDONLY 0x2u /* read only: shared lock, no writes, never creates (wins over CREATE) */
#define KVIDX_SYNC   0x4u /* every write is durable (survives power loss) before it returns */

/* Called with a one-line warning (e.g. "O_DIRECT refused, buffered IO").
 * Runs on the thread that hit the condition; must not call kvidx. */
typedef void (*kvidx_log_fn)(void *ud, const char *msg);

typedef struct kvidx_options {
    uint32_t size;             /* sizeof(kvidx_options); set by kvidx_options_init */
    uint32_t flags;            /* KVIDX_CREATE | KVIDX_RDONLY | KVIDX_SYNC; default KVIDX_CREATE */
    uint32_t shards;           /* power of two, 1..KVIDX_SHARDS_MAX; 0 = 8. Used only when
                                  creating; an existing database keeps its stored count */
    uint32_t sync_interval_ms; /* background sync period; 0 = only explicit kvidx_sync. Default 1000 */
    kvidx_log_fn log;          /* warnings; NULL = write them to stderr */
    void *log_ud;              /* passed to log */
    /* fields from here on were added in 0.3.0 */
    uint32_t compact_pct;      /* a background thread compacts a shard (kvidx_compact) once
                                  this percent of its value store on disk is garbage and it
                                  holds 16 MiB or more; 0 = never (call kvidx_compact). 1..99;
                                  default 50. Read-only handles ignore it */
    uint32_t reserved;         /* 0 */
} kvidx_options;

/* Fills *o with the defaults: size = sizeof *o, flags = KVIDX_CREATE,
 * shards = 8, sync_interval_ms = 1000, log = NULL, compact_pct = 50.
 * NULL o is ignored. */
void kvidx_options_init(kvidx_options *o);

/* Opens (and with KVIDX_CREATE creates) the database in directory dir.
 * o may be NULL for the defaults. A new database is created only in a
 * missing or empty directory. Rebuilds the in-memory index from the key
 * logs and drops a torn tail left by a crash. *out is set only on success.
 * Returns KVIDX_OK, or
 *   KVIDX_EINVAL   NULL dir/out, o->size too small, shards not a power of
 *                  two or too large, unknown flags; dir missing without
 *                  KVIDX_CREATE (or with KVIDX_RDONLY); dir not a
 *                  directory, or a non-empty directory without a database
 *   KVIDX_ELOCKED  another handle (any process) has it open; with
 *                  KVIDX_RDONLY: a writer has it open
 *   KVIDX_EVERSION created by a newer kvidx format
 *   KVIDX_ECORRUPT a header or a durable record fails its checksum, or
 *                  a file is missing or has an impossible size
 *   KVIDX_EIO, KVIDX_ENOMEM, KVIDX_EFULL (disk full while creating, or a
 *                  shard opened read-write 2^32-1 times) */
int kvidx_open(const char *dir, const kvidx_options *o, kvidx **out);

/* Makes everything written so far durable, releases the lock, frees the
 * handle. NULL db is a no-op returning KVIDX_OK. Must not run concurrently
 * with any other call on db. Returns KVIDX_OK, KVIDX_EMISUSE (not a live
 * handle: nothing is done), or KVIDX_EIO (the final sync failed, or a shard
 * had refused writes since an earlier I/O error; the handle is freed all
 * the same). */
int kvidx_close(kvidx *db);

/* Everything written before this call survives power loss once it returns.
 * Blocks on fdatasync; other calls keep running meanwhile. Returns
 * KVIDX_OK (always, on a read-only handle), KVIDX_EINVAL (NULL db),
 * KVIDX_EMISUSE, KVIDX_EIO (a sync failed: that shard refuses writes from
 * now on, and what it wrote since the last good sync may not be durable). */
int kvidx_sync(kvidx *db);

/* ---- values ----------------------------------------------------------- */

/* Sets key to the len bytes at val (val may be NULL when len == 0).
 * Returns KVIDX_OK, or KVIDX_EINVAL (NULL db, NULL val with len > 0),
 * KVIDX_ETOOBIG (len > KVIDX_VALUE_MAX), KVIDX_ERDONLY, KVIDX_EMISUSE,
 * KVIDX_EFULL, KVIDX_ENOMEM, KVIDX_EIO. On error nothing is stored, with
 * one exception: with KVIDX_SYNC, KVIDX_EIO may also mean the write was
 * applied (and is visible) but its sync failed, so it may not survive a
 * power cut; the shard refuses writes from then on. */
int kvidx_put(kvidx *db, uint64_t key, const void *val, size_t len);

/* Copies key's value into buf (cap bytes; buf may be NULL when cap == 0)
 * and its length into *len. Returns KVIDX_OK; KVIDX_NOTFOUND (*len = 0);
 * KVIDX_ETOOBIG when cap is smaller than the value (*len = the length
 * needed, buf untouched); KVIDX_ECORRUPT when the stored bytes fail their
 * checksum (*len = the stored length, buf contents unspecified); KVIDX_EINVAL (NULL db or len, NULL
 * buf with cap > 0); KVIDX_EMISUSE. Never locks, never waits, never
 * allocates, makes no system call for a value in memory. */
int kvidx_get(kvidx *db, uint64_t key, void *buf, size_t cap, size_t *len);

/* Removes key. Returns KVIDX_OK, KVIDX_NOTFOUND (nothing changes),
 * KVIDX_EINVAL, KVIDX_ERDONLY, KVIDX_EMISUSE, KVIDX_EFULL, KVIDX_ENOMEM,
 * KVIDX_EIO (as for kvidx_put, including the KVIDX_SYNC exception). */
int kvidx_delete(kvidx *db, uint64_t key);

/* Called once per key by kvidx_scan; val (len bytes) is valid only during
 * the call. Return non-zero to stop the scan. */
typedef int (*kvidx_scan_fn)(void *ud, uint64_t key, const void *val, size_t len);

/* Calls fn for every live key in [from, to], strictly ascending, each key
 * once, merging all shards. Keys live for the whole scan are all visited;
 * keys written ahead of the cursor during the scan may or may not be.
 * fn runs with no lock held and may call any kvidx function on db. The
 * scan copies batches of keys and values out of each shard without a lock
 * and calls back on the copies: a slow callback holds up no writer.
 * Returns KVIDX_OK whether it ran to the end or fn stopped it; KVIDX_EINVAL
 * (NULL db or fn, from > to); KVIDX_ECORRUPT (a value failed its checksum:
 * every key below it was visited, the damaged key and those above it were
 * not); KVIDX_ENOMEM; KVIDX_EMISUSE. */
int kvidx_scan(kvidx *db, uint64_t from, uint64_t to, kvidx_scan_fn fn, void *ud);

/* ---- lists ------------------------------------------------------------ */

/* A list is a sorted set of distinct uint64_t ids under a uint64_t key
 * (user -> followers, post -> likers). Lists and values are separate
 * keyspaces: a key may hold a value and a list at once. A list exists
 * while it holds at least one id; removing its last id deletes it.
 * Every call is one atomic change: after a crash it is there completely
 * or not at all. Reads (get, count, contains, scan) never lock and never
 * wait. ids may be NULL when n == 0; added/removed may be NULL. In
 * memory, lists are kept in compressed copy-on-write chunks of ids
 * (docs/API.md gives the footprint); on disk, in a per-shard log of
 * changes and a delta-encoded snapshot (docs/FORMAT.md).
 *
 * Write errors, for all list writes: KVIDX_EINVAL (NULL db, NULL ids
 * with n > 0), KVIDX_ETOOBIG (n > 2^28 ids in one call; not for
 * kvidx_list_delete), KVIDX_ERDONLY, KVIDX_EMISUSE, KVIDX_ENOMEM,
 * KVIDX_EFULL (disk full), KVIDX_EIO (the shard has a write error, or a
 * system call failed). On any error nothing is changed, with one
 * exception: with KVIDX_SYNC, KVIDX_EIO may come from the sync after the
 * change was applied; it is then visible but may not survive a power
 * loss, *added / *removed are not written, and the shard refuses writes
 * from then on. */

/* Replaces key's list by the n ids at ids (any order, duplicates
 * allowed: they are sorted and de-duplicated); n == 0 deletes the list
 * (KVIDX_OK even if it was absent). Returns KVIDX_OK or a write error. */
int kvidx_list_put(kvidx *db, uint64_t key, const uint64_t *ids, size_t n);

/* Adds the n ids (any order, duplicates allowed) to key's list, creating
 * it if needed; *added = how many were not there before. Returns KVIDX_OK
 * or a write error. Ids arriving in ascending order (new ids above all
 * present ones) are the fast path. */
int kvidx_list_add(kvidx *db, uint64_t key, const uint64_t *ids, size_t n, size_t *added);

/* Removes the n ids from key's list; *removed = how many were there.
 * Returns KVIDX_OK, KVIDX_NOTFOUND (no such list; *removed = 0) or a
 * write error. */
int kvidx_list_remove(kvidx *db, uint64_t key, const uint64_t *ids, size_t n, size_t *removed);

/* Deletes key's list. Returns KVIDX_OK, KVIDX_NOTFOUND or a write error. */
int kvidx_list_delete(kvidx *db, uint64_t key);

/* Copies the ids of key's list that are >= from, ascending, at most cap
 * of them, into out; *n = how many: exactly min(cap, ids >= from), so
 * *n == 0 past the last id. Page through a list by calling again with
 * from = last id + 1 (stop when *n < cap, or after the id UINT64_MAX).
 * Returns KVIDX_OK, KVIDX_NOTFOUND (no such list; *n = 0), KVIDX_EINVAL
 * (NULL db or n, NULL out with cap > 0), KVIDX_EMISUSE. One call reads
 * one version of the list, even while writers change it. */
int kvidx_list_get(kvidx *db, uint64_t key, uint64_t from, uint64_t *out, size_t cap, size_t *n);

/* *count = the number of ids in key's list. Returns KVIDX_OK,
 * KVIDX_NOTFOUND (*count = 0), KVIDX_EINVAL, KVIDX_EMISUSE. */
int kvidx_list_count(kvidx *db, uint64_t key, uint64_t *count);

/* Returns KVIDX_OK if key's list holds id, KVIDX_NOTFOUND if it does not
 * or there is no such list; KVIDX_EINVAL, KVIDX_EMISUSE. */
int kvidx_list_contains(kvidx *db, uint64_t key, uint64_t id);

/* Called once per list by kvidx_list_scan. Return non-zero to stop. */
typedef int (*kvidx_list_scan_fn)(void *ud, uint64_t key, uint64_t count);

/* Calls fn for every list whose key is in [from, to], strictly ascending,
 * each once, with its id count; same guarantees as kvidx_scan (fn runs
 * with nothing held and may call any function). Returns KVIDX_OK whether
 * it ran to the end or fn stopped it; KVIDX_EINVAL (NULL db or fn,
 * from > to); KVIDX_ENOMEM; KVIDX_EMISUSE. */
int kvidx_list_scan(kvidx *db, uint64_t from, uint64_t to, kvidx_list_scan_fn fn, void *ud);

/* ---- maintenance ------------------------------------------------------ */

/* Gives back the space of overwritten and deleted values, of their key
 * records and of list changes: each shard in turn is rewritten into new
 * files holding only what is live (values in key order, lists as a
 * snapshot), which replace the old ones in one atomic step; a crash at
 * any point leaves the old state or the new one. Reads go on throughout
 * and never wait; writes to the shard being rewritten wait for it, writes
 * to other shards do not. Everything written before the call is durable
 * when it returns. Returns KVIDX_OK, or the first error: KVIDX_ERDONLY,
 * KVIDX_EFULL (no room for the new files: the shard stays as it was),
 * KVIDX_ENOMEM, KVIDX_ECORRUPT (a live value fails its checksum: it is
 * not copied, the shard stays as it was), KVIDX_EIO, KVIDX_EMISUSE,
 * KVIDX_EINVAL. The other shards are still compacted. */
int kvidx_compact(kvidx *db);

/* Copies the database, as it is at one moment, into directory dest,
 * while it serves: reads and writes go on; writers wait only while the
 * shards' unflushed buffers are copied in memory, all shards at once (at
 * most 16 MiB a shard).
 * The copy holds exactly the writes that returned before that moment
 * (acknowledged, durable or not in the source), is itself durable when
 * the call returns, opens on its own and passes kvidx_check. dest is
 * created (not its parents) or must be an empty directory; on failure it
 * may hold a partial copy, without kvidx.hdr unless only the last
 * directory sync failed: remove it. Compactions wait for a backup (and the other way
 * round). Returns KVIDX_OK, KVIDX_EINVAL (NULL or "" dest, dest not a
 * directory or not empty, parent missing), KVIDX_EFULL, KVIDX_ENOMEM,
 * KVIDX_EIO (also: a shard has a sticky write error), KVIDX_EMISUSE. */
int kvidx_backup(kvidx *db, const char *dest);

/* Verifies the database in directory dir offline: opens it read only
 * (which checks every header, both shard states, every key record, the
 * value logs' lengths, the list snapshots and list logs, and rebuilds the
 * maps), then checks every key record's value (live or overwritten)
 * against its checksum, the two copies of each shard's map against each
 * other, and every list's tree. Reads only; a torn tail left by a crash
 * is not damage. Returns KVIDX_OK, KVIDX_ECORRUPT (damage: what and where
 * went to the log, at most 10 lines a shard), KVIDX_ENOMEM or KVIDX_EIO
 * (the check itself could not finish), or an error of kvidx_open with
 * KVIDX_RDONLY (e.g.
 * KVIDX_ELOCKED while a writer has it open, KVIDX_EINVAL for a directory
 * that is not a database, KVIDX_EVERSION). Never crashes on any file
 * contents. kvidx_check writes its report to stderr; kvidx_check_report
 * sends each line to fn(ud, line) instead (fn NULL: stderr). */
int kvidx_check(const char *dir);
int kvidx_check_report(const char *dir, kvidx_log_fn fn, void *ud);

typedef struct kvidx_stats {
    uint32_t size;            /* in: sizeof(kvidx_stats) as the caller knows it */
    uint32_t shards;          /* shard count of the database */
    uint64_t flags;           /* KVIDX_STAT_DIRECT_IO: the value log uses O_DIRECT */
    uint64_t keys;            /* live keys (values) */
    uint64_t value_bytes;     /* sum of the live values' lengths */
    uint64_t records;         /* key records in the key logs: live, overwritten, tombstones */
    uint64_t garbage_records; /* records - keys: reclaimable by compaction */
    uint64_t slots;           /* 256-byte value slots written (value log + buffer) */
    uint64_t garbage_slots;   /* slots no live key points to */
    uint64_t key_log_bytes;   /* sizes of the key logs (.k) */
    uint64_t value_log_bytes; /* sizes of the value logs (.v) */
    uint64_t buffer_bytes;    /* sizes of the section buffers (.b) */
    uint64_t disk_bytes;      /* blocks allocated to the header and the shard files */
    uint64_t map_bytes;       /* memory held by the in-memory index, both copies */
    uint64_t puts;            /* successful puts since open */
    uint64_t deletes;         /* successful deletes since open */
    uint64_t flushes;         /* buffer sections written to the value logs since open */
    uint64_t syncs;           /* completed kvidx_sync calls, background ones included */
    /* lists (fields from here on were added in 0.2.0) */
    uint64_t lists;           /* lists (keys with at least one id) */
    uint64_t list_ids;        /* ids over all lists */
    uint64_t list_ram_bytes;  /* heap memory of the lists' chunks and key index (one copy,
                                 shared by both sides), as the allocator hands it out */
    uint64_t list_log_bytes;  /* sizes of the list logs (.l) */
    uint64_t list_snapshot_bytes; /* sizes of the list snapshots (.ls) */
    uint64_t list_writes;     /* list log records written since open: every put, and
                                 every add, remove, delete that changed something */
    /* fields from here on were added in 0.3.0 */
    uint64_t live_bytes;      /* value-store bytes live data needs: 32 per live key record,
                                 256 per live value slot */
    uint64_t garbage_bytes;   /* value-store bytes compaction gives back: 32 per garbage
                                 record, 256 per garbage slot */
    uint64_t compactions;     /* shard compactions since open (kvidx_compact, background) */
    uint64_t compact_ms_max;  /* the longest a compaction held a shard's writers (ms) */
    uint64_t shard;           /* kvidx_stat_shard: the shard; kvidx_stat: UINT64_MAX (all) */
} kvidx_stats;

#define KVIDX_STAT_DIRECT_IO 0x1u

/* Fills at most st->size bytes of *st (so the struct can grow; set size to
 * sizeof(kvidx_stats) first). Totals over all shards, a snapshot of one
 * moment per shard. Returns KVIDX_OK, KVIDX_EINVAL (NULL, or size smaller
 * than the first two fields), KVIDX_EMISUSE. */
int kvidx_stat(kvidx *db, kvidx_stats *st);

/* The same figures for shard `shard` (0 .. st->shards - 1) alone (shards
 * and syncs stay those of the database; disk_bytes leaves out kvidx.hdr).
 * Returns
 * KVIDX_OK, KVIDX_EINVAL (as kvidx_stat, or shard out of range),
 * KVIDX_EMISUSE. */
int kvidx_stat_shard(kvidx *db, uint32_t shard, kvidx_stats *st);

/* ---- the Redis protocol over any byte stream --------------------------- */

/* kvidx answers RESP2 (the Redis protocol) without owning a socket: the
 * application moves the bytes, kvidx parses, executes and replies.
 * docs/PROTOCOL.md lists the commands, the key mapping (a decimal string
 * is that key; any other key string is XXH3-64 of its bytes), the limits
 * and every error reply.
 *
 * write returns how many of the len bytes it took: all of them, or 1 to
 * len - 1 (kvidx calls it again with the rest); 0 or < 0 is an error (the
 * session ends with KVIDX_EPROTO). It is called once per batch of replies
 * (a batch: every reply to the requests of one feed, cut at 1 MiB of
 * output). read (used by kvidx_serve only) returns > 0 bytes,
 * 0 at end of stream, < 0 on error. flags: KVIDX_PROTO_* below (0: none);
 * a transport initialized as { ctx, read, write } has none. */
typedef struct kvidx_transport {
    void *ctx;
    ptrdiff_t (*read)(void *ctx, void *buf, size_t cap);
    ptrdiff_t (*write)(void *ctx, const void *buf, size_t len);
    unsigned flags;
} kvidx_transport;

#define KVIDX_PROTO_FLUSH 0x1u /* FLUSHALL/FLUSHDB are allowed (they delete everything) */

typedef struct kvidx_session kvidx_session; /* opaque: one per connection */

/* Starts a session on db that replies through t (copied; t->write must
 * not be NULL). Sessions of one db may run on any threads at once; one
 * session is used by one thread at a time. Returns KVIDX_OK, KVIDX_EINVAL,
 * KVIDX_ENOMEM, KVIDX_EMISUSE. */
int kvidx_session_open(kvidx *db, const kvidx_transport *t, kvidx_session **out);

/* Takes the next n bytes the peer sent (any split: a request may arrive
 * a byte at a time), executes every request they complete, in order, and
 * writes their replies in one batch. Returns KVIDX_OK (keep going),
 * KVIDX_CLOSED (QUIT was answered: close the connection), KVIDX_EPROTO
 * (broken framing: an error reply was written, close the connection; or
 * t->write failed), KVIDX_ENOMEM, KVIDX_EINVAL. After anything but
 * KVIDX_OK the session takes no more input; close it. Bad requests
 * (unknown command, wrong arguments, a value over 256 bytes, ...) are not
 * errors here: they get an error reply and change nothing stored. */
int kvidx_session_feed(kvidx_session *s, const void *in, size_t n);

/* Ends the session and frees it (NULL is a no-op). Call before
 * kvidx_close of its db. */
void kvidx_session_close(kvidx_session *s);

/* Serves one connection: reads t->read into a session until end of
 * stream, QUIT or an error. Returns KVIDX_OK (end of stream or QUIT),
 * KVIDX_EPROTO (broken framing or a transport error), KVIDX_ENOMEM,
 * KVIDX_EINVAL (t->read NULL), KVIDX_EMISUSE. */
int kvidx_serve(kvidx *db, const kvidx_transport *t);

#ifdef __cplusplus
}
#endif

#endif /* KVIDX_H */
