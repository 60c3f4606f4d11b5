"""flowkit's AdamW against torch.optim.AdamW: the same steps, the same state-dict layout, and no
import of the compiler (the point of having it)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from flowkit.train import adamw as adamw_module
from flowkit.train.adamw import AdamW


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def _train(model: torch.nn.Module, optimizer, steps: int, seed: int = 1, skip_bias: bool = False) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 5, generator=generator, dtype=next(model.parameters()).dtype)
        optimizer.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        if skip_bias:  # a parameter without a gradient is left alone, state and all
            model[2].bias.grad = None
        optimizer.step()


def _groups(model: torch.nn.Module) -> list[dict]:
    return [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": 3e-3}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("skip_bias", [False, True])
def test_steps_equal_torch_fused_adamw(dtype: torch.dtype, skip_bias: bool) -> None:
    ours, theirs = _model(dtype=dtype), _model(dtype=dtype)
    _train(ours, AdamW(_groups(ours), lr=1e-2, weight_decay=0.05), 25, skip_bias=skip_bias)
    _train(theirs, torch.optim.AdamW(_groups(theirs), lr=1e-2, weight_decay=0.05, fused=True), 25,
           skip_bias=skip_bias)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    if skip_bias:
        assert torch.equal(ours[2].bias, _model(dtype=dtype)[2].bias)


def test_foreach_update_equals_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path for devices without the fused kernel (run here on the CPU) is the same update."""
    fused, foreach = _model(dtype=torch.float64), _model(dtype=torch.float64)
    _train(fused, AdamW(_groups(fused), lr=1e-2, weight_decay=0.1), 20)
    monkeypatch.setattr(adamw_module, "FUSED_DEVICES", ())
    _train(foreach, AdamW(_groups(foreach), lr=1e-2, weight_decay=0.1), 20)
    for a, b in zip(fused.parameters(), foreach.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_state_dicts_load_both_ways_and_resume_exactly() -> None:
    straight = _model()
    _train(straight, AdamW(_groups(straight), lr=1e-2, weight_decay=0.01), 20)
    # ten steps with torch's optimiser, then its state into ours for ten more
    resumed = _model()
    theirs = torch.optim.AdamW(_groups(resumed), lr=1e-2, weight_decay=0.01, fused=True)
    _train(resumed, theirs, 10)
    ours = AdamW(_groups(resumed), lr=1e-2, weight_decay=0.01)
    ours.load_state_dict(theirs.state_dict())
    _train(resumed, ours, 10, seed=2)
    again = _model()
    first = AdamW(_groups(again), lr=1e-2, weight_decay=0.01)
    _train(again, first, 10)
    back = torch.optim.AdamW(_groups(again), lr=1e-2, weight_decay=0.01, fused=True)
    back.load_state_dict(first.state_dict())  # and ours into torch's
    _train(again, back, 10, seed=2)
    for a, b in zip(resumed.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert ours.param_groups[1]["lr"] == 3e-3


def test_loaded_state_is_a_copy() -> None:
    model = _model()
    optimizer = AdamW(model.parameters(), lr=1e-2)
    _train(model, optimizer, 3)
    snapshot = copy.deepcopy(optimizer.state_dict())
    kept = copy.deepcopy(snapshot)
    optimizer.load_state_dict(snapshot)
    _train(model, optimizer, 3)
    for i, state in snapshot["state"].items():
        assert torch.equal(state["exp_avg"], kept["state"][i]["exp_avg"])
        assert float(state["step"]) == 3


def test_mismatched_state_is_refused() -> None:
    model = _model()
    source = AdamW(model.parameters(), lr=1e-2)
    _train(model, source, 1)
    with pytest.raises(ValueError, match="groups of other sizes"):
        AdamW(_groups(model), lr=1e-2).load_state_dict(source.state_dict())


def test_a_fit_never_imports_the_compiler() -> None:
    code = ("import sys, torch, flowkit\n"
            "x = torch.randn(256, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])\n"
            "flowkit.fit_density(flowkit.build('nsf', features=3, transforms=2, hidden_features=16), x,\n"
            "                    validation_data=x[:64], max_steps=20, batch_size=64, progress=False)\n"
            "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"
