"""onnxruntime on a remote board over SSH: a transport (paramiko) and a parser (a pure function).

Per connection the runner copies ``profiler/measuring/remote/board_timer.py`` and ``profiler/measuring/timing.py`` (the very loop the
local runners use) over SFTP into a private directory under ``ssh.workdir`` and starts one process there with one
fixed command, ``PYTHON board_timer.py --serve`` (each part quoted with ``shlex.quote``: an SSH command is always a
string that the board's login shell parses; nothing else from the config reaches a shell). For each chunk of
requests it uploads the ONNX files in one SFTP session and writes one JSON job line to that process's stdin; the
board answers one JSON line per model as it finishes, then ``{"done": N}``. Every line received before a dropped
connection is a kept result; the models not measured become error rows and the rerun measures only those. A
crashed board process costs the model in flight; the rest of its chunk runs in a fresh process.

Host keys are checked against the device's known_hosts file and nothing else: an unknown or changed key is an
error that prints the key's fingerprint and the command that adds it. Nothing is ever added automatically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import secrets
import shlex
import socket
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from profiler.errors import UserError
from profiler.fileio import Closing
from profiler.measuring.devices import Device
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners.base import MeasureRequest, MeasureResult, host_fingerprint

REMOTE_SCRIPT = Path(__file__).resolve().parent.parent / "remote" / "board_timer.py"
TIMING_SCRIPT = Path(__file__).resolve().parent.parent / "timing.py"
CHUNK_SIZE = 8  # models per upload + job: a dropped connection loses at most this many unfinished rows
JOB_VERSION = 1


class SshError(UserError, RuntimeError):
    """Cannot reach or use the board; the message is one line with the fix."""


# ---------------------------------------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class BoardOutput:
    """What the board printed: its description, one result per finished model (in order), whether it finished."""

    info: dict[str, Any] | None = None
    results: tuple[MeasureResult, ...] = ()
    done: bool = False
    junk: tuple[str, ...] = ()  # lines that were not hwprof's JSON (e.g. a library printing to stdout)


def parse_line(line: str) -> tuple[str, Any]:
    """One output line -> ("info", dict) | ("result", MeasureResult) | ("done", int) | ("junk", str)."""
    text = line.strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return ("junk", text)
    if not isinstance(obj, dict):
        return ("junk", text)
    if isinstance(obj.get("info"), dict):
        return ("info", obj["info"])
    if "done" in obj and isinstance(obj["done"], int):
        return ("done", obj["done"])
    key = obj.get("key")
    if not isinstance(key, str):
        return ("junk", text)
    if obj.get("error") is not None:
        return ("result", MeasureResult.failed(key, f"on the board: {obj['error']}"))
    samples = obj.get("samples_ms")
    calls = obj.get("calls_per_sample", 1)
    if (not isinstance(samples, list) or not samples or isinstance(calls, bool) or not isinstance(calls, int)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 for s in samples)):
        return ("result", MeasureResult.failed(key, f"board sent a malformed result: {text[:200]}"))
    return ("result", MeasureResult(key, tuple(float(s) for s in samples), calls))


def parse_board_output(text: str) -> BoardOutput:
    """The whole stdout of one board job -> BoardOutput (pure; tested on a saved sample)."""
    info, results, done, junk = None, [], False, []
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, value = parse_line(line)
        if kind == "info":
            info = value
        elif kind == "result":
            results.append(value)
        elif kind == "done":
            done = True
        else:
            junk.append(value)
    return BoardOutput(info, tuple(results), done, tuple(junk))


def make_job(models: list[dict[str, Any]], protocol: Protocol, threads: int, graph_optimization: str) -> dict:
    return {"version": JOB_VERSION, "threads": threads, "graph_optimization": graph_optimization,
            "protocol": protocol.to_dict(), "models": models}


def key_fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko public key (what ``ssh-keygen -lf`` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# ------------------------------------------------------------------------------------------------------- transport


class _Stream:
    """The board's ``board_timer.py --serve``: jobs go in on stdin, JSON lines come out; one per connection."""

    def __init__(self, chan: Any):
        self.chan = chan
        self.ended = False
        self.lost: str | None = None  # why the connection failed while reading, if it did
        self.exit_status: int | None = None
        self.stderr_tail = ""
        self._partial = b""

    def send(self, job: dict[str, Any]) -> None:
        self.chan.sendall((json.dumps(job) + "\n").encode())

    def _keep_stderr(self) -> None:
        err = b""
        while self.chan.recv_stderr_ready():
            err += self.chan.recv_stderr(65536)
        if err:
            self.stderr_tail = (self.stderr_tail + " " + " ".join(err.decode("utf-8", "replace").split()))[-300:]

    def _read_line(self) -> str | None:
        while b"\n" not in self._partial:
            try:
                self._keep_stderr()  # never let the board block on a full stderr window
                data = self.chan.recv(65536)
            except (socket.timeout, TimeoutError):
                self.lost = "no output from the board within command_timeout_s"
                return None
            except Exception as e:  # OSError, EOFError, paramiko.SSHException: the transport is gone
                self.lost = f"connection lost ({type(e).__name__}: {e})"
                return None
            if not data:
                return None
            self._partial += data
        line, self._partial = self._partial.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def _finish(self) -> None:
        self.ended = True
        if self.lost is None:
            deadline = time.monotonic() + 10.0
            while not self.chan.exit_status_ready() and time.monotonic() < deadline:
                transport = self.chan.get_transport()
                if transport is None or not transport.is_active():
                    break
                time.sleep(0.05)
            if self.chan.exit_status_ready():
                self.exit_status = self.chan.recv_exit_status()
            else:
                self.lost = "connection lost (the board's output ended without an exit status)"
        try:
            self._keep_stderr()
        except Exception:
            pass
        self.close()

    def read_event(self) -> tuple[str, Any] | None:
        """The next non-empty line, parsed; None once the process or the connection ended."""
        while not self.ended:
            line = self._read_line()
            if line is None:
                self._finish()
                return None
            if line.strip():
                return parse_line(line)
        return None

    def close(self) -> None:
        self.ended = True
        try:
            self.chan.close()  # the board's process reads EOF on stdin and exits
        except Exception:
            pass


@dataclass
class _Job:
    """One job on a stream: its events up to ``done``; ``drain`` buffers the rest (e.g. before a re-measure)."""

    stream: _Stream
    buffered: deque = field(default_factory=deque)
    finished: bool = False  # "done" was read, or the stream ended

    def _read(self) -> tuple[str, Any] | None:
        ev = self.stream.read_event()
        if ev is None or ev[0] == "done":
            self.finished = True
        return ev

    def next_event(self) -> tuple[str, Any] | None:
        if self.buffered:
            return self.buffered.popleft()
        return None if self.finished else self._read()

    def drain(self) -> None:
        while not self.finished:
            ev = self._read()
            if ev is not None:
                self.buffered.append(ev)


class _RejectUnknown:
    """paramiko MissingHostKeyPolicy: never trust an unknown key; say how to add it after checking it."""

    def __init__(self, known_hosts: Path, port: int):
        self.known_hosts, self.port = known_hosts, port

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        host = hostname.split("]")[0].lstrip("[") if hostname.startswith("[") else hostname
        raise SshError(
            f"host key of {hostname} ({key.get_name()} {key_fingerprint(key)}) is not in {self.known_hosts}; "
            f"check that fingerprint on the board (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then add it: "
            f"ssh-keyscan -p {self.port} {shlex.quote(host)} >> {shlex.quote(str(self.known_hosts))}")


def _expand(path: str) -> Path:
    return Path(path).expanduser()


def _fail_all(pending: Iterable[MeasureRequest], why: str) -> Iterator[MeasureResult]:
    """A failed result for each pending request, all with one reason."""
    for req in pending:
        yield MeasureResult.failed(req.key, why)


def _blame_in_flight(req: MeasureRequest, stream: _Stream) -> MeasureResult:
    """The failed result of the model a board process was measuring when it ended or skipped it."""
    if not stream.ended:
        how = "sent no result for this model"
    elif stream.exit_status == -1:  # sshd reported a signal (paramiko keeps no name for it)
        how = "was killed by a signal (a crash in a native library?)"
    else:
        how = f"ended with exit status {stream.exit_status}"
    return MeasureResult.failed(req.key, f"board process {how} while measuring this model"
                                         + (f": {stream.stderr_tail}" if stream.stderr_tail else ""))


class SshRunner(Closing):
    """onnxruntime on a board reached over SSH (paramiko). One connection, reused for the whole sweep."""

    name = "onnxruntime-ssh"

    def __init__(self, device: Device, chunk_size: int = CHUNK_SIZE, connect: bool = True):
        if device.ssh is None:
            raise SshError(f"device {device.name!r}: runtime onnxruntime-ssh needs an 'ssh:' section")
        try:
            import paramiko
        except ImportError:
            raise SshError("the SSH runner needs paramiko: pip install 'hwnas[ssh]' (or pip install paramiko)") \
                from None
        self.paramiko = paramiko
        self.device = device
        self.cfg = device.ssh
        self.chunk_size = max(1, int(chunk_size))
        self.where = f"{self.cfg.user}@{self.cfg.host}:{self.cfg.port}"
        self._client: Any = None
        self._sftp: Any = None
        self._dir: str | None = None  # this connection's private directory on the board
        self._stale_dirs: list[str] = []  # directories of dropped connections, removed on the next connection
        self._broken: str | None = None  # set when a (re)connect failed: every later request fails fast with it
        self._stream: _Stream | None = None  # board_timer.py --serve of this connection
        self.board_starts = 0  # board processes started (1 per connection unless one crashed)
        self._job: _Job | None = None
        self._n = 0
        self._info: dict[str, Any] | None = None
        if connect:  # fail here, with one line, rather than in the middle of a sweep
            self.connect()
            missing = [f"{m} ({v})" for m, v in self.board_info().get("versions", {}).items()
                       if str(v).startswith("missing")]
            if missing:
                self.close()
                raise SshError(f"{self.where}: the board's python {self.cfg.python} lacks {', '.join(missing)}; "
                               f"on the board: {self.cfg.python} -m pip install onnxruntime numpy")

    # -- connection ------------------------------------------------------------------------------------------------

    def _workdir(self) -> str:
        wd = self.cfg.workdir.strip() or "/tmp"
        if wd == "~":
            return "."
        return wd[2:] if wd.startswith("~/") else wd  # SFTP and the command both start in the login directory

    def _connect(self) -> None:
        pk = self.paramiko
        known = _expand(self.cfg.known_hosts)
        key_file = _expand(self.cfg.key_file)
        scan = f"ssh-keyscan -p {self.cfg.port} {shlex.quote(self.cfg.host)} >> {shlex.quote(str(known))}"
        if not known.is_file():
            raise SshError(f"{self.where}: known_hosts file {known} does not exist; after checking the board's "
                           f"host key fingerprint, create it with: {scan}")
        if not key_file.is_file():
            raise SshError(f"{self.where}: key_file {key_file} does not exist; create a key with: ssh-keygen -t "
                           f"ed25519 -f {shlex.quote(str(key_file))} and install it on the board with: ssh-copy-id "
                           f"-i {shlex.quote(str(key_file))}.pub -p {self.cfg.port} {self.cfg.user}@{self.cfg.host}")
        client = pk.SSHClient()
        client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_RejectUnknown(known, self.cfg.port))
        t = self.cfg.connect_timeout_s
        try:
            client.connect(self.cfg.host, port=self.cfg.port, username=self.cfg.user, key_filename=str(key_file),
                           timeout=t, banner_timeout=t, auth_timeout=t, allow_agent=False, look_for_keys=False)
        except SshError:
            client.close()
            raise
        except pk.BadHostKeyException as e:
            client.close()
            host = f"[{self.cfg.host}]:{self.cfg.port}" if self.cfg.port != 22 else self.cfg.host
            raise SshError(
                f"{self.where}: the host key ({e.key.get_name()} {key_fingerprint(e.key)}) does NOT match the one in "
                f"{known}; if the board was reinstalled, remove the old entry (ssh-keygen -R {shlex.quote(host)} -f "
                f"{shlex.quote(str(known))}) and add the new one after checking it: {scan}") from None
        except pk.PasswordRequiredException:
            client.close()
            raise SshError(f"{self.where}: key_file {key_file} is protected by a passphrase; hwprof does not ask for "
                           f"one: make a key without passphrase for the board (ssh-keygen -t ed25519 -N '' -f FILE) "
                           f"and install it with ssh-copy-id") from None
        except pk.AuthenticationException as e:
            client.close()
            raise SshError(f"{self.where}: authentication with {key_file} failed ({e}); install the key on the "
                           f"board: ssh-copy-id -i {shlex.quote(str(key_file))}.pub -p {self.cfg.port} "
                           f"{self.cfg.user}@{self.cfg.host}") from None
        except (OSError, EOFError, pk.SSHException) as e:
            client.close()
            raise SshError(f"{self.where}: cannot connect ({type(e).__name__}: {e}); check host/port in "
                           f"devices.yaml and that sshd runs on the board") from None
        try:
            sftp = client.open_sftp()
            d = posixpath.join(self._workdir(), "hwprof-" + secrets.token_hex(6))
            sftp.mkdir(d, mode=0o700)
            with sftp.open(posixpath.join(d, "owner.pid"), "w") as f:  # marks it ours for board_timer.sweep_stale
                f.write("hwprof-board 0\n")
            sftp.put(str(TIMING_SCRIPT), posixpath.join(d, "timing.py"))
            sftp.put(str(REMOTE_SCRIPT), posixpath.join(d, "board_timer.py"))
        except (OSError, EOFError, pk.SSHException) as e:
            client.close()
            raise SshError(f"{self.where}: cannot prepare a directory under workdir {self.cfg.workdir!r} over SFTP "
                           f"({type(e).__name__}: {e}); set ssh.workdir to a writable directory and check that "
                           f"the board's sshd offers the sftp subsystem") from None
        self._client, self._sftp, self._dir = client, sftp, d
        for old in self._stale_dirs:
            self._rmdir(old)
        self._stale_dirs.clear()

    def _disconnect(self, keep_dir: bool = True) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._dir and keep_dir:
            self._stale_dirs.append(self._dir)
        for obj in (self._sftp, self._client):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        self._client = self._sftp = self._dir = None

    def _alive(self) -> bool:
        t = self._client.get_transport() if self._client is not None else None
        return t is not None and t.is_active()

    def connect(self) -> None:
        """Connect (host key verified, key auth) and prepare the board directory; raises SshError with the fix."""
        self._ensure()

    def _ensure(self) -> None:
        if self._broken:
            raise SshError(self._broken)
        if self._alive():
            return
        if self._client is not None:
            self._disconnect()
        try:
            self._connect()
        except SshError as e:
            self._broken = str(e)
            raise

    def _rmdir(self, d: str) -> None:
        try:
            for entry in self._sftp.listdir_attr(d):
                path = posixpath.join(d, entry.filename)
                if stat.S_ISDIR(entry.st_mode or 0):
                    self._rmdir(path)
                else:
                    self._sftp.remove(path)
            self._sftp.rmdir(d)
        except Exception:
            pass  # best effort: the next board process sweeps a leftover hwprof-* (board_timer.sweep_stale)

    def _command(self) -> str:
        """The only command run on the board. SSH hands a string to the login shell: quote every part."""
        script = posixpath.join(self._dir or "", "board_timer.py")
        python = self.cfg.python
        if python.startswith("~/"):  # quoted, ~ would not expand; the command starts in the login directory
            python = "./" + python[2:]
        return " ".join(shlex.quote(p) for p in (python, script, "--serve"))

    def _open_stream(self) -> _Stream:
        """The board's timing process of this connection (started on first use, restarted after a crash)."""
        if self._stream is not None and not self._stream.ended:
            return self._stream
        chan = self._client.get_transport().open_session(timeout=self.cfg.connect_timeout_s)
        chan.settimeout(self.cfg.command_timeout_s)
        chan.exec_command(self._command())
        self.board_starts += 1
        stream = _Stream(chan)
        first = stream.read_event()
        while first is not None and first[0] == "junk":
            first = stream.read_event()
        if first is None or first[0] != "info":
            stream.close()
            if stream.lost:
                raise OSError(stream.lost)
            status = "" if stream.exit_status is None else f" (exit status {stream.exit_status})"
            raise SshError(f"{self.where}: the board's python {self.cfg.python!r} did not start board_timer.py"
                           f"{status}: {stream.stderr_tail or 'no output'}; set ssh.python in devices.yaml to a "
                           f"python3 with onnxruntime and numpy")
        self._info = first[1]
        self._stream = stream
        return stream

    # -- Runner protocol ------------------------------------------------------------------------------------------

    def board_info(self) -> dict[str, Any]:
        """The board's description (machine, CPU, python, onnxruntime/numpy versions)."""
        if self._info is None:
            self._ensure()
            try:
                self._open_stream()
            except (OSError, EOFError, self.paramiko.SSHException) as e:
                self._disconnect()
                raise SshError(f"{self.where}: connection lost while starting board_timer.py ({e})") from None
        return self._info  # type: ignore[return-value]

    def fingerprint(self) -> dict[str, Any]:
        info = dict(self.board_info())
        return {**info, "runtime": "onnxruntime-ssh", "provider": "cpu", "threads": self.device.threads,
                "graph_optimization": self.device.graph_optimization, "ssh": self.where,
                "measured_from": host_fingerprint()["hostname"]}

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
        if self._job is not None:  # a job is suspended in measure_many: read it to its end first (no overlap)
            self._job.drain()
        (result,) = self._chunk([request], protocol)  # run the generator to its end: the job reads its "done"
        return result

    def measure_many(self, requests: Iterable[MeasureRequest], protocol: Protocol) -> Iterator[MeasureResult]:
        chunk: list[MeasureRequest] = []
        for req in requests:
            chunk.append(req)
            if len(chunk) >= self.chunk_size:
                yield from self._chunk(chunk, protocol)
                chunk = []
        if chunk:
            yield from self._chunk(chunk, protocol)

    def _chunk(self, chunk: list[MeasureRequest], protocol: Protocol) -> Iterator[MeasureResult]:
        """Upload a chunk's models in one SFTP session, run them as one job, yield results in request order.

        Named steps, as TVM's RPCRunner has them: connect, upload and start the job, read its results, blame the
        model a dead board process was on (then run the rest again), remove the uploads."""
        pending = deque(chunk)
        uploaded: dict[str, str] = {}
        while pending:
            try:
                self._ensure()
            except SshError as e:
                yield from _fail_all(pending, f"ssh: {e}")
                return
            stream, error = self._start_job(pending, uploaded, protocol)
            if stream is None:
                yield from _fail_all(pending, error)
                return
            yield from self._read_job(stream, pending)
            if not pending:
                break
            if stream.lost or (stream.ended and not self._alive()):
                self._disconnect()
                why = stream.lost or "connection lost"
                yield from _fail_all(pending, f"ssh {self.where}: {why} before this model finished; rerun to "
                                              f"measure the missing rows")
                return
            # the board's process ended (e.g. a crash in a native library) or skipped a model: blame the model in
            # flight and run the rest again (a fresh process when it died)
            yield _blame_in_flight(pending.popleft(), stream)
        self._remove_uploads(uploaded)

    def _start_job(self, pending: deque[MeasureRequest], uploaded: dict[str, str],
                   protocol: Protocol) -> tuple[_Stream | None, str]:
        """Upload the pending models not on the board yet (recorded in ``uploaded``) and send the job:
        ``(stream, "")``, or ``(None, why)`` when every pending model fails with ``why``."""
        try:
            models = []
            for req in pending:
                if req.key not in uploaded:
                    name = posixpath.join(self._dir, f"m{self._n:05d}.onnx")
                    self._n += 1
                    self._sftp.put(str(req.onnx_path), name)
                    uploaded[req.key] = name
                models.append({"key": req.key, "file": posixpath.basename(uploaded[req.key]),
                               "input_shape": list(req.input_shape)})
            stream = self._open_stream()
            stream.send(make_job(models, protocol, self.device.threads, self.device.graph_optimization))
        except SshError as e:  # the board's python cannot run the script: no use retrying
            return None, f"ssh: {e}"
        except (OSError, EOFError, self.paramiko.SSHException) as e:
            self._disconnect()
            return None, (f"ssh {self.where}: connection lost while uploading ({type(e).__name__}: {e}); rerun to "
                          f"measure the rest")
        return stream, ""

    def _read_job(self, stream: _Stream, pending: deque[MeasureRequest]) -> Iterator[MeasureResult]:
        """Yield the job's results in request order (popping them from ``pending``) up to its "done"; a stream
        left mid-job is closed, its output being out of step."""
        job = _Job(stream)
        try:
            while pending:
                ev = job.next_event()
                if ev is None or ev[0] == "done":
                    break
                kind, value = ev
                if kind == "result" and value.key == pending[0].key:
                    pending.popleft()
                    self._job = job  # measure() during this yield drains the job first (no overlap)
                    try:
                        yield value
                    finally:
                        self._job = None
            job.drain()  # up to its "done", so the next job starts on a clean stream
        finally:
            if not job.finished:  # abandoned mid-job: this stream's output is out of step, drop it
                stream.close()

    def _remove_uploads(self, uploaded: dict[str, str]) -> None:
        """Delete the chunk's model files from the board (best effort: a lost connection leaves them)."""
        if self._alive():
            for path in list(uploaded.values()):
                try:
                    self._sftp.remove(path)
                except (OSError, EOFError, self.paramiko.SSHException):
                    pass

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._alive() and self._dir:
            self._rmdir(self._dir)
        self._disconnect(keep_dir=False)
