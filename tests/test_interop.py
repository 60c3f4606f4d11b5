"""nflows as an oracle and a bridge: a flowkit mirror of an nflows MAF has the same density and
the same inverse; an nflows flow trains through flowkit's Flow interface."""

from __future__ import annotations

import pytest
import torch

import flowkit
from flowkit.interop import NflowsAffine, NflowsFlow, maf_from_nflows

nflows = pytest.importorskip("nflows")
from nflows import distributions, flows, transforms  # noqa: E402


def nflows_maf(features: int = 5, hidden: int = 16, blocks: int = 2, context_features: int | None = None,
               residual: bool = False, dtype: torch.dtype = torch.float64) -> flows.Flow:
    torch.manual_seed(0)
    layers = []
    for index in range(3):
        layers.append(transforms.MaskedAffineAutoregressiveTransform(
            features, hidden, context_features=context_features, num_blocks=blocks,
            use_residual_blocks=residual))
        layers.append(transforms.RandomPermutation(features) if index % 2 else
                      transforms.ReversePermutation(features))
    flow = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([features]))
    with torch.no_grad():  # move off nflows' init, the output layers included
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return flow.to(dtype)


@pytest.mark.parametrize("blocks", [1, 2])
def test_mirror_has_the_same_log_prob(blocks: int) -> None:
    source = nflows_maf(blocks=blocks)
    mirror = maf_from_nflows(source)
    x = 2 * torch.randn(200, 5, dtype=torch.float64)
    expected = source.log_prob(x)
    assert expected.std() > 0.1  # a non-trivial density
    torch.testing.assert_close(mirror.log_prob(x), expected, atol=1e-10, rtol=0)


def test_mirror_inverts_like_nflows() -> None:
    source = nflows_maf()
    mirror = maf_from_nflows(source)
    z = torch.randn(100, 5, dtype=torch.float64)
    with torch.no_grad():
        x_theirs, log_det_theirs = source._transform.inverse(z)  # nflows: D passes per layer
        x_ours, log_det_ours = mirror.bijector.inverse(z)  # flowkit: the one-pass-of-work solve
    torch.testing.assert_close(x_ours, x_theirs, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_ours, log_det_theirs, atol=1e-10, rtol=0)
    # Samples score consistently: the density of a sample from the fused path equals log_prob.
    samples, log_q = mirror.rsample_and_log_prob(50)
    torch.testing.assert_close(source.log_prob(samples.detach()), log_q.detach(), atol=1e-9, rtol=0)


def test_unsupported_sources_are_rejected() -> None:
    with pytest.raises(ValueError):
        maf_from_nflows(nflows_maf(residual=True))
    with pytest.raises(ValueError):
        maf_from_nflows(nflows_maf(context_features=2))


def test_nflows_affine_matches_its_formula() -> None:
    params = torch.randn(4, 3, 2, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    y, log_det = NflowsAffine().forward(x, params)
    scale = torch.nn.functional.softplus(params[..., 0]) + 1e-3
    torch.testing.assert_close(y, x * scale + params[..., 1])
    torch.testing.assert_close(log_det, scale.log())
    x_back, inverse_log_det = NflowsAffine().inverse(y, params)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(inverse_log_det, -log_det)


def test_wrapper_shapes_and_fused_sampling() -> None:
    # float32: nflows' StandardNormal draws its noise in the default dtype.
    wrapped = NflowsFlow(nflows_maf(context_features=2, dtype=torch.float32), context_features=2)
    assert wrapped.features == 5
    context = torch.randn(7, 2)
    x, log_q = wrapped.rsample_and_log_prob(7, context)
    assert x.shape == (7, 5) and log_q.shape == (7,)
    assert x.requires_grad  # pathwise: samples are differentiable in the parameters
    torch.testing.assert_close(wrapped.log_prob(x, context), log_q, atol=1e-4, rtol=1e-4)
    assert wrapped.sample(9, context=torch.ones(2), batch_size=4).shape == (9, 5)
    assert wrapped.log_prob(x, context, batch_size=3).shape == (7,)
    with pytest.raises(ValueError):
        wrapped.log_prob(x)  # context missing


def test_maximum_likelihood_through_the_wrapper_reduces_nll() -> None:
    torch.manual_seed(1)
    source = flows.Flow(transforms.CompositeTransform([
        transforms.MaskedAffineAutoregressiveTransform(2, 16, num_blocks=1),
        transforms.ReversePermutation(2),
        transforms.MaskedAffineAutoregressiveTransform(2, 16, num_blocks=1)]),
        distributions.StandardNormal([2]))
    flow = NflowsFlow(source)
    data = torch.randn(512, 2) @ torch.tensor([[2.0, 0.0], [1.5, 0.5]]) + torch.tensor([3.0, -1.0])
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        before = -flow.log_prob(data).mean().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = -flow.log_prob(data).mean().item()
    assert after < before - 0.5, f"NLL {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("name", ["nflows_maf", "nflows_nsf"])
def test_nflows_presets_save_load_and_train_through_the_cli(name: str, tmp_path) -> None:
    from click.testing import CliRunner
    from flowkit_cli.main import main

    from flowkit.io import load_model

    model = tmp_path / "m.flowkit"
    result = CliRunner().invoke(main, ["fit", "toy:two_moons", "--toy-samples", "600", "--flow", name,
                                       "--transforms", "2", "--hidden", "16", "--epochs", "30", "--lr", "0.005",
                                       "-o", str(model), "--no-plot", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    flow, standardizer, metadata = load_model(model)
    # Trained long enough to beat the Gaussian, which a fit that does not would give way to.
    assert metadata["kept"] == "flow" and flow.config["preset"] == name and metadata["steps"] > 0
    # The reloaded nflows model scores exactly as a fresh rebuild with the saved weights does.
    clone = flowkit.build(**flow.config)
    clone.load_state_dict(flow.state_dict())
    x = torch.randn(50, 2)
    torch.testing.assert_close(clone.log_prob(x), flow.log_prob(x))
    with torch.no_grad():
        initial = flowkit.build(**flow.config).log_prob(x)
    assert not torch.allclose(initial, flow.log_prob(x)), "training must have moved the weights"
