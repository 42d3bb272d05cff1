"""TVM RPC plumbing: start/stop a tracker and rpc_servers as subprocesses, and a tracker client that never hangs.

Each process runs in its own process group and is stopped by group: an rpc_server forks a session process and a
``popen_worker``; killing the server's PID alone leaves those running (and holding the port). Tests, the emulated
board script and users (``python -m profiler.measuring.rpc tracker|server``) all start processes through these helpers.

TVM's own ``TrackerSession.request(key)`` blocks forever when no server has registered ``key``, and its connect
retries for a minute. :class:`TrackerClient` talks the same JSON protocol over a socket with a timeout on every
call, checks the queue before asking, and turns every failure into a :class:`RpcError` whose message says what to
do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from profiler.errors import UserError

# Constants of TVM's RPC protocol (tvm/rpc/base.py); copied so that this module imports without TVM.
RPC_TRACKER_MAGIC = 0x2F271
_CODE_SUCCESS, _CODE_REQUEST, _CODE_SUMMARY = 0, 4, 6  # TrackerCode.SUCCESS, REQUEST, SUMMARY


class RpcError(UserError, RuntimeError):
    """A tracker/server problem; the message is one line that names the address and the fix."""


def parse_addr(addr: str, where: str = "tracker") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RpcError(f"{where} {addr!r} is not host:port (e.g. 127.0.0.1:9190)")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# tracker client with timeouts


def _send_json(sock: socket.socket, data: Any) -> None:
    payload = json.dumps(data).encode()
    sock.sendall(struct.pack("<i", len(payload)) + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return buf


def _recv_json(sock: socket.socket) -> Any:
    size = struct.unpack("<i", _recv_exact(sock, 4))[0]
    return json.loads(_recv_exact(sock, size).decode())


def _diagnose(addr: str) -> str:
    return f"check it with: python -m tvm.exec.query_rpc_tracker --host {addr.rpartition(':')[0]} " \
           f"--port {addr.rpartition(':')[2]}"


@dataclass
class TrackerClient:
    """One short-lived connection to a tracker per call; every socket operation has a timeout."""

    addr: str
    timeout_s: float = 10.0

    def _connect(self, timeout_s: float) -> socket.socket:
        host, port = parse_addr(self.addr)
        try:
            sock = socket.create_connection((host, port), timeout=min(timeout_s, self.timeout_s))
        except OSError as e:
            raise RpcError(f"tracker {self.addr}: cannot connect ({e.strerror or e}); start one with "
                           f"'python -m profiler.measuring.rpc tracker --port {port}' (tvm.exec.rpc_tracker on 127.0.0.1; "
                           f"a remote board reaches it through an SSH tunnel, see README) or fix rpc.tracker in "
                           f"devices.yaml") from None
        try:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            if struct.unpack("<i", _recv_exact(sock, 4))[0] != RPC_TRACKER_MAGIC:
                raise RpcError(f"{self.addr} answered, but is not a TVM RPC tracker; fix rpc.tracker in devices.yaml")
        except (OSError, struct.error) as e:
            sock.close()
            raise RpcError(f"tracker {self.addr}: handshake failed ({e}); {_diagnose(self.addr)}") from None
        except RpcError:
            sock.close()
            raise
        return sock

    def _ask(self, message: list, timeout_s: float, failed: Callable[[Exception], str],
             unexpected: Callable[[Any], str], timed_out: str | None = None) -> Any:
        """One call on a fresh connection: send ``message``, return the payload of the tracker's SUCCESS reply.
        The :class:`RpcError` lines: ``failed(error)``, ``unexpected(reply)``, and ``timed_out`` when given and the
        tracker kept silent for ``timeout_s`` (else a timeout is ``failed`` too)."""
        sock = self._connect(timeout_s)
        try:
            _send_json(sock, message)
            value = _recv_json(sock)
        except (OSError, ValueError, struct.error) as e:
            why = timed_out if timed_out is not None and isinstance(e, socket.timeout) else failed(e)
            raise RpcError(f"tracker {self.addr}: {why}; {_diagnose(self.addr)}") from None
        finally:
            sock.close()
        if not isinstance(value, list) or value[0] != _CODE_SUCCESS:
            raise RpcError(f"tracker {self.addr}: {unexpected(value)}")
        return value[1]

    def summary(self) -> dict[str, Any]:
        """``{"queue_info": {key: {"free", "pending"}}, "server_info": [{"key": "server:KEY", "addr": ...}]}``."""
        return self._ask([_CODE_SUMMARY], self.timeout_s, lambda e: f"no summary ({e})",
                         lambda value: f"unexpected summary reply {value!r}")

    def servers(self, key: str | None = None) -> list[dict[str, Any]]:
        """Registered servers (optionally only those of ``key``)."""
        info = self.summary().get("server_info", [])
        return [s for s in info if key is None or s.get("key") == f"server:{key}"]

    def free(self, key: str) -> int:
        return int(self.summary().get("queue_info", {}).get(key, {}).get("free", 0))

    def wait_served(self, key: str, timeout_s: float, threads: int | None = None) -> None:
        """Return once some rpc_server has registered ``key``; :class:`RpcError` (with the board's command) after
        ``timeout_s``. Takes no server from the queue."""
        deadline = time.monotonic() + timeout_s
        while True:
            summary = self.summary()
            queue = summary.get("queue_info", {})
            served = sorted({s["key"].split(":", 1)[1] for s in summary.get("server_info", [])
                             if str(s.get("key", "")).startswith("server:")})
            if key in served or queue.get(key, {}).get("free", 0) > 0:
                return
            if time.monotonic() >= deadline:
                raise RpcError(f"tracker {self.addr}: no rpc_server registered with key {key!r} (served keys: "
                               f"{', '.join(served) or 'none'}); start one on the board: "
                               f"{board_server_command(self.addr, key, threads)}")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def request(self, key: str, timeout_s: float, threads: int | None = None) -> tuple[str, int, str]:
        """Ask for a free server of ``key``: ``(host, port, matchkey)``. Never blocks beyond ``timeout_s``.

        The queue is checked first, so a key nobody serves fails at once with the list of keys that are served.
        """
        deadline = time.monotonic() + timeout_s
        self.wait_served(key, timeout_s, threads)
        left = max(0.5, deadline - time.monotonic())
        host, port, matchkey = self._ask(
            [_CODE_REQUEST, key, "", 1], left, lambda e: f"request for {key!r} failed ({e})",
            lambda value: f"unexpected reply {value!r} to a request for {key!r}",
            timed_out=f"no free rpc_server with key {key!r} within {timeout_s:g} s (all busy or dead; raise "
                      f"rpc.request_timeout_s or free a server)")
        return str(host), int(port), str(matchkey)


def _this_machine(host: str) -> bool:
    """A tracker address that means this machine itself (loopback, or the unspecified address)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def board_server_command(tracker: str, key: str, threads: int | None = None) -> str:
    """The command that registers a board's rpc_server for ``key``, as it must be typed *on the board*.

    A loopback tracker stays on loopback: the board reaches it through an SSH tunnel from this machine (TVM RPC has
    no authentication, so a tracker on 0.0.0.0 lets anyone run code or feed fake timings). TVM runs one thread
    unless ``TVM_NUM_THREADS`` is set, so the device's thread count goes in.
    """
    host, port = parse_addr(tracker)
    env = f"TVM_NUM_THREADS={threads} " if threads else ""
    local = _this_machine(host)
    cmd = f"{env}python -m tvm.exec.rpc_server --tracker {'127.0.0.1' if local else host}:{port} --key {key}"
    if local:
        cmd += (f" (the board reaches this machine's tracker through an SSH tunnel opened here: ssh -N -R "
                f"{port}:127.0.0.1:{port} USER@BOARD; keep the tracker on 127.0.0.1, see README)")
    return cmd


def preflight(tracker: str, key: str, request_timeout_s: float, threads: int | None = None) -> None:
    """Fail fast, in one line, before a sweep: the tracker answers and a server has registered ``key``."""
    TrackerClient(tracker, timeout_s=min(10.0, request_timeout_s)).wait_served(key, request_timeout_s, threads)


def connect_session(host: str, port: int, key: str, session_timeout_s: float = 0.0) -> Any:
    """An RPC session to one server (``key`` is the server key or a tracker's matchkey)."""
    from tvm import rpc

    try:
        return rpc.connect(host, port, key=key, session_timeout=int(session_timeout_s) if session_timeout_s else 0)
    except Exception as e:  # TVM raises plain RuntimeError/TVMError with multi-line text
        msg = " ".join(str(e).split())[:300]
        raise RpcError(f"rpc_server {host}:{port}: cannot open a session ({msg}); is it running?") from None


def request_board(tracker: str, key: str, request_timeout_s: float, session_timeout_s: float = 0.0,
                  threads: int | None = None) -> tuple[Any, str]:
    """A session from ``tracker`` for ``key`` and the ``host:port`` of the rpc_server (the board) it runs on, or
    :class:`RpcError` within about ``request_timeout_s``. While the session lasts, the tracker hands that server to
    nobody else: each of several sessions under one key gets its own board."""
    host, port, matchkey = TrackerClient(tracker, timeout_s=min(10.0, request_timeout_s)).request(
        key, request_timeout_s, threads)
    return connect_session(host, port, matchkey, session_timeout_s), f"{host}:{port}"


def request_session(tracker: str, key: str, request_timeout_s: float, session_timeout_s: float = 0.0,
                    threads: int | None = None) -> Any:
    """A session from ``tracker`` for ``key``, or :class:`RpcError` within about ``request_timeout_s``."""
    return request_board(tracker, key, request_timeout_s, session_timeout_s, threads)[0]


# ---------------------------------------------------------------------------------------------------------------
# processes


@dataclass
class RpcProcess:
    """A tracker or rpc_server started by :func:`start_tracker` / :func:`start_server` (own process group)."""

    kind: str  # "tracker" | "server"
    host: str
    port: int
    proc: subprocess.Popen
    log: Path
    key: str = ""
    tracker: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole group at once (what a crash or a pulled power cord looks like)."""
        stop_group(self.proc, grace_s=0.0)

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
        stop_group(self.proc, grace_s)

    def __enter__(self) -> "RpcProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """Stop ``proc`` and every process of its group (it was started with ``start_new_session=True``)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid  # leader gone; its group may still hold children
    if pgid == os.getpgrp():  # never signal our own group
        proc.kill()
        proc.wait()
        return
    for sig in ((signal.SIGTERM, signal.SIGKILL) if grace_s > 0 else (signal.SIGKILL,)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s if sig == signal.SIGTERM else 10)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # the leader exited; children (session, popen_worker) may ignore SIGTERM: make sure
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        break
    deadline = time.monotonic() + 10.0
    while group_members(pgid) and time.monotonic() < deadline:  # orphans die asynchronously
        time.sleep(0.05)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


# Leader of the process group of a server that must not outlive the process that started it (the private server
# of a local TVM device): Linux sends the leader SIGTERM when that parent dies, even by SIGKILL, and the leader then
# SIGKILLs its whole group (rpc_server, its session process and popen_worker).
_DIE_WITH_PARENT = ("import ctypes, os, signal, subprocess, sys\n"
                    "def die(*_):\n"
                    "    os.killpg(0, signal.SIGKILL)\n"
                    "signal.signal(signal.SIGTERM, die)\n"
                    "if sys.platform.startswith('linux'):\n"
                    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
                    "if os.getppid() != int(sys.argv[1]):\n"
                    "    die()  # the parent is already gone\n"
                    "sys.exit(subprocess.Popen(sys.argv[2:]).wait())\n")


def _spawn(argv: Sequence[str], log: Path, env: dict[str, str], die_with_parent: bool = False) -> subprocess.Popen:
    if die_with_parent:
        argv = [argv[0], "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    with open(log, "ab") as f:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _wait(proc_obj: RpcProcess, ready: Any, timeout_s: float, what: str) -> RpcProcess:
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not proc_obj.alive():
                raise RpcError(f"{what} exited with code {proc_obj.proc.returncode}: {proc_obj.log_tail(5)}")
            try:
                if ready():
                    return proc_obj
            except (OSError, RpcError):
                pass
            time.sleep(0.2)
    except BaseException:  # interrupted while waiting: leave nothing running
        proc_obj.stop()
        raise
    proc_obj.stop()
    raise RpcError(f"{what} not ready after {timeout_s:g} s; log {proc_obj.log}: {proc_obj.log_tail(5)}")


def _log_path(name: str, log_dir: Path | None) -> Path:
    d = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="hwprof-rpc-"))
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.log"


def start_tracker(host: str = "127.0.0.1", port: int | None = None, *, timeout_s: float = 60.0,
                  log_dir: Path | None = None, python: str = sys.executable) -> RpcProcess:
    """Start ``python -m tvm.exec.rpc_tracker`` bound to exactly ``host:port`` (a free port when None)."""
    port = port or free_port(host)
    log = _log_path(f"tracker-{port}", log_dir)
    argv = [python, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port), "--port-end", str(port + 1)]
    p = RpcProcess("tracker", host, port, _spawn(argv, log, dict(os.environ)), log)
    client = TrackerClient(p.addr, timeout_s=2.0)
    return _wait(p, lambda: isinstance(client.summary(), dict), timeout_s, f"tracker {p.addr}")


def start_server(key: str, tracker: str | None = None, host: str = "127.0.0.1", port: int | None = None, *,
                 threads: int | None = None, timeout_s: float = 60.0, log_dir: Path | None = None,
                 python: str = sys.executable, extra_env: dict[str, str] | None = None,
                 die_with_parent: bool = False) -> RpcProcess:
    """Start ``python -m tvm.exec.rpc_server`` with ``key`` (registered at ``tracker`` when given).

    ``threads`` sets ``TVM_NUM_THREADS`` of the server (TVM otherwise picks its own count; the session process
    inherits it). ``die_with_parent`` (Linux) kills the server when this process dies, even by SIGKILL.
    Returns once the server is registered at the tracker (or accepts connections without one).
    """
    port = port or free_port(host)
    log = _log_path(f"server-{key}-{port}", log_dir)
    env = dict(os.environ)
    env.update(extra_env or {})
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    argv = [python, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port), "--port-end", str(port + 1),
            "--key", key]
    if tracker:
        parse_addr(tracker)
        argv += ["--tracker", tracker]
    p = RpcProcess("server", host, port, _spawn(argv, log, env, die_with_parent), log, key=key, tracker=tracker or "",
                   extra={"threads": threads})
    if tracker:
        client = TrackerClient(tracker, timeout_s=2.0)
        ready = lambda: any(s.get("addr", [None, None])[1] == port for s in client.servers(key))  # noqa: E731
    else:
        def ready() -> bool:
            with socket.create_connection((host, port), timeout=1.0):
                return True
    return _wait(p, ready, timeout_s, f"rpc_server {host}:{port} (key {key})")


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m profiler.measuring.rpc tracker|server ...``: run one in the foreground until Ctrl-C (stops its group)."""
    ap = argparse.ArgumentParser(prog="python -m profiler.measuring.rpc", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tracker", help="start a TVM RPC tracker")
    t.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; TVM RPC has no "
                   "authentication: reach a remote board through an SSH tunnel instead of 0.0.0.0)")
    t.add_argument("--port", type=int, default=9190)
    s = sub.add_parser("server", help="start a TVM rpc_server registered at a tracker")
    s.add_argument("--tracker", required=True, help="host:port of the tracker")
    s.add_argument("--key", required=True, help="device key (devices.yaml rpc.key)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; see tracker --host)")
    s.add_argument("--port", type=int, default=9090)
    s.add_argument("--threads", type=int, default=None, help="TVM_NUM_THREADS of the server")
    a = ap.parse_args(argv)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)  # also when started in the background (where SIGINT is ignored)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        if a.cmd == "tracker":
            p = start_tracker(a.host, a.port, log_dir=Path.cwd())
        else:
            p = start_server(a.key, a.tracker, a.host, a.port, threads=a.threads, log_dir=Path.cwd())
    except KeyboardInterrupt:
        return 130
    except RpcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{p.kind} running at {p.addr} (log {p.log}); Ctrl-C or SIGTERM stops it", flush=True)
    try:
        p.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        p.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
