"""The Typer app both CLIs use: a command that raises ``UserError`` prints one line and exits 2.

Only ``UserError`` is caught; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from profiler.errors import UserError


def print_error(e: UserError | str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)


class UserErrorApp(typer.Typer):
    """``typer.Typer`` whose commands turn a ``UserError`` into one line on stderr and exit code 2."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(f)
            def wrapper(*a: Any, **kw: Any) -> Any:
                try:
                    return f(*a, **kw)
                except UserError as e:
                    print_error(e)
                    raise typer.Exit(2) from None

            register(wrapper)
            return f

        return decorator
