"""One progress display for every long command: a live rich bar on a terminal, plain lines elsewhere.

On a terminal :func:`progress` returns a plain ``rich.progress.Progress``. When the console is not a terminal (a CI
log, ``| tee``, ``nohup``), a live bar draws nothing, so it returns a :class:`LineProgress` instead: the same API,
which prints one plain line per task when it starts, at most every ``every_s`` seconds while it runs, and once when
it finishes (or when the display stops early, e.g. on Ctrl-C) -- so a long job in a log still shows that it moves.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

EVERY_S = 15.0


class LineProgress(Progress):
    """A ``Progress`` that logs plain lines instead of redrawing a bar (see the module docstring)."""

    def __init__(self, *columns: Any, console: Console, every_s: float = EVERY_S, **kwargs: Any) -> None:
        kwargs.pop("transient", None)
        super().__init__(*columns, console=console, disable=True, **kwargs)
        self.every_s = float(every_s)
        self._logged: dict[TaskID, tuple[float, str]] = {}  # task -> (when, the line last printed)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def stop(self) -> None:
        for task_id in list(self._logged):
            self._log(task_id, force=True)
        super().stop()

    def line(self, task_id: TaskID) -> str:
        with self._lock:
            task = self._tasks[task_id]
            total = "?" if task.total is None else f"{task.total:g}"
            pct = f" ({100.0 * task.completed / task.total:.0f} %)" if task.total else ""
            # a finished task keeps its own time: task.elapsed runs on until the whole display stops
            elapsed = (task.finished_time if task.finished and task.finished_time is not None else task.elapsed) or 0.0
            fields = "  ".join(f"{k} {v}" for k, v in task.fields.items() if v not in ("", None, "-"))
        return f"{task.description}: {task.completed:g}/{total}{pct} {elapsed:.0f} s" + (f"  {fields}" if fields
                                                                                        else "")

    def _log(self, task_id: TaskID, force: bool = False) -> None:
        now = time.monotonic()
        text = self.line(task_id)
        with self._lock:
            task = self._tasks[task_id]
            finished = task.total is not None and task.completed >= task.total
        last = self._logged.get(task_id)
        if last is not None:
            if text == last[1]:
                return  # nothing new to say
            if not (force or finished) and now - last[0] < self.every_s:
                return
        self._logged[task_id] = (now, text)
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def progress(*columns: Any, console: Console, every_s: float = EVERY_S, **kwargs: Any) -> Progress:
    """A live bar on a terminal, a :class:`LineProgress` otherwise; use as ``with progress(...) as bar:``."""
    if console.is_terminal:
        return Progress(*columns, console=console, **kwargs)
    return LineProgress(*columns, console=console, every_s=every_s, **kwargs)
