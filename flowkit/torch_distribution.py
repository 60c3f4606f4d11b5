"""``FlowDistribution``: a flowkit flow as a ``torch.distributions.Distribution``.

Code written against torch's distribution interface (Pyro, ``Independent``,
``TransformedDistribution``, hand-written Monte Carlo KL estimates) can then take a flow
wherever it takes a ``MultivariateNormal``. The event is the flow's feature vector
(``event_shape = (features,)``); a ``(batch, context_features)`` context gives a batch of
conditional distributions (``batch_shape = (batch,)``), one per context row, as an amortised
posterior ``q(z | x)`` needs.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from flowkit.flow import Flow


class FlowDistribution(Distribution):
    """A ``Flow`` (optionally at a fixed context) behaving like any torch distribution.

    ``rsample`` is pathwise: the flow's base is sampled as ``loc + scale * eps`` and pushed through
    the flow's inverse, so gradients reach every parameter of the flow (and the context).

    Args:
        flow: the flowkit ``Flow``; its parameters stay the flow's (train it as usual).
        context: ``None``, a ``(context_features,)`` row (an unbatched distribution) or a
            ``(batch, context_features)`` tensor (``batch_shape = (batch,)``).
        validate_args: torch's argument validation (checks that values of ``log_prob`` are real
            vectors of the right event shape).

    Example:
        >>> import torch, flowkit
        >>> from torch.distributions import Independent, kl_divergence
        >>> q = FlowDistribution(flowkit.maf(features=2, transforms=1, hidden_features=8))
        >>> q.sample((3, 4)).shape, q.batch_shape, q.event_shape
        (torch.Size([3, 4, 2]), torch.Size([]), torch.Size([2]))
        >>> x = q.rsample((5,))
        >>> q.log_prob(x).shape, x.requires_grad
        (torch.Size([5]), True)
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, flow: Flow, context: Tensor | None = None, validate_args: bool | None = None) -> None:
        self.flow = flow
        batch_shape = torch.Size()
        if context is not None:
            context = torch.as_tensor(context)
            if context.dim() not in (1, 2) or context.shape[-1] != flow.context_features:
                raise ValueError(f"expected a context of shape ({flow.context_features},) or "
                                 f"(batch, {flow.context_features}), got {tuple(context.shape)}")
            batch_shape = context.shape[:-1]
        elif flow.context_features:
            raise ValueError(f"this flow needs a context of {flow.context_features} features")
        self.context = context
        self._repeat = torch.Size()
        super().__init__(batch_shape=batch_shape, event_shape=torch.Size([flow.features]),
                         validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: FlowDistribution | None = None) -> FlowDistribution:
        """The same flow repeated over ``batch_shape``; its trailing dimensions must be the
        context's batch (none for an unbatched context)."""
        batch_shape = torch.Size(batch_shape)
        own = self._context_batch()
        if batch_shape[len(batch_shape) - len(own):] != own or len(batch_shape) < len(own):
            raise ValueError(f"cannot expand a batch of {tuple(own)} contexts to {tuple(batch_shape)}")
        expanded = copy.copy(self)
        expanded._repeat = batch_shape[:len(batch_shape) - len(own)]
        Distribution.__init__(expanded, batch_shape, self.event_shape, validate_args=False)
        return expanded

    def _context_batch(self) -> torch.Size:
        return torch.Size() if self.context is None else self.context.shape[:-1]

    # --- sampling -------------------------------------------------------------------------------

    def _rows(self, count: int) -> Tensor | None:
        """The context for ``count`` draws of every batch member (batch varies fastest)."""
        if self.context is None:
            return None
        context = self.context.reshape(-1, self.flow.context_features)
        return context.repeat(count * math.prod(self._repeat), 1)

    def _count(self, sample_shape: torch.Size) -> int:
        return math.prod(sample_shape) * math.prod(self.batch_shape)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Pathwise samples of shape ``sample_shape + batch_shape + event_shape``."""
        shape = self._extended_shape(torch.Size(sample_shape))
        count = math.prod(torch.Size(sample_shape))
        return self.flow.rsample(self._count(torch.Size(sample_shape)), self._rows(count)).reshape(shape)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Samples without a gradient path."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
        """Pathwise samples and their log-density from the flow's single inverse pass."""
        sample_shape = torch.Size(sample_shape)
        count = math.prod(sample_shape)
        x, log_q = self.flow.rsample_and_log_prob(self._count(sample_shape), self._rows(count))
        return x.reshape(self._extended_shape(sample_shape)), log_q.reshape(sample_shape + self.batch_shape)

    # --- density --------------------------------------------------------------------------------

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(value)`` of shape ``value.shape[:-1]``; the batch dimensions must broadcast
        against ``batch_shape``."""
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value)
        if value.shape[-1:] != self.event_shape:
            raise ValueError(f"expected values with a last dimension of {self.flow.features}, got {tuple(value.shape)}")
        leading = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        value = value.expand(leading + self.event_shape)
        context = None
        if self.context is not None:
            context = self.context.expand(leading + self.context.shape[-1:]).reshape(-1, self.flow.context_features)
        flat = value.reshape(-1, self.flow.features).to(self._dtype())
        return self.flow.log_prob(flat, context).reshape(leading)

    def _dtype(self) -> torch.dtype:
        parameter = next(self.flow.parameters(), None)
        return parameter.dtype if parameter is not None else self.flow.base.loc.dtype

    def entropy_estimate(self, num_samples: int = 1024) -> Tensor:
        """Monte Carlo entropy ``-E[log q]`` (pathwise, differentiable), per batch member."""
        _, log_q = self.rsample_and_log_prob((num_samples,))
        return -log_q.mean(0)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError("a flow has no closed-form mean; average rsample() draws")

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError("a flow has no closed-form variance; use the variance of sample() draws")
