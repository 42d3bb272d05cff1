"""A device farm: one sweep spread over several boards of one class, one worker thread (and session) per board.

A farm is several runners of one device entry: ``rpc.boards: N`` asks the tracker for N sessions under the
device's key (each runner holds its own, so the tracker hands each a different rpc_server; ``0`` = as many as the
tracker lists). Workers take keys from one shared queue (a chunk at a time when the protocol interleaves rounds,
else one), measure them with the ordinary sweep steps of :mod:`profiler.measuring.measure` and append each finished row,
tagged with the board that measured it (the server's address, or the worker's label).

A board that is lost (its session dies or cannot be opened) writes nothing for the keys it held: they go back to
the queue for the other boards, and that worker stops. When no board is left, the keys still queued become error
rows with the last loss, so the command reports it and a rerun (resume) measures exactly what is missing.
Validity is judged per board (its own drift reference and noisy share) and merged: boards differ in speed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

from profiler.errors import UserError
from profiler.fileio import Closing
from profiler.latency.tables import Row, TableWriter
from profiler.measuring.export import ExportResult, export_key
from profiler.measuring.measure import SweepProgress, _load, _sweep_interleaved, _sweep_sequential, sweep_validity
from profiler.measuring.protocol import INVALID, VALID, Protocol, Validity
from profiler.measuring.runners import MeasureRequest, MeasureResult, Runner

# error rows that mean the board (its TVM session, its SSH connection) is gone, not that the key failed on it
LOST_PREFIXES = ("rpc session lost", "no rpc session", "ssh ", "ssh:")


class FarmError(UserError, ValueError):
    """A farm that cannot be formed (more boards asked for than the tracker serves, a device without a tracker)."""


def board_lost(row: Row) -> bool:
    return row.status == "error" and row.error.startswith(LOST_PREFIXES)


@dataclass
class Board:
    label: str  # a pool member's name, or "rpi4#2" (shown when the runner does not say which board it reached)
    runner: Runner
    fixed: bool = False  # rows record the label (a pool member), not the server the runner reports


@dataclass
class Farm(Closing):
    """Several boards of one device; to the rest of hwprof a runner (the fingerprint is the first board's)."""

    boards: list[Board]
    name: str = "farm"
    lost: dict[str, str] = field(default_factory=dict)  # board -> why, filled by the last sweep

    def fingerprint(self) -> dict[str, Any]:
        return self.boards[0].runner.fingerprint()

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
        return self.boards[0].runner.measure(request, protocol)

    def measure_many(self, requests: Iterable[MeasureRequest], protocol: Protocol) -> Iterator[MeasureResult]:
        return self.boards[0].runner.measure_many(requests, protocol)

    def close(self) -> None:
        for b in self.boards:
            b.runner.close()


class _Queue:
    """The keys not yet measured; a worker that finds it empty waits while others still hold keys (they may come
    back from a lost board)."""

    def __init__(self, keys: list[str]):
        self._keys = deque(keys)
        self._busy = 0
        self.cond = threading.Condition()
        self.stopped = False

    def take(self, n: int) -> list[str]:
        with self.cond:
            while not self._keys and self._busy and not self.stopped:
                self.cond.wait()
            if self.stopped or not self._keys:
                return []
            self._busy += 1
            return [self._keys.popleft() for _ in range(min(n, len(self._keys)))]

    def give_back(self, key: str) -> None:
        with self.cond:
            self._keys.appendleft(key)

    def done(self) -> None:
        with self.cond:
            self._busy -= 1
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def drain(self) -> list[str]:
        with self.cond:
            left, self._keys = list(self._keys), deque()
            self.cond.notify_all()
            return left


class _FarmSweep:
    def __init__(self, keys: list[str], farm: Farm, protocol: Protocol, writer: TableWriter,
                 notify: Callable[[SweepProgress], None], exporter: Callable[[str], ExportResult]):
        self.farm, self.protocol, self.writer, self.notify = farm, protocol, writer, notify
        self.queue = _Queue(keys)
        self.prog = SweepProgress(total=len(keys), load_start=_load())
        self.per_board: dict[str, SweepProgress] = {b.label: SweepProgress(total=0) for b in farm.boards}
        self.lock = threading.Lock()  # table, shared progress, alive count
        self._export_lock = threading.Lock()  # torch export is not thread-safe; exports are cached and cheap
        self._exporter = exporter
        self.alive = len(farm.boards)
        self.failure: BaseException | None = None  # raised by a worker (not a measurement): re-raised at the end

    def export(self, key: str) -> ExportResult:
        with self._export_lock:
            return self._exporter(key)

    def write(self, row: Row, own: SweepProgress | None) -> None:
        with self.lock:
            self.writer.append(row)
            for p in (self.prog, own) if own is not None else (self.prog,):
                p.rows.append(row)
            self.prog.done += 1
            self.prog.noisy += row.status == "noisy"
            self.prog.errors += row.status == "error"
            self.notify(self.prog)

    def work(self, board: Board) -> None:
        """One board's loop: take keys, sweep them, write rows; stop at the first sign the board is gone."""
        own = self.per_board[board.label]
        lost: list[str] = []

        def finish(row: Row) -> None:
            if lost or board_lost(row):
                lost.append(row.error)
                self.queue.give_back(row.key)  # not measured: another board takes it
                return
            self.write(replace(row, board=board.label if board.fixed else row.board or board.label), own)

        def note(p: SweepProgress) -> None:
            self.prog.current = p.current
            self.prog.remeasured = sum(q.remeasured for q in self.per_board.values())

        step = max(1, self.protocol.chunk) if self.protocol.interleaved else 1
        run = _sweep_interleaved if self.protocol.interleaved else _sweep_sequential
        try:
            while not lost:
                keys = self.queue.take(step)
                if not keys:
                    break
                try:
                    run(keys, board.runner, self.protocol, own, finish, note, self.export)
                finally:
                    self.queue.done()
        except BaseException as e:  # noqa: BLE001 - e.g. the table cannot be appended: the command fails with it
            self.failure = self.failure or e
            self.queue.stop()
        finally:
            self.retire(board, own, lost[0] if lost else None)

    def retire(self, board: Board, own: SweepProgress, why: str | None) -> None:
        """A worker ends; the last one turns keys nobody is left to measure into error rows (the last loss)."""
        name = next((r.board for r in reversed(own.rows) if r.board), board.label)
        with self.lock:
            self.alive -= 1
            if why is not None:
                self.farm.lost[name] = why
            last = self.alive == 0
        if last and self.failure is None and not self.queue.stopped:
            why = why or next(reversed(self.farm.lost.values()), "no board left to measure it")
            for key in self.queue.drain():
                self.write(Row(key, status="error", error=why, board=name), None)


def farm_sweep(keys: Iterable[str], farm: Farm, protocol: Protocol, writer: TableWriter,
               on_progress: Callable[[SweepProgress], None] | None = None,
               exporter: Callable[[str], ExportResult] = export_key) -> tuple[SweepProgress, Validity]:
    """Measure ``keys`` on every board of ``farm`` at once; the rows of the sweep and its (per-board) verdict."""
    farm.lost.clear()
    fs = _FarmSweep(list(keys), farm, protocol, writer, on_progress or (lambda p: None), exporter)
    threads = [threading.Thread(target=fs.work, args=(b,), name=f"hwprof-board-{b.label}", daemon=True)
               for b in farm.boards]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)  # a short join keeps Ctrl-C deliverable to this thread
    except BaseException:
        fs.queue.stop()  # Ctrl-C: workers take no new key (the caller's close() ends the runners)
        raise
    if fs.failure is not None:
        raise fs.failure
    fs.prog.load_end = _load()
    fs.prog.remeasured = sum(p.remeasured for p in fs.per_board.values())
    return fs.prog, farm_validity(fs.per_board, protocol, fs.prog)


def farm_validity(per_board: dict[str, SweepProgress], protocol: Protocol, prog: SweepProgress) -> Validity:
    """Each board judged on its own rows and reference op, merged: INVALID when any board is."""
    verdicts = {}
    for label, p in per_board.items():
        if p.rows:
            p.load_start, p.load_end = prog.load_start, prog.load_end
            verdicts[label] = sweep_validity(p, protocol)
    reasons = tuple(f"board {label}: {r}" for label, v in verdicts.items() for r in v.reasons)
    drifts = [v.details["reference_drift"] for v in verdicts.values() if v.details.get("reference_drift") is not None]
    usable = [r for r in prog.rows if r.status != "error"]
    details = {"entries": len(usable), "noisy": sum(r.status == "noisy" for r in usable), "errors": prog.errors,
               "reference_drift": max(drifts) if drifts else None,
               "boards": {label: v.details for label, v in verdicts.items()}}
    return Validity(INVALID if reasons else VALID, reasons, details)


def farm_size(device: Any, boards: int | None = None) -> int:
    """How many boards a sweep on ``device`` uses: ``boards`` (``--boards``), else every member of a pool or the
    device's ``rpc.boards`` (0 = every rpc_server the tracker lists under the key). One line (:class:`FarmError`)
    when that many are not there."""
    from profiler.measuring.rpc import TrackerClient, board_server_command

    if device.pool:
        if boards is not None and boards > len(device.pool):
            raise FarmError(f"--boards {boards}: pool {device.name!r} has {len(device.pool)} members "
                            f"({', '.join(m.name for m in device.pool)}); ask for at most that many (0 = all)")
        return boards or len(device.pool)
    if device.rpc is None:
        if boards not in (None, 1):
            raise FarmError(f"--boards {boards}: device {device.name!r} has no rpc: tracker; a farm spreads the keys "
                            f"over the rpc_servers of one key (set rpc: {{tracker, key, boards}} in devices.yaml) "
                            f"or over the members of a pool: entry")
        return 1
    rpc = device.rpc
    want = rpc.boards if boards is None else boards
    if want == 1:
        return 1
    listed = len(TrackerClient(rpc.tracker, timeout_s=min(10.0, rpc.request_timeout_s)).servers(rpc.key))
    if want == 0:
        return max(1, listed)
    if want > listed:
        where = "--boards" if boards is not None else f"device {device.name!r} rpc.boards"
        raise FarmError(f"{where} is {want}, but tracker {rpc.tracker} lists {listed} rpc_server(s) with key "
                        f"{rpc.key!r}", fix=f"start {want - listed} more, one per board "
                        f"({board_server_command(rpc.tracker, rpc.key, device.threads or None)}), or ask for "
                        f"{listed} (0 = every listed server)")
    return want


def make_farm(device: Any, n: int, make_runner: Callable[[Any], Runner], first: Runner | None = None) -> Any:
    """``n`` runners of ``device`` as a :class:`Farm`: the first ``n`` members of a pool (rows record the member's
    name), or ``n`` sessions under its key (a plain runner when ``n`` is 1). ``first`` is reused."""
    if device.pool:  # each member under the pool's name: one table, one tuning cache
        members = [(m.name, replace(m, name=device.name)) for m in device.pool[:n]]
    else:
        members = [(f"{device.name}#{i + 1}", device) for i in range(max(1, n))]
    runners = [first] if first is not None else []
    try:
        for _, member in members[len(runners):]:
            runners.append(make_runner(member))
    except BaseException:
        for r in runners:
            r.close()
        raise
    if not device.pool and n <= 1:
        return runners[0]
    boards = [Board(label, r, fixed=bool(device.pool)) for (label, _), r in zip(members, runners)]
    return Farm(boards, name=f"{device.name} farm")
