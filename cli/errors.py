"""The command line's error contract: every failure is one ``error:`` line on stderr with a
non-zero status (1 for bad input, 2 for bad usage, 130 for Ctrl-C), never a traceback, and no
output may overwrite an input or another output.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import click
import torch

from flowkit.data.tabular import DataError
from flowkit.io import ModelFileError

INTERRUPTED = 130  # the shell's convention for a run ended by SIGINT


class OneLineError(click.ClickException):
    """A usage error shown as flowkit shows every error: one ``error:`` line, not click's three."""

    exit_code = 2  # the convention for bad usage, as click and argparse use

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Group(click.Group):
    """The ``flowkit`` group: bad options and arguments get one line on stderr (plus a pointer to
    ``--help``) instead of click's usage block, like every other error."""

    def make_context(self, *args, **kwargs):
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with one_line_usage_errors():
            return super().invoke(ctx)


@contextmanager
def one_line_usage_errors():
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:  # a bare `flowkit` shows the help, as it should
        raise
    except click.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
        raise OneLineError(error.format_message() + hint) from None


def one_line(error: BaseException) -> str:
    """The error's message on one line: some messages (torch's) end a first line with a colon and
    put the substance on the next ones."""
    text = " ".join(str(error).split()) or error.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."


def clean_errors(command):
    """Turn input errors into one line on stderr and a non-zero exit, without a traceback."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise  # the reader went away (`flowkit sample ... | head`): click exits quietly
        except KeyboardInterrupt:  # Ctrl-C outside a fit's own handler: the shell's status, no "Aborted!"
            click.echo("error: interrupted", err=True)
            sys.exit(INTERRUPTED)
        except MemoryError:
            click.echo("error: out of memory (try a smaller --batch-size or fewer rows)", err=True)
            sys.exit(1)
        except (DataError, ModelFileError, ValueError, OSError) as error:
            click.echo(f"error: {one_line(error)}", err=True)
            sys.exit(1)

    return run


def check_outputs(inputs: dict[str, str | Path | None], outputs: dict[str, str | Path | None]) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other, and outputs
    whose folder cannot be written (rather than failing after a long fit)."""
    seen: dict[Path, str] = {}
    for role, path in inputs.items():
        if path is not None:
            seen.setdefault(Path(path).resolve(), role)
    for role, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise DataError(f"{path}: is both the {seen[resolved]} and the {role}; give another name")
        seen[resolved] = role
        if role == "picture":
            from flowkit.plotting import picture_format  # matplotlib only when a picture is asked for

            picture_format(path)  # an unknown image suffix fails now, not after a long fit
        folder = resolved.parent
        while not folder.exists():  # atomic_write creates missing folders; check the first that exists
            folder = folder.parent
        if not folder.is_dir():
            raise DataError(f"{path}: cannot write the {role} there ({folder} is not a folder)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DataError(f"{path}: cannot write the {role} there (no permission to write in {folder})")


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, with a line rather than torch's traceback."""
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise DataError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise DataError(f"device {device!r} is not available (this machine has {count} CUDA device(s))")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"device {device!r} is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise DataError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
