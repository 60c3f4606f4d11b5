"""An amortised flow posterior q(z | x) in a small VAE on scikit-learn's 8x8 digits.

The encoder maps an image to features ``h(x)`` and, by a linear layer, to ``loc(x)`` and
``log_scale(x)``. The posterior over the latent ``z`` is either that diagonal Gaussian (the
classic VAE), or ``z = loc(x) + scale(x) * y`` with ``y`` drawn from a conditional flowkit flow
(an IAF) whose context is ``h(x)``: the same encoder with a flow on top, starting as the Gaussian.
Both are trained by the ELBO with pathwise gradients: the flow's
``rsample_and_log_prob(n, context)`` draws ``y = f^{-1}(loc + scale * eps; h(x))`` and its
log-density in one pass, and gradients reach the flow, the encoder (through the context) and the
decoder.

The pixels (0-16) are binarised at 8 and modelled as Bernoulli. Held-out ELBO is in nats per
image (higher is better), averaged over 32 posterior draws per test image.

    python benchmarks/vae_digits.py                 # about 2 minutes on one core
    python benchmarks/vae_digits.py --epochs 40 --seeds 0 1 2

Results go to ``benchmarks/results/vae_digits.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import flowkit

RESULTS = Path(__file__).resolve().parent / "results"
PIXELS = 64


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """Binarised 8x8 digits (1797 images), split at random into train and test rows."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = torch.as_tensor(sklearn_digits().data >= 8, dtype=torch.float32)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    split = int(len(images) * (1 - test_fraction))
    return images[order[:split]], images[order[split:]]


class VAE(nn.Module):
    """Encoder features ``h(x)``, a posterior ``q(z | x)`` built on them, a Bernoulli decoder."""

    def __init__(self, posterior: str, latent: int = 4, hidden: int = 128, features: int = 32) -> None:
        super().__init__()
        if posterior not in ("gaussian", "flow"):
            raise ValueError(f"posterior must be gaussian or flow, got {posterior!r}")
        self.posterior, self.latent = posterior, latent
        self.encoder = nn.Sequential(nn.Linear(PIXELS, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, PIXELS))
        self.head = nn.Linear(features, 2 * latent)
        if posterior == "flow":
            self.flow = flowkit.iaf(latent, context_features=features, transforms=2, hidden_features=64)

    def sample_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One pathwise draw ``z ~ q(z | x)`` per row and ``log q(z | x)``."""
        context = self.encoder(x)
        loc, log_scale = self.head(context).chunk(2, dim=-1)
        if self.posterior == "gaussian":
            eps = torch.randn_like(loc)
            z = loc + log_scale.exp() * eps  # the reparameterization trick
            log_q = (-0.5 * eps.square() - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)
            return z, log_q
        # The flow draws y ~ q(y | h(x)) pathwise (its base loc + scale * eps, then its inverse),
        # and the same affine map as the Gaussian's moves it: z = loc(x) + scale(x) * y. The flow
        # starts as the identity, so this posterior starts as the Gaussian one and can only add.
        y, log_q = self.flow.rsample_and_log_prob(x.shape[0], context)
        return loc + log_scale.exp() * y, log_q - log_scale.sum(-1)

    def elbo(self, x: Tensor) -> Tensor:
        """Single-sample ELBO of each row: ``log p(x | z) + log p(z) - log q(z | x)``."""
        z, log_q = self.sample_posterior(x)
        log_likelihood = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        log_prior = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_likelihood + log_prior - log_q


def train(posterior: str, train_rows: Tensor, epochs: int, seed: int, batch_size: int = 100,
          learning_rate: float = 2e-3) -> VAE:
    torch.manual_seed(seed)
    model = VAE(posterior)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps = epochs * math.ceil(len(train_rows) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        for batch in train_rows[torch.randperm(len(train_rows))].split(batch_size):
            loss = -model.elbo(batch).mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            schedule.step()
    return model


@torch.no_grad()
def held_out_elbo(model: VAE, rows: Tensor, draws: int = 32, seed: int = 1234) -> float:
    """Mean ELBO per test image, each averaged over ``draws`` posterior samples."""
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([model.elbo(rows) for _ in range(draws)]).mean().item()


def compare(epochs: int, seed: int) -> dict[str, float]:
    """Held-out ELBO of both posteriors trained on the same split with the same seed."""
    train_rows, test_rows = load_digits(seed)
    result = {}
    for posterior in ("gaussian", "flow"):
        start = time.perf_counter()
        model = train(posterior, train_rows, epochs, seed)
        result[posterior] = held_out_elbo(model, test_rows)
        result[f"{posterior}_seconds"] = time.perf_counter() - start
    result["flow_minus_gaussian"] = result["flow"] - result["gaussian"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        runs.append({"seed": seed, **compare(args.epochs, seed)})
        print(json.dumps(runs[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"command": "python benchmarks/vae_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (RESULTS / "vae_digits.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    lines = ["# VAE on 8x8 digits: held-out ELBO (nats per image, higher is better)", "",
             f"`{meta['command']}`; torch {meta['torch']}, {meta['threads']} thread(s), {meta['date']}.", "",
             "| seed | diagonal Gaussian q(z\\|x) | flow q(z\\|x) | flow - Gaussian | seconds (Gaussian / flow) |",
             "|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['seed']} | {run['gaussian']:.2f} | {run['flow']:.2f} | {run['flow_minus_gaussian']:+.2f} "
                     f"| {run['gaussian_seconds']:.0f} / {run['flow_seconds']:.0f} |")
    (RESULTS / "vae_digits.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
