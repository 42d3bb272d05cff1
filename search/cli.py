"""hwnas: latency-aware differentiable NAS. Parses arguments, calls the library."""

from __future__ import annotations

import typer

app = typer.Typer(help="hwnas: hardware-aware differentiable NAS driven by hwprof latency tables.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _main() -> None:
    """Search, derive, retrain, export and ship architectures."""
