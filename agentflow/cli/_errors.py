"""Expected errors as one line: `error: <problem>; <fix>`, exit status 2.

Every subcommand runs inside `expected_errors()`: an error the user can fix (bad input, a file
that cannot be written, a missing optional extra) prints one line naming the problem and the fix
and exits 2; `agentflow -v ...` re-raises it so the traceback shows. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys

import click

from agentflow.errors import AgentflowError

# optional extras: the module a missing import names -> the extra that installs it
_EXTRAS = {"torch": "local", "transformers": "local", "gguf": "local", "accelerate": "local",
           "safetensors": "local", "tokenizers": "tokenize", "sglang": "sglang"}


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def one_line(exc: BaseException) -> str:
    """The message of an expected error, on one line, with the fix where we know it."""
    exc = _leaves(exc)[0]  # a task group's error: the first of its causes
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        extra = _EXTRAS.get(top)
        if extra:
            return (f"this needs the '{extra}' extra ({top} is not installed); "
                    f"install it with: pip install 'agentflow-sched[{extra}]'")
        return f"{exc}; install the package that provides it"
    if isinstance(exc, OSError) and exc.filename is not None:
        what = {FileNotFoundError: "no such file or folder", PermissionError: "permission denied",
                IsADirectoryError: "is a folder", NotADirectoryError: "a parent is not a folder"}
        reason = what.get(type(exc), exc.strerror or str(exc))
        return f"cannot use '{exc.filename}': {reason}; choose a path you can write (or read)"
    text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def is_expected(exc: BaseException) -> bool:
    return all(isinstance(e, (AgentflowError, OSError, ValueError, ModuleNotFoundError)) for e in _leaves(exc))


@contextlib.contextmanager
def expected_errors(verbose: bool):
    """One line and exit 2 for an expected error, unless `verbose` (then the traceback)."""
    try:
        yield
    except click.exceptions.Exit:
        raise
    except (click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001 - sorted into expected (one line) and bugs (traceback)
        if isinstance(e, BrokenPipeError):  # `agentflow plan ... | head`: the reader left; not an error
            sys.stderr.close()
            sys.exit(0)
        if verbose or not is_expected(e):
            raise
        click.echo(f"error: {one_line(e)}", err=True)
        sys.exit(2)


def verbose() -> bool:
    """Whether `agentflow -v` was given (the root command's flag)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))


def fail(exc: BaseException, message: str | None = None) -> None:
    """A command's expected error: one line `error: ...` and exit 2; with -v, the traceback."""
    if verbose():
        raise exc
    click.echo(f"error: {message or one_line(exc)}", err=True)
    sys.exit(2)


def require_local_engine() -> None:
    """`--engine local` needs the `local` extra and the model wheel: say so before anything starts."""
    from agentflow.runtime.engines.base import EngineError
    from agentflow.runtime.engines.local.model import _require, gguf_path

    try:
        _require("torch", "transformers", "gguf", "accelerate", "safetensors")
        gguf_path()
    except EngineError as e:
        fail(e, str(e))
