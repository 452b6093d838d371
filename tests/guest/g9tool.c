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
 *   g9tool statloop PATH N                      stat(2) PATH N times, print microseconds per call:
 *                                               the round-trip latency the whole tier pays
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
#include <sys/socket.h>
#include <sys/stat.h>
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
    if (argc == 4 && strcmp(argv[1], "statloop") == 0)
        return do_statloop(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "bridge") == 0)
        return do_bridge(argv[2], argv[3]);
    fprintf(stderr, "usage: g9tool utimens|truncate|ftruncate|flock|fcntl|fsync|mmap|xattr|setxattr|mkfiles|statloop|bridge ...\n");
    return 2;
}
