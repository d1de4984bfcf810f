/*
 * powercut.h -- a power cut, simulated through kvidx.c's test hooks.
 *
 * Include after kvidx.c (built with -DKVIDX_TEST). pc_start(dir) starts
 * watching the database in dir (closed, so that everything in it is
 * durable); from then on os_trace_hook tells it of every open, mmap and
 * sync the library makes, and it keeps, per file, the bytes a disk would
 * hold: a file's content as of its last fdatasync/fsync (msync: that
 * range), the directory's entries as of its last fsync. pc_cut(tear)
 * then rewrites dir to that state, as a power cut would leave it,
 * everything not synced gone; with tear, one page written since its
 * file's last sync is kept in part (a torn write: 1 to 7 of its 512-byte
 * sectors). The process must do nothing more with the database after the
 * cut (the test's child process exits). One watched directory at a time;
 * no other thread may touch the database during pc_cut.
 */
#ifndef KVIDX_POWERCUT_H
#define KVIDX_POWERCUT_H

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#define PC_FDS 4096
#define PC_PAGE 4096u

typedef struct pc_file {
    ino_t ino;
    int fd;          /* a descriptor of it the library holds (to read it) */
    uint8_t *img;    /* the durable content */
    uint64_t size;
} pc_file;

typedef struct pc_map {
    const uint8_t *addr;
    uint64_t len, off;
    ino_t ino;
} pc_map;

typedef struct pc_name {
    char name[256];
    ino_t ino;
} pc_name;

static struct {
    char dir[4096];
    ino_t dir_ino;
    ino_t fd_ino[PC_FDS];
    pc_file *f;
    size_t nf, capf;
    pc_map *m;
    size_t nm, capm;
    pc_name *ns; /* the durable directory */
    size_t nns;
} pc;

static pc_file *pc_file_of(ino_t ino, int create) {
    size_t i;
    for (i = 0; i < pc.nf; i++)
        if (pc.f[i].ino == ino) return &pc.f[i];
    if (!create) return NULL;
    if (pc.nf == pc.capf) {
        pc.capf = pc.capf ? 2 * pc.capf : 64;
        pc.f = realloc(pc.f, pc.capf * sizeof *pc.f);
    }
    memset(&pc.f[pc.nf], 0, sizeof pc.f[pc.nf]);
    pc.f[pc.nf].ino = ino, pc.f[pc.nf].fd = -1;
    return &pc.f[pc.nf++];
}

/* Reads all of the file behind fd (without its O_DIRECT) into *out. */
static uint8_t *pc_read_fd(int fd, uint64_t *size) {
    char p[64];
    struct stat st;
    uint8_t *b;
    int rfd;
    ssize_t got = 0;
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    rfd = open(p, O_RDONLY);
    if (rfd < 0 || fstat(rfd, &st)) {
        if (rfd >= 0) close(rfd);
        *size = 0;
        return NULL;
    }
    b = calloc(1, (size_t)st.st_size + 1);
    while (got < st.st_size) { /* the data regions only: the buffer file is mostly holes */
        off_t data = lseek(rfd, got, SEEK_DATA), hole;
        if (data < 0) break; /* no data up to the end */
        hole = lseek(rfd, data, SEEK_HOLE);
        if (hole < 0 || hole > st.st_size) hole = st.st_size;
        for (got = data; got < hole;) {
            ssize_t r = pread(rfd, b + got, (size_t)(hole - got), got);
            if (r <= 0) {
                got = hole;
                break;
            }
            got += r;
        }
    }
    close(rfd);
    *size = (uint64_t)st.st_size;
    return b;
}

/* The directory's entries now: the durable ones after an fsync of it. */
static void pc_list_dir(void) {
    DIR *d = opendir(pc.dir);
    struct dirent *de;
    pc.nns = 0;
    if (!d) return;
    while ((de = readdir(d))) {
        char p[4400];
        struct stat st;
        if (de->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", pc.dir, de->d_name);
        if (stat(p, &st) || !S_ISREG(st.st_mode)) continue;
        pc.ns = realloc(pc.ns, (pc.nns + 1) * sizeof *pc.ns);
        snprintf(pc.ns[pc.nns].name, sizeof pc.ns[pc.nns].name, "%s", de->d_name);
        pc.ns[pc.nns].ino = st.st_ino;
        pc.nns++;
    }
    closedir(d);
}

static void pc_trace(const os_event *ev) {
    struct stat st;
    pc_file *f;
    size_t i;
    switch (ev->op) {
    case OS_OPEN:
        if (ev->fd < 0 || ev->fd >= PC_FDS || fstat(ev->fd, &st)) return;
        pc.fd_ino[ev->fd] = st.st_ino;
        if (S_ISREG(st.st_mode)) pc_file_of(st.st_ino, 1)->fd = ev->fd;
        return;
    case OS_MMAP:
        if (ev->fd < 0 || ev->fd >= PC_FDS) return;
        for (i = 0; i < pc.nm;) /* a new mapping replaces any it overlaps */
            if ((const uint8_t *)ev->addr < pc.m[i].addr + pc.m[i].len &&
                pc.m[i].addr < (const uint8_t *)ev->addr + ev->len)
                pc.m[i] = pc.m[--pc.nm];
            else
                i++;
        if (pc.nm == pc.capm) {
            pc.capm = pc.capm ? 2 * pc.capm : 64;
            pc.m = realloc(pc.m, pc.capm * sizeof *pc.m);
        }
        pc.m[pc.nm].addr = ev->addr, pc.m[pc.nm].len = ev->len, pc.m[pc.nm].off = ev->off;
        pc.m[pc.nm].ino = pc.fd_ino[ev->fd];
        pc.nm++;
        return;
    case OS_SYNC:
        if (ev->fd >= 0) { /* fdatasync or fsync: the whole file, or the directory */
            if (ev->fd >= PC_FDS || fstat(ev->fd, &st)) return;
            if (S_ISDIR(st.st_mode)) {
                if (st.st_ino == pc.dir_ino) pc_list_dir();
                return;
            }
            f = pc_file_of(st.st_ino, 1);
            free(f->img);
            f->img = pc_read_fd(ev->fd, &f->size);
            f->fd = ev->fd;
            return;
        }
        for (i = 0; i < pc.nm; i++) { /* msync: the mapped range */
            const pc_map *m = &pc.m[i];
            uint64_t a, z, size;
            uint8_t *now;
            if ((const uint8_t *)ev->addr >= m->addr + m->len || (const uint8_t *)ev->addr + ev->len <= m->addr)
                continue;
            f = pc_file_of(m->ino, 1);
            if (f->fd < 0 || f->fd >= PC_FDS || pc.fd_ino[f->fd] != f->ino) continue;
            now = pc_read_fd(f->fd, &size);
            a = m->off + (uint64_t)((const uint8_t *)ev->addr > m->addr ? (const uint8_t *)ev->addr - m->addr : 0);
            z = m->off + (uint64_t)((const uint8_t *)ev->addr + ev->len - m->addr);
            if (z > m->off + m->len) z = m->off + m->len;
            if (z > size) z = size;
            if (z > f->size) {
                f->img = realloc(f->img, (size_t)z);
                memset(f->img + f->size, 0, (size_t)(z - f->size));
                f->size = z;
            }
            if (a < z) memcpy(f->img + a, now + a, (size_t)(z - a));
            free(now);
        }
        return;
    default:
        return;
    }
}

/* Starts watching dir, whose current state is taken as durable. */
static void pc_start(const char *dir) {
    struct stat st;
    size_t i;
    memset(pc.fd_ino, 0, sizeof pc.fd_ino);
    pc.nf = pc.nm = pc.nns = 0;
    snprintf(pc.dir, sizeof pc.dir, "%s", dir);
    stat(dir, &st);
    pc.dir_ino = st.st_ino;
    pc_list_dir();
    for (i = 0; i < pc.nns; i++) {
        char p[4400];
        int fd;
        pc_file *f = pc_file_of(pc.ns[i].ino, 1);
        snprintf(p, sizeof p, "%s/%s", dir, pc.ns[i].name);
        fd = open(p, O_RDONLY);
        if (fd < 0) continue;
        f->img = pc_read_fd(fd, &f->size);
        close(fd);
    }
    os_trace_hook = pc_trace;
}

/* Rewrites dir as a power cut now would leave it (see the top). */
static void pc_cut(int tear) {
    size_t i;
    uint8_t **img = calloc(pc.nns + 1, sizeof *img);
    uint64_t *size = calloc(pc.nns + 1, sizeof *size);
    os_trace_hook = NULL;
    for (i = 0; i < pc.nns; i++) {
        pc_file *f = pc_file_of(pc.ns[i].ino, 0);
        size[i] = f ? f->size : 0;
        img[i] = malloc((size_t)size[i] + 1);
        if (size[i]) memcpy(img[i], f->img, (size_t)size[i]);
    }
    if (tear && pc.nns) { /* one page written since its file's sync, partly on disk */
        size_t start = (size_t)t_below(pc.nns), k;
        for (k = 0; k < pc.nns; k++) {
            size_t j = (start + k) % pc.nns;
            pc_file *f = pc_file_of(pc.ns[j].ino, 0);
            uint64_t now_size, page;
            uint8_t *now;
            if (!f || f->fd < 0 || f->fd >= PC_FDS || pc.fd_ino[f->fd] != f->ino) continue;
            now = pc_read_fd(f->fd, &now_size);
            for (page = 0; page * PC_PAGE < now_size; page++) {
                uint64_t a = page * PC_PAGE, z = a + PC_PAGE < now_size ? a + PC_PAGE : now_size;
                uint64_t cut = a + 512 * (1 + t_below(7));
                if (z <= size[j] && !memcmp(now + a, img[j] + a, (size_t)(z - a))) continue;
                if (cut > z) cut = z;
                if (cut > size[j]) {
                    img[j] = realloc(img[j], (size_t)cut);
                    memset(img[j] + size[j], 0, (size_t)(cut - size[j]));
                    size[j] = cut;
                }
                memcpy(img[j] + a, now + a, (size_t)(cut - a));
                break;
            }
            free(now);
            if (page * PC_PAGE < now_size) break;
        }
    }
    { /* the directory: the durable names, with the durable bytes */
        DIR *d = opendir(pc.dir);
        struct dirent *de;
        char p[4400];
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", pc.dir, de->d_name);
            unlink(p);
        }
        if (d) closedir(d);
        for (i = 0; i < pc.nns; i++) {
            int fd;
            snprintf(p, sizeof p, "%s/%s", pc.dir, pc.ns[i].name);
            fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) {
                if (size[i] && write(fd, img[i], (size_t)size[i]) != (ssize_t)size[i])
                    fprintf(stderr, "pc_cut: short write of %s\n", p);
                close(fd);
            }
            free(img[i]);
        }
    }
    free(img), free(size);
}

#endif
