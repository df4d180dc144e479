"""Output losses of the feedforward network (``tncn.mlp.MLP``), each with its output units and its
exact error signal ∂ℓ/∂a^L.

The loss decides the output layer: ``OutputLoss.output`` names the activation of its units
(``tncn.layers``), ŷ = g(a^L), and ``OutputLoss.classes`` whether the target y is a class id
(compared with its one-hot vector t) or the target tensor t itself. Every loss is per example
and averaged over the batch.

Classification (``LOSSES``; softmax outputs, y a class id; the summary grid of Ororbia's LRA talk
trains with each of them):

- ``ce``: the categorical negative log-likelihood (CNLL), ℓ = −log ŷ_y, with ∂ℓ/∂a^L = ŷ − t;
- ``mse``: the squared error ℓ = ½ Σ_k (ŷ_k − t_k)², with ∂ℓ/∂ŷ = ŷ − t;
- ``mae``: the absolute error ℓ = Σ_k |ŷ_k − t_k|, with ∂ℓ/∂ŷ = sign(ŷ − t).

Reconstruction (``RECONSTRUCTION_LOSSES``; sigmoid outputs x̂ = σ(a^L) for pixels in [0, 1], the
target t the input itself, as an autoencoder is trained):

- ``mse``: ℓ = ½ Σ_i (x̂_i − t_i)², with ∂ℓ/∂x̂ = x̂ − t;
- ``mae``: ℓ = Σ_i |x̂_i − t_i|, with ∂ℓ/∂x̂ = sign(x̂ − t);
- ``ce``: the binary cross-entropy per pixel, ℓ = −Σ_i [t_i log x̂_i + (1 − t_i) log(1 − x̂_i)],
  with ∂ℓ/∂a^L = x̂ − t (computed from a^L, finite for saturated units).

For ``ce`` the output units are the loss's canonical link and the error at a^L is ŷ − t; for
``mse`` and ``mae`` it is ∂ℓ/∂ŷ through the output activation's Jacobian (softmax:
ŷ ⊙ (g − ⟨g, ŷ⟩); sigmoid: g ⊙ x̂ (1 − x̂)). ``OutputLoss.error`` returns the per-example
∂ℓ/∂a^L (every rule divides its updates by the batch), ``OutputLoss.value`` the batch-mean loss
as a differentiable tensor, from which backprop and the angle diagnostics take their autograd
gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tncn.layers import get_activation, lookup

Tensor = torch.Tensor
F = torch.nn.functional


def _onehot(y: Tensor, like: Tensor) -> Tensor:
    return F.one_hot(y, like.shape[-1]).to(like.dtype)


@dataclass(frozen=True)
class OutputLoss:
    """A loss on the output units ``output``: its batch-mean value and its per-example error ∂ℓ/∂a^L."""

    name: str
    help: str
    output: str  # the output activation, a name in tncn.layers.ACTIVATIONS
    classes: bool  # y holds class ids (compared with their one-hot vectors); else y is the target tensor
    per_example: Callable[[Tensor, Tensor, Tensor], Tensor]  # (logits, outputs, y) -> ℓ per example
    grad_outputs: Callable[[Tensor, Tensor], Tensor] | None  # (outputs, target) -> ∂ℓ/∂ŷ; None: ∂ℓ/∂a = ŷ - t

    def outputs(self, logits: Tensor) -> Tensor:
        """ŷ = g(a^L), the output units' activity."""
        return get_activation(self.output)(logits)

    def target(self, y: Tensor, like: Tensor) -> Tensor:
        """The dense target t: the one-hot vector of each class id, or y itself."""
        return _onehot(y, like) if self.classes else y

    def value(self, logits: Tensor, y: Tensor) -> Tensor:
        """The batch-mean loss of the logits ``a^L`` (differentiable)."""
        return self.per_example(logits, self.outputs(logits), y).mean()

    def error(self, logits: Tensor, outputs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The per-example error ∂ℓ/∂a^L [B, outputs] and the batch-mean loss."""
        target = self.target(y, outputs)
        if self.grad_outputs is None:
            e = outputs - target
        else:
            e = get_activation(self.output).backward(logits, outputs, self.grad_outputs(outputs, target))
        return e, self.per_example(logits, outputs, y).mean()


def _squared(a: Tensor, p: Tensor, t: Tensor) -> Tensor:
    return 0.5 * ((p - t) ** 2).sum(-1)


def _absolute(a: Tensor, p: Tensor, t: Tensor) -> Tensor:
    return (p - t).abs().sum(-1)


LOSSES: dict[str, OutputLoss] = {
    loss.name: loss
    for loss in [
        OutputLoss("ce", "categorical negative log-likelihood (CNLL) of the softmax", "softmax", True,
                   lambda a, p, y: F.cross_entropy(a, y, reduction="none"), None),
        OutputLoss("mse", "squared error of the softmax probabilities against the one-hot label, halved",
                   "softmax", True, lambda a, p, y: _squared(a, p, _onehot(y, p)), lambda p, t: p - t),
        OutputLoss("mae", "absolute error of the softmax probabilities against the one-hot label",
                   "softmax", True, lambda a, p, y: _absolute(a, p, _onehot(y, p)), lambda p, t: torch.sign(p - t)),
    ]
}
"""The classification losses: softmax outputs, class ids as targets."""

RECONSTRUCTION_LOSSES: dict[str, OutputLoss] = {
    loss.name: loss
    for loss in [
        OutputLoss("mse", "squared error of the sigmoid outputs against the target pixels, halved", "sigmoid",
                   False, _squared, lambda p, t: p - t),
        OutputLoss("mae", "absolute error of the sigmoid outputs against the target pixels", "sigmoid", False,
                   _absolute, lambda p, t: torch.sign(p - t)),
        OutputLoss("ce", "binary cross-entropy of the sigmoid outputs against the target pixels, summed", "sigmoid",
                   False, lambda a, p, t: F.binary_cross_entropy_with_logits(a, t, reduction="none").sum(-1), None),
    ]
}
"""The reconstruction losses: sigmoid outputs, the target tensor (an autoencoder's input) as target."""


def get_loss(name: str) -> OutputLoss:
    """The classification loss called ``name`` (ValueError listing the known ones otherwise)."""
    return lookup(LOSSES, name, "output loss")


def get_reconstruction_loss(name: str) -> OutputLoss:
    """The reconstruction loss called ``name`` (ValueError listing the known ones otherwise)."""
    return lookup(RECONSTRUCTION_LOSSES, name, "reconstruction loss")
