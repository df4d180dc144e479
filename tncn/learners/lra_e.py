"""Error-driven local representation alignment, LRA-E (Ororbia & Mali, "Biologically Motivated
Algorithms for Propagating Local Target Representations", AAAI 2019, arXiv 1805.11703).

Each hidden layer gets a target computed top-down from the error of the layer above, carried by
error weights E; its weights then move to reduce the local discrepancy between its activity and
that target (the paper's Algorithm 1, with the output error of softmax and
cross-entropy, or of any output loss of ``tncn.losses``: an autoencoder's reconstruction error
too). Row-vector layout, h^0 = x, a^l = h^{l-1} W^l + b^l, h^l = f(a^l):

    e^L = ∂ℓ/∂a^L  (ŷ - y for cross-entropy)     (output error, ``tncn.losses``)
    d^l = e^{l+1} E^{l+1}                         (E^{l+1}: [n_{l+1}, n_l])
    y^l = f(a^l - β d^l),   e^l = h^l - y^l       (target and local error, l = L-1..1)
    ∂W^l = h^{l-1ᵀ} e^l / B,   ∂b^l = Σ_batch e^l / B
    ∂E^{l+1} = γ (∂W^{l+1})ᵀ                       (or E kept fixed)

No derivative of f appears anywhere, so sign, step and stochastic binary units train. Two
additions of ours, for such units:

- **Relative targets** (``target_scale="relative"``): the step of unit j becomes
  β · max(1, rms_batch a^l_j / rms_batch d^l_j) · d^l_j, so that β is measured in units of the
  spread of the unit's own input (never less than the absolute step, so that a network started
  from zero weights, where every a = 0, still learns). A sign or step unit ignores the scale of
  a (sign(ca) = sign(a)), so an absolute step flips fewer and fewer targets as the weights grow,
  while a flipped unit sends an error of size 2 down whatever the scale; the relative step keeps
  both in proportion. It is the default for two-valued units ("auto"). MNIST, 3×256 units,
  centred inputs, one epoch, validation error, relative targets at Adam 2e-3 (``tncn classify
  --rule lra-e --activation A --epochs 1``) against absolute ones at Adam 1e-3 (``--target-scale
  absolute --lr 1e-3``; the best absolute rate tried, 3e-3 and 3e-4 did worse for sign units):
  sign 13.5 % against 23.7 %, step 12.3 % against 59.7 %, stochastic binary 35.6 % against 89.0 %
  (``tncn classify``'s defaults before them, sign units on raw pixels: 88.5 %). In deep sign
  networks (8×256) neither trains well, and the absolute step is the less bad (docs/learners.md).
- **Common random numbers** for stochastic units: the target y^l = f(a^l - β d^l) reuses the
  noise of the unit's own sample h^l = f(a^l), so that e^l = h^l - y^l is the effect of the shift,
  not the difference of two independent draws. The total
local discrepancy Σ_{l<L} ‖e^l‖² (mean over the batch) of the last step is kept in
``discrepancy``. With plain SGD, E - γ Wᵀ never changes from its initial value; with Adam (which
ignores a constant gradient scale, up to its ε) E - Wᵀ never changes: E = E₀ + (W - W₀)ᵀ. So the
smaller E₀, the closer E comes to Wᵀ as W grows. Weight decay changes that.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from tncn.layers import Feedback
from tncn.learners.base import Learner, UnitNoise, output_error, write_layer_grads
from tncn.losses import RECONSTRUCTION_LOSSES
from tncn.options import BOOL, FLOAT, STR, argument, optional, positive

Tensor = torch.Tensor

TARGET_SCALES = ("auto", "absolute", "relative")


def _rms(t: Tensor) -> Tensor:
    return t.pow(2).mean(0, keepdim=True).sqrt()


class LRAE(Learner):
    """LRA-E. ``E[i]`` carries the error of layer i+2 to a target for layer i+1: shape [n_{i+2}, n_{i+1}].

    Args:
        net: a ``tncn.mlp.MLP`` (any activation, differentiable or not).
        beta: β, how far a target moves from the activity (0.1, the paper's value). With smooth
            units each local error is about β·σ_E·√n times the one above (σ_E the scale of E,
            n the width), so with the default E deep networks want a larger β: at β = 0.1 the
            first of 8 layers of 256 gets updates near 1e-12 (scripts/compare_rules.py uses 0.3).
            With sign units a large β sets off cascades of flipped targets.
        gamma: γ, the factor of the error-weight update ∂E = γ ∂Wᵀ (1.0, the paper's value).
        learn_e: learn E (a parameter) or keep it fixed at its random draw (a buffer).
        e_std: standard deviation of the initial E^{l+1}; ``None`` takes 1/√n_l, the scale of the
            forward weights W^{l+1} whose transpose E stands in for (the authors' code draws
            E from N(0, 1); with sign units that scale sets off cascades of flipped targets).
        target_scale: "absolute" (the paper's step β d^l), "relative" (β in units of each unit's
            input spread, above) or "auto": relative for two-valued units (``Activation.two_valued``:
            sign, step, stochastic binary), absolute otherwise.
        seed: seeds the draw of E (and the samples of stochastic units).
    """

    name = "lra-e"
    reconstruction_losses = tuple(RECONSTRUCTION_LOSSES)

    def __init__(self, net, beta: float = 0.1, gamma: float = 1.0, learn_e: bool = True,
                 e_std: Optional[float] = None, target_scale: str = "auto", seed: int = 0):
        super().__init__(net)
        if target_scale not in TARGET_SCALES:
            raise ValueError(f"target_scale must be one of {', '.join(TARGET_SCALES)}, got {target_scale!r}")
        self.beta, self.gamma, self.learn_e, self.seed = float(beta), float(gamma), bool(learn_e), int(seed)
        if target_scale == "auto":
            target_scale = "relative" if net.act is not None and net.act.two_valued else "absolute"
        self.relative = target_scale == "relative"
        gen = torch.Generator().manual_seed(self.seed)
        dev = net.layers[0].weight.device
        self.E = nn.ModuleList(
            Feedback(layer.n_out, layer.n_in, learned=self.learn_e,
                     std=(1.0 / math.sqrt(layer.n_in)) if e_std is None else e_std, generator=gen).to(dev)
            for layer in net.layers[1:]
        )
        self.discrepancy: Optional[Tensor] = None
        self.units = UnitNoise(self.seed + 1)

    OPTIONS = (
        argument(__init__, "beta", FLOAT, "β, how far targets move from activities"),
        argument(__init__, "gamma", FLOAT, "γ, the error-weight update factor, ∂E = γ ∂Wᵀ"),
        argument(__init__, "learn_e", BOOL, "learn the error weights E (off: keep their random draw)"),
        argument(__init__, "e_std", optional(FLOAT), "standard deviation of the initial error weights E "
                 "(none: 1/sqrt(width))", check=positive),
        argument(__init__, "target_scale", STR, "target step: absolute β d, relative (β in units of each "
                 "unit's input spread), or auto (relative for sign, step and stochastic binary units)",
                 choices=TARGET_SCALES),
    )

    @torch.no_grad()
    def local_errors(self, x: Tensor, y: Tensor):
        """Forward pass and top-down targets: ``(h_s, errors, loss)`` with errors [e^1, ..., e^L]."""
        gen = self.units.for_units(self.net.act, x.device)
        states: list = []
        a_s, h_s = self.net.forward_all(x, gen, states)
        e, loss = output_error(self.net, a_s[-1], h_s[-1], y)
        errors = [e]
        for layer, E, a, h, state in zip(reversed(self.net.layers[:-1]), reversed(self.E), reversed(a_s[:-1]),
                                         reversed(h_s[1:-1]), reversed(states[:-1])):
            d = E(errors[-1])
            if self.relative:
                d = d * torch.clamp(_rms(a) / _rms(d).clamp_min(1e-30), min=1.0)
            target = layer.act(a - self.beta * d, self.units.replay(state))
            errors.append(h - target)
        return h_s, errors[::-1], loss

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the LRA-E updates of W, b (and E) into ``param.grad``; return the mean loss."""
        h_s, errors, loss = self.local_errors(x, y)
        write_layer_grads(self.net, h_s, errors)
        if self.learn_e:
            for E, layer in zip(self.E, self.net.layers[1:]):
                # contiguous: torch's fused optimizer kernels read a gradient in its parameter's layout
                E.weight.grad = (self.gamma * layer.weight.grad.T).contiguous()
        self.discrepancy = sum((e * e).sum(1).mean() for e in errors[:-1]) if len(errors) > 1 else None
        return loss
