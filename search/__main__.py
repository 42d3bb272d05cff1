"""``python -m search ...`` is ``hwnas ...`` (the multi-process launcher re-invokes it once per rank)."""

from .cli import app

app(prog_name="hwnas")
