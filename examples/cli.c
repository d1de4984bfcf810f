/*
 * cli.c -- `kvidx`, the command-line tool: one kvidx database directory
 * from the shell. `make cli` builds build/kvidx; `kvidx --help` lists the
 * commands, `kvidx help COMMAND` (or `kvidx COMMAND --help`) explains one.
 *
 *   kvidx get DIR KEY [--hex]              kvidx put DIR KEY [VALUE|-] [--hex]
 *   kvidx del DIR KEY...                   kvidx scan DIR [FROM [TO]] [--limit N] [--hex]
 *   kvidx list-get DIR KEY [--from ID] [--limit N]
 *   kvidx list-add DIR KEY [ID...]         kvidx list-remove DIR KEY [ID...]
 *   kvidx list-count DIR KEY               kvidx list-del DIR KEY
 *   kvidx list-scan DIR [FROM [TO]] [--limit N]
 *   kvidx stat DIR [--json] [--shard N]    kvidx check DIR
 *   kvidx compact DIR [--quiet]            kvidx backup DIR DEST
 *   kvidx dump DIR                         kvidx load DIR [FILE] [--shards N]
 *
 * Exit codes (docs/CLI.md): 0 done; 1 not found (get, del, list-get,
 * list-remove, list-count, list-del of an absent key) or, for check,
 * damage found; 2 bad usage or bad input (arguments, hex, a dump line);
 * 3 a kvidx call failed (the message, from kvidx_strerror, is on stderr).
 *
 * Reads (get, scan, list-get, list-count, list-scan, stat, dump, backup)
 * open the database read only, so several can run at once; writes open it
 * read-write, and put, list-add and load create it when it is missing.
 * Both fail with "database is open elsewhere" (exit 3) while another
 * process (say kvidx-server) has it open for writing: use that process.
 *
 * The dump format (docs/CLI.md): one JSON object per line.
 *   {"kvidx":"dump","format":1,"version":"0.5.0","shards":8}
 *   {"key":42,"value":"aGVsbG8="}            base64 of the value's bytes
 *   {"key":7,"list":[1,2,3]}                 ids ascending, at most 65536 a line
 *   {"end":true,"values":1,"lists":1,"ids":3}
 * Values come first in key order, then lists in key order; the last line
 * counts what came before it, so load can tell a dump that was cut short.
 *
 * Contents:
 *   1. Output and errors
 *   2. Arguments: numbers, hex, options
 *   3. Values: get, put, del, scan
 *   4. Lists: list-get, list-add, list-remove, list-count, list-del, list-scan
 *   5. Maintenance: stat, check, compact, backup
 *   6. dump and load (base64, a small JSON reader)
 *   7. The command table, help, main
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* getline */
#endif

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvidx.h"

/* ======================================================================
 * 1. Output and errors
 * ====================================================================== */

enum { EXIT_DONE = 0, EXIT_NOTFOUND = 1, EXIT_USAGE = 2, EXIT_KVIDX = 3 };

static const char *g_cmd = "kvidx"; /* the command, for messages */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "kvidx %s: ", g_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* A kvidx error: the message and exit code 3. */
static int fail(const char *what, int rc) {
    say("%s: %s", what, kvidx_strerror(rc));
    return EXIT_KVIDX;
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "kvidx %s: ", g_cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (kvidx help %s)\n", g_cmd);
    return EXIT_USAGE;
}

/* Flushes stdout; a write error (disk full, closed pipe) is an error of
 * the command: a dump that did not reach its file must not exit 0. */
static int finish_output(int code) {
    if (fflush(stdout) || ferror(stdout)) {
        say("writing the output: %s", strerror(errno ? errno : EIO));
        return code ? code : EXIT_KVIDX;
    }
    return code;
}

/* ======================================================================
 * 2. Arguments: numbers, hex, options
 * ====================================================================== */

/* A uint64 in decimal: digits only, no sign, no overflow. */
static int parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes hex digits (spaces and newlines between pairs are skipped) into
 * out (cap bytes); -1 on a bad digit or an odd count, -2 if it does not fit. */
static int hex_decode(const char *s, size_t n, uint8_t *out, size_t cap, size_t *len) {
    size_t i = 0, k = 0;
    while (i < n) {
        int hi, lo;
        if (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t') { i++; continue; }
        if (i + 1 >= n || (hi = hexval(s[i])) < 0 || (lo = hexval(s[i + 1])) < 0) return -1;
        if (k == cap) return -2;
        out[k++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    *len = k;
    return 0;
}

static void put_hex(const uint8_t *p, size_t n) {
    static const char d[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) putchar(d[p[i] >> 4]), putchar(d[p[i] & 15]);
}

/* A value as one line of text: printable ASCII as is, a backslash as
 * "\\", every other byte as "\xNN". Reversible, and never a tab or a
 * newline, so `scan` output splits on them. */
static void put_escaped(const uint8_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (p[i] == '\\') fputs("\\\\", stdout);
        else if (p[i] >= 0x20 && p[i] < 0x7f) putchar(p[i]);
        else printf("\\x%02x", p[i]);
    }
}

/* Options, after the command in any order (-- ends them). */
enum {
    O_HEX = 1 << 0, O_JSON = 1 << 1, O_LIMIT = 1 << 2, O_FROM = 1 << 3,
    O_SHARD = 1 << 4, O_SHARDS = 1 << 5, O_QUIET = 1 << 6
};

typedef struct cli {
    unsigned opts;        /* the O_* given */
    uint64_t limit, from; /* --limit, --from */
    uint64_t shard;       /* --shard */
    uint32_t shards;      /* --shards */
    char **arg;           /* positional arguments (after the command) */
    int nargs;
} cli;

static const struct { const char *name; unsigned bit; int takes; } cli_optdefs[] = {
    {"--hex", O_HEX, 0},     {"--json", O_JSON, 0},   {"--limit", O_LIMIT, 1},
    {"--from", O_FROM, 1},   {"--shard", O_SHARD, 1}, {"--shards", O_SHARDS, 1},
    {"--quiet", O_QUIET, 0},
};

/* Splits argv into options the command accepts (allowed) and positional
 * arguments (kept in argv's own storage). */
static int parse_args(cli *c, int argc, char **argv, unsigned allowed) {
    int i, end = 0;
    size_t k;
    memset(c, 0, sizeof *c);
    c->arg = argv;
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (end || a[0] != '-' || a[1] != '-') {
            c->arg[c->nargs++] = argv[i];
            continue;
        }
        if (!a[2]) { end = 1; continue; }
        for (k = 0; k < sizeof cli_optdefs / sizeof *cli_optdefs; k++)
            if (!strcmp(a, cli_optdefs[k].name)) break;
        if (k == sizeof cli_optdefs / sizeof *cli_optdefs || !(allowed & cli_optdefs[k].bit))
            return usage_error("unknown option %s", a);
        c->opts |= cli_optdefs[k].bit;
        if (cli_optdefs[k].takes) {
            uint64_t v;
            if (i + 1 == argc || parse_u64(argv[i + 1], &v))
                return usage_error("%s takes a decimal number", a);
            i++;
            if (cli_optdefs[k].bit == O_LIMIT) c->limit = v;
            else if (cli_optdefs[k].bit == O_FROM) c->from = v;
            else if (cli_optdefs[k].bit == O_SHARD) c->shard = v;
            else if (v == 0 || v > KVIDX_SHARDS_MAX || (v & (v - 1)))
                return usage_error("%s takes a power of two from 1 to 1024", a);
            else c->shards = (uint32_t)v;
        }
    }
    return 0;
}

static int arg_u64(const char *s, const char *what, uint64_t *out) {
    if (!parse_u64(s, out)) return 0;
    fprintf(stderr, "kvidx %s: bad %s '%s': a decimal integer from 0 to %" PRIu64 "\n", g_cmd, what, s,
            UINT64_MAX);
    return EXIT_USAGE;
}

/* [FROM [TO]] at c->arg[i]. */
static int arg_range(const cli *c, int i, uint64_t *from, uint64_t *to) {
    int rc;
    *from = 0, *to = UINT64_MAX;
    if (c->nargs > i && (rc = arg_u64(c->arg[i], "FROM", from))) return rc;
    if (c->nargs > i + 1 && (rc = arg_u64(c->arg[i + 1], "TO", to))) return rc;
    if (*from > *to) return usage_error("%s", "FROM is above TO");
    return 0;
}

/* How the command opens DIR. */
enum { OPEN_NONE, OPEN_READ, OPEN_WRITE, OPEN_CREATE };

/* No background compaction: a command's run is short, and close would
 * wait for it; `kvidx compact` is the explicit way. */
static int open_db(const char *dir, int mode, uint32_t shards, kvidx **db) {
    kvidx_options o;
    int rc;
    kvidx_options_init(&o);
    o.flags = mode == OPEN_READ ? KVIDX_RDONLY : mode == OPEN_CREATE ? KVIDX_CREATE : 0;
    if (mode == OPEN_READ) o.sync_interval_ms = 0;
    o.shards = shards;
    o.compact_pct = 0;
    rc = kvidx_open(dir, &o, db);
    if (rc == KVIDX_EINVAL && mode != OPEN_CREATE && access(dir, F_OK))
        say("open %s: no such directory", dir);
    else if (rc)
        say("open %s: %s", dir, kvidx_strerror(rc));
    return rc;
}

/* ======================================================================
 * 3. Values: get, put, del, scan
 * ====================================================================== */

static int cmd_get(kvidx *db, cli *c) {
    uint8_t buf[KVIDX_VALUE_MAX];
    uint64_t key;
    size_t len;
    int rc;
    if ((rc = arg_u64(c->arg[1], "KEY", &key))) return rc;
    rc = kvidx_get(db, key, buf, sizeof buf, &len);
    if (rc == KVIDX_NOTFOUND) {
        say("%" PRIu64 ": not found", key);
        return EXIT_NOTFOUND;
    }
    if (rc) return fail("get", rc);
    if (c->opts & O_HEX) {
        put_hex(buf, len);
        putchar('\n');
    } else {
        fwrite(buf, 1, len, stdout);
        if (isatty(STDOUT_FILENO)) putchar('\n'); /* for the eye; a pipe gets the bytes alone */
    }
    return EXIT_DONE;
}

static int too_long(void) {
    say("VALUE is longer than %d bytes: %s", KVIDX_VALUE_MAX, kvidx_strerror(KVIDX_ETOOBIG));
    return EXIT_USAGE;
}

/* The value of put: the argument, or stdin (no argument, or "-"). One byte
 * over the limit is read, so a long input is refused rather than cut. */
static int read_value(cli *c, uint8_t *out, size_t *len) {
    char raw[2 * 3 * KVIDX_VALUE_MAX + 2]; /* hex with a space per pair, and one over */
    const char *src;
    size_t n;
    if (c->nargs > 2 && strcmp(c->arg[2], "-")) {
        src = c->arg[2];
        n = strlen(src);
    } else {
        n = fread(raw, 1, sizeof raw, stdin);
        if (ferror(stdin)) {
            say("reading stdin: %s", strerror(errno));
            return EXIT_USAGE;
        }
        src = raw;
    }
    if (c->opts & O_HEX) {
        int r = n >= sizeof raw ? -2 : hex_decode(src, n, out, KVIDX_VALUE_MAX, len);
        if (r == -1) return usage_error("%s", "VALUE is not hex (two digits a byte)");
        if (r == -2) return too_long();
        return 0;
    }
    if (n > KVIDX_VALUE_MAX) return too_long();
    memcpy(out, src, n);
    *len = n;
    return 0;
}

static int cmd_put(kvidx *db, cli *c) {
    uint8_t val[KVIDX_VALUE_MAX];
    uint64_t key;
    size_t len = 0;
    int rc;
    if ((rc = arg_u64(c->arg[1], "KEY", &key)) || (rc = read_value(c, val, &len))) return rc;
    if ((rc = kvidx_put(db, key, val, len))) return fail("put", rc);
    return EXIT_DONE;
}

static int cmd_del(kvidx *db, cli *c) {
    uint64_t key;
    int i, rc, code = EXIT_DONE;
    for (i = 1; i < c->nargs; i++)
        if ((rc = arg_u64(c->arg[i], "KEY", &key))) return rc;
    for (i = 1; i < c->nargs; i++) {
        arg_u64(c->arg[i], "KEY", &key);
        rc = kvidx_delete(db, key);
        if (rc == KVIDX_NOTFOUND) {
            say("%" PRIu64 ": not found", key);
            code = EXIT_NOTFOUND;
        } else if (rc) {
            return fail("del", rc);
        }
    }
    return code;
}

typedef struct scan_out {
    uint64_t left; /* keys still to print */
    int hex;
} scan_out;

/* [FROM [TO]] and --limit of scan and list-scan into *o. */
static int scan_args(const cli *c, uint64_t *from, uint64_t *to, scan_out *o) {
    o->left = (c->opts & O_LIMIT) ? c->limit : UINT64_MAX;
    o->hex = !!(c->opts & O_HEX);
    return arg_range(c, 1, from, to);
}

static int scan_print(void *ud, uint64_t key, const void *val, size_t len) {
    scan_out *o = ud;
    printf("%" PRIu64 "\t", key);
    if (o->hex) put_hex(val, len);
    else put_escaped(val, len);
    putchar('\n');
    return --o->left == 0 || ferror(stdout);
}

static int cmd_scan(kvidx *db, cli *c) {
    scan_out o;
    uint64_t from, to;
    int rc;
    if ((rc = scan_args(c, &from, &to, &o))) return rc;
    if (o.left && (rc = kvidx_scan(db, from, to, scan_print, &o))) return fail("scan", rc);
    return EXIT_DONE;
}

/* ======================================================================
 * 4. Lists
 * ====================================================================== */

#define LIST_PAGE 4096 /* ids a kvidx_list_get call: 32 KiB on the stack */

/* The ids of list-add / list-remove: the arguments after KEY, or, with
 * none, whitespace-separated decimals on stdin. */
static int read_ids(cli *c, uint64_t **ids, size_t *n) {
    size_t cap = 0, k = 0;
    uint64_t *v = NULL;
    int i, rc;
    if (c->nargs > 2) {
        if (!(v = malloc((size_t)(c->nargs - 2) * sizeof *v))) return fail("ids", KVIDX_ENOMEM);
        for (i = 2; i < c->nargs; i++)
            if ((rc = arg_u64(c->arg[i], "ID", &v[k++]))) return free(v), rc;
    } else {
        char word[32];
        int ch;
        for (;;) {
            size_t w = 0;
            while ((ch = getchar()) == ' ' || ch == '\n' || ch == '\t' || ch == '\r') {}
            if (ch == EOF) break;
            for (; ch != EOF && ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r'; ch = getchar())
                if (w < sizeof word - 1) word[w++] = (char)ch;
                else { w = sizeof word; break; }
            if (w >= sizeof word) return free(v), usage_error("%s", "an ID on stdin is too long");
            word[w] = 0;
            if (k == cap) {
                uint64_t *nv = realloc(v, (cap = cap ? cap * 2 : 1024) * sizeof *v);
                if (!nv) return free(v), fail("ids", KVIDX_ENOMEM);
                v = nv;
            }
            if ((rc = arg_u64(word, "ID", &v[k++]))) return free(v), rc;
        }
    }
    *ids = v, *n = k;
    return 0;
}

static void no_list(uint64_t key) { say("%" PRIu64 ": no such list", key); }

static int cmd_list_add(kvidx *db, cli *c) {
    uint64_t key, *ids;
    size_t n, done = 0;
    int rc;
    if ((rc = arg_u64(c->arg[1], "KEY", &key)) || (rc = read_ids(c, &ids, &n))) return rc;
    rc = kvidx_list_add(db, key, ids, n, &done);
    free(ids);
    if (rc) return fail("list-add", rc);
    printf("%zu\n", done);
    return EXIT_DONE;
}

static int cmd_list_remove(kvidx *db, cli *c) {
    uint64_t key, *ids;
    size_t n, done = 0;
    int rc;
    if ((rc = arg_u64(c->arg[1], "KEY", &key)) || (rc = read_ids(c, &ids, &n))) return rc;
    rc = kvidx_list_remove(db, key, ids, n, &done);
    free(ids);
    if (rc == KVIDX_NOTFOUND) {
        no_list(key);
        printf("0\n");
        return EXIT_NOTFOUND;
    }
    if (rc) return fail("list-remove", rc);
    printf("%zu\n", done);
    return EXIT_DONE;
}

static int cmd_list_get(kvidx *db, cli *c) {
    uint64_t key, page[LIST_PAGE], from = c->from, left = (c->opts & O_LIMIT) ? c->limit : UINT64_MAX;
    size_t n, i;
    int rc;
    if ((rc = arg_u64(c->arg[1], "KEY", &key))) return rc;
    for (;;) { /* once even for --limit 0: an absent list is exit 1 all the same */
        size_t want = left < LIST_PAGE ? (size_t)left : LIST_PAGE;
        rc = kvidx_list_get(db, key, from, page, want, &n);
        if (rc == KVIDX_NOTFOUND) {
            no_list(key);
            return EXIT_NOTFOUND;
        }
        if (rc) return fail("list-get", rc);
        for (i = 0; i < n; i++) printf("%" PRIu64 "\n", page[i]);
        left -= n;
        if (!left || n < want || page[n - 1] == UINT64_MAX || ferror(stdout)) break;
        from = page[n - 1] + 1;
    }
    return EXIT_DONE;
}

static int cmd_list_count(kvidx *db, cli *c) {
    uint64_t key, count;
    int rc;
    if ((rc = arg_u64(c->arg[1], "KEY", &key))) return rc;
    rc = kvidx_list_count(db, key, &count);
    if (rc && rc != KVIDX_NOTFOUND) return fail("list-count", rc);
    printf("%" PRIu64 "\n", count);
    return rc == KVIDX_NOTFOUND ? EXIT_NOTFOUND : EXIT_DONE;
}

static int cmd_list_del(kvidx *db, cli *c) {
    uint64_t key;
    int rc;
    if ((rc = arg_u64(c->arg[1], "KEY", &key))) return rc;
    rc = kvidx_list_delete(db, key);
    if (rc == KVIDX_NOTFOUND) {
        no_list(key);
        return EXIT_NOTFOUND;
    }
    return rc ? fail("list-del", rc) : EXIT_DONE;
}

static int list_scan_print(void *ud, uint64_t key, uint64_t count) {
    scan_out *o = ud;
    printf("%" PRIu64 "\t%" PRIu64 "\n", key, count);
    return --o->left == 0 || ferror(stdout);
}

static int cmd_list_scan(kvidx *db, cli *c) {
    scan_out o;
    uint64_t from, to;
    int rc;
    if ((rc = scan_args(c, &from, &to, &o))) return rc;
    if (o.left && (rc = kvidx_list_scan(db, from, to, list_scan_print, &o))) return fail("list-scan", rc);
    return EXIT_DONE;
}

/* ======================================================================
 * 5. Maintenance: stat, check, compact, backup
 * ====================================================================== */

/* kvidx_stats, field by field, for stat's two forms. */
#define STAT(f, unit, what) {#f, offsetof(kvidx_stats, f), unit, what}
static const struct { const char *name; size_t off; char unit; const char *what; } stat_fields[] = {
    STAT(keys, 'n', "live keys (values)"),
    STAT(value_bytes, 'b', "bytes of the live values"),
    STAT(lists, 'n', "lists"),
    STAT(list_ids, 'n', "ids over all lists"),
    STAT(records, 'n', "key records (live, overwritten, deleted)"),
    STAT(garbage_records, 'n', "key records compaction gives back"),
    STAT(slots, 'n', "256-byte value slots written"),
    STAT(garbage_slots, 'n', "value slots compaction gives back"),
    STAT(live_bytes, 'b', "value-store bytes live data needs"),
    STAT(garbage_bytes, 'b', "value-store bytes compaction gives back"),
    STAT(key_log_bytes, 'b', "key logs (.k)"),
    STAT(value_log_bytes, 'b', "value logs (.v)"),
    STAT(buffer_bytes, 'b', "section buffers (.b)"),
    STAT(list_log_bytes, 'b', "list logs (.l)"),
    STAT(list_snapshot_bytes, 'b', "list snapshots (.ls)"),
    STAT(disk_bytes, 'b', "disk blocks allocated"),
    STAT(map_bytes, 'b', "memory of the value index (both copies)"),
    STAT(list_ram_bytes, 'b', "memory of the lists"),
    STAT(puts, 'n', "puts since open"),
    STAT(deletes, 'n', "deletes since open"),
    STAT(list_writes, 'n', "list log records since open"),
    STAT(flushes, 'n', "sections written since open"),
    STAT(syncs, 'n', "syncs since open"),
    STAT(compactions, 'n', "shard compactions since open"),
    STAT(compact_ms_max, 'n', "longest compaction hold on writers (ms)"),
};

static uint64_t stat_get(const kvidx_stats *st, size_t i) {
    uint64_t v;
    memcpy(&v, (const char *)st + stat_fields[i].off, sizeof v);
    return v;
}

static void human_bytes(char *out, size_t cap, uint64_t b) {
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)b;
    unsigned u = 0;
    while (v >= 1024 && u < 5) v /= 1024, u++;
    if (u) snprintf(out, cap, " (%.1f %s)", v, unit[u]);
    else *out = 0;
}

static int cmd_stat(kvidx *db, cli *c) {
    kvidx_stats st;
    size_t i;
    int rc;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    if (c->opts & O_SHARD) {
        if (c->shard > UINT32_MAX) return usage_error("%s", "--shard is out of range");
        rc = kvidx_stat_shard(db, (uint32_t)c->shard, &st);
        if (rc == KVIDX_EINVAL) return usage_error("%s", "--shard is not a shard of this database");
    } else {
        rc = kvidx_stat(db, &st);
    }
    if (rc) return fail("stat", rc);
    if (c->opts & O_JSON) {
        printf("{\"version\":\"%s\",\"shards\":%" PRIu32 ",", kvidx_version(), st.shards);
        if (c->opts & O_SHARD) printf("\"shard\":%" PRIu64 ",", st.shard);
        printf("\"direct_io\":%s", (st.flags & KVIDX_STAT_DIRECT_IO) ? "true" : "false");
        for (i = 0; i < sizeof stat_fields / sizeof *stat_fields; i++)
            printf(",\"%s\":%" PRIu64, stat_fields[i].name, stat_get(&st, i));
        printf("}\n");
        return EXIT_DONE;
    }
    printf("%-20s %s\n", "version", kvidx_version());
    printf("%-20s %" PRIu32 "\n", "shards", st.shards);
    if (c->opts & O_SHARD) printf("%-20s %" PRIu64 "\n", "shard", st.shard);
    printf("%-20s %s\n", "direct_io", (st.flags & KVIDX_STAT_DIRECT_IO) ? "yes" : "no (buffered IO)");
    for (i = 0; i < sizeof stat_fields / sizeof *stat_fields; i++) {
        char h[32] = "";
        uint64_t v = stat_get(&st, i);
        if (stat_fields[i].unit == 'b') human_bytes(h, sizeof h, v);
        printf("%-20s %" PRIu64 "%s  # %s\n", stat_fields[i].name, v, h, stat_fields[i].what);
    }
    return EXIT_DONE;
}

static void check_line(void *ud, const char *line) {
    (*(unsigned long *)ud)++;
    printf("%s\n", line);
}

static int cmd_check(kvidx *db, cli *c) {
    unsigned long lines = 0;
    int rc;
    (void)db;
    fflush(stdout);
    rc = kvidx_check_report(c->arg[0], check_line, &lines);
    if (rc == KVIDX_OK) {
        printf("%s: ok\n", c->arg[0]);
        return EXIT_DONE;
    }
    if (rc == KVIDX_ECORRUPT) {
        printf("%s: damaged (%lu line%s above)\n", c->arg[0], lines, lines == 1 ? "" : "s");
        return EXIT_NOTFOUND; /* 1: damage found */
    }
    return fail(c->arg[0], rc);
}

typedef struct compact_job {
    kvidx *db;
    int rc;
    volatile int done; /* written by the worker, read by the progress loop */
} compact_job;

static void *compact_worker(void *p) {
    compact_job *j = p;
    j->rc = kvidx_compact(j->db);
    __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Runs kvidx_compact on a thread; on a terminal, this thread draws the
 * shards done (kvidx_stats.compactions, which counts each shard's commit)
 * on stderr every 100 ms, and once more when it is over. */
static int cmd_compact(kvidx *db, cli *c) {
    kvidx_stats before, after;
    compact_job job;
    pthread_t th;
    struct timespec t0, t1;
    int bar = !(c->opts & O_QUIET) && isatty(STDERR_FILENO), rc;
    double secs;
    memset(&before, 0, sizeof before), memset(&after, 0, sizeof after);
    before.size = after.size = sizeof before;
    if ((rc = kvidx_stat(db, &before))) return fail("stat", rc);
    job.db = db, job.rc = 0, job.done = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if ((rc = pthread_create(&th, NULL, compact_worker, &job))) {
        say("starting the compaction thread: %s", strerror(rc));
        return EXIT_KVIDX;
    }
    while (bar) { /* drawn at least twice: at the start and when done */
        int fin = __atomic_load_n(&job.done, __ATOMIC_ACQUIRE);
        kvidx_stats now;
        struct timespec nap = {0, 100 * 1000 * 1000};
        uint64_t k, d;
        int w = 40, fill;
        memset(&now, 0, sizeof now);
        now.size = sizeof now;
        if (kvidx_stat(db, &now)) break;
        d = now.compactions - before.compactions;
        if (d > now.shards) d = now.shards;
        fill = (int)(d * (uint64_t)w / (now.shards ? now.shards : 1));
        fputs("\rcompacting [", stderr);
        for (k = 0; k < (uint64_t)w; k++) fputc((int)k < fill ? '#' : '.', stderr);
        fprintf(stderr, "] %" PRIu64 "/%" PRIu32 " shards", d, now.shards);
        fflush(stderr);
        if (fin) break;
        nanosleep(&nap, NULL);
    }
    pthread_join(th, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (bar) fputs("\r\033[K", stderr);
    if (job.rc) return fail("compact", job.rc);
    if ((rc = kvidx_stat(db, &after))) return fail("stat", rc);
    printf("compacted %" PRIu32 " shards in %.2f s: disk %" PRIu64 " -> %" PRIu64 " bytes, garbage %" PRIu64
           " -> %" PRIu64 " bytes\n",
           after.shards, secs, before.disk_bytes, after.disk_bytes, before.garbage_bytes, after.garbage_bytes);
    return EXIT_DONE;
}

static int cmd_backup(kvidx *db, cli *c) {
    int rc = kvidx_backup(db, c->arg[1]);
    if (rc == KVIDX_EINVAL) {
        say("%s: must be a new or empty directory whose parent exists", c->arg[1]);
        return EXIT_USAGE;
    }
    return rc ? fail("backup", rc) : EXIT_DONE;
}

/* ======================================================================
 * 6. dump and load
 * ====================================================================== */

#define DUMP_FORMAT 1
#define DUMP_IDS_LINE 65536            /* ids per list line: about 1.3 MiB of text at most */
#define LOAD_LINE_MAX (64u << 20)     /* longer lines are refused: a dump's are < 1.5 MiB */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void put_base64(const uint8_t *p, size_t n) {
    size_t i;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        putchar(b64[v >> 18]), putchar(b64[v >> 12 & 63]), putchar(b64[v >> 6 & 63]), putchar(b64[v & 63]);
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        putchar(b64[v >> 18]), putchar(b64[v >> 12 & 63]), fputs("==", stdout);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        putchar(b64[v >> 18]), putchar(b64[v >> 12 & 63]), putchar(b64[v >> 6 & 63]), putchar('=');
    }
}

/* Strict base64 (the standard alphabet, padded): -1 if malformed, -2 if
 * longer than cap. */
static int base64_decode(const char *s, size_t n, uint8_t *out, size_t cap, size_t *len) {
    size_t i, k = 0;
    if (n % 4) return -1;
    for (i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int j, pad = 0;
        for (j = 0; j < 4; j++) {
            const char *q = s[i + j] ? strchr(b64, s[i + j]) : NULL;
            if (s[i + j] == '=' && i + 4 == n && j >= 2 && (j == 3 || s[i + 3] == '=')) {
                pad++;
                v <<= 6;
                continue;
            }
            if (!q || pad) return -1;
            v = v << 6 | (uint32_t)(q - b64);
        }
        if (k + 3 - (size_t)pad > cap) return -2;
        out[k++] = (uint8_t)(v >> 16);
        if (pad < 2) out[k++] = (uint8_t)(v >> 8);
        if (pad < 1) out[k++] = (uint8_t)v;
        if ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff))) return -1; /* non-canonical */
    }
    *len = k;
    return 0;
}

typedef struct dump_state {
    kvidx *db;
    uint64_t values, lists, ids;
    uint64_t *page;
    int rc;
} dump_state;

static int dump_value(void *ud, uint64_t key, const void *val, size_t len) {
    dump_state *d = ud;
    printf("{\"key\":%" PRIu64 ",\"value\":\"", key);
    put_base64(val, len);
    fputs("\"}\n", stdout);
    d->values++;
    return ferror(stdout);
}

static int dump_list(void *ud, uint64_t key, uint64_t count) {
    dump_state *d = ud;
    uint64_t from = 0;
    size_t n, i;
    (void)count;
    d->lists++;
    for (;;) {
        int rc = kvidx_list_get(d->db, key, from, d->page, DUMP_IDS_LINE, &n);
        if (rc) { d->rc = rc; return 1; }
        if (!n) break;
        printf("{\"key\":%" PRIu64 ",\"list\":[", key);
        for (i = 0; i < n; i++) printf(i ? ",%" PRIu64 : "%" PRIu64, d->page[i]);
        fputs("]}\n", stdout);
        d->ids += n;
        if (n < DUMP_IDS_LINE || d->page[n - 1] == UINT64_MAX) break;
        from = d->page[n - 1] + 1;
    }
    return ferror(stdout);
}

static int cmd_dump(kvidx *db, cli *c) {
    dump_state d;
    kvidx_stats st;
    int rc;
    (void)c;
    memset(&d, 0, sizeof d);
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    d.db = db;
    if ((rc = kvidx_stat(db, &st))) return fail("stat", rc);
    if (!(d.page = malloc(DUMP_IDS_LINE * sizeof *d.page))) return fail("dump", KVIDX_ENOMEM);
    printf("{\"kvidx\":\"dump\",\"format\":%d,\"version\":\"%s\",\"shards\":%" PRIu32 "}\n", DUMP_FORMAT,
           kvidx_version(), st.shards);
    rc = kvidx_scan(db, 0, UINT64_MAX, dump_value, &d);
    if (!rc) rc = kvidx_list_scan(db, 0, UINT64_MAX, dump_list, &d);
    if (!rc) rc = d.rc;
    free(d.page);
    if (rc) return fail("dump", rc); /* no end line: load will refuse what was written */
    if (ferror(stdout)) return finish_output(EXIT_KVIDX);
    printf("{\"end\":true,\"values\":%" PRIu64 ",\"lists\":%" PRIu64 ",\"ids\":%" PRIu64 "}\n", d.values,
           d.lists, d.ids);
    return EXIT_DONE;
}

/* A small JSON reader for load's lines: objects of string keys whose values
 * are unsigned integers (or strings of decimal digits), strings, arrays of
 * those integers, true or false. */
typedef struct jr {
    const char *p, *end;
    const char *err; /* the first problem */
} jr;

static void jr_ws(jr *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n')) j->p++;
}

static int jr_bad(jr *j, const char *why) {
    if (!j->err) j->err = why;
    return -1;
}

static int jr_lit(jr *j, char ch) {
    jr_ws(j);
    if (j->p < j->end && *j->p == ch) { j->p++; return 0; }
    return -1;
}

/* A string into out (cap bytes, NUL-terminated); escapes are decoded, a
 * \u escape only below 0x80 (nothing load reads needs more). */
static int jr_string(jr *j, char *out, size_t cap, size_t *len) {
    size_t k = 0;
    if (jr_lit(j, '"')) return jr_bad(j, "expected a string");
    while (j->p < j->end && *j->p != '"') {
        char ch = *j->p++;
        if ((unsigned char)ch < 0x20) return jr_bad(j, "a control character in a string");
        if (ch == '\\') {
            if (j->p == j->end) break;
            ch = *j->p++;
            switch (ch) {
            case '"': case '\\': case '/': break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u': {
                int i, v = 0;
                for (i = 0; i < 4; i++) {
                    int h = j->p + i < j->end ? hexval(j->p[i]) : -1;
                    if (h < 0) return jr_bad(j, "a bad \\u escape");
                    v = v << 4 | h;
                }
                j->p += 4;
                if (v >= 0x80 || v == 0) return jr_bad(j, "a \\u escape outside ASCII");
                ch = (char)v;
                break;
            }
            default: return jr_bad(j, "a bad escape in a string");
            }
        }
        if (k + 1 >= cap) return jr_bad(j, "a string too long");
        out[k++] = ch;
    }
    if (j->p == j->end) return jr_bad(j, "an unterminated string");
    j->p++;
    out[k] = 0;
    if (len) *len = k;
    return 0;
}

/* An unsigned integer: a JSON number without sign, fraction or exponent
 * (JSON numbers are exact here, to 2^64 - 1), or a string of its digits
 * (for producers whose numbers are doubles). */
static int jr_u64(jr *j, uint64_t *v) {
    char digits[24];
    size_t n = 0;
    jr_ws(j);
    if (j->p < j->end && *j->p == '"') {
        if (jr_string(j, digits, sizeof digits, &n)) return -1;
    } else {
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9' && n < sizeof digits - 1) digits[n++] = *j->p++;
        digits[n] = 0;
        if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E' || *j->p == '-' ||
                              (*j->p >= '0' && *j->p <= '9')))
            return jr_bad(j, "a number that is not an integer from 0 to 2^64-1");
    }
    if (!n || (n > 1 && digits[0] == '0') || parse_u64(digits, v))
        return jr_bad(j, "expected an integer from 0 to 2^64-1");
    return 0;
}

typedef struct ids_vec {
    uint64_t *v;
    size_t n, cap;
} ids_vec;

static int jr_ids(jr *j, ids_vec *a) {
    a->n = 0;
    if (jr_lit(j, '[')) return jr_bad(j, "expected an array of ids");
    if (!jr_lit(j, ']')) return 0;
    for (;;) {
        if (a->n == a->cap) {
            size_t cap = a->cap ? a->cap * 2 : 1024;
            uint64_t *v = realloc(a->v, cap * sizeof *v);
            if (!v) return jr_bad(j, "out of memory");
            a->v = v, a->cap = cap;
        }
        if (jr_u64(j, &a->v[a->n])) return -1;
        a->n++;
        if (!jr_lit(j, ']')) return 0;
        if (jr_lit(j, ',')) return jr_bad(j, "expected , or ] in the ids");
    }
}

/* One line, as load understands it. */
typedef struct load_line {
    enum { L_NONE, L_HEADER, L_VALUE, L_LIST, L_END } kind;
    unsigned has;                    /* H_* seen */
    uint64_t key, format, shards, values, lists, ids;
    uint8_t val[KVIDX_VALUE_MAX];
    size_t len;
} load_line;

enum {
    H_KEY = 1 << 0, H_VALUE = 1 << 1, H_LIST = 1 << 2, H_KVIDX = 1 << 3, H_FORMAT = 1 << 4,
    H_VERSION = 1 << 5, H_SHARDS = 1 << 6, H_END = 1 << 7, H_VALUES = 1 << 8, H_LISTS = 1 << 9, H_IDS = 1 << 10
};

/* Parses one line into *l (ids into *a). Returns 0, or -1 with j->err. */
static int load_parse(jr *j, load_line *l, ids_vec *a) {
    static const struct { const char *name; unsigned bit; } fields[] = {
        {"key", H_KEY}, {"value", H_VALUE}, {"list", H_LIST}, {"kvidx", H_KVIDX}, {"format", H_FORMAT},
        {"version", H_VERSION}, {"shards", H_SHARDS}, {"end", H_END}, {"values", H_VALUES},
        {"lists", H_LISTS}, {"ids", H_IDS},
    };
    char name[16], *str = NULL;
    size_t i, n;
    int r = -1;
    l->has = 0;
    if (jr_lit(j, '{')) return jr_bad(j, "a line must be one JSON object");
    if (!jr_lit(j, '}')) goto done;
    /* a string field's value is at most the line long */
    if (!(str = malloc((size_t)(j->end - j->p) + 1))) return jr_bad(j, "out of memory");
    for (;;) {
        unsigned bit = 0;
        if (jr_string(j, name, sizeof name, NULL)) goto out;
        for (i = 0; i < sizeof fields / sizeof *fields; i++)
            if (!strcmp(name, fields[i].name)) bit = fields[i].bit;
        if (!bit) { jr_bad(j, "an unknown field"); goto out; }
        if (l->has & bit) { jr_bad(j, "a field given twice"); goto out; }
        l->has |= bit;
        if (jr_lit(j, ':')) { jr_bad(j, "expected :"); goto out; }
        switch (bit) {
        case H_KEY: if (jr_u64(j, &l->key)) goto out; break;
        case H_FORMAT: if (jr_u64(j, &l->format)) goto out; break;
        case H_SHARDS: if (jr_u64(j, &l->shards)) goto out; break;
        case H_VALUES: if (jr_u64(j, &l->values)) goto out; break;
        case H_LISTS: if (jr_u64(j, &l->lists)) goto out; break;
        case H_IDS: if (jr_u64(j, &l->ids)) goto out; break;
        case H_LIST: if (jr_ids(j, a)) goto out; break;
        case H_END:
            jr_ws(j);
            if (j->end - j->p < 4 || memcmp(j->p, "true", 4)) { jr_bad(j, "\"end\" must be true"); goto out; }
            j->p += 4;
            break;
        case H_VALUE:
            if (jr_string(j, str, (size_t)(j->end - j->p) + 1, &n)) goto out;
            r = base64_decode(str, n, l->val, sizeof l->val, &l->len);
            if (r == -2) { jr_bad(j, "a value longer than 256 bytes"); r = -1; goto out; }
            if (r) { jr_bad(j, "a value that is not base64"); goto out; }
            r = -1;
            break;
        default: /* kvidx, version: strings */
            if (jr_string(j, str, (size_t)(j->end - j->p) + 1, &n)) goto out;
            if (bit == H_KVIDX && strcmp(str, "dump")) { jr_bad(j, "\"kvidx\" must be \"dump\""); goto out; }
        }
        if (!jr_lit(j, '}')) break;
        if (jr_lit(j, ',')) { jr_bad(j, "expected , or }"); goto out; }
    }
done:
    jr_ws(j);
    if (j->p != j->end) { jr_bad(j, "text after the object"); goto out; }
    if (l->has == (H_KEY | H_VALUE)) l->kind = L_VALUE;
    else if (l->has == (H_KEY | H_LIST)) l->kind = L_LIST;
    else if ((l->has & (H_KVIDX | H_FORMAT)) == (H_KVIDX | H_FORMAT) && !(l->has & ~(H_KVIDX | H_FORMAT | H_VERSION | H_SHARDS)))
        l->kind = L_HEADER;
    else if (l->has == (H_END | H_VALUES | H_LISTS | H_IDS)) l->kind = L_END;
    else { jr_bad(j, "not a header, value, list or end line (see docs/CLI.md)"); goto out; }
    if (l->kind == L_LIST && !a->n) { jr_bad(j, "a list line without ids"); goto out; }
    r = 0;
out:
    free(str);
    return r;
}

static int cmd_load(kvidx *dbunused, cli *c) {
    FILE *in = stdin;
    kvidx *db = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    uint64_t lineno = 0, values = 0, lists = 0, ids = 0, last_list = 0;
    int header = 0, ended = 0, any_list = 0, code = EXIT_DONE, rc;
    ids_vec a = {NULL, 0, 0};
    load_line l;
    (void)dbunused;
    if (c->nargs > 1 && strcmp(c->arg[1], "-") && !(in = fopen(c->arg[1], "r"))) {
        say("%s: %s", c->arg[1], strerror(errno));
        return EXIT_USAGE;
    }
    while ((got = getline(&line, &cap, in)) >= 0) {
        jr j;
        lineno++;
        if ((size_t)got > LOAD_LINE_MAX) {
            say("line %" PRIu64 ": longer than 64 MiB", lineno);
            code = EXIT_USAGE;
            break;
        }
        j.p = line, j.end = line + got, j.err = NULL;
        jr_ws(&j);
        if (j.p == j.end) continue; /* a blank line */
        if (ended) { j.err = "a line after the end line"; }
        else if (!load_parse(&j, &l, &a)) {
            if (l.kind == L_HEADER && (header || db)) j.err = "a header that is not the first line";
            else if (l.kind == L_HEADER && l.format != DUMP_FORMAT) j.err = "a dump format this kvidx does not read";
            else if (l.kind == L_HEADER && (l.has & H_SHARDS) &&
                     (!l.shards || l.shards > KVIDX_SHARDS_MAX || (l.shards & (l.shards - 1))))
                j.err = "a shard count that is not a power of two from 1 to 1024";
        }
        if (j.err) {
            say("line %" PRIu64 ": %s", lineno, j.err);
            code = EXIT_USAGE;
            break;
        }
        if (l.kind == L_HEADER) {
            header = 1;
            if (!c->shards && (l.has & H_SHARDS)) c->shards = (uint32_t)l.shards;
            continue;
        }
        if (l.kind == L_END) {
            ended = 1;
            if (l.values != values || l.lists != lists || l.ids != ids) {
                say("line %" PRIu64 ": the end line counts %" PRIu64 " values, %" PRIu64 " lists, %" PRIu64
                    " ids; the lines before it hold %" PRIu64 ", %" PRIu64 ", %" PRIu64,
                    lineno, l.values, l.lists, l.ids, values, lists, ids);
                code = EXIT_USAGE;
                break;
            }
            continue;
        }
        if (!db && open_db(c->arg[0], OPEN_CREATE, c->shards, &db)) { code = EXIT_KVIDX; break; }
        if (l.kind == L_VALUE) {
            rc = kvidx_put(db, l.key, l.val, l.len);
            values++;
        } else {
            rc = kvidx_list_add(db, l.key, a.v, a.n, NULL);
            if (!any_list || l.key != last_list) lists++;
            any_list = 1, last_list = l.key, ids += a.n;
        }
        if (rc) {
            say("line %" PRIu64 ": %s", lineno, kvidx_strerror(rc));
            code = EXIT_KVIDX;
            break;
        }
    }
    if (!code && ferror(in)) { say("reading: %s", strerror(errno)); code = EXIT_USAGE; }
    if (!code && header && !ended) {
        say("the dump has no end line: it was cut short (what came before it is loaded)");
        code = EXIT_USAGE;
    }
    /* An empty input still leaves a database behind, as put would. */
    if (!db && !code && open_db(c->arg[0], OPEN_CREATE, c->shards, &db)) code = EXIT_KVIDX;
    if (db && (rc = kvidx_close(db)) && !code) code = fail("close", rc);
    if (!code) fprintf(stderr, "kvidx load: %" PRIu64 " values, %" PRIu64 " lists, %" PRIu64 " ids\n", values,
                       lists, ids);
    free(line);
    free(a.v);
    if (in != stdin) fclose(in);
    return code;
}

/* ======================================================================
 * 7. The command table, help, main
 * ====================================================================== */

typedef struct command {
    const char *name;
    int (*run)(kvidx *db, cli *c);
    int open;          /* OPEN_* */
    int min, max;      /* positional arguments, DIR included; max -1: any */
    unsigned opts;     /* O_* accepted */
    const char *usage; /* after "kvidx " */
    const char *help;
} command;

static const command commands[] = {
    {"get", cmd_get, OPEN_READ, 2, 2, O_HEX, "get DIR KEY [--hex]",
     "Writes KEY's value to stdout: its bytes exactly (a newline is added\n"
     "only when stdout is a terminal), or with --hex as hex and a newline.\n"
     "Exit 1 if KEY has no value.\n"},
    {"put", cmd_put, OPEN_CREATE, 2, 3, O_HEX | O_SHARDS, "put DIR KEY [VALUE|-] [--hex] [--shards N]",
     "Sets KEY to VALUE, or to the bytes on stdin when VALUE is missing or\n"
     "'-' (nothing is added or stripped). --hex: VALUE (or stdin) is hex,\n"
     "two digits a byte, spaces and newlines ignored. A value is 0 to 256\n"
     "bytes. Creates DIR when it is missing (--shards N shards, default 8).\n"},
    {"del", cmd_del, OPEN_WRITE, 2, -1, 0, "del DIR KEY...",
     "Deletes each KEY's value. Exit 1 if any KEY had none (the others are\n"
     "deleted all the same).\n"},
    {"scan", cmd_scan, OPEN_READ, 1, 3, O_LIMIT | O_HEX, "scan DIR [FROM [TO]] [--limit N] [--hex]",
     "Prints KEY<tab>VALUE for every key in [FROM, TO] (default: all),\n"
     "ascending, at most N of them. VALUE is escaped: printable ASCII as is,\n"
     "a backslash as \\\\, any other byte as \\xNN; --hex prints hex instead.\n"},
    {"list-get", cmd_list_get, OPEN_READ, 2, 2, O_FROM | O_LIMIT, "list-get DIR KEY [--from ID] [--limit N]",
     "Prints the ids of KEY's list, one a line, ascending, from ID (default\n"
     "0), at most N of them. Exit 1 if KEY has no list.\n"},
    {"list-add", cmd_list_add, OPEN_CREATE, 2, -1, O_SHARDS, "list-add DIR KEY [ID...] [--shards N]",
     "Adds the ids to KEY's list (created if missing) in one atomic write;\n"
     "with no ID arguments, reads whitespace-separated ids from stdin.\n"
     "Prints how many were new. Creates DIR when it is missing.\n"},
    {"list-remove", cmd_list_remove, OPEN_WRITE, 2, -1, 0, "list-remove DIR KEY [ID...]",
     "Removes the ids (arguments, or stdin when there are none) from KEY's\n"
     "list in one atomic write; prints how many were there. Exit 1 if KEY\n"
     "has no list.\n"},
    {"list-count", cmd_list_count, OPEN_READ, 2, 2, 0, "list-count DIR KEY",
     "Prints the number of ids in KEY's list (0 and exit 1 if it has none).\n"},
    {"list-del", cmd_list_del, OPEN_WRITE, 2, 2, 0, "list-del DIR KEY",
     "Deletes KEY's list. Exit 1 if it had none.\n"},
    {"list-scan", cmd_list_scan, OPEN_READ, 1, 3, O_LIMIT, "list-scan DIR [FROM [TO]] [--limit N]",
     "Prints KEY<tab>COUNT for every list whose key is in [FROM, TO],\n"
     "ascending, at most N of them.\n"},
    {"stat", cmd_stat, OPEN_READ, 1, 1, O_JSON | O_SHARD, "stat DIR [--json] [--shard N]",
     "Prints the database's figures (kvidx_stat; kvidx_stat_shard with\n"
     "--shard): one per line with what it means, or one JSON object with\n"
     "--json. Counters \"since open\" count from this command's own open.\n"},
    {"check", cmd_check, OPEN_NONE, 1, 1, 0, "check DIR",
     "Verifies every file, record, checksum and list of DIR (kvidx_check).\n"
     "Prints what is damaged and where (shard, record, key), then a last line\n"
     "'DIR: ok' or 'DIR: damaged'. Exit 0 if sound, 1 if damaged, 3 if it\n"
     "could not check (e.g. a writer has DIR open).\n"},
    {"compact", cmd_compact, OPEN_WRITE, 1, 1, O_QUIET, "compact DIR [--quiet]",
     "Rewrites every shard with only its live data (kvidx_compact), showing\n"
     "the shards done on stderr when it is a terminal (not with --quiet);\n"
     "then prints the disk bytes and garbage before and after.\n"},
    {"backup", cmd_backup, OPEN_READ, 2, 2, 0, "backup DIR DEST",
     "Copies the database into DEST, a new or empty directory whose parent\n"
     "exists (kvidx_backup). The copy is durable and opens on its own.\n"},
    {"dump", cmd_dump, OPEN_READ, 1, 1, 0, "dump DIR",
     "Writes the whole database to stdout, one JSON object a line: a header,\n"
     "every value (key order, base64 bytes), every list (key order, ids\n"
     "ascending, 65536 a line at most), and an end line with the counts.\n"
     "The format is in docs/CLI.md; `kvidx load` reads it back.\n"},
    {"load", cmd_load, OPEN_NONE, 1, 2, O_SHARDS, "load DIR [FILE|-] [--shards N]",
     "Reads a dump (from FILE, or stdin) into DIR, creating it when missing\n"
     "with the dump's shard count (or --shards N). Values are put and list\n"
     "ids added, so loading into a new or empty directory reproduces the\n"
     "dumped database exactly. A bad line stops the load with its line\n"
     "number (exit 2); the lines before it stay loaded. A dump with a header\n"
     "must end with its end line, whose counts must match.\n"},
};

#define NCOMMANDS (sizeof commands / sizeof *commands)

static void overview(FILE *f) {
    size_t i;
    fprintf(f, "kvidx %s -- a kvidx database directory from the shell\n\nusage:\n", kvidx_version());
    for (i = 0; i < NCOMMANDS; i++) fprintf(f, "  kvidx %s\n", commands[i].usage);
    fprintf(f, "  kvidx help [COMMAND]      kvidx --version\n\n"
               "KEY, ID, FROM, TO, N: decimal integers from 0 to 2^64-1.\n"
               "Exit codes: 0 done; 1 not found (or check: damage found); 2 bad usage or\n"
               "bad input; 3 a kvidx error (the message is on stderr). docs/CLI.md has more.\n");
}

static const command *find_command(const char *name) {
    size_t i;
    for (i = 0; i < NCOMMANDS; i++)
        if (!strcmp(commands[i].name, name)) return &commands[i];
    return NULL;
}

static int help(const char *name) {
    const command *c = name ? find_command(name) : NULL;
    if (name && !c) {
        fprintf(stderr, "kvidx: no command '%s'\n", name);
        return EXIT_USAGE;
    }
    if (!c) overview(stdout);
    else printf("usage: kvidx %s\n\n%s", c->usage, c->help);
    return finish_output(EXIT_DONE);
}

int main(int argc, char **argv) {
    const command *cmd;
    kvidx *db = NULL;
    cli c;
    int i, code, rc;
    if (argc < 2) {
        overview(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) return help(NULL);
    if (!strcmp(argv[1], "help")) return help(argc > 2 ? argv[2] : NULL);
    if (!strcmp(argv[1], "--version")) {
        printf("kvidx %s\n", kvidx_version());
        return finish_output(EXIT_DONE);
    }
    if (!(cmd = find_command(argv[1]))) {
        fprintf(stderr, "kvidx: no command '%s' (kvidx --help lists them)\n", argv[1]);
        return EXIT_USAGE;
    }
    g_cmd = cmd->name;
    for (i = 2; i < argc && strcmp(argv[i], "--"); i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return help(cmd->name);
    if ((rc = parse_args(&c, argc - 2, argv + 2, cmd->opts))) return rc;
    if (c.nargs < cmd->min || (cmd->max >= 0 && c.nargs > cmd->max)) {
        fprintf(stderr, "usage: kvidx %s\n", cmd->usage);
        return EXIT_USAGE;
    }
    if (!c.arg[0][0]) return usage_error("%s", "DIR is empty");
    if (cmd->open != OPEN_NONE &&
        open_db(c.arg[0], cmd->open, c.shards, &db))
        return EXIT_KVIDX;
    code = cmd->run(db, &c);
    if (db && (rc = kvidx_close(db)) && code == EXIT_DONE) code = fail("close", rc);
    return finish_output(code);
}
