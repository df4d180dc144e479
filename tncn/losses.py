"""Output losses of the feedforward classifier (``tncn.mlp.MLP``), each with its error signal.

The output layer is always a softmax, ŷ = softmax(a^L); the loss compares ŷ with the one-hot
label y, per example, and is averaged over the batch (the summary grid of Ororbia's LRA talk
trains with each of them):

- ``ce``: the categorical negative log-likelihood (CNLL), ℓ = −log ŷ_y, with ∂ℓ/∂a^L = ŷ − y;
- ``mse``: the squared error ℓ = ½ Σ_k (ŷ_k − y_k)², with ∂ℓ/∂ŷ = ŷ − y;
- ``mae``: the absolute error ℓ = Σ_k |ŷ_k − y_k|, with ∂ℓ/∂ŷ = sign(ŷ − y).

For ``mse`` and ``mae`` the error at a^L is that ∂ℓ/∂ŷ through the softmax's Jacobian,
ŷ ⊙ (g − ⟨g, ŷ⟩). ``OutputLoss.error`` returns the per-example ∂ℓ/∂a^L (every rule divides its
updates by the batch), ``OutputLoss.value`` the batch-mean loss as a differentiable tensor, from
which backprop and the angle diagnostics take their autograd gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tncn.layers import lookup

Tensor = torch.Tensor


def _onehot(y: Tensor, like: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(y, like.shape[-1]).to(like.dtype)


def _through_softmax(probs: Tensor, g: Tensor) -> Tensor:
    """g · ∂ŷ/∂a for ŷ = softmax(a), row by row."""
    return probs * (g - (g * probs).sum(-1, keepdim=True))


@dataclass(frozen=True)
class OutputLoss:
    """A loss on the softmax output: its batch-mean value and its per-example error ∂ℓ/∂a^L."""

    name: str
    help: str
    per_example: Callable[[Tensor, Tensor, Tensor], Tensor]  # (logits, probs, y) -> ℓ per example
    grad_probs: Callable[[Tensor, Tensor], Tensor] | None  # (probs, onehot) -> ∂ℓ/∂ŷ; None: ce

    def value(self, logits: Tensor, y: Tensor) -> Tensor:
        """The batch-mean loss of the logits ``a^L`` (differentiable)."""
        return self.per_example(logits, torch.softmax(logits, -1), y).mean()

    def error(self, logits: Tensor, probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The per-example error ∂ℓ/∂a^L [B, classes] and the batch-mean loss."""
        target = _onehot(y, probs)
        if self.grad_probs is None:
            e = probs - target
        else:
            e = _through_softmax(probs, self.grad_probs(probs, target))
        return e, self.per_example(logits, probs, y).mean()


LOSSES: dict[str, OutputLoss] = {
    loss.name: loss
    for loss in [
        OutputLoss("ce", "categorical negative log-likelihood (CNLL) of the softmax",
                   lambda a, p, y: torch.nn.functional.cross_entropy(a, y, reduction="none"), None),
        OutputLoss("mse", "squared error of the softmax probabilities against the one-hot label, halved",
                   lambda a, p, y: 0.5 * ((p - _onehot(y, p)) ** 2).sum(-1), lambda p, t: p - t),
        OutputLoss("mae", "absolute error of the softmax probabilities against the one-hot label",
                   lambda a, p, y: (p - _onehot(y, p)).abs().sum(-1), lambda p, t: torch.sign(p - t)),
    ]
}


def get_loss(name: str) -> OutputLoss:
    """The output loss called ``name`` (ValueError listing the known ones otherwise)."""
    return lookup(LOSSES, name, "output loss")
