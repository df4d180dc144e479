"""Equilibrium propagation (Scellier & Bengio, "Equilibrium Propagation: Bridging the Gap between
Energy-Based Models and Backpropagation", Frontiers in Computational Neuroscience 2017) and
contrastive Hebbian learning (Movellan, "Contrastive Hebbian learning in the continuous Hopfield
model", 1991), on the layered network of ``tncn.mlp.MLP`` with its ``Dense`` weights used in both
directions (symmetric connections, no feedback matrix).

Notation (row-vector layout, batch B): the input x is clamped; the states s_1..s_L of the hidden
layers and the output layer settle; ρ is the hidden activation, and ρ(s_0) = x. The energy of the
paper's eq. (1), layered, and the cost of its eq. (3), without ½ as in the official code:

    E(s) = ½ Σ_k ‖s_k‖² − Σ_k ρ(s_{k−1}) W_k · ρ(s_k) − Σ_k b_k · ρ(s_k),
    C(s) = ‖ρ(s_L) − y‖²,   F = E + β C   (y the one-hot label).

Relaxation is gradient descent on F with step ε on all layers at once (Jacobi):
s_k ← s_k − ε ∂F/∂s_k, with ∂E/∂s_k = s_k − ρ′(s_k) ⊙ d_k and the drive
d_k = ρ(s_{k−1}) W_k + b_k + ρ(s_{k+1}) W_{k+1}ᵀ (the last term absent at the output). For the
hard sigmoid ρ = clip(s, 0, 1), the states are kept in [0, 1] and the step is the projected one
of the official code, s_k ← clip((1 − ε) s_k + ε d_k, 0, 1), and the nudge adds −2εβ(s_L − y).
For the smooth sigmoid and tanh the states are unbounded (the ½‖s‖² term bounds them). A phase
stops when no state moved by more than ``tolerance`` in a step, or after its step cap.

EP (the paper's eq. (10)): a free phase (β = 0) from the example's persistent particle (its free
state at the end of its previous visit; the first visit starts from a feedforward pass) gives
s⁰, written back to the particle; a nudged phase of ``nudged_steps`` steps from s⁰ with β gives
s^β. The update, written into ``.grad`` as the gradient of the batch-mean cost it estimates:

    ∂θ = (∂E/∂θ(s^β) − ∂E/∂θ(s⁰)) / β,   ∂E/∂W_k = −mean ρ(s_{k−1})ᵀ ρ(s_k),   ∂E/∂b_k = −mean ρ(s_k).

β's sign is drawn at random per batch (``random-sign``, as the official code does), or fixed
(``one-sided``, bias O(β)), or the default, the symmetric estimator of Laborieux et al.
("Scaling Equilibrium Propagation to Deep ConvNets by Drastically Reducing its Gradient
Estimator Bias", Frontiers in Neuroscience 2021), ∂θ = (∂E/∂θ(s^β) − ∂E/∂θ(s^−β)) / 2β, bias
O(β²) (``tests/test_ep.py`` checks both rates against the implicit gradient). It also cancels
the drift of a free phase stopped at its cap before its fixed point, which the one-sided
difference s^β − s⁰ takes for signal. The nudge moves one layer
per step: after k nudged steps from a fixed point only the top k layers have moved, so the
bottom layer needs ``nudged_steps`` ≥ L (the official recipes use 2L: 4, 6, 8 for 1, 2, 3 hidden
layers, which is the default here).

CHL: the same free phase; then a clamped phase with the output held at y (s_L = y) and the
hidden layers relaxed from s⁰ to their own fixed point s^c; ∂θ = ∂E/∂θ(s^c) − ∂E/∂θ(s⁰).
Without hidden layers it is the delta rule, ∂W = −mean xᵀ(y − ρ(s_L⁰)).

Prediction is the argmax of the output state after a free phase from the feedforward pass
(``logits``), relaxed for up to ``eval_steps`` steps. Per-layer learning rates (``lr_scale``)
become optimizer parameter groups: the official recipes' rates shrink towards the output.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from tncn.layers import get_activation
from tncn.learners.base import Learner
from tncn.options import BOOL, FLOAT, FLOATS, INT, STR, argument, optional, positive

Tensor = torch.Tensor

SETTLED = ("hard_sigmoid", "sigmoid", "tanh")
"""Monotone bounded activations the relaxation settles; hard_sigmoid keeps its states in [0, 1]."""
ESTIMATORS = ("random-sign", "one-sided", "symmetric")


def units(net):
    """ρ of the settling layers: the hidden activation (the hard sigmoid for a net without hidden layers)."""
    return net.act if net.act is not None else get_activation("hard_sigmoid")


def rho(act, s: Tensor) -> Tensor:
    """ρ(s): the states themselves for the hard sigmoid (kept in [0, 1]), else f(s)."""
    return s if act.name == "hard_sigmoid" else act(s)


def energy(net, x: Tensor, s: list[Tensor]) -> Tensor:
    """E(s) per example (the module docstring), with ρ(s_0) = x."""
    act = units(net)
    r = [x] + [rho(act, sk) for sk in s]
    e = sum(0.5 * (sk * sk).sum(-1) for sk in s)
    for k, layer in enumerate(net.layers):
        e = e - (layer.pre(r[k]) * r[k + 1]).sum(-1)
    return e


def output_cost(net, s_out: Tensor, target: Tensor) -> Tensor:
    """C(s) = ‖ρ(s_L) − y‖² per example."""
    r = rho(units(net), s_out)
    return ((r - target) ** 2).sum(-1)


class Settler:
    """The relaxation of one batch: its clamped input drive x W_1 + b_1, computed once, and
    ``step``/``relax`` on a list of states [s_1..s_L], through ``compiled`` (a
    ``torch.compile``'d ``jacobi_step``) where given.

    ``clamp_output``: hold s_L at the target (CHL's clamped phase) instead of relaxing it."""

    def __init__(self, net, x: Tensor, epsilon: float, compiled=None):
        act = units(net)
        self.net, self.act, self.eps, self.compiled = net, act, float(epsilon), compiled
        self.clipped = act.name == "hard_sigmoid"
        self.input_drive = net.layers[0].pre(x)

    def feedforward(self) -> list[Tensor]:
        """The states of one bottom-up pass: s_k = f(ρ(s_{k−1}) W_k + b_k), a start near the fixed point."""
        s = [self._bound(self.act(self.input_drive))]
        for layer in self.net.layers[1:]:
            s.append(self._bound(self.act(layer.pre(self.rho(s[-1])))))
        return s

    def _bound(self, s: Tensor) -> Tensor:
        return s.clamp(0.0, 1.0) if self.clipped else s

    def rho(self, s: Tensor) -> Tensor:
        return rho(self.act, s)

    def step(self, s: list[Tensor], beta: float = 0.0, target: Optional[Tensor] = None,
             clamp_output: bool = False) -> tuple[list[Tensor], float]:
        """One Jacobi step of s_k ← s_k − ε ∂F/∂s_k on every layer; the new states and max |Δs|."""
        new, moved = self._step(s, beta, target, clamp_output)
        return new, float(moved)

    def _step(self, s, beta, target, clamp_output):
        weights = [layer.weight for layer in self.net.layers]
        biases = [layer.bias for layer in self.net.layers]
        fn = self.compiled if self.compiled is not None else jacobi_step
        return fn(s, self.input_drive, weights, biases, self.eps, beta, target, clamp_output, self.act)

    def relax(self, s: list[Tensor], steps: int, tolerance: float, beta: float = 0.0,
              target: Optional[Tensor] = None, clamp_output: bool = False) -> tuple[list[Tensor], int]:
        """Up to ``steps`` steps, stopping once no state moves by more than ``tolerance``; the
        states and the number of steps run."""
        for t in range(1, steps + 1):
            s, moved = self._step(s, beta, target, clamp_output)
            if moved.item() <= tolerance:
                return s, t
        return s, steps


def jacobi_step(s: list[Tensor], input_drive: Tensor, weights: list[Tensor], biases: list, eps: float,
                beta: float, target: Optional[Tensor], clamp_output: bool, act) -> tuple[list[Tensor], Tensor]:
    """One step of s_k ← s_k − ε ∂F/∂s_k on all layers at once from the old states (the module
    docstring), as a pure function of tensors (``torch.compile`` traces it); the new states and
    the largest |Δs| as a 0-d tensor. ``clamp_output`` holds s_L."""
    clipped = act.name == "hard_sigmoid"
    r = s if clipped else [act(sk) for sk in s]
    last = len(s) - 1
    new, moved = [], []
    for k, sk in enumerate(s):
        if k == last and clamp_output:
            new.append(sk)
            continue
        if k == 0:
            d = input_drive
        else:
            d = r[k - 1] @ weights[k]
            if biases[k] is not None:
                d = d + biases[k]
        if k < last:
            d = d + r[k + 1] @ weights[k + 1].T
        grad = sk - d if clipped else sk - act.backward(sk, r[k], d)
        if k == last and beta:
            dc = 2.0 * (r[k] - target)
            grad = grad + beta * (dc if clipped else act.backward(sk, r[k], dc))
        nk = sk - eps * grad
        if clipped:
            nk = nk.clamp(0.0, 1.0)
        moved.append((nk - sk).abs().amax())
        new.append(nk)
    return new, torch.stack(moved).amax() if moved else torch.zeros((), dtype=input_drive.dtype)


def energy_grads(net, x: Tensor, s: list[Tensor], act) -> list[Tensor]:
    """∂E/∂θ at the states s for ``list(net.parameters())`` order per layer (W_k, then b_k),
    averaged over the batch: ∂E/∂W_k = −ρ(s_{k−1})ᵀ ρ(s_k) / B, ∂E/∂b_k = −mean ρ(s_k)."""
    batch = x.shape[0]
    r = [x] + [rho(act, sk) for sk in s]
    out = []
    for k, layer in enumerate(net.layers):
        out.append(-(r[k].T @ r[k + 1]) / batch)
        if layer.bias is not None:
            out.append(-r[k + 1].mean(0))
    return out


class _Settling(Learner):
    """What EP and CHL share: the settling network, persistent particles, the prediction by a
    free phase, per-layer learning rates and the count of relaxation steps."""

    activation = "hard_sigmoid"
    activations = SETTLED
    cost = "squared error of the settled output state, ||rho(s_L) - y||^2"
    indexed = True

    def __init__(self, net, epsilon: float, free_steps: Optional[int], tolerance: float, eval_steps: Optional[int],
                 lr_scale: Optional[list], persistent: bool, compile: bool):
        super().__init__(net)
        if not 0 < float(epsilon) <= 1:
            raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
        if lr_scale is not None and len(lr_scale) != len(net.layers):
            raise ValueError(f"lr_scale needs one factor per weight layer ({len(net.layers)}), got {len(lr_scale)}")
        hidden = max(1, len(net.layers) - 1)
        self.free_steps = 20 * hidden if free_steps is None else int(free_steps)
        self.epsilon, self.tolerance = float(epsilon), float(tolerance)
        self.eval_steps = 5 * self.free_steps if eval_steps is None else int(eval_steps)
        self.persistent = bool(persistent)
        self.compiled = torch.compile(jacobi_step, dynamic=True) if compile else None
        self.lr_scale = list(lr_scale) if lr_scale is not None else None
        self.particles: Optional[Tensor] = None  # [N, Σ n_k] free states by training example
        self.visited: Optional[Tensor] = None
        self.counts = {"batches": 0, "examples": 0, "free_steps": 0, "second_steps": 0, "seconds": 0.0,
                       "reach": torch.zeros(len(net.layers), dtype=torch.float64)}

    @property
    def act(self):
        return units(self.net)

    def param_groups(self, lr: float) -> list[dict]:
        """One group per weight layer (W_k with b_k) at lr · lr_scale[k]; without ``lr_scale``, one."""
        if self.lr_scale is None:
            return super().param_groups(lr)
        return [{"params": list(layer.parameters()), "lr": lr * f} for layer, f in zip(self.net.layers, self.lr_scale)]

    # ------------------------------------------------------------------ persistent particles
    def _start(self, settler: Settler, index: Optional[Tensor]) -> list[Tensor]:
        s = settler.feedforward()
        if index is None or not self.persistent:
            return s
        n = int(index.max()) + 1
        widths = [sk.shape[1] for sk in s]
        if self.particles is None or self.particles.shape[0] < n:
            grown = torch.zeros(n, sum(widths), device=s[0].device, dtype=s[0].dtype)
            seen = torch.zeros(n, dtype=torch.bool, device=s[0].device)
            if self.particles is not None:
                grown[:len(self.particles)] = self.particles
                seen[:len(self.visited)] = self.visited
            self.particles, self.visited = grown, seen
        old = self.visited[index].unsqueeze(1)
        stored = self.particles[index].split(widths, 1)
        return [torch.where(old, p, f) for p, f in zip(stored, s)]

    def _keep(self, s: list[Tensor], index: Optional[Tensor]) -> None:
        if index is not None and self.persistent:
            self.particles[index] = torch.cat(s, 1)
            self.visited[index] = True

    def free_phase(self, x: Tensor, index: Optional[Tensor] = None) -> tuple[Settler, list[Tensor], int]:
        settler = Settler(self.net, x, self.epsilon, self.compiled)
        s, steps = settler.relax(self._start(settler, index), self.free_steps, self.tolerance)
        self._keep(s, index)
        return settler, s, steps

    @torch.no_grad()
    def settle(self, x: Tensor) -> list[Tensor]:
        """The states [s_1..s_L] after a free phase of up to ``eval_steps`` steps from the feedforward pass."""
        settler = Settler(self.net, x, self.epsilon, self.compiled)
        return settler.relax(settler.feedforward(), self.eval_steps, self.tolerance)[0]

    def logits(self, x: Tensor) -> Tensor:
        """The settled output state s_L (its argmax is the prediction)."""
        return self.settle(x)[-1]

    def top_hidden(self, x: Tensor) -> Tensor:
        """The settled top hidden layer ρ(s_{L-1}) (``tncn.diagnostics.top_hidden``)."""
        if len(self.net.layers) < 2:
            raise ValueError("the network has no hidden layer to embed")
        return rho(self.act, self.settle(x)[-2])

    def _write(self, x: Tensor, s_a: list[Tensor], s_b: list[Tensor], scale: float) -> None:
        """θ.grad = scale · (∂E/∂θ(s_a) − ∂E/∂θ(s_b))."""
        ga, gb = energy_grads(self.net, x, s_a, self.act), energy_grads(self.net, x, s_b, self.act)
        for p, a, b in zip(self.net.parameters(), ga, gb):
            p.grad = (a - b) * scale

    def _count(self, batch: int, free: int, second: int, start: float, s0: list[Tensor],
               s1: list[Tensor]) -> None:
        c = self.counts
        c["reach"] += torch.stack([(a - b).pow(2).mean().sqrt() for a, b in zip(s1, s0)]).double().cpu()
        c["batches"] += 1
        c["examples"] += batch
        c["free_steps"] += free
        c["second_steps"] += second
        c["seconds"] += time.perf_counter() - start

    def measure(self, x: Optional[Tensor] = None) -> dict:
        """The relaxation during training (``x`` unused): mean steps per batch of the free phase
        and of the second phase(s) (both nudged phases of the symmetric estimator), milliseconds
        per example, and per layer (input side first) the rms move of the (first) second phase's
        end state from s⁰ (EP's nudge, CHL's clamp)."""
        c = self.counts
        if not c["batches"]:
            return {}
        return {"free_steps_per_batch": c["free_steps"] / c["batches"],
                "second_phase_steps_per_batch": c["second_steps"] / c["batches"],
                "ms_per_example": 1000.0 * c["seconds"] / c["examples"],
                "second_phase_reach": [float(r) / c["batches"] for r in c["reach"]]}


class EquilibriumPropagation(_Settling):
    """EP with persistent particles (the module docstring).

    Args:
        net: a ``tncn.mlp.MLP`` with hard_sigmoid (default), sigmoid or tanh hidden units; its
            output layer's softmax is not used (the output is a settling layer too).
        beta: the nudging strength β > 0.
        estimator: ``symmetric`` (±β, two nudged phases), ``random-sign`` (β's sign drawn per
            batch, the official code's) or ``one-sided`` (+β).
        epsilon: the relaxation step ε.
        free_steps: the free phase's step cap (none: 20 per hidden layer; the official recipes
            take 20, 150 and 500 for one, two and three hidden layers).
        nudged_steps: steps of each nudged phase (none: 2L, as the official recipes).
        tolerance: a phase stops once no state moves by more than this in a step.
        eval_steps: the step cap of the free phase that predicts (none: 5 × ``free_steps``; it
            starts from the feedforward pass, not from a particle).
        lr_scale: a learning-rate factor per weight layer, input side first (none: all 1).
        persistent: start each free phase from the example's particle (off: from the
            feedforward pass, as prediction does).
        compile: run the relaxation step through ``torch.compile`` (on this 2-core CPU it was
            no faster: ``scripts/bench_ep.py``).
        seed: seeds the signs of β.
    """

    name = "ep"

    def __init__(self, net, beta: float = 0.5, estimator: str = "symmetric", epsilon: float = 0.5,
                 free_steps: Optional[int] = None, nudged_steps: Optional[int] = None, tolerance: float = 1e-4,
                 eval_steps: Optional[int] = None, lr_scale: Optional[list] = None, persistent: bool = True,
                 compile: bool = False, seed: int = 0):
        super().__init__(net, epsilon, free_steps, tolerance, eval_steps, lr_scale, persistent, compile)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if not float(beta) > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta, self.estimator = float(beta), estimator
        self.nudged_steps = 2 * len(net.layers) if nudged_steps is None else int(nudged_steps)
        self.register_buffer("sign_seed", torch.tensor(int(seed)))  # in the state_dict; the same on every rank
        self._signs: Optional[tuple[int, torch.Generator]] = None

    OPTIONS = (
        argument(__init__, "beta", FLOAT, "nudging strength beta of the cost in the nudged phase", check=positive),
        argument(__init__, "estimator", STR, "random-sign (the sign of beta drawn per batch), one-sided (+beta) "
                 "or symmetric (+beta and -beta, Laborieux et al. 2021)", choices=ESTIMATORS),
        argument(__init__, "epsilon", FLOAT, "relaxation step", check=positive),
        argument(__init__, "free_steps", optional(INT), "step cap of the free phase (none: 20 x the number of "
                 "hidden layers)", check=positive),
        argument(__init__, "nudged_steps", optional(INT), "steps of the nudged phase (none: 2 x the number "
                 "of weight layers, the official recipes' ratio)", check=positive),
        argument(__init__, "tolerance", FLOAT, "a phase stops once no state moves by more than this", check=positive),
        argument(__init__, "eval_steps", optional(INT), "step cap of the free phase that predicts (none: 5 x "
                 "free-steps)", check=positive),
        argument(__init__, "lr_scale", optional(FLOATS), "learning-rate factor per weight layer, input side "
                 "first (none: all 1)"),
        argument(__init__, "persistent", BOOL, "start each free phase from the example's last free state "
                 "(off: from the feedforward pass)"),
        argument(__init__, "compile", BOOL, "run the relaxation step through torch.compile"),
    )

    def _sign_stream(self) -> torch.Generator:
        """The CPU generator of β's signs, started from ``sign_seed`` (again after a load)."""
        seed = int(self.sign_seed)
        if self._signs is None or self._signs[0] != seed:
            self._signs = (seed, torch.Generator().manual_seed(seed))
        return self._signs[1]

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor, index: Optional[Tensor] = None) -> Tensor:
        """Free phase, nudged phase(s), the EP update in ``.grad``; returns the mean cost C(s⁰)."""
        start = time.perf_counter()
        target = torch.nn.functional.one_hot(y, self.net.sizes[-1]).to(x.dtype)
        settler, s0, free = self.free_phase(x, index)
        beta = self.beta
        if self.estimator == "random-sign" and torch.rand((), generator=self._sign_stream()) < 0.5:
            beta = -beta
        s_b, nudged = settler.relax(s0, self.nudged_steps, self.tolerance, beta, target)
        if self.estimator == "symmetric":
            s_m, more = settler.relax(s0, self.nudged_steps, self.tolerance, -beta, target)
            self._write(x, s_b, s_m, 1.0 / (2 * beta))
            nudged += more
        else:
            self._write(x, s_b, s0, 1.0 / beta)
        self._count(len(x), free, nudged, start, s0, s_b)
        return output_cost(self.net, s0[-1], target).mean()


class ContrastiveHebbian(_Settling):
    """CHL: free phase, then the output clamped to the label (the module docstring).

    Args: as ``EquilibriumPropagation``'s, without β; the clamped phase relaxes like the free one.
    """

    name = "chl"

    def __init__(self, net, epsilon: float = 0.5, free_steps: Optional[int] = None, tolerance: float = 1e-4,
                 eval_steps: Optional[int] = None, lr_scale: Optional[list] = None, persistent: bool = True,
                 compile: bool = False):
        super().__init__(net, epsilon, free_steps, tolerance, eval_steps, lr_scale, persistent, compile)

    OPTIONS = tuple(o for o in EquilibriumPropagation.OPTIONS
                    if o.name in ("epsilon", "free_steps", "tolerance", "eval_steps", "lr_scale", "persistent", "compile"))

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor, index: Optional[Tensor] = None) -> Tensor:
        """Free phase, clamped phase, the CHL update in ``.grad``; returns the mean cost C(s⁰)."""
        start = time.perf_counter()
        target = torch.nn.functional.one_hot(y, self.net.sizes[-1]).to(x.dtype)
        settler, s0, free = self.free_phase(x, index)
        clamped = s0[:-1] + [target if self.act.name == "hard_sigmoid" else _inverse(self.act, target)]
        s_c, second = settler.relax(clamped, self.free_steps, self.tolerance, clamp_output=True)
        self._write(x, s_c, s0, 1.0)
        self._count(len(x), free, second, start, s0, s_c)
        return output_cost(self.net, s0[-1], target).mean()


def _inverse(act, target: Tensor) -> Tensor:
    """The state whose ρ is the target, clipped into the range of a smooth ρ (ρ(s_L) = y up to 1e-3)."""
    if act.name == "sigmoid":
        return torch.logit(target.clamp(1e-3, 1 - 1e-3))
    return torch.atanh(target.clamp(-1 + 1e-3, 1 - 1e-3))


