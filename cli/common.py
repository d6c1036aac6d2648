"""What the commands share: list options, exit codes and turning typed errors into messages."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import click

from ..engine.errors import RunError
from ..export.onnx.spec import ExportError, ManifestError, ParityError

__all__ = ["RunError", "describe", "fail_cleanly", "list_option", "split_list"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

def exit_codes(done: str, interrupted: str = "interrupted (Ctrl-C)") -> str:
    """A command's exit-code epilog: what 0 and 130 mean for it."""
    return ("\b\nExit codes:\n"
            f"  0    {done}\n"
            "  1    failed (bad model name, no images, unusable labels, ...)\n"
            "  2    usage error (bad option)\n"
            f"  130  {interrupted}")


EXIT_CODES_EPILOG = exit_codes(
    "the run completed (some images may stay unfooled or be unreadable;\n"
    "       see results.jsonl)",
    "interrupted (Ctrl-C); finished images are kept, --resume goes on")




def _task(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..engine.tasks import TASKS

    if value not in TASKS:
        raise click.BadParameter(f"{value!r} is not a task; choose one of {', '.join(TASKS)}",
                                 param=param)
    return value


def task_option(fn):
    """``--task NAME``: a registered task (checked when parsed, so that a task registered at
    run time is taken as the built-in ones are)."""
    from ..engine.tasks import TASKS

    return click.option("--task", default="labels", show_default=True, callback=_task,
                        metavar="|".join(TASKS),
                        help="The kind of challenge (listed below).")(fn)


def tasks_help() -> str:
    """The registered tasks, a line each (for a command's help)."""
    from ..engine.tasks import TASKS

    return "".join(f"\n      {t.name:<8} {t.about} (CSV: {t.columns})" for t in TASKS.values())


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or from the environment)."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT,
                                                  ParameterSource.DEFAULT_MAP, None)


def split_list(value: str | None) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``; empty items are dropped."""
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def list_option(_ctx: click.Context, param: click.Parameter, value: str | None
                ) -> tuple[str, ...] | None:
    """click callback for comma-list options; an option given but empty is a usage error."""
    if value is None:
        return None
    items = split_list(value)
    if not items:
        raise click.BadParameter("expected a comma-separated list, e.g. a,b,c", param=param)
    if len(set(items)) != len(items):
        raise click.BadParameter(f"duplicate entries in {value!r}", param=param)
    return items


def _typed_errors() -> tuple[type[BaseException], ...]:
    """The errors that carry a message meant for the user (the modules that define the others
    import torch or the image code, so they load on the first error)."""
    from ..engine.errors import DatasetError, NotAllowed
    from ..engine.images import ImageLoadError
    from ..export.solver import ConversionError, SolverParityError, SolverSpecError
    from ..export.zoo import LabelMapError, ModelNameError, ModelUnavailableError

    return (DatasetError, NotAllowed, ImageLoadError, ModelNameError, ModelUnavailableError,
            LabelMapError,
            ExportError, ParityError, ManifestError, SolverSpecError, ConversionError,
            SolverParityError, RunError, ValueError, OSError)


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Typed errors become ``Error: <message>`` and exit code 1, without a traceback.

    Set ``ADVX_DEBUG=1`` to see the traceback instead.
    """
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        if os.environ.get("ADVX_DEBUG") or not isinstance(exc, _typed_errors()):
            raise
        raise click.ClickException(describe(exc)) from exc


def describe(exc: BaseException) -> str:
    """A one-line message for a typed error (its class name when it has no text)."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return text or type(exc).__name__

