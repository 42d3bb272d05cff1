"""The one home for atomic file I/O and single-writer locks.

Every output goes through a temporary file in the target's folder and ``os.replace``: a reader sees the old file or
the new one, never half of one, and the temporary file is removed on every failure (full disk included). Files are
created with the user's umask (``tempfile.mkstemp`` would make them 0600).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from profiler.errors import InputError, LockedError, WriteError

_WRITE_FIX = {errno.ENOSPC: "free disk space or write elsewhere with --out",
              errno.EDQUOT: "free disk space or write elsewhere with --out",
              errno.EROFS: "the file system is read-only: write elsewhere with --out",
              errno.EACCES: "no permission to write there: write elsewhere with --out"}


def write_error(path: Path, e: OSError) -> WriteError:
    """The one-line error for an output that could not be written."""
    fix = _WRITE_FIX.get(e.errno, "check the folder and write elsewhere with --out")
    return WriteError(f"{path}: cannot write ({e.strerror or e}); nothing was written", fix)


def _new_temp(path: Path) -> tuple[int, Path]:
    """A fresh temporary file beside ``path`` (mode 0666 minus the umask, like any file the user creates)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: could not create a temporary file")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through (for writers that want a file name: savefig, torch.save).

    On success the temporary file replaces ``path``; on any failure it is removed and an ``OSError`` (disk full,
    read-only) becomes a one-line ``WriteError``.
    """
    path = Path(path)
    tmp: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_temp(path)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise write_error(path, e) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file; a non-UTF-8 byte is a one-line error naming the file and the byte's offset."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: byte {data[e.start:e.start + 1]!r} at offset {e.start} is not UTF-8 "
                         f"(this {what} must be UTF-8 text)", "re-save the file as UTF-8") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (metrics, curves) up to its first unreadable line: a writer killed mid-line
    leaves a torn last line, and nothing after a torn line is trusted. Lines that are not objects are passed over; a
    missing file has no records."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _no_duplicates(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise InputError(f"{where}: key {k!r} appears twice", "keep one of them")
            out[k] = v
        return out
    return hook


def loads_json(text: str, where: str) -> Any:
    """JSON that refuses duplicate keys and NaN/Infinity literals (one-line errors naming ``where``)."""
    def const(name: str) -> float:
        raise InputError(f"{where}: {name} is not a valid JSON number", "write a finite number")

    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(where), parse_constant=const)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})", "fix or remove the file") from None


def loads_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML would keep the last silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise InputError(f"{where}: line {key_node.start_mark.line + 1}: key {key!r} appears twice",
                                 "keep one of them (YAML would silently keep the last)")
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', e)}", "fix the file") from None


# ------------------------------------------------------------------------------------------------- locks

def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid else "another process"


def _flock(fd: int, wait_s: float) -> bool:
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


class FileLock:
    """An advisory lock (``flock`` on ``<target>.lock``, which records the holder's PID) held while writing ``target``.

    A second writer gets ``LockedError`` naming the holder's PID (after waiting ``wait_s``). The lock dies with its
    process, so a killed writer never leaves a stale lock; the small ``.lock`` file stays and is reused.
    """

    def __init__(self, target: str | Path, what: str = "file", wait_s: float = 0.0,
                 fix: str = "wait for it to finish, or stop that process"):
        self.target, self.what, self.wait_s, self.fix = Path(target), what, wait_s, fix
        self.lock = self.target.with_name(self.target.name + ".lock")
        self._fd: Optional[int] = None

    def acquire(self) -> "FileLock":
        try:
            self.lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_error(self.lock, e) from None
        if not _flock(fd, self.wait_s):
            holder = _holder(self.lock)
            os.close(fd)
            raise LockedError(f"{self.target}: this {self.what} is being written by {holder}", self.fix)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def locked_dir(path: str | Path, what: str = "run directory") -> Iterator[Path]:
    """Hold the single-writer lock of a directory (``<dir>/.writer.lock``) while writing into it.

    A directory this call created and that holds nothing but the lock when the block fails is removed again, so a
    command refused on bad input leaves no empty run directory behind.
    """
    path = Path(path)
    created = not path.exists()
    lock = FileLock(path / ".writer", what, fix="wait for that process to finish or stop it, or choose another --out")
    lock.target = path
    ok = False
    try:
        with lock:
            yield path
        ok = True
    finally:
        if created and not ok:
            try:
                (path / ".writer.lock").unlink(missing_ok=True)
                path.rmdir()
            except OSError:
                pass  # something else was written: keep it


def exclusive(target: str | Path, what: str = "file", wait_s: float = 0.0,
              fix: str = "wait for it to finish, or stop that process") -> FileLock:
    """``with exclusive(path, "table"):`` holds the single-writer lock of ``path`` (see ``FileLock``)."""
    return FileLock(target, what, wait_s, fix)


class Closing:
    """Mixin for a resource with ``close()``: ``with obj:`` gives ``obj`` and closes it at the block's end, on error
    too."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
