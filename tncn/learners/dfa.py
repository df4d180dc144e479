"""Direct feedback alignment (Nøkland, "Direct Feedback Alignment Provides Learning in Deep Neural
Networks", NeurIPS 2016).

The output error reaches every hidden layer directly through a fixed random matrix B^l
[n_out, n_l] (n_out: the classes, or an autoencoder's pixels; the network of ``tncn.mlp``),
computed explicitly under ``torch.no_grad()`` (no backward hooks):

    δ^L = ∂ℓ/∂a^L (ŷ - t for cross-entropy),    δ^l = (δ^L B^l) ⊙ f′(a^l)  for l < L,
    ∂W^l = h^{l-1ᵀ} δ^l / B,  ∂b^l = Σ_batch δ^l / B.

With one hidden layer DFA and FA coincide. The B are buffers (``tncn.layers.Feedback``).
"""
from __future__ import annotations


import torch

from tncn.learners.base import FixedFeedbackRule, output_error, write_layer_grads
from tncn.losses import RECONSTRUCTION_LOSSES

Tensor = torch.Tensor


class DirectFeedbackAlignment(FixedFeedbackRule):
    """DFA. ``feedback[l-1]`` carries the output error to hidden layer l: shape [n_out, n_l]
    (options: ``FixedFeedbackRule``)."""

    name = "dfa"
    reconstruction_losses = tuple(RECONSTRUCTION_LOSSES)

    @staticmethod
    def shapes(net) -> list[tuple[int, int]]:
        return [(net.layers[-1].n_out, layer.n_out) for layer in net.layers[:-1]]

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the DFA update into ``param.grad``; return the mean loss."""
        a_s, h_s = self.net.forward_all(x)
        e, loss = output_error(self.net, a_s[-1], h_s[-1], y)
        deltas = [
            layer.act.backward(a, h, back(e))
            for layer, back, a, h in zip(self.net.layers[:-1], self.feedback, a_s[:-1], h_s[1:-1])
        ]
        write_layer_grads(self.net, h_s, deltas + [e])
        return loss
