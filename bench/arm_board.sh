#!/usr/bin/env bash
# An emulated aarch64 board (qemu-user) that serves TVM RPC as device `rpi4-emu`.
#
#   bench/arm_board.sh root                 build (or reuse) the cached aarch64 Debian root
#   bench/arm_board.sh run [MEASURE ARGS]   root + host tracker + rpc_server in the root, then
#                                           `hwprof measure --device rpi4-emu MEASURE ARGS`, then stop everything
#   bench/arm_board.sh up | down            start / stop tracker + rpc_server and leave them running
#   bench/arm_board.sh shell                a shell inside the root (mounts /proc and /dev, never /sys)
#
# Emulated timings prove that the path works (cross-compiled aarch64 libraries run on an aarch64 userland over
# RPC); they say nothing about the performance of any real board: qemu translates every instruction.
#
# Needs root (debootstrap, chroot, mount), and on the host: debootstrap qemu-user-static g++-aarch64-linux-gnu,
# the project venv (apache-tvm) and network access to the Debian mirror and the Python package index (the host
# downloads the aarch64 wheels; pip inside the chroot cannot reach the index over TLS, so it installs --no-index).
#
# Environment: HWNAS_ARM_ROOT (default ~/.cache/hwnas/arm-root), HWNAS_ARM_PORT (tracker port, default 9291, the
# one devices.yaml's rpi4-emu names), HWNAS_ARM_THREADS (TVM_NUM_THREADS of the server, default 2),
# HWNAS_DEVICES (devices.yaml for `run`), HWNAS_ARM_EXTERNAL_TRACKER=1 (a tracker already listens on the port),
# HWNAS_ARM_RUN (pid files, logs, default table; /tmp/hwnas-arm-board), DEBIAN_MIRROR.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/hwnas"
ROOT="${HWNAS_ARM_ROOT:-$CACHE/arm-root}"
WHEELS="${HWNAS_ARM_WHEELS:-$CACHE/arm-wheels}"
PORT="${HWNAS_ARM_PORT:-9291}"
THREADS="${HWNAS_ARM_THREADS:-2}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm            # python3.11, glibc 2.36 (manylinux_2_28 wheels run)
PYVER=3.11
KEY=rpi4-emu
PY="${HWNAS_PYTHON:-$HERE/.venv/bin/python}"
HWPROF="${HWNAS_HWPROF:-$HERE/.venv/bin/hwprof}"
RUN_DIR="${HWNAS_ARM_RUN:-/tmp/hwnas-arm-board}"
# The board's Python packages. TVM's ffi is pinned (0.1.15.x segfaults); psutil + cloudpickle for rpc_server's
# popen workers; onnxruntime + numpy so the same root can also serve the SSH route.
BOARD_PKGS=(apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy psutil cloudpickle onnxruntime)
STAMP_TEXT="suite=$SUITE py=$PYVER pkgs=${BOARD_PKGS[*]}"

log() { printf '[arm_board %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }

need_tools() {
  [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount); run it with sudo"
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
  [ ${#missing[@]} = 0 ] || die "missing host packages; run: apt-get install -y ${missing[*]}"
  [ -x "$PY" ] || die "no project python at $PY; run 'make setup' first or set HWNAS_PYTHON"
}

# binfmt_misc: mount it and register qemu-aarch64 with the F flag (the kernel opens the interpreter now, so the
# chroot needs no copy of qemu).
binfmt() {
  local bm=/proc/sys/fs/binfmt_misc
  [ -e "$bm/register" ] || mount -t binfmt_misc binfmt_misc "$bm" \
    || die "cannot mount binfmt_misc at $bm (a container needs --privileged)"
  if [ ! -e "$bm/qemu-aarch64" ]; then
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -r "$conf" ] || die "$conf missing; run: apt-get install -y qemu-user-static"
    cat "$conf" > "$bm/register" || die "cannot register qemu-aarch64 in $bm/register"
  fi
  grep -q '^enabled' "$bm/qemu-aarch64" || die "binfmt qemu-aarch64 is disabled; run: echo 1 > $bm/qemu-aarch64"
}

mount_root() {
  mountpoint -q "$1/proc" || mount -t proc proc "$1/proc"
  mountpoint -q "$1/dev" || mount --bind /dev "$1/dev"
  # never /sys: onnxruntime segfaults under qemu when it can read the host's /sys topology
}

umount_root() {
  local r="$1"
  for m in dev proc; do mountpoint -q "$r/$m" && umount -l "$r/$m" || true; done
}

download_wheels() {
  mkdir -p "$WHEELS"
  log "downloading aarch64 wheels for python $PYVER into $WHEELS"
  "$PY" -m pip download -q --disable-pip-version-check -d "$WHEELS" --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version "$PYVER" \
    "${BOARD_PKGS[@]}" || die "pip download failed (is the package index reachable?)"
}

build_root() {
  if [ -f "$ROOT/.hwnas-ready" ] && [ "$(cat "$ROOT/.hwnas-ready")" = "$STAMP_TEXT" ]; then
    log "cached root $ROOT is ready"
    return
  fi
  local t0=$SECONDS tmp="$ROOT.partial"
  umount_root "$tmp"; rm -rf "$tmp"; mkdir -p "$(dirname "$ROOT")"
  download_wheels
  log "debootstrap --arch=arm64 $SUITE into $tmp (several minutes under qemu)"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,libgomp1 \
    "$SUITE" "$tmp" "$MIRROR" > "$CACHE/arm-debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/arm-debootstrap.log"
  log "debootstrap done in $((SECONDS - t0)) s; installing wheels (--no-index)"
  rm -rf "$tmp/wheels"; cp -r "$WHEELS" "$tmp/wheels"
  mount_root "$tmp"
  trap 'umount_root "'"$tmp"'"' EXIT
  chroot "$tmp" /usr/bin/python3 -m venv /opt/board
  chroot "$tmp" /opt/board/bin/python -m pip install -q --disable-pip-version-check --no-index --no-compile \
    --find-links /wheels "${BOARD_PKGS[@]}"
  chroot "$tmp" /opt/board/bin/python -c "import tvm, onnxruntime, numpy, platform; print('board:', \
    platform.machine(), 'tvm', tvm.__version__, 'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"
  umount_root "$tmp"; trap - EXIT
  rm -rf "$tmp/wheels" "$tmp/var/cache/apt/archives/"*.deb
  echo "$STAMP_TEXT" > "$tmp/.hwnas-ready"
  rm -rf "$ROOT"; mv "$tmp" "$ROOT"
  log "root ready in $((SECONDS - t0)) s: $ROOT"
}

# Start a process in its own session (process group), so `down` stops it with its children (rpc_server leaves a
# popen_worker behind when only its PID is killed).
spawn() {
  local name="$1"; shift
  setsid "$@" > "$RUN_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$name.pid"
}

stop_group() {
  local f="$RUN_DIR/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

registered() {  # how many servers with our key the tracker knows (profiler.measuring.rpc's client: every call times out)
  "$PY" - "$PORT" "$KEY" <<'EOF'
import sys
from profiler.measuring.rpc import RpcError, TrackerClient
try:
    print(len(TrackerClient(f"127.0.0.1:{sys.argv[1]}", timeout_s=5).servers(sys.argv[2])))
except RpcError:
    print(0)
EOF
}

is_up() { [ -f "$RUN_DIR/server.pid" ] && kill -0 "$(cat "$RUN_DIR/server.pid")" 2>/dev/null; }

up() {
  mkdir -p "$RUN_DIR"
  if is_up; then
    log "already up (rpc_server pid $(cat "$RUN_DIR/server.pid")); '$0 down' stops it"
    return
  fi
  binfmt; mount_root "$ROOT"
  if [ "${HWNAS_ARM_EXTERNAL_TRACKER:-0}" != 1 ]; then
    log "tracker on 127.0.0.1:$PORT"
    spawn tracker "$PY" -m tvm.exec.rpc_tracker --host 127.0.0.1 --port "$PORT" --port-end "$((PORT + 1))"
  fi
  # both start at once: the server's emulated `import tvm` takes longer than the tracker's start, and the
  # server retries its tracker connection
  log "rpc_server inside the aarch64 root, key $KEY, TVM_NUM_THREADS=$THREADS"
  spawn server chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root TVM_NUM_THREADS="$THREADS" \
    /opt/board/bin/python -m tvm.exec.rpc_server --host 127.0.0.1 --port 9390 --port-end 9490 \
    --tracker "127.0.0.1:$PORT" --key "$KEY"
  local t0=$SECONDS
  until [ "$(registered)" -ge 1 ]; do
    kill -0 "$(cat "$RUN_DIR/server.pid")" 2>/dev/null || { cat "$RUN_DIR/server.log" >&2; die "rpc_server exited"; }
    if [ -f "$RUN_DIR/tracker.pid" ] && ! kill -0 "$(cat "$RUN_DIR/tracker.pid")" 2>/dev/null; then
      tail -5 "$RUN_DIR/tracker.log" >&2; die "tracker exited (port $PORT in use? set HWNAS_ARM_PORT)"
    fi
    [ $((SECONDS - t0)) -lt 180 ] || { cat "$RUN_DIR/server.log" >&2; die "rpc_server not registered after 180 s"; }
    sleep 1
  done
  log "rpc_server registered as $KEY after $((SECONDS - t0)) s"
}

down() {
  stop_group server; stop_group tracker
  umount_root "$ROOT"
}

cmd="${1:-run}"; shift || true
case "$cmd" in
  root)
    need_tools; binfmt; t0=$SECONDS; build_root; log "setup took $((SECONDS - t0)) s" ;;
  up)
    need_tools; binfmt; build_root; up ;;
  down)
    down ;;
  shell)
    need_tools; binfmt; build_root; mount_root "$ROOT"; trap 'umount_root "$ROOT"' EXIT
    chroot "$ROOT" /bin/bash ;;
  run)
    need_tools; t0=$SECONDS; binfmt; build_root
    is_up || trap down EXIT  # stop only what this run started
    up
    log "setup (root + tracker + server) took $((SECONDS - t0)) s"
    # default: three ops (one with no kernel); the table goes to $RUN_DIR, not tables/ (emulated numbers)
    [ $# -gt 0 ] || set -- --space 'darts-3ops:C=8,cells=5' --only '*|1x8x32x32|*' --fresh --out "$RUN_DIR/rpi4-emu.csv"
    log "EMULATED board (qemu): timings prove the path, not performance"
    log "hwprof measure --device $KEY $*"
    "$HWPROF" measure --device "$KEY" "$@" ;;
  *)
    die "unknown command '$cmd'; use: root | run [hwprof measure args] | up | down | shell" ;;
esac
