#!/usr/bin/env bash
# Install everything, then serve a real directory so you can poke it.
#   scripts/demo.sh [DIR]        (default: ./demo-export, created with a few files)
# Serves on unix:/tmp/gofer9p-demo.sock and tcp:127.0.0.1:5640 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
GOFER9P_SKIP_GUEST_SETUP=1 scripts/setup.sh
dir=${1:-$PWD/demo-export}
if [[ ! -e "$dir" ]]; then
    mkdir -p "$dir/docs"
    echo "hello from gofer9p" > "$dir/hello.txt"
    echo "a file in a subdirectory" > "$dir/docs/readme.txt"
    ln -s hello.txt "$dir/link-to-hello"
fi
sock=/tmp/gofer9p-demo.sock
cat <<MSG
Serving $dir
  unix socket: $sock       tcp: 127.0.0.1:5640
In another shell, poke it with the bundled client:
  gofer9p client unix:$sock ls /
  gofer9p client unix:$sock cat /hello.txt
  echo hi | gofer9p client unix:$sock put /new.txt
  gofer9p client unix:$sock stat /new.txt
Or mount it from a Linux VM (v9fs):  mount -t 9p -o trans=tcp,port=5640,version=9p2000.L HOST /mnt
Ctrl-C to stop.
MSG
gofer9p serve --listen "unix:$sock" "$dir" &
unix_pid=$!
trap 'kill $unix_pid 2>/dev/null' EXIT
exec gofer9p serve --listen tcp:127.0.0.1:5640 "$dir"
