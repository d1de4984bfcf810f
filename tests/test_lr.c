/*
 * test_lr.c -- white-box tests of the Left-Right read path, driven step
 * by step through the test hooks of kvidx.c (-DKVIDX_TEST):
 *
 *   - a reader parked between announcing itself and loading the side
 *     while a writer tries to publish twice: the writer must wait for it
 *     at the first publish (the single-toggle scheme would not, and would
 *     change the map the reader is about to read);
 *   - a reader parked in the middle of its read: the writer publishes,
 *     then waits, and never touches the map being read;
 *   - a reader copying a value out of the section buffer while a flush
 *     wants to reuse the buffer: the flush waits for it;
 *   - a scan between collecting keys and fetching their values: a key
 *     deleted meanwhile is skipped, an overwritten one has its new value.
 *
 * The main thread plays the reader with the library's own read-section
 * functions; a second thread is the writer. Hand-offs go through a mutex
 * and condition variable with timeouts, so a broken algorithm fails the
 * test instead of hanging it.
 */
#ifndef KVIDX_TEST
#define KVIDX_TEST
#endif
#include "../kvidx.c"

#include "harness.h"

/* ---- shared state between the reader (main) and the writer thread ---- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static pthread_t g_reader;       /* the main thread */
static int g_writer_waiting;     /* the writer spun in lr_drain */
static int g_puts_done;          /* puts the writer completed */
static int g_reader_side = -1;   /* the side the reader loaded, while inside */
static int g_violations;         /* writer applied to the side being read */
static int g_park_on_arrive;     /* the reader's ARRIVED hook starts the writer */
static int g_park_on_enter;      /* the reader's ENTER hook runs a whole put */
static pthread_t g_writer;
static int g_writer_started;

typedef struct writer_job {
    kvidx *db;
    uint64_t key;
    int nputs;
    const char *vals[4];
    size_t lens[4];
} writer_job;
static writer_job g_job;

static void *writer_main(void *arg) {
    writer_job *j = arg;
    int i;
    for (i = 0; i < j->nputs; i++) {
        int rc = kvidx_put(j->db, j->key, j->vals[i], j->lens[i]);
        pthread_mutex_lock(&g_mu);
        if (rc == KVIDX_OK) g_puts_done++;
        pthread_cond_broadcast(&g_cv);
        pthread_mutex_unlock(&g_mu);
    }
    return NULL;
}

/* Waits (up to 3 s) until *flag is non-zero; returns it. */
static int wait_flag(int *flag) {
    struct timespec ts;
    int v;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 3;
    pthread_mutex_lock(&g_mu);
    while (!*flag && pthread_cond_timedwait(&g_cv, &g_mu, &ts) == 0) {
    }
    v = *flag;
    pthread_mutex_unlock(&g_mu);
    return v;
}

static void start_writer(void) {
    g_writer_started = pthread_create(&g_writer, NULL, writer_main, &g_job) == 0;
}

static void hook(int point, unsigned arg) {
    int me_reader = pthread_equal(pthread_self(), g_reader);
    if (point == LR_HOOK_ENTER && me_reader && g_park_on_enter) {
        /* Parked before arriving: a whole put may run, unhindered. */
        g_park_on_enter = 0;
        start_writer();
        wait_flag(&g_puts_done);
        return;
    }
    if (point == LR_HOOK_ARRIVED && me_reader && g_park_on_arrive) {
        /* Parked between announcing and loading the side: let the writer
         * try to publish now, and give it time to do so. */
        g_park_on_arrive = 0;
        start_writer();
        wait_flag(&g_writer_waiting);
        return;
    }
    if (point == LR_HOOK_WAIT && !me_reader) {
        pthread_mutex_lock(&g_mu);
        if (!g_writer_waiting) {
            g_writer_waiting = 1;
            pthread_cond_broadcast(&g_cv);
        }
        pthread_mutex_unlock(&g_mu);
        return;
    }
    if (point == LR_HOOK_APPLY && !me_reader) {
        pthread_mutex_lock(&g_mu);
        if (g_reader_side >= 0 && (unsigned)g_reader_side == arg) g_violations++;
        pthread_mutex_unlock(&g_mu);
    }
}

/* The reader says which side it is reading (-1: none), for the writer's
 * APPLY hook to check against. */
static void reader_on(int side) {
    pthread_mutex_lock(&g_mu);
    g_reader_side = side;
    pthread_mutex_unlock(&g_mu);
}

/* The reader leaves its section; then the writer, if started, finishes. */
static void reader_leave(vs_shard *s, lr_slot *sl) {
    reader_on(-1);
    lr_depart(s->lr, sl);
    if (g_writer_started) pthread_join(g_writer, NULL);
    g_writer_started = 0;
}

static void reset(kvidx *db, uint64_t key) {
    g_writer_waiting = g_puts_done = g_violations = g_park_on_arrive = g_park_on_enter = 0;
    g_reader_side = -1;
    g_writer_started = 0;
    g_reader = pthread_self();
    memset(&g_job, 0, sizeof g_job);
    g_job.db = db;
    g_job.key = key;
}

static kvidx *open_db(const char *dir) {
    kvidx_options o;
    kvidx *db = NULL;
    kvidx_options_init(&o);
    o.shards = 1;
    o.sync_interval_ms = 0;
    if (kvidx_open(dir, &o, &db) != KVIDX_OK) return NULL;
    return db;
}

/* Reads key in shard 0 of db inside the current read section. */
static int read_in_section(kvidx *db, unsigned side, uint64_t bsec, uint64_t key, char *out,
                           size_t *len) {
    vs_shard *s = &db->sh[0];
    const lr_ent *e = lr_map_get(&s->map[side], key, ck_key(key));
    if (!e) return KVIDX_NOTFOUND;
    *len = e->len;
    return vs_copy(s->rs[side], bsec, e, out) == e->vsum ? KVIDX_OK : KVIDX_ECORRUPT;
}

/* vs_read_begin for shard 0's only store (no compaction here). */
static lr_slot *read_begin(vs_shard *s, unsigned *side, uint64_t *bsec) {
    const vs_store *v;
    return vs_read_begin(s, side, &v, bsec);
}

static int value_is(kvidx *db, uint64_t key, const char *want) {
    char b[KVIDX_VALUE_MAX];
    size_t len;
    return kvidx_get(db, key, b, sizeof b, &len) == KVIDX_OK && len == strlen(want) &&
           memcmp(b, want, len) == 0;
}

/* A reader announced on the indicators but not yet past loading the side:
 * a writer that publishes must wait for it before it changes the other
 * map, so it cannot publish a second time meanwhile. */
static void test_parked_before_side(void) {
    const char *dir = t_dir("lr_parked_arrive");
    kvidx *db = open_db(dir);
    vs_shard *s;
    lr_slot *sl;
    unsigned side, side0;
    uint64_t bsec;
    char b[KVIDX_VALUE_MAX];
    size_t len = 0;
    REQUIRE(db);
    s = &db->sh[0];
    CHECK_RC(kvidx_put(db, 7, "v0", 2), KVIDX_OK);
    side0 = s->lr->side;
    reset(db, 7);
    g_job.nputs = 2;
    g_job.vals[0] = "v1", g_job.lens[0] = 2;
    g_job.vals[1] = "v2", g_job.lens[1] = 2;
    g_park_on_arrive = 1;
    lr_test_hook = hook;

    sl = read_begin(s, &side, &bsec); /* the hook runs the writer here */
    reader_on((int)side);
    CHECK(g_writer_started);
    CHECK(g_writer_waiting);         /* it waits for the parked reader ... */
    CHECK(g_puts_done == 0);         /* ... inside its first publish */
    CHECK(side == (side0 ^ 1));      /* and the reader sees what it published */
    CHECK_RC(read_in_section(db, side, bsec, 7, b, &len), KVIDX_OK);
    CHECK(len == 2 && memcmp(b, "v1", 2) == 0);
    /* Still inside: give the writer every chance to go wrong. */
    usleep(20000);
    CHECK(g_puts_done == 0);
    CHECK_RC(read_in_section(db, side, bsec, 7, b, &len), KVIDX_OK);
    CHECK(len == 2 && memcmp(b, "v1", 2) == 0);
    reader_leave(s, sl);
    lr_test_hook = NULL;
    CHECK(g_puts_done == 2);
    CHECK(g_violations == 0);
    CHECK(value_is(db, 7, "v2"));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* A reader that chose its indicator, then stalled before arriving on it,
 * while a whole put went by: once inside it reads the newest map, and the
 * next writer waits for it before touching that map. The single-toggle
 * scheme fails here: its reader chose a map before stalling, the put
 * changed that map after publishing the other, and the next put changes
 * it again while the reader is in it. */
static void test_parked_before_arrive(void) {
    const char *dir = t_dir("lr_parked_enter");
    kvidx *db = open_db(dir);
    vs_shard *s;
    lr_slot *sl;
    unsigned side;
    uint64_t bsec;
    char b[KVIDX_VALUE_MAX];
    size_t len = 0;
    REQUIRE(db);
    s = &db->sh[0];
    CHECK_RC(kvidx_put(db, 5, "w0", 2), KVIDX_OK);
    reset(db, 5);
    g_job.nputs = 1;
    g_job.vals[0] = "w1", g_job.lens[0] = 2;
    g_park_on_enter = 1;
    lr_test_hook = hook;
    sl = read_begin(s, &side, &bsec); /* a whole put runs inside, before arrival */
    if (g_writer_started) pthread_join(g_writer, NULL);
    CHECK(g_puts_done == 1);
    CHECK(!g_writer_waiting); /* nobody had arrived: no reason to wait */
    reader_on((int)side);
    CHECK_RC(read_in_section(db, side, bsec, 5, b, &len), KVIDX_OK);
    CHECK(len == 2 && memcmp(b, "w1", 2) == 0);

    /* The next put must wait for this reader and leave its map alone. */
    g_writer_waiting = 0;
    g_job.vals[0] = "w2";
    start_writer();
    CHECK(g_writer_started);
    CHECK(wait_flag(&g_writer_waiting));
    usleep(20000);
    CHECK(g_puts_done == 1);
    CHECK_RC(read_in_section(db, side, bsec, 5, b, &len), KVIDX_OK);
    CHECK(len == 2 && memcmp(b, "w1", 2) == 0);
    reader_leave(s, sl);
    lr_test_hook = NULL;
    CHECK(g_puts_done == 2);
    CHECK(g_violations == 0);
    CHECK(value_is(db, 5, "w2"));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* A reader in the middle of reading one map: the writer changes the
 * other map, publishes, and waits; both phases of the wait hold it until
 * the reader leaves, and it never applies to the map being read. */
static void test_parked_while_reading(void) {
    const char *dir = t_dir("lr_parked_read");
    kvidx *db = open_db(dir);
    vs_shard *s;
    lr_slot *sl;
    unsigned side, vi0;
    uint64_t bsec;
    char b[KVIDX_VALUE_MAX];
    size_t len = 0;
    int round;
    REQUIRE(db);
    s = &db->sh[0];
    CHECK_RC(kvidx_put(db, 9, "a0", 2), KVIDX_OK);
    lr_test_hook = hook;
    /* Twice, so that the reader arrives once on each half of the
     * indicators (the version index moves at every publish). */
    for (round = 0; round < 2; round++) {
        const char *now = round ? "a1" : "a0", *next = round ? "a2" : "a1";
        reset(db, 9);
        g_job.nputs = 1;
        g_job.vals[0] = next, g_job.lens[0] = 2;
        vi0 = s->lr->vi;
        sl = read_begin(s, &side, &bsec);
        CHECK(sl >= &s->lr->ind[vi0][0] && sl < &s->lr->ind[vi0][KVIDX_LR_STRIPES]);
        reader_on((int)side);
        start_writer();
        CHECK(g_writer_started);
        CHECK(wait_flag(&g_writer_waiting));
        usleep(20000);
        CHECK(g_puts_done == 0);
        CHECK_RC(read_in_section(db, side, bsec, 9, b, &len), KVIDX_OK);
        CHECK(len == 2 && memcmp(b, now, 2) == 0); /* its map did not change */
        reader_leave(s, sl);
        CHECK(g_puts_done == 1);
        CHECK(g_violations == 0);
        CHECK(s->lr->vi == (vi0 ^ 1));
        CHECK(value_is(db, 9, next));
    }
    lr_test_hook = NULL;
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* A reader that found its value in the section buffer copies it while a
 * flush wants to write the next section's values there: the flush waits
 * until the reader has left. */
static void test_buffer_reuse_waits(void) {
    const char *dir = t_dir("lr_buffer");
    kvidx *db = open_db(dir);
    vs_shard *s;
    lr_slot *sl;
    unsigned side;
    uint64_t bsec, k, fails = 0;
    uint8_t v[VS_SLOT];
    char b[KVIDX_VALUE_MAX];
    size_t len = 0;
    REQUIRE(db);
    s = &db->sh[0];
    /* Fill the buffer: slots 0 .. 65535, every one taken. */
    for (k = 0; k < VS_SEC_N; k++) {
        memset(v, (int)(k * 7 + 1), sizeof v);
        memcpy(v, &k, sizeof k);
        fails += kvidx_put(db, k, v, sizeof v) != KVIDX_OK;
    }
    CHECK(fails == 0);
    CHECK(s->vs->bsec == 0 && s->next_slot == VS_SEC_N);

    reset(db, VS_SEC_N + 5);
    g_job.nputs = 1;
    g_job.vals[0] = "next section", g_job.lens[0] = 12; /* needs slot 65536: a flush */
    lr_test_hook = hook;
    sl = read_begin(s, &side, &bsec);
    CHECK(bsec == 0);
    start_writer();
    CHECK(g_writer_started);
    CHECK(wait_flag(&g_writer_waiting)); /* the flush waits for us */
    usleep(20000);
    CHECK(g_puts_done == 0);
    /* The value of key 1234 is still in the buffer, intact. */
    CHECK_RC(read_in_section(db, side, bsec, 1234, b, &len), KVIDX_OK);
    memset(v, (int)(1234 * 7 + 1), sizeof v);
    k = 1234;
    memcpy(v, &k, sizeof k);
    CHECK(len == VS_SLOT && memcmp(b, v, VS_SLOT) == 0);
    reader_leave(s, sl);
    lr_test_hook = NULL;
    CHECK(g_puts_done == 1);
    CHECK(s->vs->bsec == 1); /* flushed: key 1234 now reads from the value log */
    CHECK_RC(kvidx_get(db, 1234, b, sizeof b, &len), KVIDX_OK);
    CHECK(len == VS_SLOT && memcmp(b, v, VS_SLOT) == 0);
    CHECK(value_is(db, VS_SEC_N + 5, "next section"));
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* A scan collects keys in one read section and fetches their values in
 * another. A key deleted in between is skipped; a key overwritten in
 * between comes with its new value. */
static kvidx *g_scan_db;
static int g_scan_enters;
static void scan_hook(int point, unsigned arg) {
    (void)arg;
    if (point != LR_HOOK_ENTER || !pthread_equal(pthread_self(), g_reader)) return;
    if (++g_scan_enters == 2) { /* the keys are collected; no value read yet */
        CHECK_RC(kvidx_delete(g_scan_db, 5), KVIDX_OK);
        CHECK_RC(kvidx_put(g_scan_db, 6, "new", 3), KVIDX_OK);
    }
}

typedef struct seen {
    uint64_t keys[16];
    char six[8];
    int n;
} seen;

static int scan_collect(void *ud, uint64_t key, const void *val, size_t len) {
    seen *w = ud;
    if (w->n < 16) w->keys[w->n++] = key;
    if (key == 6 && len < sizeof w->six) memcpy(w->six, val, len);
    return 0;
}

static void test_scan_between_collect_and_fetch(void) {
    const char *dir = t_dir("lr_scan");
    kvidx *db = open_db(dir);
    uint64_t k;
    seen w;
    static const uint64_t want[] = {1, 2, 3, 4, 6, 7, 8, 9, 10};
    REQUIRE(db);
    for (k = 1; k <= 10; k++) CHECK_RC(kvidx_put(db, k, "old", 3), KVIDX_OK);
    memset(&w, 0, sizeof w);
    g_reader = pthread_self();
    g_scan_db = db;
    g_scan_enters = 0;
    lr_test_hook = scan_hook;
    CHECK_RC(kvidx_scan(db, 0, UINT64_MAX, scan_collect, &w), KVIDX_OK);
    lr_test_hook = NULL;
    CHECK(g_scan_enters >= 2);
    CHECK(w.n == 9 && memcmp(w.keys, want, sizeof want) == 0);
    CHECK(strcmp(w.six, "new") == 0);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

/* Readers on every stripe and both halves leave the indicators at zero,
 * and the stripe of a thread is stable. */
static void test_indicators_balance(void) {
    const char *dir = t_dir("lr_balance");
    kvidx *db = open_db(dir);
    vs_shard *s;
    unsigned h, i, side;
    uint64_t bsec, sum = 0;
    char b[8];
    size_t len;
    int n;
    REQUIRE(db);
    s = &db->sh[0];
    CHECK(lr_stripe() == lr_stripe());
    for (n = 0; n < 1000; n++) {
        lr_slot *sl = read_begin(s, &side, &bsec);
        CHECK(sl->n >= 1);
        lr_depart(s->lr, sl);
        if (n % 10 == 0) CHECK_RC(kvidx_put(db, (uint64_t)n, "x", 1), KVIDX_OK);
        kvidx_get(db, (uint64_t)n, b, sizeof b, &len);
    }
    for (h = 0; h < 2; h++)
        for (i = 0; i < KVIDX_LR_STRIPES; i++) sum += s->lr->ind[h][i].n;
    CHECK(sum == 0);
    CHECK(((uintptr_t)s->lr & 63) == 0 && sizeof(lr_slot) == 64);
    CHECK_RC(kvidx_close(db), KVIDX_OK);
    t_rmrf(dir);
}

int main(void) {
    t_init("test_lr");
    T_RUN(test_parked_before_side);
    T_RUN(test_parked_before_arrive);
    T_RUN(test_parked_while_reading);
    T_RUN(test_buffer_reuse_waits);
    T_RUN(test_indicators_balance);
    T_RUN(test_scan_between_collect_and_fetch);
    return t_done();
}
