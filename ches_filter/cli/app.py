"""The typer application: registers one module per command and maps errors to exit codes.

Exit codes (stable, for CI): 0 success; 1 a gate failed (``ches gate``); 2 bad input, options or
configuration (every ``ChesError``); 3 an internal error (a bug: please report it).
Heavy imports (torch, transformers, datasets) happen inside the commands, so ``ches --help`` is
instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from ches_filter.errors import ChesError

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3

stderr = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="ches",
    help="Find the preference pairs that cause likelihood displacement in DPO (CHES scores).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

F = TypeVar("F", bound=Callable[..., Any])


def debug_requested() -> bool:
    return "--debug" in sys.argv


def handle_errors(command: F) -> F:
    """Turn a ChesError into one clear line on stderr and exit 2; anything else into exit 3."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except ChesError as exc:
            if kwargs.get("debug") or debug_requested():
                raise
            stderr.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
            if exc.hint:
                stderr.print(f"[dim]hint:[/] {exc.hint}", markup=True, highlight=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            stderr.print("interrupted: no shard was left looking complete")
            raise typer.Exit(130) from None
        except Exception as exc:
            if kwargs.get("debug") or debug_requested():
                raise
            stderr.print(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "This is a bug in ches-filter. Re-run with --debug for the traceback.",
                markup=False,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _register() -> None:
    from . import filter_cmd, report_cmd, score_cmd

    app.command("score")(handle_errors(score_cmd.score_command))
    app.command("filter")(handle_errors(filter_cmd.filter_command))
    app.command("report")(handle_errors(report_cmd.report_command))


_register()


def main() -> None:
    app()
