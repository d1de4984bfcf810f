/*
 * server.c -- kvidx-server: a kvidx database served over TCP in the Redis
 * protocol (RESP2). `make server` builds build/kvidx-server.
 *
 *   kvidx-server --dir DIR [--port 7379] [--bind 127.0.0.1] [--threads N]
 *                [--allow-flush] [--sync]
 *
 * The library parses, executes and replies (kvidx_session_*, see
 * docs/PROTOCOL.md); this file only moves bytes:
 *   - N threads, each with its own epoll loop and its own listening socket
 *     on the same address (SO_REUSEPORT: the kernel spreads new
 *     connections over them, so no thread hands sockets to another);
 *   - one kvidx_session per connection, read up to 64 KiB at a time and
 *     fed 4 KiB at a time. Its replies go straight to the socket; what
 *     the socket does not take waits in the connection's buffer, and the
 *     loop stops feeding that connection until the buffer is sent
 *     (backpressure: a client that does not read its replies has at most
 *     the replies to 4 KiB of its requests queued in the server). Reading
 *     goes on meanwhile, into a held-back buffer of up to 64 MiB of
 *     requests, so that a client that sends a whole pipeline before it
 *     reads (redis-py does) is not deadlocked; past that, reading stops
 *     too and the client's sends block;
 *   - no lock of the server's own around the database: sessions call kvidx
 *     from every thread, which the library allows;
 *   - SIGTERM or SIGINT: every loop closes its connections, then the
 *     database is closed (made durable) and the process exits 0.
 * Logs go to stderr, one line each: start, stop, and every error.
 *
 * Contents:
 *   1. Limits and logging
 *   2. Command line
 *   3. Connections (conn_)    the session's write callback, the output buffer
 *   4. Event loops (loop_)    accept, read and feed, drain, shutdown
 *   5. Listening sockets      the address, the probe, SO_REUSEPORT sockets
 *   6. main                   signals, the database, threads, stop
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, SOCK_NONBLOCK, sched_getaffinity, GNU strerror_r */
#endif

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "kvidx.h"

/* ======================================================================
 * 1. Limits and logging
 * ====================================================================== */

/* Redis's 6379 + 1000, so that both can run on one host. */
#define SRV_PORT_DEFAULT 7379

/* Bytes per read: the protocol's bulk string and inline limit, so a
 * request at the limit arrives in one or two feeds. One buffer per loop. */
#define SRV_READ_MAX (64 * 1024)

/* Bytes of requests per kvidx_session_feed. A feed hands all its replies
 * to the write callback at once, and the callback must take them all
 * (queueing what the socket refuses), so this bounds what one feed can
 * queue behind a slow reader: the replies to 4 KiB of requests (a few MiB
 * for a pipeline of large SMEMBERS) instead of 64 KiB's worth (hundreds of
 * MiB). A pipelining client still gets one send per dozens of replies. */
#define SRV_FEED_SLICE 4096

/* Requests held back per connection while its replies wait for the
 * socket: the protocol's largest request (64 MiB of arguments), so that a
 * client may send that much, one request or a pipeline, before it reads a
 * reply. Past it the server stops reading and the client's sends block. */
#define SRV_HOLD_MAX ((size_t)64 << 20)

/* Reads from one connection per wakeup (1 MiB): a client streaming a long
 * pipeline must not starve the other connections of its loop. */
#define SRV_READS_PER_EVENT 16

/* New connections accepted per wakeup, for the same reason. */
#define SRV_ACCEPTS_PER_EVENT 64

/* Events taken per epoll_wait. */
#define SRV_EVENTS 256

/* --threads upper bound: each loop costs a thread, an epoll, a socket and
 * a 64 KiB buffer; more loops than this only add contention. */
#define SRV_THREADS_MAX 1024

/* Out of file descriptors: stop accepting for this long. The listening
 * socket stays readable while the backlog holds connections, so accepting
 * on would spin the loop at 100% without serving anyone. */
#define SRV_ACCEPT_PAUSE_MS 100

/* ... and say so at most once in this long per loop: the shortage may
 * last, and a line per pause would flood the log. */
#define SRV_STARVED_LOG_MS 10000

/* A drained output buffer up to this size is kept for the connection's
 * next burst; a larger one (a big SMEMBERS, a long pipeline) is freed so
 * that idle connections do not pin the memory of their largest reply. */
#define SRV_OUT_KEEP (1024 * 1024)

/* First allocation of an output buffer; it doubles from there. */
#define SRV_OUT_FIRST (16 * 1024)

#if defined(__GNUC__) || defined(__clang__)
#define SRV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SRV_PRINTF(a, b)
#endif

/* Writes all n bytes at p to fd, retrying short writes and EINTR; used for
 * stderr, where a log line must not be interleaved with another thread's. */
static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* stderr is gone: nowhere left to report it */
        p += w, n -= (size_t)w;
    }
}

/* Logs one line to stderr, "YYYY-MM-DD HH:MM:SS.mmm kvidx-server: ...",
 * with one write(2) so that lines from several threads never mix. Lines
 * over 1 KiB are cut. */
SRV_PRINTF(1, 2) static void srv_log(const char *fmt, ...) {
    char line[1024];
    struct timespec ts;
    struct tm tm;
    size_t n = 0;
    int k;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (localtime_r(&ts.tv_sec, &tm)) n = strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
    k = snprintf(line + n, sizeof line - n, ".%03ld kvidx-server: ", ts.tv_nsec / 1000000L);
    if (k > 0) n += (size_t)k < sizeof line - n ? (size_t)k : sizeof line - n - 1;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (k > 0) n += (size_t)k < sizeof line - n ? (size_t)k : sizeof line - n - 1;
    if (n > sizeof line - 2) n = sizeof line - 2; /* room for the newline */
    line[n++] = '\n';
    write_all(2, line, n);
}

/* strerror(e) without strerror's shared buffer (loops log concurrently). */
static const char *os_err(int e, char *buf, size_t cap) {
    return strerror_r(e, buf, cap); /* the GNU form: returns the text */
}

/* The library's warnings (kvidx_options.log) become server log lines. */
static void db_log(void *ud, const char *msg) {
    (void)ud;
    srv_log("kvidx: %s", msg);
}

/* ======================================================================
 * 2. Command line
 * ====================================================================== */

typedef struct srv_opts {
    const char *dir;
    const char *bind;      /* host name or numeric address */
    unsigned port;         /* 0: one the kernel picks (logged at start) */
    unsigned threads;      /* event loops */
    unsigned proto_flags;  /* KVIDX_PROTO_FLUSH with --allow-flush */
    uint32_t db_flags;     /* KVIDX_CREATE, and KVIDX_SYNC with --sync */
} srv_opts;

/* CPUs this process may run on (taskset and cpusets count), at least 1. */
static unsigned cpu_count(void) {
    cpu_set_t set;
    long n;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvidx-server --dir DIR [--port N] [--bind ADDR] [--threads N]\n"
            "                    [--allow-flush] [--sync]\n"
            "Serves the kvidx database in DIR over TCP in the Redis protocol (RESP2);\n"
            "docs/PROTOCOL.md lists the commands.\n"
            "  --dir DIR      the database directory; created (not its parents) if missing\n"
            "  --port N       TCP port, 0..65535 (default %d; 0: the kernel picks one, logged)\n"
            "  --bind ADDR    address to listen on, IPv4 or IPv6 (default 127.0.0.1)\n"
            "  --threads N    event loops, one thread each, 1..%d (default: one per CPU, here %u)\n"
            "  --allow-flush  accept FLUSHALL and FLUSHDB (they delete everything)\n"
            "  --sync         every write is durable (survives power loss) before its reply\n"
            "  --version      print the version and exit\n"
            "  --help         print this and exit\n"
            "SIGTERM or SIGINT stops it cleanly (exit status 0). Logs go to stderr.\n",
            SRV_PORT_DEFAULT, SRV_THREADS_MAX, cpu_count() < SRV_THREADS_MAX ? cpu_count() : SRV_THREADS_MAX);
}

/* Prints "kvidx-server: <what>" and a pointer to --help on stderr; the
 * caller exits 2. */
SRV_PRINTF(1, 2) static void usage_error(const char *fmt, ...) {
    va_list ap;
    fputs("kvidx-server: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(kvidx-server --help lists the options)\n", stderr);
}

/* Parses s as a decimal number in [lo, hi] into *out: digits only, no
 * sign, no spaces. Returns 0, or -1 after reporting the error. */
static int opt_number(const char *name, const char *s, unsigned long lo, unsigned long hi,
                      unsigned *out) {
    unsigned long v = 0;
    const char *p = s;
    if (!*p) goto bad;
    for (; *p; p++) {
        if (*p < '0' || *p > '9') goto bad;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > hi) goto bad; /* also stops the overflow of a long digit string */
    }
    if (v < lo) goto bad;
    *out = (unsigned)v;
    return 0;
bad:
    usage_error("%s: '%s' is not a number from %lu to %lu", name, s, lo, hi);
    return -1;
}

/* True if the option word a, of length len (up to any '='), is name. */
static int opt_is(const char *a, size_t len, const char *name) {
    return strlen(name) == len && memcmp(a, name, len) == 0;
}

/* Fills *o from argv. Options are "--name value" or "--name=value"; the
 * last of a repeated option wins. Returns -1 to go on, else the exit
 * status: 0 after --help or --version, 2 after a usage error. */
static int opts_parse(int argc, char **argv, srv_opts *o) {
    int i;
    unsigned cpus = cpu_count();

    memset(o, 0, sizeof *o);
    o->bind = "127.0.0.1";
    o->port = SRV_PORT_DEFAULT;
    o->threads = cpus < SRV_THREADS_MAX ? cpus : SRV_THREADS_MAX;
    o->db_flags = KVIDX_CREATE;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '='), *val;
        size_t len = eq ? (size_t)(eq - a) : strlen(a);

        if (opt_is(a, len, "--help") || opt_is(a, len, "-h") || opt_is(a, len, "--version") ||
            opt_is(a, len, "--allow-flush") || opt_is(a, len, "--sync")) {
            if (eq) {
                usage_error("%.*s takes no value", (int)len, a);
                return 2;
            }
            if (opt_is(a, len, "--version")) {
                printf("kvidx-server %s\n", kvidx_version());
                return 0;
            }
            if (opt_is(a, len, "--allow-flush")) o->proto_flags |= KVIDX_PROTO_FLUSH;
            else if (opt_is(a, len, "--sync")) o->db_flags |= KVIDX_SYNC;
            else {
                usage(stdout);
                return 0;
            }
            continue;
        }
        if (!opt_is(a, len, "--dir") && !opt_is(a, len, "--port") && !opt_is(a, len, "--bind") &&
            !opt_is(a, len, "--threads")) {
            if (a[0] == '-') usage_error("unknown option '%.*s'", (int)len, a);
            else usage_error("unexpected argument '%s'", a);
            return 2;
        }
        if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            usage_error("%s needs a value", a);
            return 2;
        }
        if (opt_is(a, len, "--port")) {
            if (opt_number("--port", val, 0, 65535, &o->port)) return 2;
        } else if (opt_is(a, len, "--threads")) {
            if (opt_number("--threads", val, 1, SRV_THREADS_MAX, &o->threads)) return 2;
        } else if (!*val) {
            usage_error("%.*s: the value is empty", (int)len, a);
            return 2;
        } else if (opt_is(a, len, "--dir")) {
            o->dir = val;
        } else {
            o->bind = val;
        }
    }
    if (!o->dir) {
        usage_error("--dir DIR is required");
        return 2;
    }
    return -1;
}

/* ======================================================================
 * 3. Connections (conn_)
 * ====================================================================== */

typedef struct srv_loop srv_loop;

/* Why a connection's writes stopped (conn_write returned -1). */
enum { CONN_WRITING = 0, CONN_PEER_GONE, CONN_NO_MEMORY };

typedef struct srv_conn {
    int fd;
    uint32_t events;        /* what epoll watches now (conn_want says what it should) */
    int wstate;             /* CONN_* */
    srv_loop *loop;
    kvidx_session *sess;
    char *out;              /* replies the socket has not taken yet: out[off, len) */
    size_t off, len, cap;
    char *in;               /* requests read but not fed yet (held back while out is
                               pending): in[in_off, in_len); NULL when none */
    size_t in_off, in_len, in_cap;
    int rd_eof;             /* the peer ended its stream: answer what it sent, then close */
    struct srv_conn *prev, *next; /* the loop's open connections, for shutdown */
} srv_conn;

/* Sends what the nonblocking socket takes of the n bytes at p, retrying
 * EINTR and short writes until it would block. Returns the bytes sent, or
 * -1 when the connection is broken (peer reset, EPIPE). MSG_NOSIGNAL: a
 * peer that went away must not SIGPIPE the process. */
static ssize_t conn_send(int fd, const char *p, size_t n) {
    size_t sent = 0;
    while (sent < n) {
        ssize_t w = send(fd, p + sent, n - sent, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            return -1;
        }
    }
    return (ssize_t)sent;
}

static int conn_pending(const srv_conn *c) { return c->off < c->len; }

/* Appends n bytes to c's output buffer, first moving the unsent bytes to
 * its start. Returns 0, or -1 when memory runs out. No limit of its own,
 * as Redis's default for normal clients: the loop stops feeding a
 * connection as soon as this holds anything, so what piles up is at most
 * the replies to one feed (SRV_FEED_SLICE bytes of requests). */
static int conn_queue(srv_conn *c, const char *p, size_t n) {
    size_t pending = c->len - c->off;
    if (c->off > 0) {
        memmove(c->out, c->out + c->off, pending);
        c->off = 0, c->len = pending;
    }
    if (n > c->cap - c->len) {
        size_t cap = c->cap ? c->cap : SRV_OUT_FIRST;
        char *o;
        while (cap - c->len < n) {
            if (cap > SIZE_MAX / 2) return -1;
            cap *= 2;
        }
        if (!(o = realloc(c->out, cap))) return -1;
        c->out = o, c->cap = cap;
    }
    memcpy(c->out + c->len, p, n);
    c->len += n;
    return 0;
}

/* The session's write callback. Sends what the socket takes now and
 * queues the rest, so the loop never blocks on one client; takes all len
 * bytes. Returns -1 (the session then ends with KVIDX_EPROTO) once the
 * peer is gone or the rest cannot be queued. */
static ptrdiff_t conn_write(void *ctx, const void *buf, size_t len) {
    srv_conn *c = ctx;
    size_t sent = 0;
    if (c->wstate != CONN_WRITING) return -1;
    if (!conn_pending(c)) { /* nothing queued: straight to the socket, in order */
        ssize_t w = conn_send(c->fd, buf, len);
        if (w < 0) {
            c->wstate = CONN_PEER_GONE;
            return -1;
        }
        sent = (size_t)w;
    }
    if (sent < len && conn_queue(c, (const char *)buf + sent, len - sent) != 0) {
        c->wstate = CONN_NO_MEMORY;
        return -1;
    }
    return (ptrdiff_t)len;
}

/* Sends queued bytes. Returns 0 (sent all, or the socket is full again),
 * or -1 (the peer is gone). An emptied buffer is reset, and freed if it
 * grew past SRV_OUT_KEEP. */
static int conn_drain(srv_conn *c) {
    ssize_t w = conn_send(c->fd, c->out + c->off, c->len - c->off);
    if (w < 0) {
        c->wstate = CONN_PEER_GONE;
        return -1;
    }
    c->off += (size_t)w;
    if (!conn_pending(c)) {
        c->off = c->len = 0;
        if (c->cap > SRV_OUT_KEEP) {
            free(c->out);
            c->out = NULL, c->cap = 0;
        }
    }
    return 0;
}

/* ======================================================================
 * 4. Event loops (loop_)
 * ====================================================================== */

struct srv_loop {
    unsigned id;
    kvidx *db;
    unsigned proto_flags;
    int epfd, lfd, wakefd;   /* epoll; listening socket; eventfd that stops the loop */
    int started;             /* the thread runs (tid is valid) */
    pthread_t tid;
    char *rbuf;              /* SRV_READ_MAX bytes, shared by the loop's connections */
    srv_conn *conns;         /* open connections */
    size_t open;             /* how many */
    uint64_t accepted;       /* connections accepted since start */
    int64_t accept_resume;   /* accepting paused until this CLOCK_MONOTONIC ms; 0: not paused */
    uint64_t starved;        /* accept pauses for lack of descriptors or memory since the
                                last line about them */
    int64_t starved_logged;  /* CLOCK_MONOTONIC ms of that line; 0: none yet */
    int failed;              /* the loop stopped on an error of its own (read after join) */
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The peer's address as "a.b.c.d:port" or "[v6]:port", for log lines;
 * "?" if the socket no longer knows it. */
static const char *conn_peer(const srv_conn *c, char *buf, size_t cap) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) != 0 ||
        getnameinfo((struct sockaddr *)&ss, sl, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return "?";
    snprintf(buf, cap, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
    return buf;
}

/* Closes c: optionally one last nonblocking try at its queued replies (the
 * +OK of QUIT, the error reply of broken framing), then the socket, the
 * session, the memory. Requests held back unfed are dropped. Never
 * blocks. */
static void conn_close(srv_conn *c, int flush) {
    srv_loop *l = c->loop;
    if (flush && c->wstate == CONN_WRITING && conn_pending(c))
        (void)conn_send(c->fd, c->out + c->off, c->len - c->off); /* best effort by design */
    close(c->fd); /* also removes it from the epoll set */
    kvidx_session_close(c->sess);
    free(c->out);
    free(c->in);
    if (c->prev) c->prev->next = c->next;
    else l->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    l->open--;
    free(c);
}

/* Ends c after kvidx_session_feed returned rc (not KVIDX_OK), logging
 * what is the server's or the client's fault; a QUIT or a vanished peer
 * is routine and not logged. */
static void conn_end(srv_conn *c, int rc) {
    char peer[NI_MAXHOST + NI_MAXSERV + 4];
    if (rc == KVIDX_EPROTO && c->wstate == CONN_NO_MEMORY)
        srv_log("%s: out of memory queueing replies; connection closed", conn_peer(c, peer, sizeof peer));
    else if (rc == KVIDX_EPROTO && c->wstate == CONN_WRITING)
        srv_log("%s: protocol error (broken framing); connection closed", conn_peer(c, peer, sizeof peer));
    else if (rc != KVIDX_EPROTO && rc != KVIDX_CLOSED)
        srv_log("%s: %s; connection closed", conn_peer(c, peer, sizeof peer), kvidx_strerror(rc));
    conn_close(c, 1);
}

/* Sets what epoll watches for c. Returns 0, or -1 after closing c (a
 * connection epoll cannot watch would hang forever). */
static int conn_watch(srv_conn *c, uint32_t events) {
    struct epoll_event ev;
    char err[128];
    if (c->events == events) return 0;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = c;
    if (epoll_ctl(c->loop->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        srv_log("epoll_ctl: %s; connection closed", os_err(errno, err, sizeof err));
        conn_close(c, 0);
        return -1;
    }
    c->events = events;
    return 0;
}

/* Feeds the n bytes at p to c's session, SRV_FEED_SLICE at a time, and
 * stops early once replies are queued (the socket is full). Returns the
 * bytes fed, or -1 after closing c (the session ended). */
static ptrdiff_t conn_feed(srv_conn *c, const char *p, size_t n) {
    size_t fed = 0;
    while (fed < n && !conn_pending(c)) {
        size_t k = n - fed < SRV_FEED_SLICE ? n - fed : SRV_FEED_SLICE;
        int rc = kvidx_session_feed(c->sess, p + fed, k);
        if (rc != KVIDX_OK) {
            conn_end(c, rc);
            return -1;
        }
        fed += k;
    }
    return (ptrdiff_t)fed;
}

static size_t conn_held(const srv_conn *c) { return c->in_len - c->in_off; }

/* Appends the n bytes at p (read, not fed) to c->in, to be fed once c's
 * replies are sent. Returns 0, or -1 after closing c (out of memory). */
static int conn_hold(srv_conn *c, const char *p, size_t n) {
    char peer[NI_MAXHOST + NI_MAXSERV + 4];
    size_t held = conn_held(c);
    if (c->in_off > 0) {
        memmove(c->in, c->in + c->in_off, held);
        c->in_off = 0, c->in_len = held;
    }
    if (n > c->in_cap - c->in_len) {
        size_t cap = c->in_cap ? c->in_cap : SRV_READ_MAX;
        char *in;
        while (cap - c->in_len < n) cap *= 2; /* held stays under SRV_HOLD_MAX + a read */
        if (!(in = realloc(c->in, cap))) {
            srv_log("%s: out of memory holding back requests; connection closed",
                    conn_peer(c, peer, sizeof peer));
            conn_close(c, 1);
            return -1;
        }
        c->in = in, c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    return 0;
}

/* What epoll should watch for c: EPOLLOUT while replies are queued;
 * EPOLLIN until the peer's stream ended or SRV_HOLD_MAX bytes of requests
 * are held back (then the peer's sends block: backpressure). */
static uint32_t conn_want(const srv_conn *c) {
    uint32_t ev = conn_pending(c) ? EPOLLOUT : 0;
    if (!c->rd_eof && conn_held(c) < SRV_HOLD_MAX) ev |= EPOLLIN;
    return ev;
}

/* Moves c on after a read or a send: feeds the held-back requests once no
 * reply is queued, closes c once the peer's stream has ended and every
 * request in it is answered and sent, and sets what epoll watches.
 * Returns 0, or -1 if c was closed. */
static int conn_progress(srv_conn *c) {
    if (!conn_pending(c) && conn_held(c) > 0) {
        ptrdiff_t fed = conn_feed(c, c->in + c->in_off, conn_held(c));
        if (fed < 0) return -1;
        c->in_off += (size_t)fed;
        if (conn_held(c) == 0) { /* a burst is over: give its memory back */
            free(c->in);
            c->in = NULL, c->in_off = c->in_len = c->in_cap = 0;
        }
    }
    if (c->rd_eof && !conn_pending(c) && conn_held(c) == 0) {
        conn_close(c, 0);
        return -1;
    }
    return conn_watch(c, conn_want(c));
}

/* c is readable: read until the socket is empty, the peer's stream ends,
 * SRV_HOLD_MAX bytes are held back, or SRV_READS_PER_EVENT reads were
 * done (level-triggered epoll reports the rest on the next wait). While
 * no reply is queued, what is read is fed at once; once replies back up,
 * it is held back unfed (reading on spares clients that send a whole
 * pipeline before reading any reply, as redis-py does, a deadlock). */
static void conn_readable(srv_conn *c) {
    srv_loop *l = c->loop;
    char err[128], peer[NI_MAXHOST + NI_MAXSERV + 4];
    int i;
    for (i = 0; i < SRV_READS_PER_EVENT && conn_held(c) < SRV_HOLD_MAX; i++) {
        ssize_t n = read(c->fd, l->rbuf, SRV_READ_MAX);
        size_t fed = 0;
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno != ECONNRESET && errno != ETIMEDOUT)
                srv_log("%s: read: %s; connection closed", conn_peer(c, peer, sizeof peer),
                        os_err(errno, err, sizeof err));
            conn_close(c, 0);
            return;
        }
        if (n == 0) { /* the peer sent all it will: answer it, then close */
            c->rd_eof = 1;
            break;
        }
        if (!conn_pending(c) && conn_held(c) == 0) {
            ptrdiff_t f = conn_feed(c, l->rbuf, (size_t)n);
            if (f < 0) return;
            fed = (size_t)f;
        }
        if (fed < (size_t)n && conn_hold(c, l->rbuf + fed, (size_t)n - fed) != 0) return;
        if ((size_t)n < SRV_READ_MAX) break; /* most likely all there was */
    }
    (void)conn_progress(c);
}

/* One epoll event for connection c. */
static void conn_event(srv_conn *c, uint32_t ev) {
    /* ERR: the socket failed; HUP: both directions are shut (a reset), so
     * nothing sent from now on can be read by the peer */
    if (ev & (EPOLLERR | EPOLLHUP)) {
        conn_close(c, 0);
        return;
    }
    if (ev & EPOLLOUT) {
        if (conn_drain(c) != 0) {
            conn_close(c, 0);
            return;
        }
        if (conn_progress(c) != 0) return;
    }
    if ((ev & EPOLLIN) && (c->events & EPOLLIN)) conn_readable(c);
}

/* Takes a new connection on fd: TCP_NODELAY (replies go out once per
 * batch; Nagle would only hold them back), a session, an epoll entry.
 * On failure the connection is logged and closed. */
static void conn_open(srv_loop *l, int fd) {
    struct epoll_event ev;
    kvidx_transport t;
    srv_conn *c;
    char err[128];
    int one = 1, rc;

    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        srv_log("setsockopt(TCP_NODELAY): %s (the connection is served anyway)",
                os_err(errno, err, sizeof err));
    if (!(c = calloc(1, sizeof *c))) {
        srv_log("out of memory for a new connection; closed");
        close(fd);
        return;
    }
    c->fd = fd;
    c->loop = l;
    memset(&t, 0, sizeof t);
    t.ctx = c;
    t.write = conn_write; /* no read: the loop feeds the session itself */
    t.flags = l->proto_flags;
    if ((rc = kvidx_session_open(l->db, &t, &c->sess)) != KVIDX_OK) {
        srv_log("kvidx_session_open: %s; connection closed", kvidx_strerror(rc));
        free(c);
        close(fd);
        return;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = c->events = EPOLLIN;
    ev.data.ptr = c;
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        srv_log("epoll_ctl: %s; connection closed", os_err(errno, err, sizeof err));
        kvidx_session_close(c->sess);
        free(c);
        close(fd);
        return;
    }
    c->next = l->conns;
    if (l->conns) l->conns->prev = c;
    l->conns = c;
    l->open++;
    l->accepted++;
}

/* Watches (events EPOLLIN) or ignores (0) the listening socket. */
static int loop_listen_watch(srv_loop *l, uint32_t events) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = &l->lfd;
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, l->lfd, &ev);
}

/* The listening socket is readable: accept up to SRV_ACCEPTS_PER_EVENT
 * connections. Out of descriptors or memory, accepting pauses for
 * SRV_ACCEPT_PAUSE_MS at a time (the waiting connections stay in the
 * backlog) until a connection closes and an accept works again. */
static void loop_accept(srv_loop *l) {
    char err[128];
    int i;
    for (i = 0; i < SRV_ACCEPTS_PER_EVENT; i++) {
        int fd = accept4(l->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_open(l, fd);
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
            return;
        case EINTR:
        case ECONNABORTED: /* the client gave up while queued: routine */
            continue;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            l->starved++;
            if (!l->starved_logged || now_ms() - l->starved_logged >= SRV_STARVED_LOG_MS) {
                srv_log("accept: %s (%zu connections open on loop %u; %llu pauses since the last "
                        "such line); retrying every %d ms",
                        os_err(errno, err, sizeof err), l->open, l->id,
                        (unsigned long long)l->starved, SRV_ACCEPT_PAUSE_MS);
                l->starved_logged = now_ms(), l->starved = 0;
            }
            if (loop_listen_watch(l, 0) == 0) l->accept_resume = now_ms() + SRV_ACCEPT_PAUSE_MS;
            return;
        default: /* e.g. a network error of the queued connection (accept(2)) */
            srv_log("accept: %s", os_err(errno, err, sizeof err));
            return;
        }
    }
}

/* The epoll_wait timeout: none, unless accepting is paused. Resumes
 * accepting once the pause is over. */
static int loop_timeout(srv_loop *l) {
    int64_t left;
    char err[128];
    if (!l->accept_resume) return -1;
    left = l->accept_resume - now_ms();
    if (left > 0) return (int)left;
    if (loop_listen_watch(l, EPOLLIN) != 0) {
        srv_log("epoll_ctl (listening socket): %s; retrying in %d ms", os_err(errno, err, sizeof err),
                SRV_ACCEPT_PAUSE_MS);
        l->accept_resume = now_ms() + SRV_ACCEPT_PAUSE_MS;
        return SRV_ACCEPT_PAUSE_MS;
    }
    l->accept_resume = 0;
    return -1;
}

/* A loop's thread: waits, dispatches, and on its eventfd closes every
 * connection (one nonblocking try at their queued replies) and returns.
 * If epoll_wait itself fails, the loop cannot go on: it sets l->failed and
 * sends the process SIGTERM so that main stops everything. */
static void *loop_run(void *arg) {
    srv_loop *l = arg;
    struct epoll_event ev[SRV_EVENTS];
    char err[128];
    int i, n, stop = 0;

    while (!stop) {
        n = epoll_wait(l->epfd, ev, SRV_EVENTS, loop_timeout(l));
        if (n < 0) {
            if (errno == EINTR) continue;
            srv_log("epoll_wait (loop %u): %s; stopping the server", l->id, os_err(errno, err, sizeof err));
            l->failed = 1;
            kill(getpid(), SIGTERM);
            break;
        }
        for (i = 0; i < n && !stop; i++) {
            void *p = ev[i].data.ptr;
            if (p == &l->wakefd) stop = 1;
            else if (p == &l->lfd) loop_accept(l);
            else conn_event(p, ev[i].events);
        }
    }
    while (l->conns) conn_close(l->conns, 1); /* held-back requests are dropped unanswered */
    return NULL;
}

/* Releases what loop_init set up (each part only if it was). */
static void loop_free(srv_loop *l) {
    while (l->conns) conn_close(l->conns, 0);
    if (l->epfd >= 0) close(l->epfd);
    if (l->lfd >= 0) close(l->lfd);
    if (l->wakefd >= 0) close(l->wakefd);
    free(l->rbuf);
    l->epfd = l->lfd = l->wakefd = -1;
    l->rbuf = NULL;
}

/* Asks l's thread to stop; it finishes the event in hand first. */
static void loop_wake(srv_loop *l) {
    uint64_t one = 1;
    char err[128];
    while (write(l->wakefd, &one, sizeof one) < 0) {
        if (errno == EINTR) continue;
        srv_log("eventfd write (loop %u): %s", l->id, os_err(errno, err, sizeof err));
        return; /* cannot happen short of 2^64 - 1 wakes; join would then wait */
    }
}

/* ======================================================================
 * 5. Listening sockets
 * ====================================================================== */

typedef struct srv_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[NI_MAXHOST + 8]; /* "127.0.0.1:7379", "[::1]:7379" for logs */
} srv_addr;

/* Sets the port of a and its text. */
static void addr_set_port(srv_addr *a, unsigned port) {
    char host[NI_MAXHOST];
    if (a->ss.ss_family == AF_INET6) ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons((uint16_t)port);
    else ((struct sockaddr_in *)&a->ss)->sin_port = htons((uint16_t)port);
    if (getnameinfo((struct sockaddr *)&a->ss, a->len, host, sizeof host, NULL, 0, NI_NUMERICHOST) != 0)
        strcpy(host, "?");
    snprintf(a->text, sizeof a->text, a->ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

/* Resolves --bind (a numeric address or a name; the first address wins).
 * Returns 0, or -1 after logging why. */
static int addr_resolve(const char *host, unsigned port, srv_addr *a) {
    struct addrinfo hints, *res;
    int rc;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if ((rc = getaddrinfo(host, NULL, &hints, &res)) != 0) {
        srv_log("--bind %s: %s", host, gai_strerror(rc));
        return -1;
    }
    memset(a, 0, sizeof *a);
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = res->ai_addrlen;
    freeaddrinfo(res);
    addr_set_port(a, port);
    return 0;
}

/* Binds a plain socket (SO_REUSEADDR, no SO_REUSEPORT) to a and closes it
 * again. SO_REUSEPORT would let this server share the port with any other
 * process of this user that set it too (another kvidx-server, on another
 * directory), each silently taking part of the connections; the probe
 * fails instead while anything listens there. It also learns the port the
 * kernel picks for --port 0, which every loop's socket then takes. Returns
 * 0, or -1 after logging why. */
static int addr_probe(srv_addr *a) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char err[128];
    int one = 1, fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        srv_log("socket: %s", os_err(errno, err, sizeof err));
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a->ss, a->len) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        srv_log("cannot listen on %s: %s", a->text, os_err(errno, err, sizeof err));
        close(fd);
        return -1;
    }
    close(fd);
    addr_set_port(a, ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                    : ((struct sockaddr_in *)&ss)->sin_port));
    return 0;
}

/* One loop's listening socket: nonblocking, SO_REUSEADDR (restart while
 * old connections sit in TIME_WAIT), SO_REUSEPORT (one socket per loop on
 * the same port). Returns the socket, or -1 after logging why. */
static int addr_listen(const srv_addr *a) {
    char err[128];
    int one = 1, fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        srv_log("socket: %s", os_err(errno, err, sizeof err));
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0 || listen(fd, SOMAXCONN) != 0) {
        srv_log("cannot listen on %s: %s", a->text, os_err(errno, err, sizeof err));
        close(fd);
        return -1;
    }
    return fd;
}

/* Sets up loop l: epoll, eventfd, listening socket, read buffer. Returns
 * 0, or -1 after logging why (loop_free releases the part that was set
 * up). */
static int loop_init(srv_loop *l, unsigned id, kvidx *db, const srv_opts *o, const srv_addr *a) {
    struct epoll_event ev;
    char err[128];
    memset(l, 0, sizeof *l);
    l->id = id;
    l->db = db;
    l->proto_flags = o->proto_flags;
    l->epfd = l->lfd = l->wakefd = -1;
    if ((l->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        srv_log("epoll/eventfd: %s", os_err(errno, err, sizeof err));
        return -1;
    }
    if (!(l->rbuf = malloc(SRV_READ_MAX))) {
        srv_log("out of memory for loop %u", id);
        return -1;
    }
    if ((l->lfd = addr_listen(a)) < 0) return -1;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = &l->wakefd;
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) != 0) goto fail;
    ev.data.ptr = &l->lfd;
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->lfd, &ev) != 0) goto fail;
    return 0;
fail:
    srv_log("epoll_ctl: %s", os_err(errno, err, sizeof err));
    return -1;
}

/* ======================================================================
 * 6. main
 * ====================================================================== */

/* Raises the soft limit on open files to the hard one: each connection
 * is a descriptor, and the common soft default (1024) would cap the
 * server at about a thousand clients. Returns the limit now in force. */
static unsigned long long raise_nofile(void) {
    struct rlimit rl;
    char err[128];
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        srv_log("getrlimit(RLIMIT_NOFILE): %s", os_err(errno, err, sizeof err));
        return 0;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t cur = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            srv_log("setrlimit(RLIMIT_NOFILE, %llu): %s; staying at %llu open files",
                    (unsigned long long)rl.rlim_max, os_err(errno, err, sizeof err),
                    (unsigned long long)cur);
            rl.rlim_cur = cur;
        }
    }
    return (unsigned long long)rl.rlim_cur;
}

/* Starts a thread per loop. Returns how many started (all, or the count
 * before the first failure, which is logged). */
static unsigned loops_start(srv_loop *loops, unsigned n) {
    char err[128];
    unsigned i;
    for (i = 0; i < n; i++) {
        int rc = pthread_create(&loops[i].tid, NULL, loop_run, &loops[i]);
        if (rc != 0) {
            srv_log("pthread_create (loop %u): %s", i, os_err(rc, err, sizeof err));
            break;
        }
        loops[i].started = 1;
    }
    return i;
}

/* Stops and joins the started loops, frees all n; returns the number of
 * connections accepted in total in *accepted, and whether a loop failed. */
static int loops_stop(srv_loop *loops, unsigned n, unsigned long long *accepted) {
    unsigned i;
    int failed = 0;
    for (i = 0; i < n; i++)
        if (loops[i].started) loop_wake(&loops[i]);
    *accepted = 0;
    for (i = 0; i < n; i++) {
        if (loops[i].started) pthread_join(loops[i].tid, NULL);
        failed |= loops[i].failed;
        *accepted += loops[i].accepted;
        loop_free(&loops[i]);
    }
    return failed;
}

/* Waits for SIGTERM or SIGINT (blocked in every thread, so they queue for
 * this call). Returns the signal's name for the stop line. */
static const char *wait_for_stop(const sigset_t *sigs) {
    siginfo_t si;
    for (;;) {
        int sig = sigwaitinfo(sigs, &si);
        if (sig < 0) continue; /* EINTR: another signal interrupted the wait */
        if (si.si_pid == getpid() && si.si_code == SI_USER) return "an event loop failed";
        return sig == SIGINT ? "SIGINT" : "SIGTERM";
    }
}

int main(int argc, char **argv) {
    srv_opts o;
    srv_addr addr;
    kvidx_options ko;
    kvidx *db = NULL;
    srv_loop *loops = NULL;
    sigset_t sigs;
    unsigned long long nofile, accepted;
    unsigned i, started = 0;
    const char *why;
    int rc, failed;

    if ((rc = opts_parse(argc, argv, &o)) >= 0) return rc;

    /* Blocked before any thread exists, kvidx_open's sync and compaction
     * threads included: every thread inherits the mask, so the signals
     * wait for sigwaitinfo in this thread instead of killing the process
     * mid-write. SIGPIPE: a write to a vanished peer is an error, not a
     * death (send uses MSG_NOSIGNAL as well). */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if ((rc = pthread_sigmask(SIG_BLOCK, &sigs, NULL)) != 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        char err[128];
        srv_log("signal setup: %s", os_err(rc ? rc : errno, err, sizeof err));
        return 1;
    }
    nofile = raise_nofile();
    if (addr_resolve(o.bind, o.port, &addr) != 0 || addr_probe(&addr) != 0) return 1;

    kvidx_options_init(&ko);
    ko.flags = o.db_flags;
    ko.log = db_log;
    if ((rc = kvidx_open(o.dir, &ko, &db)) != KVIDX_OK) {
        srv_log("cannot open the database in %s: %s", o.dir, kvidx_strerror(rc));
        return 1;
    }
    if (!(loops = calloc(o.threads, sizeof *loops))) {
        srv_log("out of memory for %u loops", o.threads);
        kvidx_close(db);
        return 1;
    }
    for (i = 0; i < o.threads; i++) loops[i].epfd = loops[i].lfd = loops[i].wakefd = -1;
    for (i = 0; i < o.threads; i++)
        if (loop_init(&loops[i], i, db, &o, &addr) != 0) break;
    if (i == o.threads) started = loops_start(loops, o.threads);
    if (started < o.threads) { /* a loop could not be set up or started: already logged */
        loops_stop(loops, o.threads, &accepted);
        free(loops);
        rc = kvidx_close(db);
        srv_log("not started; database closed: %s", kvidx_strerror(rc));
        return 1;
    }
    srv_log("kvidx-server %s started: dir %s, listening on %s, %u threads, pid %ld%s%s "
            "(open files limit %llu)",
            kvidx_version(), o.dir, addr.text, o.threads, (long)getpid(),
            (o.db_flags & KVIDX_SYNC) ? ", --sync" : "",
            (o.proto_flags & KVIDX_PROTO_FLUSH) ? ", --allow-flush" : "", nofile);

    why = wait_for_stop(&sigs);
    srv_log("stopping (%s): closing connections", why);
    failed = loops_stop(loops, o.threads, &accepted);
    free(loops);
    rc = kvidx_close(db); /* every session is closed: the loops are joined */
    srv_log("stopped: %llu connections served; database closed: %s", accepted, kvidx_strerror(rc));
    return rc == KVIDX_OK && !failed ? 0 : 1;
}
