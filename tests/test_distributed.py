"""Two gloo processes under DDP train exactly like one process on the combined batch."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import flowkit
from flowkit.train import fit_density

WORLD_SIZE = 2
# 303 rows, 10% held out: 273 training rows in global batches of 63 -> shards of 32 and 31,
# and a last partial batch of 21 rows (shards of 11 and 10): unequal shards on purpose.
OPTIONS = {"epochs": 3, "batch_size": 63, "learning_rate": 1e-2, "device": "cpu", "progress": False,
           "seed": 7}


def _problem() -> tuple[flowkit.Flow, torch.Tensor]:
    torch.manual_seed(0)
    flow = flowkit.realnvp(features=2, transforms=2, hidden_features=8, actnorm=True).double()
    data = torch.randn(303, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return flow, data * torch.tensor([1.0, 3.0], dtype=torch.float64) + 2.0


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    flow, data = _problem()
    result = fit_density(flow, data, checkpoint=Path(folder) / "ddp.pt", metrics_csv=Path(folder) / f"m{rank}.csv",
                         **OPTIONS)
    torch.save({"state": flow.state_dict(), "steps": result.steps,
                "validation": [r["validation_loss"] for r in result.history],
                "train": [r["train_loss"] for r in result.history]}, Path(folder) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_equal_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    context = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("distributed workers did not finish in 120 s")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flow, data = _problem()
        single = fit_density(flow, data, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    reference = flow.state_dict()
    for rank in range(WORLD_SIZE):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert saved["steps"] == single.steps == 3 * 5
        for key, value in reference.items():
            torch.testing.assert_close(saved["state"][key], value, rtol=0, atol=1e-6)
        # the logged losses are of the global batch, not of one rank's shard
        assert saved["train"] == pytest.approx([r["train_loss"] for r in single.history], abs=1e-9)
        assert saved["validation"] == pytest.approx([r["validation_loss"] for r in single.history], abs=1e-9)
    # the weights moved (the comparison is not of two untouched initialisations)
    untouched, _ = _problem()
    moved = [not torch.equal(a, b) for a, b in zip(untouched.parameters(), flow.parameters())]
    assert all(moved)
    # only rank 0 writes files
    assert (tmp_path / "ddp.pt").exists() and (tmp_path / "m0.csv").exists()
    assert not (tmp_path / "m1.csv").exists()
