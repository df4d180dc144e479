"""Local representation alignment, LRA (Ororbia, Mali, Kifer & Giles, "Conducting Credit Assignment
by Aligning Local Representations", arXiv 1803.01834), its feedback-alignment form "LRA-fdbk".

Every hidden layer l gets a target z^l; its weights then descend a local loss ρ between its
activity h^l and that target, through its own f′. The target comes from the error of the layer
above, carried down by a fixed random matrix E^{l+1} [n_{l+1}, n_l] (entries N(0, σ_E²), σ_E ≈ 1 in
the paper). Row-vector layout, h^0 = x, a^l = h^{l-1} W^l + b^l, h^l = f(a^l), batch B:

    e^L = ∂ℓ/∂a^L                                   (output error, ``tncn.losses``)
    ā^l ← ā^l − β e^{l+1} E^{l+1},  z^l = f(ā^l)     (target, starting from ā^l = a^l)
    e^l = ρ′(p^l − z^l) ⊙ f′                        (local error, p^l = f(z^{l-1} W^l + b^l))
    ∂W^l = h^{l-1ᵀ} δ^l / B,  ∂b^l = Σ_batch δ^l / B,  δ^l = ρ′(h^l − z^l) ⊙ f′(a^l)
    then each layer's (∂W^l, ∂b^l) is rescaled to a Frobenius norm of at most c (``clip``)

The local loss ρ is the paper's Cauchy (log-penalty) loss Σ log(1 + (h − z)²), with
ρ′(d) = 2d / (1 + d²), bounded by 1, so that a large discrepancy cannot blow up the signal sent
down; or the Gaussian ½ Σ (h − z)², ρ′(d) = d. K sweeps refine the targets (``steps``): each
sweep goes top-down and moves every target again; a layer's prediction p^l is made from the
(already moved) target of the layer below, so with K = 1 p^l = h^l and the sweep is a single
top-down pass. (Our reading of the paper's K-step loop; the paper trains with K = 1 for most of
its results.) The weight updates always compare the network's own activity h^l with the final
target. The total discrepancy Σ_{l<L} ρ(h^l − z^l) (mean over the batch) of the last step is
kept in ``discrepancy``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tncn.layers import Feedback
from tncn.learners.base import Learner, UnitNoise, output_error
from tncn.losses import RECONSTRUCTION_LOSSES
from tncn.options import FLOAT, INT, STR, argument, optional, positive

Tensor = torch.Tensor

LOCAL_LOSSES = ("cauchy", "gaussian")


def penalty(d: Tensor, kind: str) -> Tensor:
    """ρ(d) summed over units, per example: Σ log(1 + d²) (cauchy) or ½ Σ d² (gaussian)."""
    return torch.log1p(d * d).sum(-1) if kind == "cauchy" else 0.5 * (d * d).sum(-1)


def penalty_grad(d: Tensor, kind: str) -> Tensor:
    """ρ′(d): 2d / (1 + d²) (cauchy) or d (gaussian)."""
    return 2.0 * d / (1.0 + d * d) if kind == "cauchy" else d


def clip_norm_(tensors: list[Tensor], c: float) -> None:
    """Scale ``tensors`` in place so that their joint Frobenius norm is at most ``c``."""
    norm = torch.sqrt(sum((t * t).sum() for t in tensors))
    scale = torch.clamp(c / (norm + 1e-12), max=1.0)
    for t in tensors:
        t.mul_(scale)


class LRA(Learner):
    """LRA-fdbk. ``E[i]`` carries the error of layer i+2 to a target for layer i+1: shape [n_{i+2}, n_{i+1}].

    Args:
        net: a ``tncn.mlp.MLP`` with a differentiable hidden activation.
        beta: β, the step of the targets along the error sent down. Each layer's error is about
            2β·σ_E·√n times the one above (n its width), so at the paper's σ_E = 1 and width 256
            β = 0.03 keeps that gain near 1; β = 0.1 let the discrepancy of an 8×256 tanh net
            grow layer by layer (MNIST, 2 epochs of 20k examples, ``tncn classify --rule lra
            --hidden 256,...(8) --limit 20000 --epochs 2 --schedule constant --beta B``: 14.1 %
            validation error against 10.3 % at 0.03).
        local_loss: the local loss ρ, "cauchy" (the paper's) or "gaussian".
        steps: K, the number of top-down sweeps that refine the targets.
        e_std: standard deviation of the entries of the fixed random E (the paper's σ ≈ 1).
        clip: the largest Frobenius norm of each layer's update (∂W^l, ∂b^l); ``None``: no clipping.
        seed: seeds the draw of E (and the samples of stochastic units, whose targets and
            predictions reuse the noise of the unit's own sample: ``UnitNoise``).
    """

    name = "lra"
    needs_derivative = True
    reconstruction_losses = tuple(RECONSTRUCTION_LOSSES)

    def __init__(self, net, beta: float = 0.03, local_loss: str = "cauchy", steps: int = 1, e_std: float = 1.0,
                 clip: Optional[float] = None, seed: int = 0):
        super().__init__(net)
        if local_loss not in LOCAL_LOSSES:
            raise ValueError(f"unknown local loss {local_loss!r}; known: {', '.join(LOCAL_LOSSES)}")
        self.beta, self.local_loss, self.steps = float(beta), local_loss, int(steps)
        self.clip = None if clip is None else float(clip)
        gen = torch.Generator().manual_seed(int(seed))
        dev = net.layers[0].weight.device
        self.E = nn.ModuleList(
            Feedback(layer.n_out, layer.n_in, learned=False, std=float(e_std), generator=gen).to(dev)
            for layer in net.layers[1:]
        )
        self.units = UnitNoise(int(seed) + 1)
        self.discrepancy: Optional[Tensor] = None

    OPTIONS = (
        argument(__init__, "beta", FLOAT, "β, how far targets move along the error sent down", check=positive),
        argument(__init__, "local_loss", STR, "local loss: cauchy (log-penalty, the paper's) or gaussian",
                 choices=LOCAL_LOSSES),
        argument(__init__, "steps", INT, "K, top-down sweeps that refine the targets", check=positive),
        argument(__init__, "e_std", FLOAT, "standard deviation of the fixed random error matrices E",
                 check=positive),
        argument(__init__, "clip", optional(FLOAT), "largest norm of each layer's update (none: no clipping)",
                 check=positive),
    )

    @torch.no_grad()
    def targets(self, x: Tensor, y: Tensor):
        """Forward pass and refined targets: ``(a_s, h_s, targets, e_out, loss)``, targets [z^1..z^{L-1}]."""
        net = self.net
        states: list = []
        a_s, h_s = net.forward_all(x, self.units.for_units(net.act, x.device), states)
        replay = self.units.replay
        e_out, loss = output_error(net, a_s[-1], h_s[-1], y)
        hidden = net.layers[:-1]
        pre = [a.clone() for a in a_s[:-1]]  # ā^l
        z = list(h_s[1:-1])  # z^l, the targets, first the activities
        for sweep in range(self.steps):
            if sweep == 0:
                err = e_out
            else:
                logits = net.layers[-1].pre(z[-1])
                err, _ = output_error(net, logits, net.outputs(logits), y)
            for i in reversed(range(len(hidden))):
                pre[i] = pre[i] - self.beta * self.E[i](err)
                z[i] = hidden[i].act(pre[i], replay(states[i]))
                if i > 0:  # the error of this layer's prediction from the (current) target below
                    p_pre = hidden[i].pre(z[i - 1])
                    p = hidden[i].act(p_pre, replay(states[i]))
                    err = hidden[i].act.backward(p_pre, p, penalty_grad(p - z[i], self.local_loss))
        return a_s, h_s, z, e_out, loss

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the LRA updates of W, b into ``param.grad``; return the batch-mean loss."""
        a_s, h_s, z, e_out, loss = self.targets(x, y)
        batch = x.shape[0]
        layers = self.net.layers
        deltas = [layer.act.backward(a, h, penalty_grad(h - t, self.local_loss))
                  for layer, a, h, t in zip(layers[:-1], a_s[:-1], h_s[1:-1], z)] + [e_out]
        for layer, h_in, delta in zip(layers, h_s[:-1], deltas):
            grads = [(h_in.T @ delta) / batch] + ([delta.sum(0) / batch] if layer.bias is not None else [])
            if self.clip is not None:
                clip_norm_(grads, self.clip)
            layer.weight.grad = grads[0]
            if layer.bias is not None:
                layer.bias.grad = grads[1]
        self.discrepancy = (sum(penalty(h - t, self.local_loss).mean() for h, t in zip(h_s[1:-1], z))
                            if z else None)
        return loss
