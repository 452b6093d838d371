/* gofer9p.attach._cstat: the stat calls of the hot requests, without a stat_result.
 *
 * Why C: os.stat/os.fstat build a stat_result of 20 fields, three of them floats
 * and three nanosecond ints made by multiplying Python ints; in a compiled
 * build that is 4,600-5,000 of a request's instructions, for each stat.  The
 * callers here need two to five fields (an identity check: dev and inode; a
 * walk's step: and the mode; a new file: and its owner) or one frame (Rgetattr,
 * packed from the stat).  Each function makes the same system calls as the os functions it replaces (fstatat
 * with AT_SYMLINK_NOFOLLOW; openat and fstat; fstat), with the GIL released around
 * them as os does, and raises the same OSError.
 *
 * Optional: setup.py builds it beside the mypyc modules; where it is missing
 * gofer9p/attach/_stat.py falls back to the same functions in Python (the
 * pure build), and tests/unit/test_cstat.py holds the two to the same answers.
 * It takes plain integers and a name, parses nothing from a client, and keeps
 * no state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#define RGETATTR_SIZE 160
#define RGETATTR_TYPE 25

static void put16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* An unsigned argument of at most ``max``: OverflowError past it (struct.pack's
 * error is struct.error; either is a bug of the caller, never a client's). */
static int arg_unsigned(PyObject *o, unsigned long long max, unsigned long long *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v > max) {
        PyErr_SetString(PyExc_OverflowError, "argument out of range");
        return -1;
    }
    *out = v;
    return 0;
}

static int arg_fd(PyObject *o, int *out) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "fd out of range");
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A name as os.stat takes bytes: TypeError if not bytes, ValueError with a NUL. */
static int check_name(PyObject *o, char **out) {
    if (!PyBytes_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "name must be bytes");
        return -1;
    }
    *out = PyBytes_AS_STRING(o);
    if ((Py_ssize_t)strlen(*out) != PyBytes_GET_SIZE(o)) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(ident_at_doc,
"ident_at(dirfd, name) -> (st_dev, st_ino)\n\n"
"os.stat(name, dir_fd=dirfd, follow_symlinks=False)'s device and inode.");

static PyObject *ident_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int dirfd;
    char *name;
    struct stat st;
    int r;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "ident_at(dirfd, name) takes 2 arguments");
        return NULL;
    }
    if (arg_fd(args[0], &dirfd) < 0 || check_name(args[1], &name) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW);
    Py_END_ALLOW_THREADS
    if (r != 0) return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[1]);
    return Py_BuildValue("(KK)", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
}

PyDoc_STRVAR(open_at_doc,
"open_at(dirfd, name) -> (fd, st_dev, st_ino, st_mode)\n\n"
"openat(dirfd, name, O_PATH|O_NOFOLLOW|O_CLOEXEC) and the new fd's fstat: one step\n"
"of a walk (a symlink is opened as itself).  The fd is closed if the fstat fails.");

static PyObject *open_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int dirfd, fd, r = 0;
    char *name;
    struct stat st;
    PyObject *out;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "open_at(dirfd, name) takes 2 arguments");
        return NULL;
    }
    if (arg_fd(args[0], &dirfd) < 0 || check_name(args[1], &name) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        r = fstat(fd, &st);
        if (r != 0) {
            int e = errno;
            close(fd);
            errno = e;
        }
    }
    Py_END_ALLOW_THREADS
    if (fd < 0) return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[1]);
    if (r != 0) return PyErr_SetFromErrno(PyExc_OSError);
    out = Py_BuildValue("(iKKI)", fd, (unsigned long long)st.st_dev,
                        (unsigned long long)st.st_ino, (unsigned int)st.st_mode);
    if (out == NULL) close(fd);
    return out;
}

PyDoc_STRVAR(fstat_ids_doc,
"fstat_ids(fd) -> (st_dev, st_ino, st_mode, st_uid, st_gid)\n\n"
"os.fstat(fd)'s identity, mode and owner (a new file's, Tlcreate; a re-opened one's).");

static PyObject *fstat_ids(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int fd, r;
    struct stat st;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "fstat_ids(fd) takes 1 argument");
        return NULL;
    }
    if (arg_fd(args[0], &fd) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = fstat(fd, &st);
    Py_END_ALLOW_THREADS
    if (r != 0) return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(KKIII)", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                         (unsigned int)st.st_mode, (unsigned int)st.st_uid,
                         (unsigned int)st.st_gid);
}

PyDoc_STRVAR(rgetattr_doc,
"rgetattr(fd, tag, valid, qtype, qversion, qpath) -> bytes\n\n"
"The whole Rgetattr frame (codec.RGETATTR) of fstat(fd): times as (sec, nsec)\n"
"with sec in two's complement, btime, gen and data_version 0.");

static PyObject *rgetattr(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int fd, r;
    unsigned long long tag, valid, qtype, qversion, qpath;
    struct stat st;
    PyObject *out;
    unsigned char *p;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "rgetattr takes 6 arguments");
        return NULL;
    }
    if (arg_fd(args[0], &fd) < 0 || arg_unsigned(args[1], 0xFFFF, &tag) < 0 ||
        arg_unsigned(args[2], UINT64_MAX, &valid) < 0 ||
        arg_unsigned(args[3], 0xFF, &qtype) < 0 ||
        arg_unsigned(args[4], 0xFFFFFFFF, &qversion) < 0 ||
        arg_unsigned(args[5], UINT64_MAX, &qpath) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = fstat(fd, &st);
    Py_END_ALLOW_THREADS
    if (r != 0) return PyErr_SetFromErrno(PyExc_OSError);
    out = PyBytes_FromStringAndSize(NULL, RGETATTR_SIZE);
    if (out == NULL) return NULL;
    p = (unsigned char *)PyBytes_AS_STRING(out);
    memset(p, 0, RGETATTR_SIZE);
    put32(p, RGETATTR_SIZE);
    p[4] = RGETATTR_TYPE;
    put16(p + 5, (uint16_t)tag);
    put64(p + 7, valid);
    p[15] = (unsigned char)qtype;
    put32(p + 16, (uint32_t)qversion);
    put64(p + 20, qpath);
    put32(p + 28, (uint32_t)st.st_mode);
    put32(p + 32, (uint32_t)st.st_uid);
    put32(p + 36, (uint32_t)st.st_gid);
    put64(p + 40, (uint64_t)st.st_nlink);
    put64(p + 48, (uint64_t)st.st_rdev);
    put64(p + 56, (uint64_t)st.st_size);
    put64(p + 64, (uint64_t)st.st_blksize);
    put64(p + 72, (uint64_t)st.st_blocks);
    put64(p + 80, (uint64_t)(int64_t)st.st_atim.tv_sec);
    put64(p + 88, (uint64_t)st.st_atim.tv_nsec);
    put64(p + 96, (uint64_t)(int64_t)st.st_mtim.tv_sec);
    put64(p + 104, (uint64_t)st.st_mtim.tv_nsec);
    put64(p + 112, (uint64_t)(int64_t)st.st_ctim.tv_sec);
    put64(p + 120, (uint64_t)st.st_ctim.tv_nsec);
    /* btime, gen, data_version: 0 (p + 128 .. 160, zeroed above) */
    return out;
}

static PyMethodDef methods[] = {
    {"ident_at", (PyCFunction)(void (*)(void))ident_at, METH_FASTCALL, ident_at_doc},
    {"fstat_ids", (PyCFunction)(void (*)(void))fstat_ids, METH_FASTCALL, fstat_ids_doc},
    {"open_at", (PyCFunction)(void (*)(void))open_at, METH_FASTCALL, open_at_doc},
    {"rgetattr", (PyCFunction)(void (*)(void))rgetattr, METH_FASTCALL, rgetattr_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gofer9p.attach._cstat",
    "The stat calls of the hot requests, without a stat_result (see _cstat.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cstat(void) { return PyModule_Create(&module); }
