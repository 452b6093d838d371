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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
    fprintf(stderr, "usage: g9tool utimens|truncate|ftruncate|flock|fcntl|fsync PATH ...\n");
    return 2;
}
