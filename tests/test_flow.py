"""Flow's public boundary: shape checks with expected-vs-got messages, context broadcasting, chunking."""

from __future__ import annotations

import pytest
import torch

import flowkit


@pytest.fixture
def conditional_flow() -> flowkit.Flow:
    torch.manual_seed(0)
    return flowkit.realnvp(3, context_features=2, transforms=2, hidden_features=8)


def test_wrong_feature_count_names_expected_and_given(conditional_flow: flowkit.Flow) -> None:
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, 3\), got \(5, 4\)"):
        conditional_flow.log_prob(torch.randn(5, 4), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        conditional_flow.log_prob(torch.randn(3), torch.randn(5, 2))


def test_context_errors(conditional_flow: flowkit.Flow) -> None:
    with pytest.raises(ValueError, match="needs a context of 2 features"):
        conditional_flow.log_prob(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"expected context of shape \(5, 2\) or \(2,\), got \(4, 2\)"):
        conditional_flow.log_prob(torch.randn(5, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="takes no context"):
        flowkit.realnvp(2, transforms=1).log_prob(torch.randn(2, 2), torch.randn(2, 1))


def test_single_context_row_broadcasts(conditional_flow: flowkit.Flow) -> None:
    x, context = torch.randn(6, 3), torch.randn(2)
    torch.testing.assert_close(conditional_flow.log_prob(x, context),
                               conditional_flow.log_prob(x, context.expand(6, 2)))
    assert conditional_flow.sample(7, context).shape == (7, 3)


def test_chunked_scoring_equals_unchunked(conditional_flow: flowkit.Flow) -> None:
    with torch.no_grad():
        for parameter in conditional_flow.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    x, context = torch.randn(103, 3), torch.randn(103, 2)
    torch.testing.assert_close(conditional_flow.log_prob(x, context, batch_size=10),
                               conditional_flow.log_prob(x, context))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        conditional_flow.log_prob(x, context, batch_size=0)


def test_chunked_sampling_shape_and_distribution() -> None:
    torch.manual_seed(0)
    flow = flowkit.realnvp(2, transforms=2, hidden_features=8)  # identity at init: samples are N(0, I)
    samples = flow.sample(20_000, batch_size=3_000)
    assert samples.shape == (20_000, 2)
    assert samples.mean(0).abs().max() < 0.05 and (samples.std(0) - 1).abs().max() < 0.05


def test_build_rebuilds_from_config() -> None:
    flow = flowkit.realnvp(3, transforms=2, hidden_features=8, actnorm=True)
    clone = flowkit.build(**flow.config)
    assert clone.config == flow.config
    clone.load_state_dict(flow.state_dict())
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        flowkit.build("nope", features=2)
