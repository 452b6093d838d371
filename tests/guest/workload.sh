#!/bin/sh
# Guest workload: real file operations through the Linux v9fs client (busybox sh + g9tool).
#
# Each check prints one line on fd 9 (the "results" virtio port):
#     RESULT <name> PASS|FAIL|SKIP <detail>
# and measurements the host compares after power-off as
#     VALUE <key> <value>
# The host turns every RESULT into one pytest test (tests/guest/checks.py lists the names), and
# re-checks on the export, byte for byte, what the guest left there (files named in checks.py).
#
# Environment (from /etc/guest.env): RW and RO (mount points of the read-write and read-only
# exports), ROOT (the gofer's root attach point, or empty), CACHE (the cache= mount option, for
# details only), BIG=1 to run the 64 MiB file check, MANY=1 to run the 10k-entry directory
# check, DEVNODES=0 when the server must refuse device nodes, CHECK_TIMEOUT, ONLY.
#
# Checks are functions; `check NAME FUNC` runs one, and anything the function prints becomes
# the detail of a failure. A function fails by returning non-zero (helpers below: `expect`,
# `expect_fail`).

R=${RW:-/mnt/rw}
O=${RO:-/mnt/ro}

result() { echo "RESULT $*" >&9; echo "RESULT $*" >/dev/console; }
value() { echo "VALUE $1 $2" >&9; }

check() {
    name=$1
    shift
    out=$("$@" 2>&1)
    rc=$?
    out=$(printf '%s' "$out" | tr '\n' '|' | cut -c1-400)
    if [ $rc -eq 0 ]; then
        result "$name" PASS "$out"
    elif [ $rc -eq 77 ]; then
        result "$name" SKIP "$out"
    elif [ $rc -eq 137 ]; then
        result "$name" FAIL "timed out (killed after ${CHECK_TIMEOUT}s) $out"
    else
        result "$name" FAIL "$out"
    fi
}

# expect WHAT ACTUAL EXPECTED
expect() {
    if [ "$2" != "$3" ]; then
        echo "$1: got '$2', expected '$3'"
        return 1
    fi
}

# expect_fail WHAT PATTERN CMD...: CMD must fail with an error message containing PATTERN.
expect_fail() {
    what=$1
    pat=$2
    shift 2
    if msg=$("$@" 2>&1); then
        echo "$what: succeeded, expected failure '$pat'"
        return 1
    fi
    case "$msg" in
    *"$pat"*) return 0 ;;
    esac
    echo "$what: failed with '$msg', expected '$pat'"
    return 1
}

# ---- data -----------------------------------------------------------------------------------

t_write_read() {
    printf 'hello 9p\n' >"$R/hello.txt" || return 1
    expect content "$(cat "$R/hello.txt")" "hello 9p"
}

t_append() {
    printf 'second line\n' >>"$R/hello.txt" || return 1
    printf 'third line\n' >>"$R/hello.txt" || return 1
    expect content "$(cat "$R/hello.txt")" "hello 9p
second line
third line"
}

t_overwrite_middle() {
    printf 'abcdefghij' >"$R/middle.bin" || return 1
    printf 'XY' | dd of="$R/middle.bin" bs=1 seek=3 conv=notrunc 2>/dev/null || return 1
    expect content "$(cat "$R/middle.bin")" "abcXYfghij"
}

t_sparse_write() {
    # A write far past EOF leaves a hole that reads back as zeros.
    printf 'end' | dd of="$R/sparse.bin" bs=1 seek=1048576 2>/dev/null || return 1
    expect size "$(stat -c %s "$R/sparse.bin")" 1048579
    expect hole "$(dd if="$R/sparse.bin" bs=4096 skip=100 count=1 2>/dev/null | tr -d '\0' | wc -c)" 0
}

t_truncate_shrink() {
    printf '0123456789' >"$R/trunc_shrink.txt" || return 1
    truncate -s 4 "$R/trunc_shrink.txt" || return 1
    expect size "$(stat -c %s "$R/trunc_shrink.txt")" 4
    expect content "$(cat "$R/trunc_shrink.txt")" "0123"
}

t_truncate_grow() {
    printf 'ab' >"$R/trunc_grow.bin" || return 1
    truncate -s 8192 "$R/trunc_grow.bin" || return 1
    expect size "$(stat -c %s "$R/trunc_grow.bin")" 8192
    expect tail_zeros "$(tail -c 8190 "$R/trunc_grow.bin" | tr -d '\0' | wc -c)" 0
}

t_truncate_path() {
    printf '0123456789' >"$R/trunc_path.txt" || return 1
    g9tool truncate "$R/trunc_path.txt" 3 || return 1
    expect content "$(cat "$R/trunc_path.txt")" "012"
}

t_ftruncate() {
    printf '0123456789' >"$R/ftrunc.txt" || return 1
    g9tool ftruncate "$R/ftrunc.txt" 6 || return 1
    expect content "$(cat "$R/ftrunc.txt")" "012345"
}

t_o_trunc() {
    printf 'long old content\n' >"$R/otrunc.txt" || return 1
    printf 'new\n' >"$R/otrunc.txt" || return 1
    expect content "$(cat "$R/otrunc.txt")" "new"
}

t_fsync_dropcaches() {
    dd if=/dev/urandom of="$R/synced.bin" bs=4096 count=64 2>/dev/null || return 1
    a=$(sha256sum <"$R/synced.bin" | cut -d' ' -f1)
    g9tool fsync "$R/synced.bin" || return 1
    sync
    echo 3 >/proc/sys/vm/drop_caches
    b=$(sha256sum <"$R/synced.bin" | cut -d' ' -f1)
    value synced_sha256 "$a"
    expect sha256_after_drop_caches "$b" "$a"
}

t_open_unlink_read() {
    printf 'still readable\n' >"$R/unlinked.txt" || return 1
    exec 3<"$R/unlinked.txt"
    rm "$R/unlinked.txt" || { exec 3<&-; return 1; }
    [ -e "$R/unlinked.txt" ] && { exec 3<&-; echo "still exists after rm"; return 1; }
    got=$(cat <&3)
    exec 3<&-
    expect content "$got" "still readable"
}

t_open_unlink_write() {
    # Writing through an fd whose name is gone must still work (the server keeps the open file).
    exec 4>"$R/unlinked_w.txt"
    rm "$R/unlinked_w.txt" || { exec 4>&-; return 1; }
    echo "ghost" >&4
    rc=$?
    exec 4>&-
    [ $rc -eq 0 ] || { echo "write to unlinked file failed"; return 1; }
}

t_parallel_io() {
    # Four writers, then four readers, at once: many requests in flight on one connection,
    # replies out of order. Data made in tmpfs first so its sha256 is known.
    i=0
    while [ $i -lt 4 ]; do
        dd if=/dev/urandom of=/tmp/par$i bs=64k count=32 2>/dev/null || return 1
        value "par${i}_sha256" "$(sha256sum </tmp/par$i | cut -d' ' -f1)"
        i=$((i + 1))
    done
    for i in 0 1 2 3; do dd if=/tmp/par$i of="$R/par$i.bin" bs=64k 2>/dev/null & done
    wait
    for i in 0 1 2 3; do
        (dd if="$R/par$i.bin" bs=64k 2>/dev/null | sha256sum | cut -d' ' -f1 >/tmp/par$i.got) &
    done
    wait
    for i in 0 1 2 3; do
        expect "par$i" "$(cat /tmp/par$i.got)" "$(sha256sum </tmp/par$i | cut -d' ' -f1)" || return 1
    done
}

t_mmap() {
    # MAP_SHARED writes reach the server through writeback (msync), reads through the page cache.
    # With cache=none the client only allows read-only shared mappings (EINVAL): that is what
    # cache=mmap is for, so there the check is that it fails cleanly.
    printf '' >"$R/mmap.bin" || return 1
    if [ "$CACHE" = none ]; then
        expect_fail mmap_shared_cache_none "Invalid argument" g9tool mmap "$R/mmap.bin" || return 1
        echo "cache=none: shared writable mmap refused by the client (EINVAL), as expected"
        return 0
    fi
    g9tool mmap "$R/mmap.bin" || return 1
    echo 3 >/proc/sys/vm/drop_caches
    expect size "$(stat -c %s "$R/mmap.bin")" 8192 || return 1
    expect head "$(head -c 16 "$R/mmap.bin")" "mmap-page-0-data"
}

t_big_file() {
    [ "$BIG" = 1 ] || { echo "BIG=0 in this run"; return 77; }
    s=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/urandom of="$R/big.bin" bs=1M count=64 2>/dev/null || return 1
    sync
    e=$(cut -d' ' -f1 /proc/uptime)
    # read with 1 MiB reads: sha256sum's own 4 KiB reads are one RPC each with cache=none
    a=$(dd if="$R/big.bin" bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)
    value big_sha256 "$a"
    value big_write_seconds "$s-$e"
    echo 3 >/proc/sys/vm/drop_caches
    b=$(dd if="$R/big.bin" bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)
    expect size "$(stat -c %s "$R/big.bin")" 67108864
    expect sha256_reread "$b" "$a"
}

# ---- namespace ------------------------------------------------------------------------------

t_mkdir_rmdir() {
    mkdir -p "$R/d1/d2/d3" || return 1
    [ -d "$R/d1/d2/d3" ] || { echo "d3 missing"; return 1; }
    expect_fail rmdir_nonempty "not empty" rmdir "$R/d1/d2" || return 1
    rmdir "$R/d1/d2/d3" || return 1
    rmdir "$R/d1/d2" || return 1
    [ ! -e "$R/d1/d2" ] || { echo "d2 still there"; return 1; }
    expect_fail rmdir_file "Not a directory" rmdir "$R/hello.txt" || return 1
    expect_fail mkdir_exists "File exists" mkdir "$R/d1"
}

t_unlink() {
    printf x >"$R/gone.txt" || return 1
    rm "$R/gone.txt" || return 1
    expect_fail stat_after_unlink "No such file" stat "$R/gone.txt"
}

t_enoent() {
    expect_fail cat_missing "No such file" cat "$R/does/not/exist"
}

t_readdir_10k() {
    # many/ holds f00001..f10000, made on the host before boot: creating 10k files through v9fs
    # costs 10-30 ms each under TCG, so the guest lists and edits a host-made directory and
    # creates a smaller one of its own (made/).
    [ "$MANY" = 1 ] || { echo "MANY=0 in this run"; return 77; }
    # readdir only (the shell's glob: Treaddir with cookies, no getattr)
    set -- "$R"/many/*
    expect glob_count $# 10000 || return 1
    expect glob_first "$(basename "$1")" f00001 || return 1
    # ls: readdir + a lookup/getattr per entry
    ls "$R/many" >/tmp/many.ls || return 1
    expect ls_count "$(wc -l </tmp/many.ls)" 10000 || return 1
    expect ls_first "$(head -n1 /tmp/many.ls)" f00001 || return 1
    expect ls_last "$(tail -n1 /tmp/many.ls)" f10000 || return 1
    # Remove 100, list again: the listing must follow entries going away.
    rm "$R"/many/f*00 || return 1
    set -- "$R"/many/*
    expect count_after_rm $# 9900 || return 1
    # Created by the guest: 1000 files and 100 directories, listed, the directories removed.
    mkdir "$R/made" || return 1
    g9tool mkfiles "$R/made" 1000 >/dev/null || return 1
    i=0
    while [ $i -lt 100 ]; do mkdir "$R/made/d$i" || return 1; i=$((i + 1)); done
    expect made_count "$(ls "$R/made" | wc -l)" 1100 || return 1
    i=0
    while [ $i -lt 100 ]; do rmdir "$R/made/d$i" || return 1; i=$((i + 1)); done
    set -- "$R"/made/*
    expect made_after_rmdir $# 1000
}

t_rename_same_dir() {
    printf 'r1\n' >"$R/ren_a.txt" || return 1
    mv "$R/ren_a.txt" "$R/ren_b.txt" || return 1
    [ ! -e "$R/ren_a.txt" ] || { echo "old name still there"; return 1; }
    expect content "$(cat "$R/ren_b.txt")" r1
}

t_rename_cross_dir() {
    mkdir -p "$R/src_dir" "$R/dst_dir" || return 1
    printf 'r2\n' >"$R/src_dir/moved.txt" || return 1
    mv "$R/src_dir/moved.txt" "$R/dst_dir/moved.txt" || return 1
    [ ! -e "$R/src_dir/moved.txt" ] || { echo "old name still there"; return 1; }
    expect content "$(cat "$R/dst_dir/moved.txt")" r2
}

t_rename_over_existing() {
    printf 'winner\n' >"$R/ren_src.txt" || return 1
    printf 'loser\n' >"$R/ren_dst.txt" || return 1
    mv -f "$R/ren_src.txt" "$R/ren_dst.txt" || return 1
    expect content "$(cat "$R/ren_dst.txt")" winner || return 1
    expect listing "$(ls "$R" | grep -c '^ren_src.txt$')" 0
}

t_rename_dir() {
    mkdir -p "$R/tree/sub" || return 1
    printf 'deep\n' >"$R/tree/sub/leaf.txt" || return 1
    mkdir -p "$R/dst_dir" || return 1
    mv "$R/tree" "$R/dst_dir/tree2" || return 1
    expect content "$(cat "$R/dst_dir/tree2/sub/leaf.txt")" deep || return 1
    # the old path must not resolve any more (dentry/walk caching)
    expect_fail old_path "No such file" cat "$R/tree/sub/leaf.txt"
}

t_hardlink() {
    printf 'linked\n' >"$R/link_a.txt" || return 1
    ln "$R/link_a.txt" "$R/link_b.txt" || return 1
    expect nlink_a "$(stat -c %h "$R/link_a.txt")" 2 || return 1
    expect nlink_b "$(stat -c %h "$R/link_b.txt")" 2 || return 1
    expect content "$(cat "$R/link_b.txt")" linked || return 1
    printf 'more\n' >>"$R/link_a.txt" || return 1
    expect content_shared "$(cat "$R/link_b.txt")" "linked
more" || return 1
    ln "$R/link_a.txt" "$R/link_c.txt" || return 1
    rm "$R/link_c.txt" || return 1
    expect nlink_after_rm "$(stat -c %h "$R/link_a.txt")" 2 || return 1
    expect_fail link_dir "" ln "$R/dst_dir" "$R/dir_link"
}

t_symlink() {
    ln -s hello.txt "$R/sym.txt" || return 1
    expect readlink "$(readlink "$R/sym.txt")" hello.txt || return 1
    expect type "$(stat -c %F "$R/sym.txt")" "symbolic link" || return 1
    expect follow "$(head -n1 "$R/sym.txt")" "hello 9p" || return 1
    ln -s /nonexistent/target "$R/dangling" || return 1
    expect readlink_dangling "$(readlink "$R/dangling")" /nonexistent/target || return 1
    ln -s "$(printf 'x%.0s' $(seq 1 200))" "$R/longlink" || return 1
    expect readlink_long "$(readlink "$R/longlink" | wc -c)" 201
}

t_symlink_dir() {
    mkdir -p "$R/real_dir" || return 1
    printf 'via\n' >"$R/real_dir/f" || return 1
    ln -s real_dir "$R/dir_sym" || return 1
    expect content "$(cat "$R/dir_sym/f")" via
}

# ---- metadata -------------------------------------------------------------------------------

t_chmod() {
    printf x >"$R/mode.txt" || return 1
    chmod 0640 "$R/mode.txt" || return 1
    expect mode "$(stat -c %a "$R/mode.txt")" 640 || return 1
    mkdir -p "$R/mode_dir" || return 1
    chmod 0710 "$R/mode_dir" || return 1
    expect dir_mode "$(stat -c %a "$R/mode_dir")" 710 || return 1
    chmod 4755 "$R/mode.txt" || return 1
    expect setuid_mode "$(stat -c %a "$R/mode.txt")" 4755
}

t_chown() {
    printf x >"$R/owner.txt" || return 1
    chown 1234:5678 "$R/owner.txt" || return 1
    expect owner "$(stat -c %u:%g "$R/owner.txt")" 1234:5678
}

t_create_owner() {
    # access=client: files are created with the caller's uid/gid (root here).
    printf x >"$R/created_by_root.txt" || return 1
    expect owner "$(stat -c %u:%g "$R/created_by_root.txt")" 0:0
}

t_touch_date() {
    printf x >"$R/touched.txt" || return 1
    touch -d '2021-03-04 05:06:07' "$R/touched.txt" || return 1
    expect mtime "$(stat -c %Y "$R/touched.txt")" "$(date -d '2021-03-04 05:06:07' +%s)"
}

t_utimens_ns() {
    # utimensat with nanoseconds. The 6.1 v9fs client leaves s_time_gran at 1 s, so the kernel
    # truncates the times to whole seconds before sending Tsetattr (seen identically with diod
    # and gofer9p): seconds must be exact, nanoseconds are either ours or 0.
    printf x >"$R/ns.txt" || return 1
    g9tool utimens "$R/ns.txt" 1600000000 111111111 1614834367 123456789 || return 1
    expect mtime_s "$(stat -c %Y "$R/ns.txt")" 1614834367 || return 1
    expect atime_s "$(stat -c %X "$R/ns.txt")" 1600000000 || return 1
    ns=$(stat -c %y "$R/ns.txt" | cut -d' ' -f2 | cut -d. -f2)
    case "$ns" in
    123456789) echo "nanoseconds kept" ;;
    000000000) echo "nanoseconds truncated by the client (s_time_gran)" ;;
    *) echo "mtime nanoseconds '$ns', expected 123456789 or 000000000"; return 1 ;;
    esac
}

t_getattr_ns() {
    # Rgetattr carries nanoseconds: host_ns.txt was given mtime 1614834367.987654321 and atime
    # 1600000000.123456789 on the host before boot.
    expect mtime "$(stat -c %y "$R/host_ns.txt" | cut -d' ' -f2)" "05:06:07.987654321" || return 1
    expect atime "$(stat -c %x "$R/host_ns.txt" | cut -d' ' -f2)" "12:26:40.123456789"
}

t_mkfifo() {
    mkfifo "$R/fifo" || return 1
    expect type "$(stat -c %F "$R/fifo")" fifo || return 1
    # A FIFO on 9p is a local special inode: data goes through the guest kernel.
    (echo through-fifo >"$R/fifo") &
    got=$(cat "$R/fifo")
    wait
    expect fifo_data "$got" through-fifo
}

t_mknod() {
    # DEVNODES=0: the server must refuse device nodes (the gofer has no CAP_MKNOD by design);
    # a FIFO must still work there (t_mkfifo).
    if [ "$DEVNODES" = 0 ]; then
        expect_fail mknod_denied "Operation not permitted" mknod "$R/chardev" c 1 3
        return
    fi
    mknod "$R/chardev" c 1 3 || return 1
    expect type "$(stat -c %F "$R/chardev")" "character special file" || return 1
    expect majmin "$(stat -c %t:%T "$R/chardev")" 1:3
}

t_create_modes() {
    # umask 0: the guest kernel sends exactly these modes, and the server must make exactly
    # them, whatever its own umask (h_create_modes checks the export on the host).
    umask 0
    mkdir "$R/modes" || return 1
    for m in 620 666 4777 2775 6755 1755 7777; do
        for k in file fifo reg sock; do
            g9tool mkmode $k "$R/modes/$k$m" $m >/dev/null || return 1
            expect "$k $m" "$(stat -c %a "$R/modes/$k$m")" $m || return 1
        done
    done
    # mkdir(2) keeps the permission and sticky bits (the guest kernel drops set-id ones)
    for m in 777 1777 700 750; do
        g9tool mkmode dir "$R/modes/dir$m" $m >/dev/null || return 1
        expect "dir $m" "$(stat -c %a "$R/modes/dir$m")" $m || return 1
    done
    g9tool mkmode symlink "$R/modes/symlink" 0 >/dev/null || return 1
    expect symlink "$(stat -c %a "$R/modes/symlink")" 777
}

t_create_setgid_dir() {
    # A set-gid directory of group 50: entries made there by uid 1000 get group 50. A file
    # asking for S_ISGID keeps it only when its creator is in group 50 (the guest kernel
    # strips it for a non-member, as a local create would); a directory inherits S_ISGID.
    umask 0
    mkdir "$R/sgid" || return 1
    chown 0:50 "$R/sgid" && chmod 2777 "$R/sgid" || return 1
    g9tool mkmode file "$R/sgid/nonmember" 2755 1000 1000 >/dev/null || return 1
    g9tool mkmode file "$R/sgid/member" 2755 1000 50 >/dev/null || return 1
    g9tool mkmode file "$R/sgid/setuid" 4755 1000 1000 >/dev/null || return 1
    g9tool mkmode dir "$R/sgid/dir" 755 1000 1000 >/dev/null || return 1
    g9tool mkmode fifo "$R/sgid/fifo" 2660 1000 50 >/dev/null || return 1
    expect nonmember "$(stat -c '%a %u:%g' "$R/sgid/nonmember")" "755 1000:50" || return 1
    expect member "$(stat -c '%a %u:%g' "$R/sgid/member")" "2755 1000:50" || return 1
    expect setuid "$(stat -c '%a %u:%g' "$R/sgid/setuid")" "4755 1000:50" || return 1
    expect dir "$(stat -c '%a %u:%g' "$R/sgid/dir")" "2755 1000:50" || return 1
    expect fifo "$(stat -c '%a %u:%g' "$R/sgid/fifo")" "2660 1000:50"
}

t_fsx() {
    # Random writes, truncates, reads, mapped reads and writes, reopens (O_SYNC or not),
    # checked after every operation against a model of the file (g9tool.c, do_fsx); the host
    # then compares the export's file with the model (h_fsx).
    g9tool fsx "$R/fsx.bin" 19 "${FSX_OPS:-500}" /tmp/fsx.model || return 1
    value fsx_sha256 "$(sha256sum </tmp/fsx.model | cut -d' ' -f1)"
    value fsx_size "$(stat -c %s /tmp/fsx.model)"
}

t_xattr() {
    printf x >"$R/xattr.txt" || return 1
    g9tool xattr "$R/xattr.txt"
}

t_flock() {
    g9tool flock "$R/flock.lck"
}

t_fcntl_lock() {
    g9tool fcntl "$R/fcntl.lck"
}

t_statfs() {
    line=$(stat -f -c '%b %S %a %c %l' "$R") || return 1
    set -- $line
    value statfs "$line"
    [ "$1" -gt 0 ] || { echo "blocks=$1"; return 1; }
    [ "$2" -gt 0 ] || { echo "bsize=$2"; return 1; }
    [ "$5" -gt 0 ] || { echo "namelen=$5"; return 1; }
    df -k "$R" | tail -n1 | grep -q . || { echo "df printed nothing"; return 1; }
}

# ---- the gofer's root attach point (gofer daemon only) ---------------------------------------

t_root_fs() {
    [ -n "$ROOT" ] || { echo "no root attach point in this run"; return 77; }
    printf 'in the root\n' >"$ROOT/rootfile.txt" || return 1
    expect content "$(cat "$ROOT/rootfile.txt")" "in the root" || return 1
    mkdir -p "$ROOT/rootdir/sub" || return 1
    [ -d "$ROOT/data-ro" ] || { echo "mount point data-ro missing in root"; return 1; }
}

# ---- read-only export -----------------------------------------------------------------------

t_ro_read() {
    expect content "$(cat "$O/readme.txt")" "read-only export" || return 1
    expect listing "$(ls "$O" | tr '\n' ' ')" "readme.txt sub " || return 1
    expect nested "$(cat "$O/sub/nested.txt")" nested
}

t_fd_budget_dir() {
    # Only in the fd-budget boots (tests/guest/test_fd_budget.py), by ONLY=fd_budget_dir: fdd/
    # holds FDDIR files made on the host, each holding its 6-digit number and a newline. With
    # cache=loose the client keeps a fid per entry listed: far more fids than the server's
    # --fd-budget, so the listing and the reads work only if idle fids' fds are reclaimed.
    [ -n "$FDDIR" ] || { echo "FDDIR unset in this run"; return 77; }
    ls -l "$R/fdd" >/tmp/fdd.ls || return 1
    expect ls_l_files "$(grep -c '^-' /tmp/fdd.ls)" "$FDDIR" || return 1
    expect readall "$(g9tool readall "$R/fdd")" "$FDDIR $((FDDIR * 7))"
}

t_ro_write_fails() {
    ro="Read-only file system"
    expect_fail create "$ro" sh -c "echo x >'$O/new.txt'" || return 1
    expect_fail write_existing "$ro" sh -c "echo x >>'$O/readme.txt'" || return 1
    expect_fail truncate "$ro" truncate -s 0 "$O/readme.txt" || return 1
    expect_fail mkdir "$ro" mkdir "$O/newdir" || return 1
    expect_fail unlink "$ro" rm "$O/readme.txt" || return 1
    expect_fail rename "$ro" mv "$O/readme.txt" "$O/renamed.txt" || return 1
    expect_fail chmod "$ro" chmod 777 "$O/readme.txt" || return 1
    expect_fail touch "$ro" touch "$O/readme.txt" || return 1
    expect_fail symlink "$ro" ln -s x "$O/sym" || return 1
    expect_fail link "$ro" ln "$O/readme.txt" "$O/hard" || return 1
    expect_fail mkfifo "$ro" mkfifo "$O/fifo" || return 1
    expect_fail setxattr "$ro" g9tool setxattr "$O/readme.txt" user.x y
}

# ---- run ------------------------------------------------------------------------------------

ALL="write_read append overwrite_middle sparse_write truncate_shrink truncate_grow truncate_path
ftruncate o_trunc fsync_dropcaches parallel_io mmap open_unlink_read open_unlink_write mkdir_rmdir unlink enoent
rename_same_dir rename_cross_dir rename_over_existing rename_dir hardlink symlink symlink_dir chmod
chown create_owner create_modes create_setgid_dir fsx touch_date utimens_ns getattr_ns mkfifo mknod xattr flock fcntl_lock statfs root_fs ro_read
ro_write_fails big_file readdir_10k"

if [ "$1" = --one ]; then
    # One check in its own process, so the caller can bound it with `timeout -s KILL`.
    "t_$2"
    exit $?
fi

CHECK_TIMEOUT=${CHECK_TIMEOUT:-120}
for t in ${ONLY:-$ALL}; do
    s=$(cut -d' ' -f1 /proc/uptime)
    check "$t" timeout -s KILL "$CHECK_TIMEOUT" sh "$0" --one "$t"
    e=$(cut -d' ' -f1 /proc/uptime)
    value "seconds_$t" "$s-$e"
done
sync
