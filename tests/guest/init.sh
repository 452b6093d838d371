#!/bin/sh
# /init of the guest test initramfs (busybox sh, PID 1).
#
# Loads the virtio + 9p modules, bridges each virtio-serial port p9_<i> to loopback TCP port
# 564+i with busybox nc, mounts every 9P export listed in /etc/mounts.conf with trans=tcp, runs
# /workload.sh with its results going to the "results" virtio port, unmounts and powers off.
# The host reads the results file and then checks the exports itself.
#
# /etc/guest.env (written by the host): CACHE, MSIZE, EXTRA_OPTS, BRIDGE, and the workload's
# variables (RW, RO, ROOT, BIG, MANY, CHECK_TIMEOUT, ONLY).
# /etc/mounts.conf: one "INDEX MOUNTPOINT ro|rw ANAME" line per mount (ANAME may be "-").
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
set -a
. /etc/guest.env
set +a

log() { echo "guest-init: $*" >/dev/console; }
die() {
    log "FATAL: $*"
    [ -n "$RES" ] && echo "RESULT boot FAIL $*" >&9
    sync
    poweroff -f
}

for m in $(cat /modules.order); do
    insmod "/lib/modules/$m.ko" || log "insmod $m failed"
done

# /dev/vportNpM of the virtio-serial port named $1 (ports appear asynchronously after insmod).
port_dev() {
    i=0
    while [ $i -lt 100 ]; do
        for d in /sys/class/virtio-ports/*; do
            [ -f "$d/name" ] || continue
            if [ "$(cat "$d/name")" = "$1" ]; then
                dev=/dev/${d##*/}
                [ -e "$dev" ] && { echo "$dev"; return 0; }
            fi
        done
        i=$((i + 1))
        sleep 0.1
    done
    return 1
}

RES=$(port_dev results) || { log "no results port"; poweroff -f; }
exec 9>"$RES"
echo "RESULT boot PASS kernel=$(uname -r)" >&9

ifconfig lo 127.0.0.1 up || die "ifconfig lo"

while read -r idx mnt mode aname; do
    dev=$(port_dev "p9_$idx") || die "no virtio port p9_$idx"
    port=$((564 + idx))
    # One bridge per mount. g9tool's bridge sets TCP_NODELAY (see g9tool.c: busybox nc costs a
    # Nagle/delayed-ACK stall on every large reply) and serves a second connection when busybox
    # mount retries read-only after EACCES/EROFS; BRIDGE=nc uses busybox nc instead (accepts
    # once, execs a second nc on the port: such a retry then fails with ECONNREFUSED).
    if [ "$BRIDGE" = nc ]; then
        nc -l -p "$port" -e nc -f "$dev" &
    else
        g9tool bridge "$port" "$dev" &
    fi
    hex=$(printf '%04X' "$port")
    n=0
    until cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ":$hex [0:]*:0000 0A"; do
        n=$((n + 1))
        [ $n -ge 100 ] && die "nc bridge for p9_$idx not listening"
        sleep 0.05
    done
    opts="trans=tcp,port=$port,version=9p2000.L,access=client,cache=$CACHE,msize=$MSIZE"
    [ "$aname" != "-" ] && opts="$opts,aname=$aname"
    [ -n "$EXTRA_OPTS" ] && opts="$opts,$EXTRA_OPTS"
    # A read-only export is mounted read-write on purpose: the guest kernel must send the
    # mutating requests so that the server's own read-only policy (EROFS) is what is tested.
    mkdir -p "$mnt"
    mount -t 9p -o "$opts" 127.0.0.1 "$mnt" 2>/tmp/mount.err || die "mount $mnt ($opts): $(cat /tmp/mount.err)"
    echo "RESULT mount_$idx PASS $opts" >&9
done </etc/mounts.conf
grep 9p /proc/mounts >/dev/console

start=$(cut -d. -f1 /proc/uptime)
sh /workload.sh 2>/dev/console </dev/null
end=$(cut -d. -f1 /proc/uptime)
echo "VALUE workload_seconds $((end - start))" >&9

cd /
while read -r idx mnt mode aname; do
    if umount "$mnt" 2>/tmp/umount.err; then
        echo "RESULT umount_$idx PASS" >&9
    else
        echo "RESULT umount_$idx FAIL $(cat /tmp/umount.err)" >&9
    fi
done </etc/mounts.conf
echo "DONE" >&9
sync
poweroff -f
