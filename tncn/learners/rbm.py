"""Restricted Boltzmann machines trained by contrastive divergence (Hinton, "Training Products of
Experts by Minimizing Contrastive Divergence", Neural Computation 2002; persistent CD: Tieleman,
ICML 2008), as a rule for the feedforward ``tncn.mlp.MLP``, with a readout trained on top.

Each hidden layer l is the hidden layer of an RBM whose visible layer is the layer below
(v = h^{l-1}, in [0, 1]): energy E(v, h) = -v·b_v - h·c - v W h with the layer's own W^l and
c = b^l, and a visible bias b_v of the rule's own. Its free energy and conditionals are

    F(v) = -v·b_v - Σ_j softplus(c_j + (v W)_j),   p(h_j = 1 | v) = σ(c_j + (v W)_j),
    p(v_i = 1 | h) = σ(b_v,i + (W h)_i),

so the network's forward pass h^l = σ(a^l) is the RBM's mean hidden activity. CD-k estimates
the log-likelihood gradient ⟨v hᵀ⟩_data - ⟨v hᵀ⟩_model with a Gibbs chain of k steps started at
the data (or, persistent, at the chain's last state): each step samples h ~ p(h | v), then
v ~ p(v | h), and the negative statistics use p(h | v) of the chain's last v (binary units
throughout, so that a long chain samples the model: the data's grey levels enter only the
positive phase). The update, written into ``.grad`` with
the sign of a loss gradient and averaged over the batch:

    ∂W = -(vᵀ p(h|v) - v_kᵀ p(h|v_k)) / B,   ∂c = -mean(p(h|v) - p(h|v_k)),   ∂b_v = -mean(v - v_k)

All RBMs of a deep network learn at once, each on the mean activities of the one below (a
greedy stack trained concurrently); the softmax output layer is the readout, trained by the
true gradient of the output loss on the top hidden layer. No error reaches the hidden layers:
they model their input, unsupervised.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tncn.learners.base import Learner, UnitNoise, output_error
from tncn.options import BOOL, INT, argument, positive

Tensor = torch.Tensor


def free_energy(v: Tensor, weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor) -> Tensor:
    """F(v) = -v·b_v - Σ_j softplus(c_j + (v W)_j), one value per row of ``v``."""
    return -(v @ visible_bias) - torch.nn.functional.softplus(v @ weight + hidden_bias).sum(-1)


class RBM(Learner):
    """CD-k (or persistent CD) on every hidden layer, a readout on top.

    Args:
        net: a ``tncn.mlp.MLP`` with sigmoid hidden units (the RBM's mean hidden activity).
        k: Gibbs steps of the negative chain.
        persistent: keep the chains between steps (PCD; one chain per example of the batch, so
            the batch size must stay fixed) instead of restarting them at the data.
        seed: seeds the Gibbs samples.
    """

    name = "rbm"
    activation = "sigmoid"

    def __init__(self, net, k: int = 1, persistent: bool = False, seed: int = 0):
        super().__init__(net)
        if any(layer.bias is None for layer in net.layers[:-1]):
            raise ValueError("rule 'rbm' needs the hidden biases of the network (the RBMs' c)")
        if int(k) < 1:
            raise ValueError(f"k must be a positive number of Gibbs steps, got {k}")
        self.k, self.persistent = int(k), bool(persistent)
        w = net.layers[0].weight
        self.visible_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(layer.n_in, device=w.device, dtype=w.dtype)) for layer in net.layers[:-1])
        self.noise = UnitNoise(int(seed) + 1)
        self.chains: list[Optional[Tensor]] = [None] * (len(net.layers) - 1)

    OPTIONS = (
        argument(__init__, "k", INT, "Gibbs steps of the negative phase (CD-k)", check=positive),
        argument(__init__, "persistent", BOOL, "persistent chains (PCD) instead of restarting at the data"),
    )

    def _sample(self, p: Tensor) -> Tensor:
        gen = self.noise.generator(p.device)
        u = torch.rand(p.shape, generator=gen, device=gen.device, dtype=p.dtype).to(p.device)
        return (u < p).to(p.dtype)

    @torch.no_grad()
    def gibbs(self, l: int, v: Tensor, steps: int) -> Tensor:
        """``steps`` Gibbs steps of layer l's RBM from visible v: sample h ~ p(h | v), then v ~ p(v | h)."""
        for _ in range(steps):
            v = self._sample(self.visible_mean(l, self._sample(torch.sigmoid(self.net.layers[l].pre(v)))))
        return v

    def visible_mean(self, l: int, h: Tensor) -> Tensor:
        """p(v = 1 | h) of layer l's RBM."""
        return torch.sigmoid(h @ self.net.layers[l].weight.T + self.visible_bias[l])

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the CD updates of every hidden layer and the readout's gradient; return the loss."""
        a_s, h_s = self.net.forward_all(x)
        batch = x.shape[0]
        for l, layer in enumerate(self.net.layers[:-1]):
            v, p_h = h_s[l], h_s[l + 1]
            start = self.chains[l] if self.persistent and self.chains[l] is not None else v
            if start.shape != v.shape:
                raise ValueError(f"persistent chains hold {start.shape[0]} examples, this batch {batch}: "
                                 "keep the batch size fixed (or drop the short last batch)")
            v_k = self.gibbs(l, start, self.k)
            if self.persistent:
                self.chains[l] = v_k
            p_k = torch.sigmoid(layer.pre(v_k))
            layer.weight.grad = -(v.T @ p_h - v_k.T @ p_k) / batch
            layer.bias.grad = -(p_h - p_k).mean(0)
            self.visible_bias[l].grad = -(v - v_k).mean(0)
        e, loss = output_error(self.net, a_s[-1], h_s[-1], y)
        top = self.net.layers[-1]
        top.weight.grad = h_s[-2].T @ e / batch
        if top.bias is not None:
            top.bias.grad = e.mean(0)
        return loss

    @torch.no_grad()
    def free_energy(self, v: Tensor, l: int = 0) -> Tensor:
        """The free energy F(v) of layer l's RBM for each row of ``v`` (the data, for l = 0)."""
        layer = self.net.layers[l]
        return free_energy(v, layer.weight, layer.bias, self.visible_bias[l])

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """p(v | h) for h ~ p(h | x) of the first RBM: the mean of one Gibbs step from the data."""
        return self.visible_mean(0, self._sample(torch.sigmoid(self.net.layers[0].pre(x))))
