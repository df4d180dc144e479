"""Random feedback alignment (Lillicrap, Cownden, Tweed & Akerman, Nature Communications 2016).

Backprop's backward pass with each transposed forward weight (W^{l+1})ᵀ replaced by a fixed random
matrix B^{l+1} of the same shape (the network of ``tncn.mlp``), computed explicitly under ``torch.no_grad()``:

    δ^L = ∂ℓ/∂a^L (ŷ - t for cross-entropy),    δ^l = (δ^{l+1} B^{l+1}) ⊙ f′(a^l),
    ∂W^l = h^{l-1ᵀ} δ^l / B,  ∂b^l = Σ_batch δ^l / B.

With B^{l+1} = (W^{l+1})ᵀ this is exactly backprop. The B are buffers (``tncn.layers.Feedback``).
"""
from __future__ import annotations


import torch

from tncn.learners.base import FixedFeedbackRule, output_error, write_layer_grads
from tncn.losses import RECONSTRUCTION_LOSSES

Tensor = torch.Tensor


class FeedbackAlignment(FixedFeedbackRule):
    """FA. ``feedback[i]`` carries the error from layer i+2 down to layer i+1: shape [n_{i+2}, n_{i+1}],
    the shape of (W^{i+2})ᵀ (options: ``FixedFeedbackRule``)."""

    name = "fa"
    reconstruction_losses = tuple(RECONSTRUCTION_LOSSES)

    @staticmethod
    def shapes(net) -> list[tuple[int, int]]:
        return [(layer.n_out, layer.n_in) for layer in net.layers[1:]]

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the FA update into ``param.grad``; return the mean loss."""
        a_s, h_s = self.net.forward_all(x)
        e, loss = output_error(self.net, a_s[-1], h_s[-1], y)
        deltas = [e]
        for layer, back, a, h in zip(
            reversed(self.net.layers[:-1]), reversed(self.feedback), reversed(a_s[:-1]), reversed(h_s[1:-1])
        ):
            deltas.append(layer.act.backward(a, h, back(deltas[-1])))
        write_layer_grads(self.net, h_s, deltas[::-1])
        return loss
