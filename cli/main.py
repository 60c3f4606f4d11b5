"""``flowkit``: fit, sample, score, plot and inspect density models of tabular data.

Bad input ends with one line on stderr (``error: ...``) and exit status 1 (2 for a bad option or
argument); nothing already on disk is overwritten unless the command succeeds, since every output
is written atomically, and no output may overwrite an input or another output.
"""

from __future__ import annotations

import signal
import threading

import click
import torch
from flowkit_cli.errors import Group
from flowkit_cli.fit import fit
from flowkit_cli.info import info
from flowkit_cli.plot import plot
from flowkit_cli.sample import sample
from flowkit_cli.score import score
from flowkit_cli.toy import toy


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowkit")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for torch [default: torch's choice]. Small models run fastest on 1.")
@click.pass_context
def main(ctx: click.Context, threads: int | None) -> None:
    """Normalizing flows for tabular data: fit a density, then sample, score and plot it."""
    if threads is not None:
        torch.set_num_threads(threads)
    if threading.current_thread() is threading.main_thread():
        # By default SIGTERM ends Python on the spot, leaving a half-written temporary file
        # beside the output (gigabytes, for a large sample). As an exception it unwinds through
        # atomic_write, which deletes it. (fit's training loop handles SIGTERM on its own.)
        previous = signal.signal(signal.SIGTERM, exit_on_signal)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def exit_on_signal(number: int, frame) -> None:
    raise SystemExit(128 + number)  # the shell's convention for a run ended by a signal


for command in (fit, sample, score, plot, info, toy):
    main.add_command(command)


if __name__ == "__main__":
    main()
