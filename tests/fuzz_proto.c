/* fuzz_proto.c -- libFuzzer target for the protocol layer: the RESP2 /
 * inline parser and the command dispatcher of kvidx.c, on a scratch
 * database opened once.
 *
 *   make fuzz                      (FUZZ_SECS=60 by default)
 *   build/fuzz_proto crash-...     replays one input
 *
 * Each input is fed twice, to two new sessions of the same database:
 *   A: in one kvidx_session_feed, the transport taking every byte;
 *   B: cut into pieces chosen by the input's first byte (one cut, a byte
 *      at a time, fixed or varying chunk sizes), the transport taking
 *      at most a few bytes a write call in some modes.
 * The first byte is a control byte, not part of the stream. Control bytes
 * 0x7c..0x7f make the stream A repeated to FUZZ_REPEAT_TO bytes followed
 * by B, where the input is A, or A 0xff B, so that inputs of a few bytes
 * reach the 64 KiB limits (and what follows them), long pipelines and the
 * 1 MiB cut of a batch of replies (such an input takes ~0.1-1 s).
 *
 * What is checked beyond "no crash, no leak, no hang":
 *   - every byte written is well-formed RESP2 (+/- lines without CR or
 *     LF, ':' a decimal int64, '$' -1 or a length with its data and CRLF,
 *     '*' -1 or a count of nested replies), every error is "-ERR ...";
 *   - when a feed returns, the output written so far ends on a reply
 *     boundary (the replies of complete requests are all written);
 *   - feed returns KVIDX_OK, KVIDX_CLOSED or KVIDX_EPROTO only, and after
 *     a non-OK return a further feed returns the same code and writes
 *     nothing;
 *   - KVIDX_EPROTO comes with a last reply "-ERR Protocol error: ...";
 *   - A and B end with the same code, the same number of replies and the
 *     same last error text when it is a protocol error: the split must
 *     not change how the bytes are framed. (Reply contents differ between
 *     A and B since B runs after A's writes: only the framing is compared.)
 *
 * The sessions have KVIDX_PROTO_FLUSH, so FLUSHALL in an input works, and
 * every FUZZ_FLUSH_EVERY inputs the harness sends FLUSHALL itself and
 * compacts when the files pass FUZZ_DISK_MAX, so disk use stays bounded.
 * The database directory (mkdtemp under $KVIDX_FUZZ_DIR, else $TMPDIR,
 * else /tmp; `make fuzz` uses build/fuzz_tmp) is removed at a normal exit;
 * a crash leaves it behind. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw, mkdtemp */
#endif
#include "kvidx.h"

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_FLUSH_EVERY 256
#define FUZZ_DISK_MAX ((uint64_t)32 << 20)
#define FUZZ_REPEAT_TO ((size_t)70 << 10)
#define CHK_DEPTH 8

static kvidx *g_db;
static char g_dir[4096];
static unsigned long long g_inputs;

/* ---- a streaming RESP2 reply checker ------------------------------------ */

/* The checker runs over every reply byte: not instrumented for coverage,
 * so that it costs little and its branches are not features (the
 * fuzzer's guidance is kvidx.c's code alone). */
#if defined(__clang__) && __clang_major__ >= 13
#define NO_COV __attribute__((no_sanitize("coverage")))
#else
#define NO_COV
#endif

enum { C_TYPE, C_LINE, C_LF, C_BULK, C_BCR, C_BLF };

typedef struct chk {
    int st;
    char type;
    char line[80];          /* the line being read (cut at 79 bytes) */
    size_t line_len;        /* its full length */
    long long bulk;         /* bytes of bulk data left */
    long long remain[CHK_DEPTH];
    int depth;
    unsigned long long replies; /* complete top-level replies */
    unsigned long long bytes;
    int last_err;               /* the last top-level reply was an error */
    char last_text[80];         /* its text */
    unsigned take;              /* write takes at most this many bytes a call; 0: all */
    unsigned long long writes;
} chk;

static void fail(const chk *c, const char *what) {
    fprintf(stderr, "fuzz_proto: %s (replies %llu, bytes %llu, state %d, type '%c', line '%.*s')\n", what,
            c->replies, c->bytes, c->st, c->type ? c->type : '?',
            (int)(c->line_len < sizeof c->line ? c->line_len : sizeof c->line - 1), c->line);
    abort();
}

/* A strict decimal: -?[0-9]+ without leading zeros, within long long. */
NO_COV static int chk_num(const char *p, size_t n, long long *v) {
    size_t i = 0;
    int neg = 0;
    unsigned long long x = 0;
    if (n && p[0] == '-') neg = 1, i = 1;
    if (i == n || n - i > 19) return -1;
    if (p[i] == '0' && n - i > 1) return -1;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        x = x * 10 + (unsigned)(p[i] - '0');
    }
    if (x > (unsigned long long)9223372036854775807LL + (unsigned)neg) return -1;
    if (neg && x == 0) return -1;
    *v = neg ? (long long)(0 - x) : (long long)x;
    return 0;
}

/* One element ended: pop the arrays it completes. */
NO_COV static void chk_done(chk *c, int is_err) {
    int top = c->depth == 0;
    while (c->depth > 0) {
        if (--c->remain[c->depth - 1] > 0) {
            c->st = C_TYPE;
            return;
        }
        c->depth--;
    }
    c->replies++;
    c->last_err = is_err && top; /* a top-level error line */
    c->st = C_TYPE;
}

NO_COV static void chk_bytes(chk *c, const uint8_t *p, size_t n) {
    size_t i = 0;
    c->bytes += n;
    while (i < n) {
        uint8_t b = p[i];
        switch (c->st) {
        case C_TYPE:
            if (b != '+' && b != '-' && b != ':' && b != '$' && b != '*') fail(c, "reply type byte not one of +-:$*");
            c->type = (char)b;
            c->line_len = 0;
            c->st = C_LINE;
            i++;
            break;
        case C_LINE:
            if (b == '\n') fail(c, "LF inside a reply line");
            if (b == '\r') {
                c->st = C_LF;
            } else {
                if (c->line_len < sizeof c->line - 1) c->line[c->line_len] = (char)b;
                c->line_len++;
                if (c->type != '+' && c->type != '-' && c->line_len > 20) fail(c, "number line too long");
            }
            i++;
            break;
        case C_LF: {
            long long v = 0;
            size_t ln = c->line_len < sizeof c->line - 1 ? c->line_len : sizeof c->line - 1;
            if (b != '\n') fail(c, "CR not followed by LF in a reply line");
            i++;
            c->line[ln] = 0;
            if (c->type == '+') {
                chk_done(c, 0);
            } else if (c->type == '-') {
                if (c->line_len < 4 || memcmp(c->line, "ERR ", 4)) fail(c, "error reply not '-ERR ...'");
                if (c->depth == 0) memcpy(c->last_text, c->line, ln + 1);
                chk_done(c, 1);
            } else {
                if (chk_num(c->line, c->line_len, &v)) fail(c, "bad number in a reply");
                if (c->type == ':') {
                    chk_done(c, 0);
                } else if (c->type == '$') {
                    if (v < -1) fail(c, "bulk length below -1");
                    if (v == -1) chk_done(c, 0);
                    else c->bulk = v, c->st = v ? C_BULK : C_BCR;
                } else { /* '*' */
                    if (v < -1) fail(c, "array length below -1");
                    if (v <= 0) {
                        chk_done(c, 0);
                    } else {
                        if (c->depth == CHK_DEPTH) fail(c, "arrays nested too deep");
                        c->remain[c->depth++] = v;
                        c->st = C_TYPE;
                    }
                }
            }
            break;
        }
        case C_BULK: {
            size_t take = n - i < (size_t)c->bulk ? n - i : (size_t)c->bulk;
            i += take;
            c->bulk -= (long long)take;
            if (!c->bulk) c->st = C_BCR;
            break;
        }
        case C_BCR:
            if (b != '\r') fail(c, "bulk data not followed by CR");
            c->st = C_BLF;
            i++;
            break;
        case C_BLF:
            if (b != '\n') fail(c, "bulk data not followed by CRLF");
            i++;
            chk_done(c, 0);
            break;
        }
    }
}

NO_COV static int chk_boundary(const chk *c) { return c->st == C_TYPE && c->depth == 0; }

NO_COV static ptrdiff_t fuzz_write(void *ctx, const void *buf, size_t len) {
    chk *c = ctx;
    size_t n = len;
    if (!buf || !len) fail(c, "write called with no bytes");
    if (c->take && n > c->take) n = c->take;
    c->writes++;
    chk_bytes(c, buf, n);
    return (ptrdiff_t)n;
}

static ptrdiff_t fuzz_read(void *ctx, void *buf, size_t cap) {
    (void)ctx, (void)buf, (void)cap;
    return 0;
}

/* ---- the database ------------------------------------------------------- */

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void fuzz_exit(void) {
    if (g_db) kvidx_close(g_db);
    g_db = NULL;
    if (g_dir[0]) nftw(g_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Sends one request through a session, as a client would. */
static void fuzz_request(const char *req) {
    chk c;
    kvidx_transport t = {&c, fuzz_read, fuzz_write, KVIDX_PROTO_FLUSH};
    kvidx_session *s;
    int rc;
    memset(&c, 0, sizeof c);
    if (kvidx_session_open(g_db, &t, &s)) fail(&c, "session_open failed");
    rc = kvidx_session_feed(s, req, strlen(req));
    if (rc != KVIDX_OK || c.replies != 1 || c.last_err) fail(&c, "harness request failed");
    kvidx_session_close(s);
}

static void fuzz_housekeeping(void) {
    kvidx_stats st;
    fuzz_request("*1\r\n$8\r\nFLUSHALL\r\n");
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    if (kvidx_stat(g_db, &st) == KVIDX_OK && st.disk_bytes > FUZZ_DISK_MAX) {
        int rc = kvidx_compact(g_db);
        if (rc) fprintf(stderr, "fuzz_proto: kvidx_compact: %s\n", kvidx_strerror(rc));
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    kvidx_options o;
    const char *tmp = getenv("KVIDX_FUZZ_DIR");
    int rc;
    (void)argc, (void)argv;
    if (!tmp || !*tmp) tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/kvidx-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("fuzz_proto: mkdtemp");
        exit(1);
    }
    kvidx_options_init(&o);
    o.shards = 2;
    o.sync_interval_ms = 0; /* no background syncs: nothing here needs durability */
    o.compact_pct = 0;      /* compactions only from fuzz_housekeeping */
    if ((rc = kvidx_open(g_dir, &o, &g_db))) {
        fprintf(stderr, "fuzz_proto: kvidx_open %s: %s\n", g_dir, kvidx_strerror(rc));
        exit(1);
    }
    atexit(fuzz_exit);
    return 0;
}

/* ---- one input ----------------------------------------------------------- */

typedef struct run {
    int rc;
    chk c;
} run;

/* Feeds data[0, n) to a new session in pieces: mode 0 one piece; 1 two,
 * cut at `arg` * n / 256; 2 a byte at a time; 3 pieces of `arg` % 16 + 1
 * bytes; 4 pieces of 1..32 bytes from a generator seeded with `arg`. */
static void fuzz_feed(run *r, const uint8_t *data, size_t n, int mode, unsigned arg, unsigned take) {
    kvidx_transport t = {&r->c, fuzz_read, fuzz_write, KVIDX_PROTO_FLUSH};
    kvidx_session *s;
    size_t off = 0, feeds = 0;
    unsigned rng = arg * 2654435761u + 1;
    int rc = KVIDX_OK;
    memset(r, 0, sizeof *r);
    r->c.take = take;
    if (kvidx_session_open(g_db, &t, &s)) fail(&r->c, "session_open failed");
    do {
        size_t piece = n - off;
        if (mode == 1 && feeds++ == 0) piece = (size_t)arg * n / 256;
        else if (mode == 2) piece = 1;
        else if (mode == 3) piece = arg % 16 + 1;
        else if (mode == 4) rng = rng * 1103515245u + 12345u, piece = (rng >> 16) % 32 + 1;
        if (piece > n - off) piece = n - off;
        rc = kvidx_session_feed(s, data + off, piece);
        off += piece;
        if (rc != KVIDX_OK && rc != KVIDX_CLOSED && rc != KVIDX_EPROTO) {
            fprintf(stderr, "fuzz_proto: feed returned %d (%s)\n", rc, kvidx_strerror(rc));
            fail(&r->c, "unexpected feed return code");
        }
        if (!chk_boundary(&r->c)) fail(&r->c, "a feed returned in the middle of a reply");
    } while (rc == KVIDX_OK && off < n);
    if (rc != KVIDX_OK) { /* the session is over: it must stay over, silently */
        unsigned long long bytes = r->c.bytes;
        if (kvidx_session_feed(s, "PING\r\n", 6) != rc) fail(&r->c, "a dead session changed its code");
        if (r->c.bytes != bytes) fail(&r->c, "a dead session wrote");
    }
    if (rc == KVIDX_EPROTO && (!r->c.last_err || strncmp(r->c.last_text, "ERR Protocol error: ", 20)))
        fail(&r->c, "KVIDX_EPROTO without a protocol error reply last");
    if (rc == KVIDX_CLOSED && (r->c.last_err || r->c.replies == 0)) fail(&r->c, "KVIDX_CLOSED without +OK last");
    kvidx_session_close(s);
    r->rc = rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static run a, b; /* large-ish: keep them off the stack */
    uint8_t ctl, *rep = NULL;
    int mode;
    unsigned arg, take = 0;
    if (size < 1) return 0;
    ctl = data[0];
    data++, size--;
    mode = 1 + ctl % 4;      /* 1..4 */
    arg = ctl / 4 * 4 + 3;   /* 3..255 */
    if (ctl & 0x80) take = 1 + (ctl >> 4 & 7); /* a transport that takes 1..8 bytes a call */
    if (ctl >> 2 == 31 && size > 0) { /* A [0xff B]: A repeated, then B */
        const uint8_t *sep = memchr(data, 0xff, size);
        size_t alen = sep ? (size_t)(sep - data) : size, blen = sep ? size - alen - 1 : 0, n = 0;
        if (!alen) alen = 1; /* 0xff first: it is the repeated byte */
        if (!(rep = malloc(FUZZ_REPEAT_TO + alen + blen))) abort();
        while (n < FUZZ_REPEAT_TO) memcpy(rep + n, data, alen), n += alen;
        if (blen) memcpy(rep + n, data + size - blen, blen), n += blen;
        data = rep, size = n;
    }
    if (mode == 2 && size > 4096) mode = 3;

    fuzz_feed(&a, data, size, 0, 0, 0);
    fuzz_feed(&b, data, size, mode, arg, take);
    if (a.rc != b.rc || a.c.replies != b.c.replies) {
        fprintf(stderr, "fuzz_proto: whole feed: rc %d, %llu replies; split (mode %d, arg %u): rc %d, %llu replies\n",
                a.rc, a.c.replies, mode, arg, b.rc, b.c.replies);
        fail(&b.c, "the split changed the framing");
    }
    if (a.rc == KVIDX_EPROTO && strcmp(a.c.last_text, b.c.last_text)) {
        fprintf(stderr, "fuzz_proto: whole: '%s'; split: '%s'\n", a.c.last_text, b.c.last_text);
        fail(&b.c, "the split changed the protocol error");
    }
    free(rep);
    if (++g_inputs % FUZZ_FLUSH_EVERY == 0) fuzz_housekeeping();
    return 0;
}
