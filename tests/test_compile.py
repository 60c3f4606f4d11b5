"""torch.compile readiness: log_prob, the fused sampling path and a training step trace as one graph, no breaks.

``torch._dynamo.explain`` traces without compiling, so this needs no C++ toolchain; a graph break
would split a compiled training step and cost the fusion DESIGN.md asks for.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from flowkit.presets import PRESETS, build

OWN_PRESETS = sorted(name for name, build_flow in PRESETS.items() if build_flow.__module__ == "flowkit.presets")


@pytest.mark.parametrize("preset", OWN_PRESETS)  # not the nflows_* wrappers: their code is nflows'
@pytest.mark.parametrize("context_features", [0, 3])
def test_no_graph_breaks(preset: str, context_features: int) -> None:
    flow = build(preset, features=5, context_features=context_features, transforms=2, hidden_features=16)
    x = torch.randn(8, 5)
    context = torch.randn(8, context_features) if context_features else None
    for method, args in ((flow.log_prob, (x, context)), (flow.rsample_and_log_prob, (8, context))):
        dynamo.reset()
        explanation = dynamo.explain(method)(*args)
        reasons = [str(reason.reason) for reason in explanation.break_reasons]
        assert explanation.graph_break_count == 0, f"{method.__name__}: {reasons}"
        assert explanation.graph_count == 1


@pytest.mark.parametrize("preset", OWN_PRESETS)
def test_a_compiled_training_step_is_one_graph_with_the_eager_gradients(preset: str) -> None:
    # fullgraph=True raises on any graph break; aot_eager traces the backward too (AOTAutograd)
    # without needing a C++ compiler. Float64 so the two gradients agree to rounding.
    torch.manual_seed(0)
    flow = build(preset, features=4, context_features=2, transforms=2, hidden_features=16).double()
    x, context = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)

    def loss(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return -flow.log_prob(x, context).mean()

    dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    gradients = []
    for step in (loss, compiled):
        flow.zero_grad()
        step(x, context).backward()
        gradients.append([p.grad.clone() for p in flow.parameters() if p.grad is not None])
    assert len(gradients[0]) == len(gradients[1]) > 0
    for eager, traced in zip(*gradients):
        torch.testing.assert_close(traced, eager)
