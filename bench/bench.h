/* bench.h -- what every kvidx benchmark needs: a clock, a mixer, values. */
#ifndef KVIDX_BENCH_H
#define KVIDX_BENCH_H

#include <stdint.h>
#include <string.h>
#include <time.h>

static inline uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double bench_now_s(void) { return (double)bench_now_ns() * 1e-9; }

/* splitmix64's finalizer: keys and value bytes derived from a seed. */
static inline uint64_t bench_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The 256-byte value of (key, version) every value benchmark writes and
 * checks: cheap to make, different for every key and version. */
#define BENCH_VLEN 256
static inline void bench_make_val(uint64_t key, uint32_t ver, uint8_t *v) {
    uint64_t x = bench_mix(key ^ ((uint64_t)ver << 56));
    int i;
    for (i = 0; i < BENCH_VLEN; i += 8) {
        memcpy(v + i, &x, 8);
        x += 0x9E3779B97F4A7C15ull;
    }
}


/* ---- the comparison programs: failure, children, signals, options, output --
 * For bench_kv, bench_lists and bench_ops: each runs its engines (or
 * parts) in forked children, checks every answer and prints a table or
 * JSON. The including file defines BENCH_PROG, its name as a string
 * literal, before this header and builds with _GNU_SOURCE. */
#ifdef BENCH_PROG
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define BENCH_PATH_CAP 4096 /* bytes of a path, with its NUL */

/* -- failure: every error names the program, the part and the phase */

/* What runs (the engine in bench_kv and bench_lists, the part in
 * bench_ops) and its phase: named in every failure message. */
static const char *g_bench_part = "bench";
static const char *g_bench_phase = "setup";
static int g_bench_child; /* in a forked child: leave with _exit */

/* Prints "PROG PART PHASE: message" and ends the process. A child leaves
 * with _exit (from any of its threads): no library destructor nor atexit
 * handler of the parent's runs beside live threads; the parent sees the
 * failure, removes the data and stops the run. */
static inline void bench_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void bench_fail(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, BENCH_PROG ": %s %s: ", g_bench_part, g_bench_phase);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (g_bench_child) _exit(1);
    exit(1);
}

static inline void *bench_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) bench_fail("out of memory (%zu bytes)", n);
    return p;
}

/* -- children and signals */

static pid_t g_bench_child_pid = -1;  /* the child running now (signal handler) */
static pid_t g_bench_server_pid = -1; /* a server run beside the children (bench_lists: redis-server) */
static volatile sig_atomic_t g_bench_stopped; /* the signal that stopped the run, 0 if none */
static int g_bench_armed;             /* bench_arm ran: children drop its handlers */

/* Runs body(out, arg) in a forked child, which sends the size bytes at out
 * back through a pipe into the parent's out. A child of an armed program
 * (bench_arm) is killed with the parent and takes the default action on
 * the signals the parent handles. Returns 0, or -1 when the child failed
 * (it said why). */
static inline int bench_run_child(void (*body)(void *out, void *arg), void *arg, void *out, size_t size) {
    int fd[2], status;
    size_t got = 0;
    pid_t pid;
    fflush(NULL);
    if (pipe(fd)) bench_fail("pipe: %s", strerror(errno));
    pid = fork();
    if (pid < 0) bench_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        size_t put = 0;
        if (g_bench_armed) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* the parent killed: so is this run */
            signal(SIGALRM, SIG_DFL), signal(SIGINT, SIG_DFL), signal(SIGTERM, SIG_DFL);
        }
        g_bench_child = 1;
        close(fd[0]);
        body(out, arg);
        while (put < size) { /* bounded: every pass writes >= 1 byte or fails */
            ssize_t w = write(fd[1], (const char *)out + put, size - put);
            if (w <= 0) bench_fail("pipe write: %s", strerror(errno));
            put += (size_t)w;
        }
        _exit(0);
    }
    g_bench_child_pid = pid;
    close(fd[1]);
    while (got < size) { /* bounded: every pass reads >= 1 byte or stops */
        ssize_t r = read(fd[0], (char *)out + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd[0]);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) bench_fail("waitpid: %s", strerror(errno));
    g_bench_child_pid = -1;
    if (got != size || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    return 0;
}

/* Alarm (the whole run took too long), ^C, kill: the child and the server
 * are killed. While a child runs, the parent then returns to its wait,
 * sees the child fail, reaps the server and removes the data, with 30 s
 * more for that; otherwise (or on a second signal) it leaves now. */
static inline void bench_on_signal(int sig) {
    static const char tmo[] = BENCH_PROG ": timeout (--timeout): run killed\n";
    static const char intr[] = BENCH_PROG ": interrupted: run killed\n";
    int first = !g_bench_stopped;
    g_bench_stopped = sig;
    if (g_bench_child_pid > 0) kill(g_bench_child_pid, SIGKILL);
    if (g_bench_server_pid > 0) kill(g_bench_server_pid, SIGKILL);
    if (first) {
        if (write(2, sig == SIGALRM ? tmo : intr, sig == SIGALRM ? sizeof tmo - 1 : sizeof intr - 1) < 0) {}
    }
    if (first && g_bench_child_pid > 0) {
        alarm(30);
        return;
    }
    if (g_bench_server_pid > 0) waitpid(g_bench_server_pid, NULL, 0);
    _exit(sig == SIGALRM ? 3 : 130);
}

/* bench_on_signal on SIGALRM, SIGINT and SIGTERM; SIGALRM in timeout s. */
static inline void bench_arm(unsigned timeout) {
    g_bench_armed = 1;
    signal(SIGALRM, bench_on_signal);
    signal(SIGINT, bench_on_signal);
    signal(SIGTERM, bench_on_signal);
    alarm(timeout);
}

/* The exit status of a run that failed: 3 after the alarm, 130 after
 * another signal, else 1. */
static inline int bench_failed_status(void) { return g_bench_stopped == SIGALRM ? 3 : g_bench_stopped ? 130 : 1; }

/* -- options */

enum { BENCH_OPT_FLAG, BENCH_OPT_U64, BENCH_OPT_UINT, BENCH_OPT_INT, BENCH_OPT_DOUBLE, BENCH_OPT_STR, BENCH_OPT_FN };

/* One command-line option. FLAG stands alone: fn(NULL) if fn, else the
 * int at dst = 1. The others take the next argument: U64 (uint64_t),
 * UINT (unsigned), INT (int), DOUBLE (double) as numbers into dst (any C
 * base), STR (const char *) as is, FN: fn(value). */
typedef struct bench_opt {
    const char *name;
    int type;
    void *dst;
    void (*fn)(const char *val);
} bench_opt;

/* Reads argv in order against opts (ended by a NULL name). An unknown
 * option or a missing value: usage(argv[0]), which exits; a bad number
 * fails. */
static inline void bench_parse_opts(int argc, char **argv, const bench_opt *opts, void (*usage)(const char *)) {
    int a;
    for (a = 1; a < argc; a++) {
        const char *o = argv[a], *val;
        const bench_opt *p;
        char *end = NULL;
        for (p = opts; p->name && (p->type != BENCH_OPT_FLAG || strcmp(o, p->name)); p++) {}
        if (p->name) {
            if (p->fn) p->fn(NULL);
            else *(int *)p->dst = 1;
            continue;
        }
        if (a + 1 >= argc) usage(argv[0]);
        val = argv[++a];
        for (p = opts; p->name && (p->type == BENCH_OPT_FLAG || strcmp(o, p->name)); p++) {}
        switch (p->name ? p->type : -1) {
        case BENCH_OPT_U64: *(uint64_t *)p->dst = strtoull(val, &end, 0); break;
        case BENCH_OPT_UINT: *(unsigned *)p->dst = (unsigned)strtoul(val, &end, 0); break;
        case BENCH_OPT_INT: *(int *)p->dst = (int)strtol(val, &end, 0); break;
        case BENCH_OPT_DOUBLE: *(double *)p->dst = strtod(val, &end); break;
        case BENCH_OPT_STR: *(const char **)p->dst = val; break;
        case BENCH_OPT_FN: p->fn(val); break;
        default: usage(argv[0]);
        }
        if (end && (*end || end == val)) bench_fail("bad number for %s: '%s'", o, val);
    }
}

/* --opt a,b,..: sel[i] = 1 for the names given, 0 for the others; name(i)
 * is choice i of n, what names one ("engine", "part") in the error. */
static inline void bench_parse_list(const char *opt, const char *list, const char *(*name)(int), int n,
                                    const char *what, int *sel) {
    char buf[256], known[256], *tok, *save = NULL;
    size_t kl = 0;
    int i;
    if (strlen(list) >= sizeof buf) bench_fail("%s: list too long", opt);
    memcpy(buf, list, strlen(list) + 1);
    for (i = 0; i < n; i++) sel[i] = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        for (i = 0; i < n && strcmp(tok, name(i)); i++) {}
        if (i == n) {
            known[0] = '\0';
            for (i = 0; i < n && kl < sizeof known; i++)
                kl += (size_t)snprintf(known + kl, sizeof known - kl, "%s%s", i ? ", " : "", name(i));
            bench_fail("%s: unknown %s '%s' (%s)", opt, what, tok, known);
        }
        sel[i] = 1;
    }
}

/* -- the machine */

/* The CPU's model name, or "unknown". */
static inline void bench_read_cpu(char *out, size_t cap) {
    char line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(out, cap, "unknown");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (strncmp(line, "model name", 10) || !c) continue;
        c += 1 + (c[1] == ' ');
        c[strcspn(c, "\n")] = '\0';
        snprintf(out, cap, "%s", c);
        break;
    }
    fclose(f);
}

/* "sysname release machine", or "unknown". */
static inline void bench_read_kernel(char *out, size_t cap) {
    struct utsname u;
    snprintf(out, cap, "unknown");
    if (!uname(&u)) snprintf(out, cap, "%s %s %s", u.sysname, u.release, u.machine);
}

/* The filesystem holding dir, "type (device on mount point)": the longest
 * mount point that prefixes it; or "unknown". */
static inline void bench_read_fs(const char *dir, char *out, size_t cap) {
    char real[BENCH_PATH_CAP], line[2048], dev[512], mnt[1024], type[64];
    size_t best = 0;
    FILE *f;
    snprintf(out, cap, "unknown");
    if (!realpath(dir, real) || !(f = fopen("/proc/self/mounts", "r"))) return;
    while (fgets(line, sizeof line, f)) {
        size_t l;
        if (sscanf(line, "%511s %1023s %63s", dev, mnt, type) != 3) continue;
        l = strlen(mnt);
        if (strncmp(real, mnt, l) || (l > 1 && real[l] && real[l] != '/')) continue;
        if (l >= best) best = l, snprintf(out, cap, "%.63s (%.200s on %.200s)", type, dev, mnt);
    }
    fclose(f);
}

/* -- output */

/* v with thousands separators and dec decimals; "-" when not measured. */
static inline const char *bench_fmt_num(char *out, size_t cap, double v, int dec) {
    char tmp[64], *dot;
    size_t i, intlen, o = 0;
    if (v < 0) return "-";
    snprintf(tmp, sizeof tmp, "%.*f", dec, v);
    dot = strchr(tmp, '.');
    intlen = dot ? (size_t)(dot - tmp) : strlen(tmp);
    for (i = 0; tmp[i] && o + 2 < cap; i++) {
        if (i > 0 && i < intlen && (intlen - i) % 3 == 0) out[o++] = ',';
        out[o++] = tmp[i];
    }
    out[o] = '\0';
    return out;
}

/* Prints text as lines of at most width columns, the first after head,
 * the others indented to line up with it. */
static inline void bench_print_wrapped(const char *head, const char *text, int width) {
    int indent = (int)strlen(head), col = indent;
    const char *w = text;
    fputs(head, stdout);
    while (*w) { /* bounded: every pass consumes a word and its spaces */
        int len = (int)strcspn(w, " ");
        if (col > indent && col + 1 + len > width) {
            printf("\n%*s", indent, "");
            col = indent;
        }
        if (col > indent) putchar(' '), col++;
        printf("%.*s", len, w);
        col += len;
        w += len;
        w += strspn(w, " ");
    }
    putchar('\n');
}

static inline void bench_json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

/* v with dec decimals; null when not measured (< 0). */
static inline void bench_json_num(double v, int dec) {
    if (v < 0) printf("null");
    else printf("%.*f", dec, v);
}

/* , "key": "s" */
static inline void bench_json_field(const char *key, const char *s) {
    printf(", \"%s\": ", key);
    bench_json_str(s);
}

/* ,\n  "engines": {"name": "config", ...} of the selected engines (sel[e]),
 * one a line. */
static inline void bench_json_engines(const char *(*name)(int), const char *const *config, const int *sel, int n) {
    int e, first = 1;
    printf(",\n  \"engines\": {");
    for (e = 0; e < n; e++) {
        if (!sel[e]) continue;
        printf("%s\n    \"%s\": ", first ? "" : ",", name(e));
        bench_json_str(config[e]);
        first = 0;
    }
    printf("\n  }");
}

/* "nproc": N, "cpu": "cpu", "kernel": "kernel" */
static inline void bench_json_machine(const char *cpu, const char *kernel) {
    printf("\"nproc\": %ld, \"cpu\": ", sysconf(_SC_NPROCESSORS_ONLN));
    bench_json_str(cpu);
    bench_json_field("kernel", kernel);
}
#endif /* BENCH_PROG */


/* ---- files: mkdir -p, rm -r, bytes on disk --------------------------------
 * For the benchmarks that keep data directories (bench_kv, bench_lists,
 * bench_ops). The including file defines BENCH_FILES and BENCH_PROG
 * (errors go through bench_fail) before this header and builds with
 * _GNU_SOURCE (for nftw). */
#ifdef BENCH_FILES
#ifndef BENCH_PROG
#error "BENCH_FILES needs BENCH_PROG (its errors go through bench_fail)"
#endif
#include <ftw.h>
#include <sys/stat.h>


/* out = a/b; out has BENCH_PATH_CAP bytes. */
static inline void bench_path_join(char *out, const char *a, const char *b) {
    if (snprintf(out, BENCH_PATH_CAP, "%s/%s", a, b) >= BENCH_PATH_CAP) bench_fail("path too long: %s/%s", a, b);
}

static inline void bench_mkdir_p(const char *path) {
    char p[BENCH_PATH_CAP];
    size_t i, len = strlen(path);
    if (len >= sizeof p) bench_fail("path too long: %s", path);
    memcpy(p, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        p[i] = '\0';
        if (mkdir(p, 0755) && errno != EEXIST) bench_fail("mkdir %s: %s", p, strerror(errno));
        if (i < len) p[i] = '/';
    }
}

static inline int bench_rm_cb(const char *p, const struct stat *st, int type, struct FTW *f) {
    (void)st, (void)type, (void)f;
    if (remove(p)) bench_fail("remove %s: %s", p, strerror(errno));
    return 0;
}

/* rm -r path; a missing path is fine. */
static inline void bench_rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) && errno == ENOENT) return;
    if (nftw(path, bench_rm_cb, 16, FTW_DEPTH | FTW_PHYS)) bench_fail("remove %s: %s", path, strerror(errno));
}

/* What bench_du adds up (nftw has no user pointer: the one accumulator). */
static struct {
    uint64_t blocks; /* st_blocks * 512 of every file: what df loses */
    uint64_t l, ls;  /* st_size of the kvidx list logs (*.l) and snapshots (*.ls) */
} g_bench_du;

static inline int bench_ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static inline int bench_du_cb(const char *p, const struct stat *st, int type, struct FTW *f) {
    (void)f;
    if (type != FTW_F) return 0;
    g_bench_du.blocks += (uint64_t)st->st_blocks * 512;
    if (bench_ends_with(p, ".l")) g_bench_du.l += (uint64_t)st->st_size;
    if (bench_ends_with(p, ".ls")) g_bench_du.ls += (uint64_t)st->st_size;
    return 0;
}

/* Fills g_bench_du for every file under path. */
static inline void bench_du(const char *path) {
    memset(&g_bench_du, 0, sizeof g_bench_du);
    if (nftw(path, bench_du_cb, 16, FTW_PHYS)) bench_fail("walk %s: %s", path, strerror(errno));
}
#endif /* BENCH_FILES */

#endif
