/*
 * test_crash.c -- kill -9 a writer mid-stream, reopen, verify every
 * acknowledged write.
 *
 * Each round forks a child that opens the database (default options,
 * shards 4) and runs random puts and deletes over keys [0, NKEYS). Before
 * each call it reports the operation ("begin"), after the call returned the
 * expected code it reports it again ("ack"), each as one write() of a
 * fixed-size message into a pipe. The parent reads, then sends SIGKILL
 * after a random number of acks or a random time, reaps the child, drains
 * the pipe and reopens the database (read-write or read-only, alternating)
 * to check it against its model:
 *   - every key holds its last acknowledged state, except the key of the
 *     single operation begun but not acknowledged, which may also hold the
 *     state that operation would give it;
 *   - no key holds bytes that were never written (values are recomputed
 *     from (key, sequence number));
 *   - a full scan returns exactly the live keys, ascending, with their values;
 *   - kvidx_stat counts the live keys.
 * Rounds continue on the same directory, so recovery follows recovery.
 *
 * KVIDX_SEED replays the parent's choices (the kill timing still depends on
 * the scheduler); KVIDX_TEST_SCALE (default 1) divides the kill delays.
 */
#include "../kvidx.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#define PATHSZ 4352
#define NKEYS 5000u
#define ROUNDS 30
#define MAX_ACKS 20000u     /* kill after up to this many acks ... */
#define MAX_DELAY_MS 200u   /* ... or after up to this long */
#define ROUND_CAP_MS 1500u  /* and never let a round's writer run longer */
#define STALL_MS 20000      /* no message for this long: the child hangs */

static uint64_t g_scale = 1;

/* ---- messages child -> parent ------------------------------------------- */

enum { MSG_BEGIN = 1, MSG_ACK = 2, MSG_ERR = 3 };
enum { OP_PUT = 1, OP_DEL = 2, OP_DEL_ABSENT = 3, OP_OPEN = 4, OP_GET = 5, OP_SYNC = 6 };

typedef struct {
    uint32_t type;
    uint32_t op;
    uint64_t key;
    uint64_t seq; /* the key's sequence number after the operation */
    int32_t rc;   /* MSG_ERR: what the call returned */
    uint32_t pad;
} msg;

/* ---- the model: per key, its latest state ------------------------------- */

typedef struct {
    uint64_t seq;    /* 0: never written */
    uint8_t present;
} kstate;

/* The value of (key, seq): a length 0..256 and bytes derived from both;
 * when there is room, the first 16 bytes are key and seq themselves. */
static size_t mkval(uint8_t *b, uint64_t key, uint64_t seq) {
    uint64_t h = t_mix64(key * 0x100000001B3ull ^ t_mix64(seq));
    size_t len, i = 0;
    switch (h % 8) {
    case 0: len = 0; break;
    case 1: len = KVIDX_VALUE_MAX; break;
    default: len = (size_t)((h >> 8) % (KVIDX_VALUE_MAX + 1));
    }
    if (len >= 16) {
        memcpy(b, &key, 8);
        memcpy(b + 8, &seq, 8);
        i = 16;
    }
    if ((h >> 40) % 16 == 0) memset(b + i, 0x00, len - i);
    else if ((h >> 40) % 16 == 1) memset(b + i, 0xFF, len - i);
    else
        for (; i < len; i++) b[i] = (uint8_t)t_mix64(h + i);
    return len;
}

/* ---- the child: a writer that never returns ------------------------------- */

static void child_send(int fd, uint32_t type, uint32_t op, uint64_t key, uint64_t seq, int rc) {
    msg m;
    memset(&m, 0, sizeof m);
    m.type = type;
    m.op = op;
    m.key = key;
    m.seq = seq;
    m.rc = rc;
    /* one write of a message smaller than PIPE_BUF: atomic */
    if (write(fd, &m, sizeof m) != (ssize_t)sizeof m) _exit(5);
}

static void child_fail(int fd, uint32_t op, uint64_t key, uint64_t seq, int rc) {
    child_send(fd, MSG_ERR, op, key, seq, rc);
    _exit(2);
}

static void child_main(const char *dir, int fd, kstate *st, uint64_t rng) {
    kvidx *db = NULL;
    kvidx_options o;
    uint8_t v[KVIDX_VALUE_MAX], g[KVIDX_VALUE_MAX];
    int rc;
    kvidx_options_init(&o);
    o.shards = 4;
    rc = kvidx_open(dir, &o, &db);
    if (rc != KVIDX_OK) child_fail(fd, OP_OPEN, 0, 0, rc);
    for (;;) {
        uint64_t k, r, seq;
        size_t len, gl;
        rng = t_mix64(rng);
        k = rng % NKEYS;
        r = (rng >> 32) % 1000;
        if (r < 700) {
            seq = st[k].seq + 1;
            len = mkval(v, k, seq);
            child_send(fd, MSG_BEGIN, OP_PUT, k, seq, 0);
            rc = kvidx_put(db, k, v, len);
            if (rc != KVIDX_OK) child_fail(fd, OP_PUT, k, seq, rc);
            st[k].seq = seq;
            st[k].present = 1;
            child_send(fd, MSG_ACK, OP_PUT, k, seq, 0);
        } else if (r < 950) {
            if (st[k].present) {
                seq = st[k].seq + 1;
                child_send(fd, MSG_BEGIN, OP_DEL, k, seq, 0);
                rc = kvidx_delete(db, k);
                if (rc != KVIDX_OK) child_fail(fd, OP_DEL, k, seq, rc);
                st[k].seq = seq;
                st[k].present = 0;
                child_send(fd, MSG_ACK, OP_DEL, k, seq, 0);
            } else {
                seq = st[k].seq;
                child_send(fd, MSG_BEGIN, OP_DEL_ABSENT, k, seq, 0);
                rc = kvidx_delete(db, k);
                if (rc != KVIDX_NOTFOUND) child_fail(fd, OP_DEL_ABSENT, k, seq, rc);
                child_send(fd, MSG_ACK, OP_DEL_ABSENT, k, seq, 0);
            }
        } else if (r < 999) {
            /* read-your-writes inside the writer */
            gl = 999;
            rc = kvidx_get(db, k, g, sizeof g, &gl);
            if (st[k].present) {
                len = mkval(v, k, st[k].seq);
                if (rc != KVIDX_OK || gl != len || (len && memcmp(g, v, len)))
                    child_fail(fd, OP_GET, k, st[k].seq, rc == KVIDX_OK ? 1000 : rc);
            } else if (rc != KVIDX_NOTFOUND) {
                child_fail(fd, OP_GET, k, st[k].seq, rc == KVIDX_OK ? 1001 : rc);
            }
        } else {
            rc = kvidx_sync(db);
            if (rc != KVIDX_OK) child_fail(fd, OP_SYNC, 0, 0, rc);
        }
    }
}

/* ---- the parent ---------------------------------------------------------- */

typedef struct {
    kstate st[NKEYS];
    int pending;        /* a begun, unacknowledged operation */
    msg pend;
    uint64_t acks, total_acks, inflight_applied, inflight_dropped, kills_by_time;
    int proto_errors;
} parent_state;

static const char *op_name(uint32_t op) {
    switch (op) {
    case OP_PUT: return "put";
    case OP_DEL: return "delete";
    case OP_DEL_ABSENT: return "delete(absent)";
    case OP_OPEN: return "open";
    case OP_GET: return "get";
    case OP_SYNC: return "sync";
    }
    return "?";
}

static void handle_msg(parent_state *ps, const msg *m, int round) {
    switch (m->type) {
    case MSG_BEGIN:
        if (ps->pending) {
            fprintf(stderr, "round %d: begin %s %" PRIu64 " while %s %" PRIu64 " unacknowledged\n",
                    round, op_name(m->op), m->key, op_name(ps->pend.op), ps->pend.key);
            ps->proto_errors++;
        }
        if (m->key >= NKEYS) { ps->proto_errors++; return; }
        ps->pending = 1;
        ps->pend = *m;
        break;
    case MSG_ACK:
        if (!ps->pending || ps->pend.key != m->key || ps->pend.seq != m->seq ||
            ps->pend.op != m->op) {
            fprintf(stderr, "round %d: ack of %s %" PRIu64 " does not match its begin\n", round,
                    op_name(m->op), m->key);
            ps->proto_errors++;
            return;
        }
        if (m->op == OP_PUT) {
            ps->st[m->key].seq = m->seq;
            ps->st[m->key].present = 1;
        } else if (m->op == OP_DEL) {
            ps->st[m->key].seq = m->seq;
            ps->st[m->key].present = 0;
        }
        ps->pending = 0;
        ps->acks++;
        break;
    case MSG_ERR:
        t_case_failures++;
        fprintf(stderr,
                "round %d: child: %s of key %" PRIu64 " (seq %" PRIu64 ") returned %d (%s)%s\n",
                round, op_name(m->op), m->key, m->seq, m->rc, kvidx_strerror(m->rc),
                m->rc == 1000 ? " [wrong value read back]"
                : m->rc == 1001 ? " [deleted key readable]" : "");
        break;
    default:
        ps->proto_errors++;
    }
}

/* Feeds n bytes of the stream into the model; keeps a partial message. */
static void feed(parent_state *ps, unsigned char *buf, size_t *have, int round) {
    size_t off = 0;
    while (*have - off >= sizeof(msg)) {
        msg m;
        memcpy(&m, buf + off, sizeof m);
        handle_msg(ps, &m, round);
        off += sizeof m;
    }
    memmove(buf, buf + off, *have - off);
    *have -= off;
}

/* 1 when (rc, val, len) is the state s of key. */
static int is_state(uint64_t key, const kstate *s, int rc, const uint8_t *val, size_t len) {
    uint8_t want[KVIDX_VALUE_MAX];
    size_t wl;
    if (!s->present) return rc == KVIDX_NOTFOUND;
    if (rc != KVIDX_OK) return 0;
    wl = mkval(want, key, s->seq);
    return len == wl && (wl == 0 || memcmp(val, want, wl) == 0);
}

static void describe(uint64_t key, const kstate *s, int rc, const uint8_t *val, size_t len) {
    fprintf(stderr, "  key %" PRIu64 ": got rc %d (%s) len %zu", key, rc, kvidx_strerror(rc), len);
    if (rc == KVIDX_OK && len >= 16) {
        uint64_t k, q;
        memcpy(&k, val, 8);
        memcpy(&q, val + 8, 8);
        fprintf(stderr, " [value claims key %" PRIu64 " seq %" PRIu64 "%s]", k, q,
                k < NKEYS && q ? "" : " - never written");
    }
    fprintf(stderr, "; acknowledged state: %s seq %" PRIu64 "\n",
            s->present ? "present" : "absent", s->seq);
}

typedef struct {
    const parent_state *ps;
    uint64_t last;
    size_t n;
    int started, bad;
} scanv;

static int scanv_fn(void *ud, uint64_t key, const void *val, size_t len) {
    scanv *s = ud;
    if (s->started && key <= s->last) {
        fprintf(stderr, "  scan: key %" PRIu64 " after %" PRIu64 "\n", key, s->last);
        s->bad++;
    }
    s->started = 1;
    s->last = key;
    s->n++;
    if (key >= NKEYS || !is_state(key, &s->ps->st[key], KVIDX_OK, val, len)) {
        fprintf(stderr, "  scan: key %" PRIu64 " (len %zu) is not in the verified state\n", key,
                len);
        s->bad++;
        return s->bad > 10;
    }
    return 0;
}

/* Opens dir and checks it against ps; resolves the in-flight operation. */
static int verify(const char *dir, parent_state *ps, int round, int rdonly) {
    kvidx *db = NULL;
    kvidx_options o;
    kvidx_stats stt;
    uint8_t buf[KVIDX_VALUE_MAX];
    uint64_t k, live = 0;
    int rc, errors = 0, applied = -1;
    kstate next;
    scanv sv;

    kvidx_options_init(&o);
    o.flags = rdonly ? KVIDX_RDONLY : 0;
    rc = kvidx_open(dir, &o, &db);
    if (rc != KVIDX_OK) {
        fprintf(stderr, "round %d: %s open after kill: %d (%s)\n", round,
                rdonly ? "read-only" : "read-write", rc, kvidx_strerror(rc));
        return 1;
    }
    memset(&next, 0, sizeof next);
    if (ps->pending) {
        next = ps->st[ps->pend.key];
        if (ps->pend.op == OP_PUT) { next.seq = ps->pend.seq; next.present = 1; }
        if (ps->pend.op == OP_DEL) { next.seq = ps->pend.seq; next.present = 0; }
    }
    for (k = 0; k < NKEYS; k++) {
        size_t len = 999;
        rc = kvidx_get(db, k, buf, sizeof buf, &len);
        if (is_state(k, &ps->st[k], rc, buf, len)) {
            if (ps->pending && ps->pend.key == k) applied = 0;
        } else if (ps->pending && ps->pend.key == k && is_state(k, &next, rc, buf, len)) {
            applied = 1;
        } else {
            if (errors < 10) {
                describe(k, &ps->st[k], rc, buf, len);
                if (ps->pending && ps->pend.key == k)
                    fprintf(stderr, "    (in flight: %s seq %" PRIu64 ")\n",
                            op_name(ps->pend.op), ps->pend.seq);
            }
            errors++;
        }
    }
    if (errors) fprintf(stderr, "round %d: %d keys in a wrong state\n", round, errors);
    /* The in-flight operation: applied or not, the model follows the disk. */
    if (ps->pending) {
        if (applied == 1) {
            ps->st[ps->pend.key] = next;
            ps->inflight_applied++;
        } else {
            ps->inflight_dropped++;
        }
        ps->pending = 0;
    }
    for (k = 0; k < NKEYS; k++) live += ps->st[k].present;

    memset(&sv, 0, sizeof sv);
    sv.ps = ps;
    rc = kvidx_scan(db, 0, UINT64_MAX, scanv_fn, &sv);
    if (rc != KVIDX_OK || sv.bad || sv.n != live) {
        fprintf(stderr, "round %d: full scan rc %d, %zu keys (want %" PRIu64 "), %d bad\n", round,
                rc, sv.n, live, sv.bad);
        errors++;
    }
    memset(&stt, 0, sizeof stt);
    stt.size = (uint32_t)sizeof stt;
    rc = kvidx_stat(db, &stt);
    if (rc != KVIDX_OK || stt.keys != live || stt.shards != 4) {
        fprintf(stderr, "round %d: stat rc %d keys %" PRIu64 " (want %" PRIu64 ") shards %u\n",
                round, rc, stt.keys, live, stt.shards);
        errors++;
    }
    rc = kvidx_close(db);
    if (rc != KVIDX_OK) {
        fprintf(stderr, "round %d: close rc %d\n", round, rc);
        errors++;
    }
    return errors;
}

/* One round: fork, read, kill, reap, drain. Returns 0 when the child was
 * killed as planned. Never leaves a child behind. */
static int run_writer(const char *dir, parent_state *ps, int round) {
    int p[2], status = 0, by_time, eof = 0, fail = 0;
    unsigned char buf[64 * 1024 + sizeof(msg)];
    size_t have = 0;
    uint64_t target, deadline, start, last_msg;
    pid_t pid;

    if (pipe(p) != 0) { perror("pipe"); return 1; }
    by_time = (int)t_below(2);
    target = t_below(MAX_ACKS / g_scale + 1);
    start = t_now_ms();
    deadline = start + (by_time ? t_below(MAX_DELAY_MS / g_scale + 1) : ROUND_CAP_MS);
    fflush(stdout);
    fflush(stderr);
    {
        uint64_t child_rng = t_rand();
        pid = fork();
        if (pid < 0) {
            perror("fork");
            close(p[0]);
            close(p[1]);
            return 1;
        }
        if (pid == 0) {
            close(p[0]);
            child_main(dir, p[1], ps->st, child_rng);
            _exit(6);
        }
    }
    t_child = pid;
    close(p[1]);
    ps->acks = 0;
    last_msg = start;

    /* Read until the kill condition. */
    for (;;) {
        uint64_t now = t_now_ms();
        struct pollfd pfd;
        int pr;
        if (now >= deadline) break; /* by time, or the cap of an ack round */
        if (!by_time && ps->acks >= target) break;
        if (now - last_msg > STALL_MS) {
            fprintf(stderr, "round %d: no message from the child for %d ms\n", round, STALL_MS);
            fail = 1;
            break;
        }
        pfd.fd = p[0];
        pfd.events = POLLIN;
        pfd.revents = 0;
        pr = poll(&pfd, 1, (int)(deadline - now < 50 ? deadline - now : 50));
        if (pr < 0 && errno != EINTR) { perror("poll"); fail = 1; break; }
        if (pr > 0) {
            size_t want = sizeof buf - have;
            ssize_t r;
            if (!by_time) { /* read no further than the target: the kill lands near it */
                uint64_t left = (target - ps->acks) * 2 + 2; /* a begin and an ack per op */
                if (left * sizeof(msg) < want) want = (size_t)left * sizeof(msg);
            }
            r = read(p[0], buf + have, want);
            if (r < 0 && errno != EINTR) { perror("read"); fail = 1; break; }
            if (r == 0) { eof = 1; break; } /* the child died on its own */
            if (r > 0) {
                have += (size_t)r;
                last_msg = t_now_ms();
                feed(ps, buf, &have, round);
            }
        }
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) { perror("waitpid"); fail = 1; break; }
    }
    t_child = 0;
    if (by_time) ps->kills_by_time++;

    /* Drain: everything the child wrote before it died counts. */
    while (!eof) {
        ssize_t r = read(p[0], buf + have, sizeof buf - have);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        have += (size_t)r;
        feed(ps, buf, &have, round);
    }
    close(p[0]);
    if (have) {
        fprintf(stderr, "round %d: %zu stray bytes in the pipe\n", round, have);
        fail = 1;
    }
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
        fprintf(stderr, "round %d: child ended by itself (%s %d)\n", round,
                WIFEXITED(status) ? "exit" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? WTERMSIG(status) : -1);
        fail = 1;
    }
    ps->total_acks += ps->acks;
    return fail;
}

static void test_crash_rounds(void) {
    char dir[PATHSZ];
    parent_state *ps = calloc(1, sizeof *ps);
    kvidx *db = NULL;
    kvidx_options o;
    int round, rc;
    time_t t0 = time(NULL);

    REQUIRE(ps);
    snprintf(dir, sizeof dir, "%s", t_dir("crash"));
    /* Create the database up front: a kill during creation is not what
     * this test is about. */
    kvidx_options_init(&o);
    o.shards = 4;
    rc = kvidx_open(dir, &o, &db);
    CHECK_RC(rc, KVIDX_OK);
    if (rc != KVIDX_OK) { free(ps); return; }
    CHECK_RC(kvidx_close(db), KVIDX_OK);

    for (round = 1; round <= ROUNDS; round++) {
        int werr, verr;
        uint64_t before = ps->total_acks;
        werr = run_writer(dir, ps, round);
        if (ps->proto_errors) {
            t_case_failures++;
            fprintf(stderr, "round %d: %d protocol errors\n", round, ps->proto_errors);
            break;
        }
        verr = verify(dir, ps, round, round % 2 == 0);
        printf("  round %2d: %6" PRIu64 " acks, verified %s%s\n", round, ps->total_acks - before,
               round % 2 == 0 ? "read-only" : "read-write",
               werr || verr ? "  <-- FAILED" : "");
        fflush(stdout);
        if (werr || verr) {
            t_case_failures++;
            break;
        }
    }
    printf("  %d rounds, %" PRIu64 " acknowledged ops, in-flight op applied %" PRIu64
           " / dropped %" PRIu64 ", %" PRIu64 " kills by time, %lds\n",
           round > ROUNDS ? ROUNDS : round, ps->total_acks, ps->inflight_applied,
           ps->inflight_dropped, ps->kills_by_time, (long)(time(NULL) - t0));
    CHECK(round > ROUNDS);
    CHECK(ps->total_acks > 0);

    /* A clean writer at the end: the recovered database takes new writes. */
    if (round > ROUNDS) {
        db = NULL;
        rc = kvidx_open(dir, NULL, &db);
        CHECK_RC(rc, KVIDX_OK);
        if (rc == KVIDX_OK) {
            uint8_t v[KVIDX_VALUE_MAX];
            uint64_t k;
            for (k = 0; k < NKEYS; k += 7) {
                size_t len = mkval(v, k, ps->st[k].seq + 1);
                CHECK_RC(kvidx_put(db, k, v, len), KVIDX_OK);
                ps->st[k].seq++;
                ps->st[k].present = 1;
            }
            CHECK_RC(kvidx_close(db), KVIDX_OK);
            CHECK(verify(dir, ps, ROUNDS + 1, 0) == 0);
        }
    }
    free(ps);
    t_rmrf(dir);
}

int main(void) {
    const char *s = getenv("KVIDX_TEST_SCALE");
    if (s && strtoull(s, NULL, 10) > 1) g_scale = strtoull(s, NULL, 10);
    t_on_timeout = t_kill_child;
    t_watchdog("test_crash_rounds", 1200);
    t_init("test_crash");
    T_RUN(test_crash_rounds);
    alarm(0);
    return t_done();
}
