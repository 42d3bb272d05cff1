"""``--version`` for both CLIs: the installed package's version and the libraries that decide its numbers."""

from __future__ import annotations

from importlib import metadata

import typer


def _v(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def version_line(prog: str) -> str:
    libs = ", ".join(f"{d} {_v(d)}" for d in ("torch", "onnxruntime", "onnx", "apache-tvm"))
    return f"{prog} {_v('hwnas')} ({libs})"


def version_option(prog: str):
    """A typer ``--version`` option for the app callback: prints one line and exits 0."""

    def show(value: bool) -> None:
        if value:
            typer.echo(version_line(prog))
            raise typer.Exit(0)

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version and exit.")
