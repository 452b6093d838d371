/*
 * g9tool: the few syscalls the guest workload needs that busybox-static does not offer.
 *
 * Built on the host as a static binary (gcc -static) and put into the guest initramfs.
 * Each subcommand does one thing, prints one line and exits 0 on success, 1 on failure with
 * the errno name, so the workload script can turn it into a RESULT line.
 *
 *   g9tool utimens PATH ASEC ANSEC MSEC MNSEC   utimensat(2) with nanoseconds (busybox touch
 *                                               has no sub-second -d)
 *   g9tool truncate PATH SIZE                   truncate(2) on a path
 *   g9tool ftruncate PATH SIZE                  open + ftruncate(2) on an fd
 *   g9tool flock PATH                           flock: exclusive lock, a second open file
 *                                               description must get EWOULDBLOCK, then unlock
 *   g9tool fcntl PATH                           POSIX record locks: parent holds a write lock
 *                                               on a range, a child sees it with F_GETLK and
 *                                               cannot take it (EAGAIN/EACCES); after unlock
 *                                               the child can
 *   g9tool fsync PATH                           open O_RDWR, fsync(2), fdatasync(2)
 *   g9tool xattr PATH                           user.* xattrs: create, XATTR_CREATE/REPLACE
 *                                               semantics, size query, list, a 4000-byte
 *                                               value, remove (a size-0 Txattrcreate on 9P);
 *                                               leaves user.kept=kept-value for the host
 *   g9tool setxattr PATH NAME VALUE             one setxattr(2) (for the read-only checks)
 *   g9tool mmap PATH                            ftruncate to 8 KiB, MAP_SHARED, write a pattern
 *                                               to both pages, msync, munmap, read(2) it back
 *   g9tool mkfiles DIR N                        create DIR/f00001 .. DIR/fN (open O_CREAT|O_EXCL,
 *                                               close): one process instead of thousands of
 *                                               touch calls, which cost minutes under TCG
 *   g9tool readall DIR                          open and read every entry of DIR but . and ..
 *                                               (readdir order), print "FILES BYTES": reads
 *                                               each file of a huge directory in one process
 *   g9tool statloop PATH N                      stat(2) PATH N times, print microseconds per call:
 *                                               the round-trip latency the whole tier pays
 *   g9tool mkmode KIND PATH MODE [UID GID]      umask 0, then create PATH with exactly MODE (octal):
 *                                               KIND file (open O_CREAT|O_EXCL), dir (mkdir),
 *                                               fifo/sock/reg (mknod) or symlink (to "target");
 *                                               with UID GID, as that uid and gid (no other
 *                                               groups), so the guest kernel's own create rules
 *                                               for a non-member apply
 *   g9tool fsx PATH SEED NOPS MODEL             data integrity: NOPS random operations on PATH
 *                                               (writes, truncates up and down, reads, mapped
 *                                               reads and writes, close/reopen with and without
 *                                               O_SYNC, fsync + drop_caches), each checked
 *                                               against an in-memory model of the file (size
 *                                               and every byte); writes the model to MODEL at
 *                                               the end (the host compares the export's file)
 *   g9tool bridge PORT DEVICE                   accept TCP connections on 127.0.0.1:PORT, one at
 *                                               a time, and pump bytes between each and DEVICE
 *                                               (a virtio console port), both ways, until EOF
 *
 * Why a bridge of our own rather than busybox `nc -l -p PORT -e nc -f DEVICE`: nc does not set
 * TCP_NODELAY, and a 9P reply larger than one virtio buffer (4 KiB) reaches the socket in two
 * writes; Nagle holds the second until the kernel client's delayed ACK, ~40-80 ms per Rread.
 * With nc a 16 MiB read took minutes under TCG; with this bridge it takes seconds.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <grp.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what)
{
    printf("FAIL %s: %s (errno %d)\n", what, strerror(errno), errno);
    return 1;
}

static int do_utimens(const char *path, char **argv)
{
    struct timespec ts[2];
    ts[0].tv_sec = atoll(argv[0]);
    ts[0].tv_nsec = atol(argv[1]);
    ts[1].tv_sec = atoll(argv[2]);
    ts[1].tv_nsec = atol(argv[3]);
    if (utimensat(AT_FDCWD, path, ts, 0) != 0)
        return fail("utimensat");
    printf("OK\n");
    return 0;
}

static int do_truncate(const char *path, const char *size)
{
    if (truncate(path, atoll(size)) != 0)
        return fail("truncate");
    printf("OK\n");
    return 0;
}

static int do_ftruncate(const char *path, const char *size)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return fail("open");
    if (ftruncate(fd, atoll(size)) != 0)
        return fail("ftruncate");
    close(fd);
    printf("OK\n");
    return 0;
}

static int do_flock(const char *path)
{
    int a = open(path, O_RDWR | O_CREAT, 0644);
    int b = open(path, O_RDWR);
    if (a < 0 || b < 0)
        return fail("open");
    if (flock(a, LOCK_EX | LOCK_NB) != 0)
        return fail("flock(a, LOCK_EX)");
    errno = 0;
    if (flock(b, LOCK_EX | LOCK_NB) == 0) {
        printf("FAIL second flock(LOCK_EX) succeeded while the first is held\n");
        return 1;
    }
    if (errno != EWOULDBLOCK)
        return fail("flock(b) expected EWOULDBLOCK");
    if (flock(a, LOCK_UN) != 0)
        return fail("flock(a, LOCK_UN)");
    if (flock(b, LOCK_SH | LOCK_NB) != 0)
        return fail("flock(b, LOCK_SH) after unlock");
    if (flock(b, LOCK_UN) != 0)
        return fail("flock(b, LOCK_UN)");
    printf("OK\n");
    return 0;
}

static int child_probe(const char *path, int expect_locked)
{
    /* Runs in a child process: POSIX locks are per process, so only another process can see a
     * conflict. Exit code 0 means "behaved as expected". */
    int fd = open(path, O_RDWR);
    if (fd < 0)
        _exit(10);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20};
    if (fcntl(fd, F_GETLK, &fl) != 0)
        _exit(11);
    if (expect_locked) {
        if (fl.l_type != F_WRLCK || fl.l_pid != getppid())
            _exit(12);
        struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 15, .l_len = 1};
        if (fcntl(fd, F_SETLK, &w) == 0)
            _exit(13);
        if (errno != EAGAIN && errno != EACCES)
            _exit(14);
    } else {
        if (fl.l_type != F_UNLCK)
            _exit(15);
        struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 15, .l_len = 1};
        if (fcntl(fd, F_SETLK, &w) != 0)
            _exit(16);
    }
    _exit(0);
}

static int run_child(const char *path, int expect_locked)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        child_probe(path, expect_locked);
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100;
}

static int do_fcntl(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        return fail("open");
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20};
    if (fcntl(fd, F_SETLK, &fl) != 0)
        return fail("F_SETLK F_WRLCK");
    int rc = run_child(path, 1);
    if (rc != 0) {
        printf("FAIL child while locked: code %d (12=F_GETLK did not report the lock, "
               "13=conflicting F_SETLK succeeded, 14=wrong errno)\n", rc);
        return 1;
    }
    fl.l_type = F_UNLCK;
    if (fcntl(fd, F_SETLK, &fl) != 0)
        return fail("F_SETLK F_UNLCK");
    rc = run_child(path, 0);
    if (rc != 0) {
        printf("FAIL child after unlock: code %d (15=F_GETLK still reports a lock, "
               "16=F_SETLK failed)\n", rc);
        return 1;
    }
    close(fd);
    printf("OK\n");
    return 0;
}

static int do_fsync(const char *path)
{
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return fail("open");
    if (fsync(fd) != 0)
        return fail("fsync");
    if (fdatasync(fd) != 0)
        return fail("fdatasync");
    close(fd);
    printf("OK\n");
    return 0;
}

static int do_xattr(const char *path)
{
    char buf[8192];
    if (setxattr(path, "user.g9", "value1", 6, XATTR_CREATE) != 0)
        return fail("setxattr user.g9 XATTR_CREATE");
    ssize_t n = getxattr(path, "user.g9", buf, sizeof buf);
    if (n != 6 || memcmp(buf, "value1", 6) != 0) {
        printf("FAIL getxattr user.g9: got %zd bytes '%.*s'\n", n, n > 0 ? (int)n : 0, buf);
        return 1;
    }
    errno = 0;
    if (setxattr(path, "user.g9", "x", 1, XATTR_CREATE) == 0 || errno != EEXIST)
        return fail("second XATTR_CREATE must fail with EEXIST");
    errno = 0;
    if (setxattr(path, "user.none", "x", 1, XATTR_REPLACE) == 0 || errno != ENODATA)
        return fail("XATTR_REPLACE of a missing name must fail with ENODATA");
    if (setxattr(path, "user.g9", "value-two", 9, XATTR_REPLACE) != 0)
        return fail("setxattr user.g9 XATTR_REPLACE");
    n = getxattr(path, "user.g9", NULL, 0);
    if (n != 9) {
        printf("FAIL getxattr size query: %zd, expected 9\n", n);
        return 1;
    }
    memset(buf, 'x', 4000);
    if (setxattr(path, "user.big", buf, 4000, 0) != 0)
        return fail("setxattr user.big (4000 bytes)");
    memset(buf, 0, 4000);
    n = getxattr(path, "user.big", buf, sizeof buf);
    if (n != 4000 || buf[0] != 'x' || buf[3999] != 'x') {
        printf("FAIL getxattr user.big: %zd bytes\n", n);
        return 1;
    }
    if (setxattr(path, "user.kept", "kept-value", 10, 0) != 0)
        return fail("setxattr user.kept");
    n = listxattr(path, buf, sizeof buf);
    if (n < 0)
        return fail("listxattr");
    int seen = 0;
    for (char *p = buf; p < buf + n; p += strlen(p) + 1)
        seen += !strcmp(p, "user.g9") + !strcmp(p, "user.big") + !strcmp(p, "user.kept");
    if (seen != 3) {
        printf("FAIL listxattr: %d of user.g9/user.big/user.kept listed\n", seen);
        return 1;
    }
    if (removexattr(path, "user.g9") != 0 || removexattr(path, "user.big") != 0)
        return fail("removexattr");
    errno = 0;
    if (getxattr(path, "user.g9", buf, sizeof buf) >= 0 || errno != ENODATA)
        return fail("getxattr after removexattr must fail with ENODATA");
    printf("OK\n");
    return 0;
}

static int do_mmap(const char *path)
{
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return fail("open");
    if (ftruncate(fd, 8192) != 0)
        return fail("ftruncate");
    char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return fail("mmap");
    memcpy(m, "mmap-page-0-data", 16);
    memcpy(m + 4096, "mmap-page-1-data", 16);
    if (msync(m, 8192, MS_SYNC) != 0)
        return fail("msync");
    if (munmap(m, 8192) != 0)
        return fail("munmap");
    char buf[16];
    if (pread(fd, buf, 16, 4096) != 16 || memcmp(buf, "mmap-page-1-data", 16) != 0) {
        printf("FAIL pread after munmap: page 1 not written\n");
        return 1;
    }
    close(fd);
    printf("OK\n");
    return 0;
}

static int do_mkfiles(const char *dir, const char *count)
{
    long n = atol(count);
    char path[4096];
    for (long i = 1; i <= n; i++) {
        snprintf(path, sizeof path, "%s/f%05ld", dir, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0)
            return fail(path);
        close(fd);
    }
    printf("OK\n");
    return 0;
}

static int do_readall(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return fail(dir);
    static char buf[65536];
    char path[4096];
    long files = 0, bytes = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            return fail(path);
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0)
            bytes += r;
        if (r < 0)
            return fail(path);
        close(fd);
        files++;
        errno = 0;
    }
    if (errno)
        return fail("readdir");
    closedir(d);
    printf("%ld %ld\n", files, bytes);
    return 0;
}

static int do_statloop(const char *path, const char *count)
{
    long n = atol(count);
    struct timespec a, b;
    struct stat st;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        if (stat(path, &st) != 0)
            return fail("stat");
    clock_gettime(CLOCK_MONOTONIC, &b);
    double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / (n ? n : 1);
    printf("%.0f\n", us);
    return 0;
}

static int do_mkmode(int argc, char **argv)
{
    const char *kind = argv[2], *path = argv[3];
    mode_t mode = (mode_t)strtoul(argv[4], NULL, 8);
    umask(0);
    if (argc == 7) {
        gid_t gid = (gid_t)atol(argv[6]);
        if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0)
            return fail("setgid");
        if (setresuid(atol(argv[5]), atol(argv[5]), atol(argv[5])) != 0)
            return fail("setuid");
    }
    int r;
    if (!strcmp(kind, "file")) {
        r = open(path, O_CREAT | O_EXCL | O_WRONLY, mode);
        if (r >= 0)
            r = close(r);
    } else if (!strcmp(kind, "dir")) {
        r = mkdir(path, mode);
    } else if (!strcmp(kind, "fifo")) {
        r = mknod(path, S_IFIFO | mode, 0);
    } else if (!strcmp(kind, "sock")) {
        r = mknod(path, S_IFSOCK | mode, 0);
    } else if (!strcmp(kind, "reg")) {
        r = mknod(path, S_IFREG | mode, 0);
    } else if (!strcmp(kind, "symlink")) {
        r = symlink("target", path);
    } else {
        printf("FAIL unknown kind %s\n", kind);
        return 1;
    }
    if (r != 0)
        return fail(kind);
    printf("OK\n");
    return 0;
}

/* ---- fsx: random operations checked against a model of the file ---------------------------
 * A small relative of fsx (the classic file system exerciser), for the v9fs client's cache
 * modes over our server: every operation is applied to the file and to an in-memory model,
 * then the file's size and every byte (read(2) through the client) are compared with the
 * model. Every 64 operations the file is fsync'ed and the guest's caches dropped, so the next
 * comparison reads what the server has. Fixed seed, bounded size and count: reproducible.
 */
#define FSX_MAX (192 * 1024)
#define FSX_MAXIO (40 * 1024)
#define FSX_LOG 16

static uint64_t fsx_state;
static unsigned char *fsx_model, *fsx_buf;
static long fsx_size;
static char fsx_log[FSX_LOG][96];
static long fsx_ops;

static uint64_t rnd(void)
{
    /* xorshift64*: small, good enough, the same on every machine */
    fsx_state ^= fsx_state >> 12;
    fsx_state ^= fsx_state << 25;
    fsx_state ^= fsx_state >> 27;
    return fsx_state * 0x2545F4914F6CDD1DULL;
}

static long rnd_below(long n) { return n > 0 ? (long)(rnd() % (uint64_t)n) : 0; }

static void fsx_note(const char *fmt, long a, long b)
{
    snprintf(fsx_log[fsx_ops % FSX_LOG], sizeof fsx_log[0], "op %ld: ", fsx_ops);
    size_t n = strlen(fsx_log[fsx_ops % FSX_LOG]);
    snprintf(fsx_log[fsx_ops % FSX_LOG] + n, sizeof fsx_log[0] - n, fmt, a, b);
}

static int fsx_fail(const char *what, long a, long b)
{
    printf("FAIL fsx op %ld: %s (%ld, %ld) errno %d; last operations:", fsx_ops, what, a, b, errno);
    for (long i = fsx_ops - FSX_LOG + 1; i <= fsx_ops; i++)
        if (i >= 0)
            printf(" | %s", fsx_log[i % FSX_LOG]);
    printf("\n");
    return 1;
}

static void fill_random(unsigned char *p, long n)
{
    for (long i = 0; i < n; i++)
        p[i] = (unsigned char)(rnd() >> 56);
}

/* The file against the model: size by fstat, then every byte by pread. */
static int fsx_check(int fd, const char *when)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return fsx_fail("fstat", 0, 0);
    if (st.st_size != fsx_size) {
        printf("(%s) ", when);
        return fsx_fail("size differs from the model (file, model)", (long)st.st_size, fsx_size);
    }
    long got = 0;
    while (got < fsx_size) {
        ssize_t n = pread(fd, fsx_buf + got, fsx_size - got, got);
        if (n <= 0) {
            printf("(%s) ", when);
            return fsx_fail("short read (at, ret)", got, (long)n);
        }
        got += n;
    }
    for (long i = 0; i < fsx_size; i++)
        if (fsx_buf[i] != fsx_model[i]) {
            long j = i;
            while (j < fsx_size && fsx_buf[j] != fsx_model[j])
                j++;
            printf("(%s: byte %ld is %#x, model %#x) ", when, i, fsx_buf[i], fsx_model[i]);
            return fsx_fail("bytes differ from the model (from, to)", i, j);
        }
    return 0;
}

static void drop_caches(void)
{
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "3", 1) < 0) {
            /* not fatal: the next check then reads through the cache */
        }
        close(fd);
    }
}

static int do_fsx(const char *path, const char *seed, const char *nops, const char *model_path)
{
    long n = atol(nops);
    long pagesize = sysconf(_SC_PAGESIZE);
    fsx_state = strtoull(seed, NULL, 0) * 0x9E3779B97F4A7C15ULL + 1;
    fsx_model = calloc(FSX_MAX, 1);
    fsx_buf = calloc(FSX_MAX, 1);
    if (!fsx_model || !fsx_buf)
        return fail("calloc");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fail("open");
    long counts[9] = {0};
    int mapwrite_ok = 1, mapread_flags = MAP_SHARED;
    const char *names[9] = {"write", "read", "truncate", "mapread", "mapwrite", "reopen",
                            "sync+drop", "mapwrite-refused", "mapread-private"};
    for (fsx_ops = 0; fsx_ops < n; fsx_ops++) {
        long op = rnd_below(100);
        if (op < 30) { /* write anywhere below FSX_MAX, extending or not */
            long len = 1 + rnd_below(FSX_MAXIO);
            long off = rnd_below(FSX_MAX - len);
            fill_random(fsx_buf, len);
            fsx_note("write off=%ld len=%ld", off, len);
            if (pwrite(fd, fsx_buf, len, off) != len)
                return fsx_fail("pwrite (off, len)", off, len);
            memcpy(fsx_model + off, fsx_buf, len);
            if (off + len > fsx_size)
                fsx_size = off + len;
            counts[0]++;
        } else if (op < 45) { /* read a random range, compared below with the rest */
            long off = rnd_below(fsx_size + 1);
            long len = rnd_below(FSX_MAXIO);
            fsx_note("read off=%ld len=%ld", off, len);
            ssize_t r = pread(fd, fsx_buf, len, off);
            long want = off + len <= fsx_size ? len : fsx_size - off;
            if (r != want)
                return fsx_fail("pread returned (got, want)", (long)r, want);
            if (memcmp(fsx_buf, fsx_model + off, want) != 0)
                return fsx_fail("pread data differs (off, len)", off, want);
            counts[1]++;
        } else if (op < 60) { /* truncate up or down */
            long size = rnd_below(FSX_MAX);
            fsx_note("truncate %ld (was %ld)", size, fsx_size);
            if (ftruncate(fd, size) != 0)
                return fsx_fail("ftruncate (size, was)", size, fsx_size);
            if (size > fsx_size)
                memset(fsx_model + fsx_size, 0, size - fsx_size);
            else
                memset(fsx_model + size, 0, fsx_size - size);
            fsx_size = size;
            counts[2]++;
        } else if (op < 72) { /* mapped read */
            if (fsx_size == 0)
                continue;
            long off = rnd_below(fsx_size);
            long len = 1 + rnd_below(fsx_size - off);
            long pg = off - off % pagesize;
            fsx_note("mapread off=%ld len=%ld", off, len);
            unsigned char *m = mmap(NULL, off + len - pg, PROT_READ, mapread_flags, fd, pg);
            if (m == MAP_FAILED && errno == EINVAL && mapread_flags == MAP_SHARED) {
                /* cache=none: no shared mapping of a file open for writing (the client
                 * would have to write it back): read through a private one */
                mapread_flags = MAP_PRIVATE;
                m = mmap(NULL, off + len - pg, PROT_READ, mapread_flags, fd, pg);
            }
            if (m == MAP_FAILED)
                return fsx_fail("mmap PROT_READ (off, len)", off, len);
            if (mapread_flags == MAP_PRIVATE)
                counts[8]++;
            int bad = memcmp(m + (off - pg), fsx_model + off, len);
            munmap(m, off + len - pg);
            if (bad)
                return fsx_fail("mapped read differs (off, len)", off, len);
            counts[3]++;
        } else if (op < 84) { /* mapped write inside the file, msync */
            if (fsx_size == 0)
                continue;
            long off = rnd_below(fsx_size);
            long len = 1 + rnd_below(fsx_size - off < FSX_MAXIO ? fsx_size - off : FSX_MAXIO);
            long pg = off - off % pagesize;
            if (!mapwrite_ok) {
                counts[7]++;
                continue;
            }
            fsx_note("mapwrite off=%ld len=%ld", off, len);
            unsigned char *m = mmap(NULL, off + len - pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, pg);
            if (m == MAP_FAILED) {
                if (errno == EINVAL && counts[4] == 0) {
                    /* cache=none: the client allows no shared writable mapping */
                    mapwrite_ok = 0;
                    counts[7]++;
                    continue;
                }
                return fsx_fail("mmap PROT_WRITE (off, len)", off, len);
            }
            fill_random(m + (off - pg), len);
            memcpy(fsx_model + off, m + (off - pg), len);
            if (msync(m, off + len - pg, MS_SYNC) != 0)
                return fsx_fail("msync (off, len)", off, len);
            munmap(m, off + len - pg);
            counts[4]++;
        } else if (op < 94) { /* close and reopen, O_SYNC or not */
            int sync = (int)rnd_below(2);
            fsx_note("reopen O_SYNC=%ld%.0ld", sync, 0);
            if (close(fd) != 0)
                return fsx_fail("close", 0, 0);
            fd = open(path, O_RDWR | (sync ? O_SYNC : 0));
            if (fd < 0)
                return fsx_fail("reopen (O_SYNC)", sync, 0);
            counts[5]++;
        } else if (op < 97) {
            fsx_note("fsync+drop_caches%ld%ld", 0, 0);
            if (fsync(fd) != 0)
                return fsx_fail("fsync", 0, 0);
            drop_caches();
            counts[6]++;
        } else {
            continue;
        }
        if (fsx_ops % 64 == 63) {
            if (fsync(fd) != 0)
                return fsx_fail("fsync", 0, 0);
            drop_caches();
            if (fsx_check(fd, "after fsync+drop_caches"))
                return 1;
        } else if (fsx_check(fd, "after the operation")) {
            return 1;
        }
    }
    if (fsync(fd) != 0 || close(fd) != 0)
        return fsx_fail("final fsync/close", 0, 0);
    drop_caches();
    fd = open(path, O_RDONLY);
    if (fd < 0 || fsx_check(fd, "final, reopened after drop_caches"))
        return fd < 0 ? fail("final open") : 1;
    close(fd);
    int mf = open(model_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (mf < 0 || write(mf, fsx_model, fsx_size) != fsx_size || close(mf) != 0)
        return fail("write the model");
    printf("OK %ld ops, size %ld:", n, fsx_size);
    for (int i = 0; i < 9; i++)
        printf(" %s=%ld", names[i], counts[i]);
    printf("\n");
    return 0;
}

static int write_all(int fd, const char *buf, ssize_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= w;
    }
    return 0;
}

/* Copy in -> out until EOF or error. Blocking I/O: each direction has its own process, so a
 * full buffer one way never stalls the other way. */
static void pump(int in, int out)
{
    static char buf[256 * 1024];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || write_all(out, buf, n) != 0)
            return;
    }
}

static int do_bridge(const char *port, const char *dev)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0)
        return fail("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0)
        return fail("bind");
    if (listen(ls, 1) != 0)
        return fail("listen");
    int d = -1;
    signal(SIGPIPE, SIG_IGN);
    /* Connections are served one after the other on the same port: normally there is exactly
     * one (the mount), but when a mount fails with EACCES/EROFS busybox mount retries it
     * read-only, and that second connection must reach the server too (its Tversion starts a
     * new 9P session on the same stream), or the real error hides behind ECONNREFUSED. */
    for (;;) {
        int s = accept(ls, NULL, NULL);
        if (s < 0)
            return fail("accept");
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (d < 0 && (d = open(dev, O_RDWR)) < 0)
            return fail("open device");
        pid_t pid = fork();
        if (pid < 0)
            return fail("fork");
        if (pid == 0) {
            pump(d, s); /* host -> guest kernel */
            shutdown(s, SHUT_WR);
            _exit(0);
        }
        pump(s, d); /* guest kernel -> host */
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(s);
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 7 && strcmp(argv[1], "utimens") == 0)
        return do_utimens(argv[2], argv + 3);
    if (argc == 4 && strcmp(argv[1], "truncate") == 0)
        return do_truncate(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "ftruncate") == 0)
        return do_ftruncate(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "flock") == 0)
        return do_flock(argv[2]);
    if (argc == 3 && strcmp(argv[1], "fcntl") == 0)
        return do_fcntl(argv[2]);
    if (argc == 3 && strcmp(argv[1], "fsync") == 0)
        return do_fsync(argv[2]);
    if (argc == 3 && strcmp(argv[1], "mmap") == 0)
        return do_mmap(argv[2]);
    if (argc == 3 && strcmp(argv[1], "xattr") == 0)
        return do_xattr(argv[2]);
    if (argc == 5 && strcmp(argv[1], "setxattr") == 0) {
        if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) != 0)
            return fail("setxattr");
        printf("OK\n");
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "mkfiles") == 0)
        return do_mkfiles(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "readall") == 0)
        return do_readall(argv[2]);
    if (argc == 4 && strcmp(argv[1], "statloop") == 0)
        return do_statloop(argv[2], argv[3]);
    if ((argc == 5 || argc == 7) && strcmp(argv[1], "mkmode") == 0)
        return do_mkmode(argc, argv);
    if (argc == 6 && strcmp(argv[1], "fsx") == 0)
        return do_fsx(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 4 && strcmp(argv[1], "bridge") == 0)
        return do_bridge(argv[2], argv[3]);
    fprintf(stderr, "usage: g9tool utimens|truncate|ftruncate|flock|fcntl|fsync|mmap|xattr|setxattr|mkfiles|readall|statloop|mkmode|fsx|bridge ...\n");
    return 2;
}
