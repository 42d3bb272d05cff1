"""Progress off a terminal: plain lines at start, throttled while running, once at the end."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import BarColumn, TextColumn

from profiler.progress import LineProgress, progress


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=200), buf


def test_terminal_gets_a_live_bar_and_a_pipe_gets_lines():
    con, _ = _console(True)
    assert type(progress(BarColumn(), console=con)).__name__ == "Progress"
    con, _ = _console(False)
    assert isinstance(progress(BarColumn(), console=con), LineProgress)


def test_lines_are_throttled_and_the_end_is_always_printed():
    con, buf = _console(False)
    with progress(TextColumn("{task.description}"), console=con, every_s=3600) as bar:
        t = bar.add_task("measure cpu", total=5, op="")
        for i in range(1, 5):
            bar.update(t, completed=i, op=f"k3_e{i}")
        bar.update(t, completed=5, op="done")
    lines = buf.getvalue().splitlines()
    # the first update is printed, the next three fall inside the interval, the finishing one is printed
    assert lines == ["measure cpu: 1/5 (20 %) 0 s  op k3_e1", "measure cpu: 5/5 (100 %) 0 s  op done"]


def test_every_change_printed_with_no_interval_and_the_state_at_an_early_stop():
    con, buf = _console(False)
    with progress(TextColumn("{task.description}"), console=con, every_s=0) as bar:
        t = bar.add_task("search", total=None, loss="-")
        bar.update(t, completed=1, loss="2.3")
        bar.update(t, completed=1, loss="2.3")  # nothing new: not repeated
        bar.advance(t)
    assert buf.getvalue().splitlines() == ["search: 1/? 0 s  loss 2.3", "search: 2/? 0 s  loss 2.3"]

    con, buf = _console(False)
    try:
        with progress(TextColumn("{task.description}"), console=con, every_s=3600) as bar:
            t = bar.add_task("verify", total=10)
            for i in range(1, 4):
                bar.update(t, completed=i)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert buf.getvalue().splitlines() == ["verify: 1/10 (10 %) 0 s", "verify: 3/10 (30 %) 0 s"]


def test_a_finished_stage_keeps_its_own_time():
    """Stage-end lines show the stage's time, not the time until the whole display stops."""
    now = [0.0]
    con, buf = _console(False)
    with progress(TextColumn("{task.description}"), console=con, every_s=3600, get_time=lambda: now[0]) as bar:
        a = bar.add_task("table", total=2)
        now[0] = 5.0
        bar.update(a, completed=2)
        b = bar.add_task("search", total=3)
        now[0] = 100.0
        bar.update(b, completed=3)
        now[0] = 400.0
    lines = buf.getvalue().splitlines()
    assert "table: 2/2 (100 %) 5 s" in lines and "search: 3/3 (100 %) 95 s" in lines, lines
    assert not any("400 s" in ln or "395 s" in ln for ln in lines), lines
