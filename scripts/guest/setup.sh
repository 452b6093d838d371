#!/usr/bin/env bash
# Prepare this machine for the guest test tier (tests/guest): a real Linux v9fs client in a
# qemu guest. Installs the Debian packages the tier needs and caches one Debian kernel (vmlinuz
# plus the handful of modules the guest loads), so that test runs never touch the network.
#
# Idempotent and fast when everything is there already. Needs root for apt-get.
#
# Cache layout ($GOFER9P_GUEST_CACHE, default /var/cache/gofer9p-guest when root, else
# ~/.cache/gofer9p-guest):
#   kernel/vmlinuz            the guest kernel
#   kernel/modules/...        the extracted lib/modules/VER tree (only the modules we need)
#   kernel/VERSION            kernel release string, e.g. 6.1.0-56-amd64
#   kernel/PACKAGE            the .deb package it came from
set -euo pipefail

if [[ -n "${GOFER9P_GUEST_CACHE:-}" ]]; then
    cache="$GOFER9P_GUEST_CACHE"
elif [[ $(id -u) -eq 0 ]]; then
    cache=/var/cache/gofer9p-guest
else
    cache="$HOME/.cache/gofer9p-guest"
fi

say() { echo "guest-setup: $*" >&2; }

# Debian packages: qemu for the VM, busybox-static for the guest userland, diod as the reference
# 9P server, gcc + libc6-dev to build the small static guest helper (flock/fcntl/utimensat),
# xz-utils and cpio for module/initramfs handling.
need_pkgs=()
for p in qemu-system-x86 busybox-static diod xz-utils cpio gcc libc6-dev util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
apt_updated=0
if ((${#need_pkgs[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "missing packages ${need_pkgs[*]} and not root: install them with apt-get"
        exit 1
    fi
    say "installing ${need_pkgs[*]}"
    apt-get update -qq
    apt_updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [[ -s "$cache/kernel/vmlinuz" && -s "$cache/kernel/VERSION" && -d "$cache/kernel/modules" ]]; then
    say "kernel cached: $(cat "$cache/kernel/PACKAGE") in $cache/kernel"
    exit 0
fi

# The kernel: whatever linux-image-amd64 currently points at (a signed 6.1 Debian kernel).
# Only the .deb is downloaded (apt-get download), nothing is installed on the host.
pkg_of() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1; }
pkg="$(pkg_of)"
if [[ -z "$pkg" && $apt_updated -eq 0 ]]; then
    apt-get update -qq
    pkg="$(pkg_of)"
fi
if [[ -z "$pkg" ]]; then
    say "cannot resolve the kernel package behind linux-image-amd64 (apt lists missing?)"
    exit 1
fi
say "downloading $pkg"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp"   # apt-get download as _apt needs to write there
(cd "$tmp" && apt-get download -qq "$pkg")
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/x"
ver="$(ls "$tmp/x/lib/modules" | head -n1)"
mkdir -p "$cache"
rm -rf "$cache/kernel.new"
mkdir -p "$cache/kernel.new/modules"
cp "$tmp/x/boot/vmlinuz-$ver" "$cache/kernel.new/vmlinuz"
# Keep only the subtrees holding what the guest loads (virtio, virtio_console, 9p, netfs,
# fscache): the full tree is ~400 MB unpacked.
for sub in kernel/drivers/virtio kernel/drivers/char kernel/net/9p kernel/fs/9p kernel/fs/netfs kernel/fs/fscache; do
    if [[ -d "$tmp/x/lib/modules/$ver/$sub" ]]; then
        mkdir -p "$cache/kernel.new/modules/$sub"
        cp -a "$tmp/x/lib/modules/$ver/$sub/." "$cache/kernel.new/modules/$sub/"
    fi
done
cp "$tmp/x/boot/config-$ver" "$cache/kernel.new/config"
echo "$ver" >"$cache/kernel.new/VERSION"
echo "$pkg" >"$cache/kernel.new/PACKAGE"
rm -rf "$cache/kernel"
mv "$cache/kernel.new" "$cache/kernel"
say "kernel $ver cached in $cache/kernel"
