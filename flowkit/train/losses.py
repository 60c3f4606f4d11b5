"""Training losses, kept apart from the model so one loop can minimise any of them.

The reverse-KL loss for variational fits lives in ``flowkit.estimators`` (it comes with a choice
of gradient estimator); this module holds maximum likelihood.
"""

from __future__ import annotations

from torch import Tensor, nn


def negative_log_likelihood(flow: nn.Module, x: Tensor, context: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood of the rows of ``x`` under ``flow``, in nats per row.

    ``flow`` is called rather than asked for ``log_prob`` so a ``Flow`` wrapped by
    ``DistributedDataParallel`` or ``torch.compile`` works unchanged (``Flow.forward`` is
    ``log_prob``).

    Args:
        flow: a ``Flow``, or a module wrapping one whose ``forward`` returns ``log_prob``.
        x: data of shape ``(batch, features)``.
        context: conditioning of shape ``(batch, context_features)``, or None.

    Returns:
        A scalar tensor.

    Example:
        >>> import torch, flowkit
        >>> flow = flowkit.realnvp(features=2, transforms=1)
        >>> loss = negative_log_likelihood(flow, torch.zeros(4, 2))
        >>> round(loss.item(), 4)  # the base N(0, I) at the origin: log(2 pi)
        1.8379
    """
    return -flow(x, context).mean()
