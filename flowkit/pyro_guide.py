"""A flowkit flow as a Pyro guide: ``AutoFlowGuide`` (needs the optional ``pyro`` extra).

Pyro's ``AutoContinuous`` machinery finds a model's latent sites, maps each to the real line with
``biject_to(site.support)`` and packs them into one vector; this guide puts a flowkit flow on
that vector, so an SVI fit of any Pyro model gets a flexible, correlated posterior instead of a
mean-field Normal. The flow gets ``flowkit.posterior_head`` (a trainable base, a data-end inverse
autoregressive affine layer and learned elementwise maps), and starts, like Pyro's ``AutoNormal``,
as a narrow Gaussian at the model's initial values.

Example:
    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro.infer import SVI, Trace_ELBO
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> pyro.clear_param_store()
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> guide = AutoFlowGuide(model, transforms=1, hidden_features=8)
    >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    >>> y = torch.full((20,), 2.0)
    >>> for step in range(400):
    ...     loss = svi.step(y)
    >>> mu = guide.flow_distribution().sample((2000,))[:, 0]  # posterior N(1.998, 0.224^2)
    >>> bool(abs(mu.mean() - 2.0) < 0.25), bool(abs(mu.std() - 0.224) < 0.1)
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch import Tensor

from flowkit.flow import Flow
from flowkit.posterior_head import attach_posterior_head
from flowkit.presets import build
from flowkit.torch_distribution import FlowDistribution


class PyroFlowDistribution(FlowDistribution, TorchDistributionMixin):
    """``FlowDistribution`` with Pyro's distribution mixin (``score_parts``, ``to_event``...).

    ``log_prob`` of the value this distribution has just drawn is returned from the draw's single
    inverse pass (what SVI asks for right after sampling), so an inverse autoregressive flow never
    runs its sequential density direction during training.
    """

    def __init__(self, flow: Flow, context: Tensor | None = None, validate_args: bool | None = None) -> None:
        super().__init__(flow, context, validate_args)
        self._last: tuple[Tensor, Tensor] | None = None

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        x, log_q = self.rsample_and_log_prob(sample_shape)
        self._last = (x, log_q)
        return x

    def expand(self, batch_shape: torch.Size, _instance: FlowDistribution | None = None) -> PyroFlowDistribution:
        expanded = super().expand(batch_shape)
        expanded._last = None
        return expanded

    def log_prob(self, value: Tensor) -> Tensor:
        if self._last is not None and value is self._last[0]:
            return self._last[1]
        return super().log_prob(value)


class AutoFlowGuide(AutoContinuous):
    """A Pyro autoguide whose posterior over the packed unconstrained latents is a flowkit flow.

    Args:
        model: the Pyro model.
        flow: a flowkit ``Flow`` of ``latent_dim`` features; or None to build ``preset`` once
            the model's latent size is known (at the first call).
        preset: flowkit preset for the default flow (``"iaf"``: one pass to sample and score).
        init_loc_fn: Pyro's per-site initialisation strategy (where the guide starts).
        init_scale: initial standard deviation of the guide in the unconstrained space.
        **preset_kwargs: passed to the preset (``transforms``, ``hidden_features``...).
    """

    def __init__(
        self,
        model: Callable,
        flow: Flow | None = None,
        *,
        preset: str = "iaf",
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        **preset_kwargs,
    ) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self._given_flow, self._preset, self._preset_kwargs = flow, preset, {"transforms": 3, **preset_kwargs}
        self._init_scale = init_scale

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        flow = self._given_flow or build(self._preset, features=self.latent_dim, **self._preset_kwargs)
        if flow.features != self.latent_dim:
            raise ValueError(f"the model has {self.latent_dim} unconstrained latent dimensions, "
                             f"the flow {flow.features}")
        attach_posterior_head(flow)
        # Start as N(init_loc, init_scale^2): the head's data-end affine carries loc and scale.
        elementwise = flow.bijector[0]
        with torch.no_grad():
            elementwise.loc.copy_(self._init_loc().to(elementwise.loc))
            elementwise.log_scale.fill_(math.log(self._init_scale))
        self.flow = flow

    def flow_distribution(self) -> PyroFlowDistribution:
        """The guide's posterior over the packed unconstrained latent vector."""
        return PyroFlowDistribution(self.flow)

    def get_posterior(self, *args, **kwargs) -> PyroFlowDistribution:
        pyro.module(f"{self._pyro_name}.flow", self.flow)  # its parameters go in the param store
        return self.flow_distribution()

    def _loc_scale(self, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Monte Carlo mean and standard deviation of the packed latents (for ``median`` and
        ``quantiles``, which Pyro reads through this method)."""
        with torch.no_grad():
            draws = self.flow_distribution().sample((4096,))
        return draws.mean(0), draws.std(0)
