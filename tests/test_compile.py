"""torch.compile readiness: log_prob and the fused sampling path trace as one graph, no breaks.

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
