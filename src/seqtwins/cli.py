"""The command-line interface. Thin: each command parses, calls one library function, prints.

Every command turns a :class:`~seqtwins.errors.SeqtwinsError` into one line on stderr and
exit code 2 (no traceback).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from seqtwins.errors import SeqtwinsError

app = typer.Typer(
    name="seqtwins",
    help="Barlow Twins self-supervised user representations from behaviour logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` that reports :class:`SeqtwinsError` as one line and exit code 2."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except SeqtwinsError as e:
                raise fail(str(e)) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(code=130) from None

        app.command(*args, **kwargs)(wrapper)
        return fn

    return decorate


# --- commands ---------------------------------------------------------------------------


@command()
def inspect(
    directory: Annotated[Path, typer.Argument(help="A dataset directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Counts, sequence lengths, categories, splits and fields of a dataset directory."""
    from seqtwins.data.inspect import inspect_dataset, render_summary

    summary = inspect_dataset(directory)
    if as_json:
        import json

        typer.echo(json.dumps(summary, indent=2))
    else:
        render_summary(summary, console)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="seqtwins")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
