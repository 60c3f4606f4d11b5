"""Gradient estimators for reverse-KL training of a flow ``q`` against an unnormalised target.

The loss is ``KL(q || p) - log Z = E_q[log q(x) - log_target(x)]`` (the negative ELBO). Its value
is estimated the same way by every estimator here; they differ only in the gradient they give:

- ``"pathwise"``: samples ``x = f^{-1}(loc + scale * eps)`` are differentiable functions of the
  parameters (the reparameterization trick), so the gradient flows through the samples. The
  default: one inverse pass, far less variance than the score function.
- ``"stl"``: *sticking the landing* (Roeder, Wu and Duvenaud, 2017). The same pathwise samples,
  but ``log q`` is evaluated with the flow's parameters detached, which drops the score term
  ``E_q[grad log q] = 0``. Unbiased, and its variance goes to zero as ``q`` approaches ``p``.
  Costs one extra density (forward) pass, which is the sequential direction of an IAF.
- ``"score"``: the score-function (REINFORCE) estimator with a leave-one-out baseline. Needs no
  gradient through the samples or the target; kept for comparison and for targets that are not
  differentiable. Much noisier, and also needs a sampling and a density pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.func import functional_call

from flowkit.flow import Flow

ESTIMATORS: tuple[str, ...] = ("pathwise", "stl", "score")

LogTarget = Callable[..., Tensor]


def reverse_kl_loss(
    flow: Flow,
    log_target: LogTarget,
    num_samples: int,
    estimator: str = "pathwise",
    context: Tensor | None = None,
) -> Tensor:
    """Monte Carlo estimate of ``E_q[log q(x) - log_target(x)]`` whose gradient is ``estimator``'s.

    The value is the same for every estimator (the negative ELBO, ``KL(q || p) - log Z``); only
    the gradient differs. Minimising it fits ``q`` to the normalised target.

    Args:
        flow: the variational distribution ``q``.
        log_target: unnormalised log-density; maps ``(num_samples, features)`` to
            ``(num_samples,)``. When ``context`` is given it is called as
            ``log_target(x, context)`` with the context broadcast to ``(num_samples, ...)``, so an
            amortised posterior can see the observation each sample belongs to.
        num_samples: Monte Carlo samples per estimate.
        estimator: ``"pathwise"``, ``"stl"`` or ``"score"`` (see the module docstring).
        context: conditioning for a conditional flow, ``(num_samples, context_features)`` or a
            single ``(context_features,)`` row.

    Returns:
        A scalar tensor to call ``backward`` on.

    Example:
        >>> import torch, flowkit
        >>> flow = flowkit.realnvp(features=2, transforms=2, hidden_features=8)
        >>> log_target = lambda x: -0.5 * (x - 1.0).square().sum(-1)
        >>> loss = reverse_kl_loss(flow, log_target, num_samples=64)
        >>> loss.backward()
        >>> loss.shape
        torch.Size([])
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if context is not None and context.dim() == 1:
        context = context.expand(num_samples, -1)
    if estimator == "score":
        return _score_function(flow, log_target, num_samples, context)

    x, log_q = flow.rsample_and_log_prob(num_samples, context)
    log_p = _evaluate(log_target, x, context, num_samples)
    if estimator == "pathwise":
        return (log_q - log_p).mean()

    # STL: log q at the (differentiable) samples but with parameters held fixed, so only the path
    # term of the gradient survives. The detached difference restores the single-pass value
    # exactly (forward(inverse(z)) equals z only up to round-off).
    detached = {name: parameter.detach() for name, parameter in flow.named_parameters()}
    with _evaluation_mode(flow):
        log_q_fixed = functional_call(flow, detached, (x,), {"context": context})
    log_q_value = log_q_fixed + (log_q - log_q_fixed).detach()
    return (log_q_value - log_p).mean()


def _score_function(flow: Flow, log_target: LogTarget, num_samples: int, context: Tensor | None) -> Tensor:
    """REINFORCE: ``grad = E[(log q - log p - baseline) grad log q]`` on samples without a path."""
    x = flow.sample(num_samples, context)
    with _evaluation_mode(flow):
        log_q = flow.log_prob(x, context)
    log_p = _evaluate(log_target, x, context, num_samples)
    value = log_q.detach() - log_p
    signal = value.detach()
    # Leave-one-out baseline: each sample's baseline is the mean of the others, independent of
    # that sample, so the estimator stays unbiased while most of the variance is removed.
    if num_samples > 1:
        baseline = (signal.sum() - signal) / (num_samples - 1)
    else:
        baseline = torch.zeros_like(signal)
    surrogate = ((signal - baseline) * log_q).mean()
    # Report the KL estimate as the value; take the gradient from the surrogate.
    return value.mean() + (surrogate - surrogate.detach())


@contextlib.contextmanager
def _evaluation_mode(flow: Flow) -> Iterator[None]:
    """Score sampled points with the map they were sampled through: a forward pass in training
    mode would initialise ActNorm from q's own samples or use batch statistics."""
    modes = [(module, module.training) for module in flow.modules()]  # restored one by one
    flow.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _evaluate(log_target: LogTarget, x: Tensor, context: Tensor | None, num_samples: int) -> Tensor:
    log_p = log_target(x) if context is None else log_target(x, context)
    if not isinstance(log_p, Tensor) or log_p.shape != (num_samples,):
        got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(f"log_target must return shape ({num_samples},), got {got}")
    return log_p
