/*
 * test_powercut.c -- power cuts, simulated (powercut.h): a child process
 * runs random puts, deletes and list changes, then the power goes: every
 * byte not synced is lost, and one page written since its last sync may
 * be torn. The parent reopens and checks against a model:
 *   - with KVIDX_SYNC, every write that returned is there, and nothing
 *     else;
 *   - with explicit kvidx_sync only, each shard holds exactly the writes
 *     up to some point between the last kvidx_sync and the last write
 *     (a prefix of its writes: nothing lost before the sync, nothing
 *     half-done, nothing that was not written);
 * and the reopened database passes kvidx_check. Also: I/O errors and
 * short writes at every OS call of a scripted workload.
 *
 * Includes kvidx.c (built with -DKVIDX_TEST) for its test hooks.
 * KVIDX_SEED replays a run.
 */
#ifndef KVIDX_TEST
#define KVIDX_TEST
#endif
#include "../kvidx.c"

#include <signal.h>
#include <sys/wait.h>

#include "harness.h"
#include "powercut.h"

#define SHARDS 4u
#define KEYS 300u
#define LISTS 8u
#define IDS 200u
#define MAXOPS 160u

typedef struct model {
    uint32_t ver[KEYS];
    uint8_t in[LISTS][IDS];
} model;

static size_t val_of(uint64_t key, uint32_t ver, uint8_t *out) {
    uint64_t x = t_mix64(key * 31 + ver);
    size_t len = (size_t)(x % (KVIDX_VALUE_MAX + 1)), i;
    for (i = 0; i < len; i++) out[i] = (uint8_t)(t_mix64(x + i) >> 11);
    return len;
}

static uint64_t list_key(uint32_t k) { return 7000 + k; }

/* One op of the seeded sequence, applied to the model and (db != NULL)
 * the database; returns the database's result (KVIDX_OK if as expected). */
static int step(kvidx *db, model *m) {
    uint32_t r = (uint32_t)t_below(100), k;
    if (r < 60) {
        uint8_t v[KVIDX_VALUE_MAX];
        size_t len;
        k = (uint32_t)t_below(KEYS);
        len = val_of(k, ++m->ver[k], v);
        return db ? kvidx_put(db, k, v, len) : KVIDX_OK;
    }
    if (r < 75) {
        int rc;
        k = (uint32_t)t_below(KEYS);
        rc = db ? kvidx_delete(db, k) : KVIDX_OK;
        if (db && rc != (m->ver[k] ? KVIDX_OK : KVIDX_NOTFOUND)) return rc ? rc : -100;
        m->ver[k] = 0;
        return KVIDX_OK;
    }
    {
        uint64_t ids[8];
        size_t n = 1 + t_below(8), i, ch = 0;
        int add = r < 92, rc = KVIDX_OK;
        k = (uint32_t)t_below(LISTS);
        for (i = 0; i < n; i++) ids[i] = t_below(IDS);
        if (db) rc = add ? kvidx_list_add(db, list_key(k), ids, n, &ch) : kvidx_list_remove(db, list_key(k), ids, n, &ch);
        for (i = 0; i < n; i++) m->in[k][ids[i]] = (uint8_t)add;
        return rc == KVIDX_NOTFOUND ? KVIDX_OK : rc;
    }
}

/* Does shard s of db hold exactly model m's values (part & 1) and lists
 * (part & 2)? */
static int shard_part_is(kvidx *db, uint32_t s, const model *m, int part) {
    uint64_t k, out[IDS + 1];
    for (k = 0; (part & 1) && k < KEYS; k++) {
        uint8_t want[KVIDX_VALUE_MAX], got[KVIDX_VALUE_MAX];
        size_t wl, gl = 0;
        int rc;
        if ((ck_key(k) & (SHARDS - 1)) != s) continue;
        rc = kvidx_get(db, k, got, sizeof got, &gl);
        if (!m->ver[k]) {
            if (rc != KVIDX_NOTFOUND) return 0;
            continue;
        }
        wl = val_of(k, m->ver[k], want);
        if (rc != KVIDX_OK || gl != wl || memcmp(got, want, wl)) return 0;
    }
    for (k = 0; (part & 2) && k < LISTS; k++) {
        size_t n = 0, j = 0, i;
        int rc;
        if ((ck_key(list_key((uint32_t)k)) & (SHARDS - 1)) != s) continue;
        rc = kvidx_list_get(db, list_key((uint32_t)k), 0, out, IDS + 1, &n);
        for (i = 0; i < IDS; i++)
            if (m->in[k][i] && (j >= n || out[j++] != i)) return 0;
        if (j != n || (n == 0) != (rc == KVIDX_NOTFOUND)) return 0;
    }
    return 1;
}

static int shard_is(kvidx *db, uint32_t s, const model *m) { return shard_part_is(db, s, m, 3); }

static kvidx_options opts(int sync) {
    kvidx_options o;
    kvidx_options_init(&o);
    o.shards = SHARDS;
    o.sync_interval_ms = 0; /* no background thread: the cut happens between calls */
    o.compact_pct = 0;
    if (sync) o.flags |= KVIDX_SYNC;
    return o;
}

/* The child: the seeded ops, kvidx_sync now and then (sync == 0), then
 * the cut. Reports (ops that returned, ops before the last kvidx_sync). */
static void child(const char *dir, int sync, uint64_t seed, uint32_t nops, int tear, int fd) {
    kvidx_options o = opts(sync);
    kvidx *db;
    model *m = calloc(1, sizeof *m);
    uint32_t done = 0, synced = 0, rep[2];
    pc_start(dir);
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) _exit(3);
    t_rng = seed;
    while (done < nops) {
        if (step(db, m) != KVIDX_OK) _exit(4);
        done++;
        if (!sync && t_mix64(seed + done) % 12 == 0) { /* not from t_rng: the parent replays that */
            if (kvidx_sync(db) != KVIDX_OK) _exit(5);
            synced = done;
        }
    }
    rep[0] = done, rep[1] = sync ? done : synced;
    if (write(fd, rep, sizeof rep) != (ssize_t)sizeof rep) _exit(6);
    pc_cut(tear);
    _exit(0);
}

static void test_cuts(void) {
    const char *dir = t_dir("pc_cuts");
    unsigned run, runs = 24 / (SAN_SLOW > 2 ? 2 : 1), bad = 0;
    model *ms = calloc(MAXOPS + 1, sizeof *ms);
    t_watchdog("test_cuts", 900);
    t_on_timeout = t_kill_child;
    for (run = 0; run < runs; run++) {
        int sync = run % 2, tear = run % 4 >= 2, p[2], st = 0;
        uint32_t nops = 10 + (uint32_t)t_below(MAXOPS - 10), rep[2] = {0, 0}, k, s;
        uint64_t seed = t_rand();
        kvidx_options o = opts(0);
        kvidx *db;
        pid_t pid;
        t_rmrf(dir);
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        REQUIRE(kvidx_close(db) == KVIDX_OK);
        REQUIRE(pipe(p) == 0);
        pid = fork();
        if (pid == 0) {
            close(p[0]);
            child(dir, sync, seed, nops, tear, p[1]);
        }
        close(p[1]);
        t_child = pid;
        REQUIRE(pid > 0 && waitpid(pid, &st, 0) == pid);
        t_child = 0;
        REQUIRE(read(p[0], rep, sizeof rep) == (ssize_t)sizeof rep);
        close(p[0]);
        REQUIRE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        /* the models after 0..done ops */
        {
            uint64_t save = t_rng;
            t_rng = seed;
            memset(&ms[0], 0, sizeof ms[0]);
            for (k = 1; k <= rep[0]; k++) {
                ms[k] = ms[k - 1];
                (void)step(NULL, &ms[k]);
            }
            t_rng = save;
        }
        REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
        /* A shard's values and its lists are two logs: after a cut each is a
         * prefix of its own writes (with KVIDX_SYNC: all of them); the two
         * prefixes need not end at the same write. */
        for (s = 0; s < SHARDS; s++) {
            int ok = 1, part;
            for (part = 1; part <= 2; part++) {
                int found = 0;
                for (k = rep[0] + 1; k-- > rep[1] && !found;) found = shard_part_is(db, s, &ms[k], part);
                ok &= found;
            }
            if (!ok) {
                bad++;
                fprintf(stderr, "  run %u (%s%s, %u ops, last sync after %u): shard %u matches no state "
                        "from the last sync on\n", run, sync ? "KVIDX_SYNC" : "kvidx_sync", tear ? ", torn page" : "",
                        rep[0], rep[1], s);
            }
        }
        CHECK_RC(kvidx_close(db), KVIDX_OK);
        CHECK_RC(kvidx_check(dir), KVIDX_OK);
    }
    printf("  %u power cuts (half with KVIDX_SYNC, half with a torn page)\n", runs);
    CHECK(bad == 0);
    t_on_timeout = NULL;
    free(ms);
    t_rmrf(dir);
}

/* ---- errors and short writes at every OS call ------------------------------ */

static int g_call, g_at, g_err;
static int fail_at(os_op op, const char *what) {
    (void)what;
    if (op == OS_MALLOC) return 0; /* allocation failures: test_compact, test_lists_wb */
    return ++g_call == g_at ? g_err : 0;
}

/* A scripted workload (puts, deletes, list changes, syncs, a list
 * snapshot at close) with an error at OS call `at`: every call returns
 * OK or an error; once one failed with EIO the handle may refuse writes
 * (it must not pretend); reads agree with the model of what returned OK;
 * a reopen holds every write that returned OK before the last sync that
 * returned OK, and exactly what some prefix of the writes made. */
static void test_errors(void) {
    const char *dir = t_dir("pc_err");
    unsigned pass, bad = 0, runs = 0, failed_calls = 0;
    model *ms = calloc(MAXOPS + 1, sizeof *ms);
    static const int errs[] = {EIO, ENOSPC, EIO | OS_SHORT, ENOSPC | OS_SHORT};
    t_watchdog("test_errors", 900);
    for (pass = 0; pass < 4; pass++) {
        int at, done = 0;
        for (at = 1; !done && at < 2000; at += 1 + (int)t_below(SAN_SLOW * 3)) {
            kvidx_options o = opts(0); /* (with KVIDX_SYNC a failed sync may follow an applied write) */
            kvidx *db;
            model m;
            uint32_t k, ok_ops = 0, synced_ops = 0, s;
            uint64_t seed = 42 + (uint64_t)at, save;
            int rc, eio = 0;
            t_rmrf(dir);
            REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
            memset(&m, 0, sizeof m);
            g_call = 0, g_at = at, g_err = errs[pass];
            os_fault_hook = fail_at;
            save = t_rng, t_rng = seed;
            for (k = 0; k < 120; k++) {
                model before = m;
                rc = step(db, &m);
                if (rc != KVIDX_OK) {
                    m = before; /* a write that failed stored nothing */
                    if (rc != KVIDX_EIO && rc != KVIDX_EFULL) bad++;
                    eio |= rc == KVIDX_EIO;
                    failed_calls++;
                    continue; /* the models list what returned OK */
                }
                ms[++ok_ops] = m;
                if (k % 16 == 15 && kvidx_sync(db) == KVIDX_OK) synced_ops = ok_ops;
            }
            t_rng = save;
            for (s = 0; s < SHARDS; s++) bad += !shard_is(db, s, &m); /* reads see what returned OK */
            if (eio) { /* the shard that failed refuses writes from then on: it does not pretend */
                uint64_t key;
                int refused = 0;
                os_fault_hook = NULL;
                for (key = 1000000; key < 1000000 + 64; key++) refused |= kvidx_put(db, key, "x", 1) == KVIDX_EIO;
                bad += !refused;
            }
            kvidx_close(db);
            os_fault_hook = NULL;
            done = g_call < at;
            REQUIRE(kvidx_open(dir, &o, &db) == KVIDX_OK);
            memset(&ms[0], 0, sizeof ms[0]);
            for (s = 0; s < SHARDS; s++) {
                int found = 0;
                for (k = ok_ops + 1; k-- > synced_ops && !found;) found = shard_is(db, s, &ms[k]);
                if (!found) {
                    bad++;
                    fprintf(stderr, "  error %d%s at call %d: shard %u after reopen matches no prefix\n",
                            errs[pass] & ~OS_SHORT, errs[pass] & OS_SHORT ? " (short write)" : "", at, s);
                }
            }
            CHECK_RC(kvidx_close(db), KVIDX_OK);
            CHECK_RC(kvidx_check(dir), KVIDX_OK);
            runs++;
        }
        CHECK(done);
    }
    printf("  %u runs with one OS call failing (EIO, ENOSPC, each also as a short write): %u calls "
           "returned the error\n", runs, failed_calls);
    CHECK(bad == 0);
    free(ms);
    t_rmrf(dir);
}

int main(void) {
    t_init("test_powercut");
    T_RUN(test_cuts);
    T_RUN(test_errors);
    alarm(0);
    return t_done();
}
