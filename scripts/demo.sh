#!/usr/bin/env bash
# Install everything, then serve a real directory so you can poke it.
#   scripts/demo.sh [DIR]        (default: ./demo-export, created with a few files)
# Serves on unix:/tmp/gofer9p-demo.sock and tcp:127.0.0.1:5640 until Ctrl-C (or SIGTERM), which
# stops both servers. GOFER9P_DEMO_SOCK and GOFER9P_DEMO_TCP (HOST:PORT) move them (CI does).
# gofer9p is installed in this checkout's venv (.venv/, see scripts/setup.sh): the commands it
# prints run .venv/bin/gofer9p.
set -euo pipefail
cd "$(dirname "$0")/.."
GOFER9P_SKIP_GUEST_SETUP=1 scripts/setup.sh
venv=$(realpath -m "${GOFER9P_VENV:-.venv}")
gofer9p=$venv/bin/gofer9p
rel=${gofer9p#"$PWD"/}
dir=${1:-$PWD/demo-export}
if [[ ! -e "$dir" ]]; then
    mkdir -p "$dir/docs"
    echo "hello from gofer9p" > "$dir/hello.txt"
    echo "a file in a subdirectory" > "$dir/docs/readme.txt"
    ln -s hello.txt "$dir/link-to-hello"
fi
sock=${GOFER9P_DEMO_SOCK:-/tmp/gofer9p-demo.sock}
tcp=${GOFER9P_DEMO_TCP:-127.0.0.1:5640}
cat <<MSG
Serving $dir
  unix socket: $sock       tcp: $tcp
In another shell, from $PWD, poke it with the bundled client:
  $rel client unix:$sock ls /
  $rel client unix:$sock cat /hello.txt
  echo hi | $rel client unix:$sock put /new.txt
  $rel client unix:$sock stat /new.txt
(or first \`. $venv/bin/activate\`, then plain \`gofer9p ...\`)
Or mount it from a Linux VM (v9fs):  mount -t 9p -o trans=tcp,port=${tcp##*:},version=9p2000.L HOST /mnt
Ctrl-C to stop.
MSG
pids=()
stop() {
    trap - INT TERM EXIT
    ((${#pids[@]} == 0)) || kill "${pids[@]}" 2>/dev/null || true
    wait
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$gofer9p" serve --listen "unix:$sock" "$dir" &
pids+=($!)
"$gofer9p" serve --listen "tcp:$tcp" "$dir" &
pids+=($!)
# Ends when either server ends (the other is then stopped too), or at Ctrl-C/SIGTERM.
wait -n
