"""The posterior head: data-end layers that give any flow the freedom reverse KL needs.

A preset built for density estimation assumes standardised data: a fixed ``N(0, I)`` base, and
for spline flows a tail bound ``B`` (each spline maps ``[-B, B]`` onto itself and is the identity
outside). Fitted by reverse KL to an unnormalised target, whose scale nobody standardised, that
assumption fails where the target is wide or its scale changes from place to place: an NSF fitted
to Neal's 5-D funnel (``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)``) gives ``std(v) = 1.36``, because
no chain of splines confined to a box can produce a conditional scale that varies 400-fold.

The head puts four cheap things around the preset's chain, all starting as the identity:

1. a **trainable base** (``loc`` and ``scale`` of the base Gaussian become parameters), so the
   latent end can widen or narrow;
2. one **inverse autoregressive affine layer** at the data end,
   ``x_i = shift_i(y_<i) + scale_i(y_<i) * y_i``: a location and a scale of each coordinate that
   depend on the ones before, which is exactly the funnel's structure and a sizeable part of
   most posteriors' (hierarchical scales, correlations); in the inverse-autoregressive direction
   it costs one MADE pass when sampling;
3. an **elementwise spline** with free parameters (``Unconditional``) on the standardised
   coordinates, so that even an affine preset can skew a marginal (a log-normal coordinate);
4. a learned **elementwise affine** (``ActNorm`` with its data-dependent start switched off) at
   the very end, so the splines work on a standardised copy of the target and their bound follows
   it.

The base's and the elementwise affine's locations and scales train at ``HEAD_LR_SCALE`` times
the learning rate (``make_optimizer`` honours a parameter's ``lr_scale``): from the identity,
Adam's one-rate-a-step moves left a spline flow on the 2-D banana (std 10, 4.36) at (6.3, 1.7)
after 500 steps at 5e-3; at 5x the rate it reaches (8.8, 3.0), and the two-mode annealed fit
still finds both modes (at 10x it reached (9.6, 3.7) but lost one mode).

``fit_variational`` attaches the head by default; ``flow.config["posterior_head"]`` records it so
``flowkit.build(**flow.config)`` (and so ``flowkit.io``) rebuilds the same architecture.
"""

from __future__ import annotations

from torch import nn

from flowkit.bijectors.autoregressive import MaskedAutoregressive
from flowkit.bijectors.base import Chain, Inverse
from flowkit.bijectors.normalization import ActNorm
from flowkit.bijectors.transformers import Affine, RationalQuadraticSpline
from flowkit.bijectors.unconditional import Unconditional
from flowkit.distributions import DiagGaussian
from flowkit.flow import Flow

# The head's location and scale parameters learn this many times faster than the rest: Adam moves
# each parameter by about one learning rate a step, so from the identity a scale of 10 (2.3 in
# log units) takes more steps than a short fit has.
HEAD_LR_SCALE = 5.0


def head_width(features: int) -> int:
    """Hidden width of the head's MADE: ``max(32, 2 * features)`` units in each of two layers."""
    return max(32, 2 * features)


def has_posterior_head(flow: nn.Module) -> bool:
    """Whether ``attach_posterior_head`` has already run on ``flow``."""
    return bool(getattr(flow, "config", None) and flow.config.get("posterior_head")) or bool(
        getattr(flow, "_posterior_head", False))


def can_take_posterior_head(flow: nn.Module) -> bool:
    """A flowkit ``Flow`` with a flowkit ``DiagGaussian`` base and a ``Chain`` of bijectors."""
    return isinstance(flow, Flow) and isinstance(flow.base, DiagGaussian) and isinstance(flow.bijector, Chain)


def attach_posterior_head(flow: Flow, seed: int = 0) -> Flow:
    """Add the posterior head to ``flow`` in place (a no-op if it has one) and return it.

    The new layers are the identity, so the flow's density is unchanged until it is trained; its
    existing weights are kept. Call it before creating an optimiser over ``flow.parameters()``.

    Args:
        flow: a flowkit ``Flow`` (``can_take_posterior_head``); its base becomes trainable.
        seed: seed of the head's MADE degrees (only matters for hidden-unit assignment).

    Example:
        >>> import torch, flowkit
        >>> flow = flowkit.nsf(features=3, transforms=1, hidden_features=8)
        >>> x = torch.randn(5, 3)
        >>> before = flow.log_prob(x)
        >>> flow = attach_posterior_head(flow)
        >>> torch.allclose(flow.log_prob(x), before, atol=1e-5), flow.config["posterior_head"]
        (True, True)
        >>> rebuilt = flowkit.build(**flow.config)
        >>> rebuilt.load_state_dict(flow.state_dict())
        <All keys matched successfully>
    """
    if has_posterior_head(flow):
        return flow
    if not can_take_posterior_head(flow):
        raise ValueError("the posterior head needs a flowkit Flow with a DiagGaussian base and a Chain")
    features, parameter = flow.features, next(flow.parameters(), None)
    old_base = flow.base
    base = DiagGaussian(features, loc=old_base.loc.detach().float().cpu(),
                        scale=old_base.scale.detach().float().cpu(), trainable=True)
    scale = ActNorm(features)
    scale.initialized.fill_(True)  # learned by gradient from the identity, never from a batch
    conditional = Inverse(MaskedAutoregressive(Affine(), features, context_features=flow.context_features,
                                               hidden_features=head_width(features), seed=seed))
    marginal = Unconditional(RationalQuadraticSpline(num_bins=8, tail_bound=3.0), features)
    for parameter in (*base.parameters(), *scale.parameters()):
        parameter.lr_scale = HEAD_LR_SCALE
    head = nn.ModuleList([base, scale, marginal, conditional])
    if parameter is not None:
        head.to(device=parameter.device, dtype=parameter.dtype)
    flow.base = base
    flow.bijector = Chain([scale, marginal, conditional, *flow.bijector])
    flow._posterior_head = True
    if isinstance(getattr(flow, "config", None), dict):
        flow.config = {**flow.config, "posterior_head": True}
    return flow
