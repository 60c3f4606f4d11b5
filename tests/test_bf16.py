"""bf16 training: refused where the hardware lacks native bf16, and, where it runs (forced here on
any CPU, where autocast emulates bf16), matmuls in bfloat16 with float32 log-dets, loss and weights."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import flowkit
from flowkit.train import fit_density, fit_variational, precision

NATIVE, REASON = precision.cpu_bf16_support()
needs_no_native = pytest.mark.skipif(NATIVE, reason="this CPU has native bf16: nothing is refused")


def _log_target(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.square().sum(-1)


@needs_no_native
def test_bf16_is_refused_on_a_cpu_without_native_bf16() -> None:
    flow = flowkit.realnvp(features=2, transforms=1, hidden_features=8)
    with pytest.raises(ValueError, match="AMX.*train without bf16"):
        fit_density(flow, torch.randn(64, 2), epochs=1, batch_size=32, bf16=True, device="cpu", progress=False)
    with pytest.raises(ValueError, match="AMX.*train without bf16"):
        fit_variational(flow, _log_target, steps=2, bf16=True, device="cpu", progress=False, diagnostic_samples=0)


@needs_no_native
def test_cli_fit_bf16_is_refused_in_one_line(tmp_path) -> None:
    from flowkit_cli.main import main

    data = tmp_path / "data.csv"
    data.write_text("a,b\n" + "".join(f"{i % 7},{(i * 3) % 5}.5\n" for i in range(50)))
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(tmp_path / "m.flowkit"), "--no-plot",
                                       "--epochs", "1", "--bf16", "-q", "--device", "cpu"])
    assert result.exit_code == 1
    assert "bf16" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.flowkit").exists()


@pytest.mark.parametrize("preset", ["maf", "nsf", "nsf_coupling", "realnvp"])
def test_bf16_autocast_keeps_log_dets_float32_and_close(preset: str) -> None:
    torch.manual_seed(0)
    flow = getattr(flowkit, preset)(features=4, transforms=2, hidden_features=16)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    x = torch.randn(32, 4)
    reference = flow.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = flow.log_prob(x)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, reference, atol=0.05 * 4)


def test_bf16_fit_runs_where_supported(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (True, "forced by the test"))
    torch.manual_seed(0)
    flow = flowkit.maf(features=2, transforms=2, hidden_features=16)
    data = torch.randn(256, 2) * torch.tensor([1.0, 0.5])
    result = fit_density(flow, data, epochs=3, batch_size=64, bf16=True, device="cpu", progress=False)
    assert all(p.dtype == torch.float32 for p in flow.parameters())
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))
    result = fit_variational(flow, _log_target, steps=3, num_samples=64, bf16=True, device="cpu",
                             progress=False, diagnostic_samples=0)
    assert result.steps == 3
