"""One error boundary for every command: a failure is one line on stderr, never a traceback.

``@error_boundary("clit-infer")`` under ``@click.command`` turns any exception that escapes a
command into ``clit-infer: error: <one line>`` and exit code 2 (click's own usage errors keep
their format, Ctrl-C stays Ctrl-C).  Errors the project raises on purpose (bad input files,
model directories, checkpoints, configs: ``ValueError`` subclasses) and the environment's
(``OSError``: disk full, permissions, a read-only file system) are stated as they are; anything
else is a bug, stated in one line too, with how to get the traceback: ``CLIT_TRACEBACK=1``.
:func:`describe` is also what the per-input boundaries of ``clit-infer`` and ``clit-eval`` print.
"""

from __future__ import annotations

import functools
import os
import sys

import click

TRACEBACK_ENV = "CLIT_TRACEBACK"
EXPECTED = (ValueError, OSError, RuntimeError, MemoryError, ImportError)


def describe(exc: BaseException) -> str:
    """``exc`` in one line: an OSError as 'PATH: reason', others as their message's first line."""
    if isinstance(exc, MemoryError):
        return "out of memory (try --max-memory, a smaller --tile or --chunk)"
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else type(exc).__name__
    if not isinstance(exc, EXPECTED):
        text += f" ({type(exc).__name__}; set {TRACEBACK_ENV}=1 for the traceback)"
    return text


def for_input(path, exc: BaseException) -> str:
    """The one line of a failed input: its path, then the reason (once, if it already names it)."""
    text = describe(exc)
    return text if text.startswith(str(path)) else f"{path}: {text}"


def error_boundary(prog: str, code: int = 2):
    """Decorator for a command's function (innermost, under the click decorators)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit,
                    KeyboardInterrupt, GeneratorExit):
                raise
            except Exception as exc:
                if os.environ.get(TRACEBACK_ENV):
                    raise
                click.echo(f"{prog}: error: {describe(exc)}", err=True)
                sys.exit(code)

        return run

    return wrap
