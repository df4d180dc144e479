"""Difference target propagation, DTP (Lee, Zhang, Fischer & Bengio, "Difference Target
Propagation", ECML/PKDD 2015, arXiv 1412.7525), as the authors' code trains it, with a pluggable
schedule for the noise of the inverses.

Each hidden layer gets a target; the last hidden one by a gradient step on the loss, the lower ones
through learned approximate inverses g^l, corrected by the difference that cancels the inverse's
own reconstruction error. Row-vector layout, h^0 = x, a^l = h^{l-1} W^l + b^l, h^l = f(a^l),
ŷ = g(a^L) (softmax for classes, sigmoid for an autoencoder's pixels), per-example output error
e^L = ∂ℓ/∂a^L (``tncn.losses``):

    ĥ^{L-1} = h^{L-1} - η̂ e^L W^{Lᵀ}                    (first target: η̂ ∂ℓ/∂h^{L-1} per example)
    ĥ^{l-1} = h^{l-1} + g^l(ĥ^l) - g^l(h^l),  g^l(h) = f(h V^l + c^l)    (l = L-1..2)
    δ^l = 2 (h^l - ĥ^l) ⊙ f′(a^l)                        (of ‖f(h^{l-1} W^l + b^l) - ĥ^l‖², l < L)
    ∂W^l = h^{l-1ᵀ} δ^l / B,  ∂b^l = Σ_batch δ^l / B;    ∂W^L, ∂b^L: the true gradient (δ^L = e^L)
    ε ~ N(0, σ_l²),  u = f((h^{l-1} + ε) W^l + b^l),  r = g^l(u) - (h^{l-1} + ε)
    δ_g = 2 r ⊙ g′,  ∂V^l = uᵀ δ_g / B,  ∂c^l = Σ_batch δ_g / B     (denoising inverse loss ‖r‖²)

Every local loss is a sum over units (no ½) and a mean over the batch, with its inputs and target
held constant; V^l has shape [n_l, n_{l-1}] and there is no inverse into the input. The noise σ_l
follows ``sigma_schedule`` (``noise_std``): fixed (the continuous net's 0.359830), annealed with
the epoch e as σ0 / (1 + e/τ) (the discrete net's 0.5 / (1 + e/50)) or adaptive, c times the
spread of the lower layer. Inverses and forward weights are trained on every batch
(``alternate="batch"``) or, as the official code does, in alternate passes: each epoch one pass
trains only the inverses, then one pass only the forward weights (``alternate="epoch"``).

Two traps of the official code (donghyunlee/dtp, ``conti_dtp.py``): (a) its first-target step
0.327736 multiplies the gradient of the batch-MEAN loss at batch 100, so its per-example step is
η̂ = 0.0033, and ``target_step`` here is per example (independent of the batch size); (b) its
7-layer script never updates two of its tensors (W6 and B5 are missing from its update list): here
every weight and bias is trained. Its anneal passes the epoch counted from 1; here e counts from 0.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from tncn.layers import Dense
from tncn.learners.base import Learner, UnitNoise, output_error, write_layer_grads
from tncn.losses import RECONSTRUCTION_LOSSES
from tncn.options import FLOAT, STR, argument, non_negative, positive

Tensor = torch.Tensor

SCHEDULES = ("fixed", "anneal", "adaptive")
ALTERNATIONS = ("batch", "epoch")
PHASES = ("inverse", "forward")


def noise_std(schedule: str, sigma: float, tau: float, epoch: int, h_lower: Tensor):
    """σ of the inverse's corruption of the lower layer ``h_lower``: ``fixed`` σ; ``anneal``
    σ / (1 + epoch/τ) (epoch counted from 0); ``adaptive`` σ · std(h_lower) over all entries of
    the minibatch (a 0-d tensor)."""
    if schedule == "fixed":
        return sigma
    if schedule == "anneal":
        return sigma / (1.0 + epoch / tau)
    if schedule == "adaptive":
        return sigma * h_lower.std(correction=0)
    raise ValueError(f"unknown sigma schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def _check(name: str, value, allowed=None, problem=None) -> None:
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    message = problem(value) if problem is not None else None
    if message:
        raise ValueError(f"{name} {message}, got {value!r}")


def _options(init) -> tuple:
    return (
        argument(init, "target_step", FLOAT, "η̂, the per-example gradient step of the first target "
                 "(on the last hidden layer)", check=positive),
        argument(init, "sigma", FLOAT, "σ of the inverses' noise (fixed), σ0 (anneal) or the factor c "
                 "of the lower layer's std (adaptive)", check=non_negative),
        argument(init, "sigma_schedule", STR, "noise of the inverses: fixed σ, anneal σ0/(1+epoch/τ), "
                 "adaptive c·std(lower layer)", choices=SCHEDULES),
        argument(init, "tau", FLOAT, "τ of the anneal schedule, in epochs", check=positive),
        argument(init, "alternate", STR, "train inverses and forward weights on every batch, or in "
                 "alternate passes per epoch (the official code's)", choices=ALTERNATIONS),
    )


class DifferenceTargetPropagation(Learner):
    """DTP. ``inverses[i]`` is g^{i+2}, mapping hidden layer i+2 to layer i+1 (weight [n_{i+2}, n_{i+1}]).

    Args:
        net: a ``tncn.mlp.MLP`` with a differentiable hidden activation f (the inverses use f
            too; SLWTA networks get LWTA inverses).
        target_step: η̂, the per-example gradient step that places the first target on the last
            hidden layer (the official code's 0.327736 on the batch-mean loss at batch 100 is
            0.0033). With Adam the update's scale hardly matters; a small η̂ keeps the targets
            where the inverses are near-linear: on MNIST (784-256×3-10 tanh, Adam 1e-3, batch 50,
            3 epochs of 10k examples, ``tncn classify --rule dtp --limit 10000 --epochs 3
            --schedule constant --target-step S``) 0.05, 0.1 and 0.2 tie (7.0 % validation error)
            and 1 or 2 do worse (7.2 %, 7.7 %).
        sigma: σ of the inverses' noise (fixed), σ0 (anneal) or the factor c (adaptive).
        sigma_schedule: ``fixed``, ``anneal`` (σ0 / (1 + e/τ), e the epoch from 0) or ``adaptive``
            (c · std of the lower layer's activity in the minibatch); see ``noise_std``.
        tau: τ of the anneal schedule, in epochs.
        alternate: ``batch``: every step trains the inverses and the forward weights; ``epoch``:
            ``phases`` makes each epoch one pass for the inverses, then one for the forward
            weights (the official schedule); the other group's ``.grad`` is None, so the
            optimizer leaves it alone.
        seed: seeds the initial inverses (normal, std 1/√fan-in) and the noise.

    After a step, ``discrepancy`` holds Σ_{l<L} ‖h^l - ĥ^l‖² and ``reconstruction`` the inverse
    loss ‖r‖² (averaged over the inverses), both means over the batch (0-d tensors).
    """

    name = "dtp"
    needs_derivative = True
    reconstruction_losses = tuple(RECONSTRUCTION_LOSSES)
    angle_phases = ("forward", None)

    def __init__(self, net, target_step: float = 0.1, sigma: float = 0.359830, sigma_schedule: str = "fixed",
                 tau: float = 50.0, alternate: str = "batch", seed: int = 0):
        super().__init__(net)
        _check("target_step", target_step, problem=positive)
        _check("sigma", sigma, problem=non_negative)
        _check("tau", tau, problem=positive)
        _check("sigma_schedule", sigma_schedule, SCHEDULES)
        _check("alternate", alternate, ALTERNATIONS)
        self.target_step, self.sigma, self.tau = float(target_step), float(sigma), float(tau)
        self.sigma_schedule, self.alternate, self.seed = sigma_schedule, alternate, int(seed)
        self.phase: Optional[str] = None
        self.epoch = 0
        gen = torch.Generator().manual_seed(self.seed)
        w = net.layers[0].weight
        self.inverses = nn.ModuleList(
            Dense(layer.n_out, layer.n_in, activation=_inverse_activation(net.act.name),
                  std=1.0 / math.sqrt(layer.n_out), generator=gen)
            .to(device=w.device, dtype=w.dtype)
            for layer in net.layers[1:-1]
        )
        self.discrepancy: Optional[Tensor] = None
        self.reconstruction: Optional[Tensor] = None
        self.units = UnitNoise(self.seed + 1)
        self.noise_stream = UnitNoise(self.seed + 2)

    OPTIONS = _options(__init__)

    # ------------------------------------------------------------------ schedule

    def phases(self, epoch: int) -> list:
        """The passes of ``epoch`` (``tncn.mlp.fit`` counts from 1): ["inverse", "forward"] when
        alternating per epoch, else [None] (one pass training everything). Records the epoch for
        the anneal schedule."""
        self.epoch = epoch - 1
        if self.alternate == "epoch":
            return list(PHASES)
        self.phase = None
        return [None]

    def set_phase(self, phase: Optional[str]) -> None:
        """Train only the inverses (``"inverse"``), only the forward weights (``"forward"``) or both (None)."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)} or None, got {phase!r}")
        self.phase = phase

    # ------------------------------------------------------------------ randomness

    def _units(self, device: torch.device) -> Optional[torch.Generator]:
        return self.units.for_units(self.net.act, device)

    def noise(self, h_s: list[Tensor]) -> list[Tensor]:
        """One draw of ε for the lower layer h^{l-1} of every inverse g^l, σ from the schedule."""
        gen = self.noise_stream.generator(h_s[0].device)
        out = []
        for h in h_s[1:len(self.inverses) + 1]:
            std = noise_std(self.sigma_schedule, self.sigma, self.tau, self.epoch, h)
            out.append(torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype) * std)
        return out

    # ------------------------------------------------------------------ the rule

    def _targets(self, h_s: list[Tensor], e: Tensor, units) -> list[Tensor]:
        """ĥ^1..ĥ^{L-1} from the per-example output error e^L (empty without hidden layers)."""
        if len(h_s) < 3:
            return []
        targets = [h_s[-2] - self.target_step * (e @ self.net.layers[-1].weight.T)]
        for g, h_lower, h in zip(reversed(self.inverses), reversed(h_s[1:-2]), reversed(h_s[2:-1])):
            targets.append(h_lower + g(targets[-1], units) - g(h, units))
        return targets[::-1]

    @torch.no_grad()
    def targets(self, x: Tensor, y: Tensor):
        """Forward pass and DTP targets: ``(h_s, targets, loss)`` with targets [ĥ^1, ..., ĥ^{L-1}]."""
        units = self._units(x.device)
        a_s, h_s = self.net.forward_all(x, units)
        e, loss = output_error(self.net, a_s[-1], h_s[-1], y)
        return h_s, self._targets(h_s, e, units), loss

    @torch.no_grad()
    def write_forward_grads(self, a_s: list[Tensor], h_s: list[Tensor], targets: list[Tensor], e: Tensor) -> None:
        """∂W^l, ∂b^l of the local losses ‖h^l - ĥ^l‖² (l < L) and the true gradient of the output layer."""
        deltas = [layer.act.backward(a, h, 2.0 * (h - t))
                  for layer, a, h, t in zip(self.net.layers, a_s, h_s[1:-1], targets)]
        write_layer_grads(self.net, h_s, deltas + [e])

    @torch.no_grad()
    def write_inverse_grads(self, h_s: list[Tensor], noise: list[Tensor]) -> Tensor:
        """∂V^l, ∂c^l of the denoising losses ‖g^l(f^l(h^{l-1} + ε)) - (h^{l-1} + ε)‖² for the given ε;
        returns those losses averaged over the inverses (mean over the batch)."""
        units = self._units(h_s[0].device)
        batch, total = h_s[0].shape[0], h_s[0].new_zeros(())
        for g, layer, h, eps in zip(self.inverses, self.net.layers[1:], h_s[1:], noise):
            corrupt = h + eps
            u = layer(corrupt, units)
            pre = g.pre(u)
            back = g.act(pre, units)
            r = back - corrupt
            delta = g.act.backward(pre, back, 2.0 * r) / batch
            g.weight.grad = u.T @ delta
            g.bias.grad = delta.sum(0)
            total = total + (r * r).sum(1).mean()
        return total / max(len(self.inverses), 1)

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the DTP updates of the parameters the phase trains into ``param.grad`` (the
        others' ``.grad`` set to None); return the mean loss."""
        units = self._units(x.device)
        a_s, h_s = self.net.forward_all(x, units)
        e, loss = output_error(self.net, a_s[-1], h_s[-1], y)
        targets = self._targets(h_s, e, units)
        if self.phase != "forward":
            self.reconstruction = self.write_inverse_grads(h_s, self.noise(h_s)) if len(self.inverses) else None
        else:
            _clear(self.inverses)
        if self.phase != "inverse":
            self.write_forward_grads(a_s, h_s, targets, e)
        else:
            _clear(self.net)
        self.discrepancy = sum(((h - t) ** 2).sum(1).mean() for h, t in zip(h_s[1:-1], targets)) if targets else None
        return loss


def _inverse_activation(name: str) -> str:
    """The activation of the inverses: the network's, made deterministic (SLWTA's inverse is LWTA,
    so that the difference g(ĥ) - g(h) is not the difference of two independent draws)."""
    return "lwta" + name[len("slwta"):] if name.startswith("slwta") else name


def _clear(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


class DTPSigma(DifferenceTargetPropagation):
    """DTP with adaptive noise: σ_l = c · std(h^{l-1}) over the minibatch (``sigma`` is c).

    Ororbia & Mali (AAAI 2019, arXiv 1805.11703) propose "DTP-σ", an adaptive-noise DTP, but its
    exact rule could not be read; this is one reading (σ from the lower layer's spread), labelled
    by its schedule, not the paper's rule. It differs from ``dtp`` only in its defaults: the
    adaptive schedule with c = 0.5 (the tanh layers' spread is near 0.3, so σ ≈ 0.15). MNIST,
    Adam 1e-3, batch 50, 3 epochs of 30k examples, validation error (``tncn classify --rule
    dtp-sigma --limit 30000 --epochs 3 --schedule constant --sigma C [--hidden ...]``): c = 0.5 and
    c = 4 tie at 3×256 tanh (4.86 % and 4.94 %), but at 8×256 large noise breaks the deep net:
    c = 0.25, 0.5, 1, 2, 4 gave 6.0, 6.9, 7.0, 12.3 and 15.5 %, against 6.3 % for ``dtp``'s
    fixed σ.
    """

    name = "dtp-sigma"

    def __init__(self, net, target_step: float = 0.1, sigma: float = 0.5, sigma_schedule: str = "adaptive",
                 tau: float = 50.0, alternate: str = "batch", seed: int = 0):
        super().__init__(net, target_step, sigma, sigma_schedule, tau, alternate, seed)

    OPTIONS = _options(__init__)
