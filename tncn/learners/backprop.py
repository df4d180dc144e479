"""Back-propagation of errors (Rumelhart, Hinton & Williams 1986) by autograd: the reference rule.

∂L/∂W^l of the batch-mean output loss L (``net.loss``: cross-entropy, MSE or MAE of a classifier's
softmax or of an autoencoder's sigmoid reconstruction), computed by
``torch.autograd.grad`` and written into
``param.grad`` (assigned, not accumulated, like every other rule). The hidden activation must have
a derivative: sign and step units have f′ = 0 almost everywhere, so backprop is refused for them
rather than silently training only the output layer.
"""
from __future__ import annotations

import torch

from tncn.learners.base import Learner
from tncn.losses import RECONSTRUCTION_LOSSES

Tensor = torch.Tensor


def backprop_grads(net, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
    """The gradients of the batch-mean loss ``net.loss`` for ``list(net.parameters())``, and the loss.

    Leaves ``param.grad`` untouched (used by the angle diagnostics as the reference direction).
    """
    params = list(net.parameters())
    with torch.enable_grad():
        loss = net.loss.value(net.logits(x), y)
        grads = torch.autograd.grad(loss, params)
    return list(grads), loss.detach()


class Backprop(Learner):
    """Exact gradients of the batch-mean output loss by autograd."""

    name = "bp"
    needs_derivative = True
    reconstruction_losses = tuple(RECONSTRUCTION_LOSSES)

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write ∂L/∂θ into ``θ.grad`` for every parameter θ of the network; return L."""
        grads, loss = backprop_grads(self.net, x, y)
        for p, g in zip(self.net.parameters(), grads):
            p.grad = g
        return loss
