"""Shared layer primitives: activations by name, weight initialisers, dense layers, feedback matrices.

Every learner in tncn (P-TNCN, backprop, FA, DFA, LRA-E) builds its networks from these pieces,
so that learning rules can be compared on identical networks.

- ``ACTIVATIONS``: the activation registry. Each entry gives ``f(a)`` and, where it exists, the
  vector-Jacobian product ``vjp(a, h, g) = g · ∂f/∂a`` (elementwise ``g * f'(a)`` for pointwise
  functions, the full Jacobian for softmax). Non-differentiable activations (sign, step,
  stochastic binary) have ``vjp = None``: rules that need f′ refuse them with a clear error,
  rules such as LRA-E and P-TNCN use them as they are.
  ``ltanh`` is LeCun's scaled tanh, 1.7159·tanh(2a/3); ``hard_sigmoid`` is clip(a, 0, 1), the ρ
  of equilibrium propagation (Scellier & Bengio 2017).
  ``lwta`` and ``slwta`` are local winner-take-all units (Srivastava et al., "Compete to Compute",
  NeurIPS 2013): the units form blocks of k consecutive ones (k = 2; ``lwta:4`` names blocks of
  4), the winner of each block passes its input a and the others output 0. LWTA's winner is the
  largest a (the first on ties); stochastic LWTA (SLWTA) samples it from the softmax of the
  block's inputs. Their f′ is the winner mask: recomputed from a for LWTA, read back from h ≠ 0
  for SLWTA (a sampled winner whose input is exactly 0 counts as silent there).
- ``init_weight``: named initialisers (normal with std, uniform, orthogonal, zeros).
- ``Dense``: one synaptic layer ``a = x W (+ b)``, ``h = f(a)`` in the row-vector layout;
  ``readout_grad``: the exact gradient of a softmax or sigmoid readout, written in place.
- ``Feedback``: a matrix that carries errors backward, fixed random (a buffer, FA/DFA's B) or
  learned (a parameter, LRA-E's and P-TNCN's E).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    """An activation function ``f`` and, where it exists, its vector-Jacobian product."""

    name: str
    f: Callable[[Tensor], Tensor]
    vjp: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None
    needs_generator: bool = False
    pointwise: bool = True
    """Each output depends on its own input only (false for softmax and the LWTA blocks)."""
    block: int = 1
    """Units act in blocks of this many (LWTA's k): a layer's width must be a multiple of it."""
    two_valued: bool = False
    """The output takes two values only (sign, step, stochastic binary): it carries no scale."""

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None

    def __call__(self, a: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.needs_generator:
            return self.f(a, generator)  # type: ignore[call-arg]
        return self.f(a)

    def backward(self, a: Tensor, h: Tensor, g: Tensor) -> Tensor:
        """Return ``g · ∂f/∂a`` given the pre-activation ``a``, the output ``h = f(a)`` and ``g``."""
        if self.vjp is None:
            raise ValueError(
                f"activation {self.name!r} has no derivative; use a rule that does not need f' "
                f"(lra-e, P-TNCN) or a differentiable activation ({', '.join(differentiable_activations())})"
            )
        return self.vjp(a, h, g)


_LTANH_A, _LTANH_B = 1.7159, 2.0 / 3.0


def _stochastic_binary(a: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli(sigmoid(a)) samples in {0, 1}; reproducible through ``generator``.

    The uniform draws come from the generator's own device (a CPU generator serves CUDA tensors too).
    """
    p = torch.sigmoid(a)
    return (_uniform_like(p.shape, p, generator) < p).to(a.dtype)


def _uniform_like(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _blocks(a: Tensor, k: int) -> Tensor:
    """``a`` [..., n] as [..., n/k, k] (ValueError when k does not divide the width)."""
    n = a.shape[-1]
    if n % k:
        raise ValueError(f"winner-take-all blocks of {k} units need a layer width divisible by {k}, got {n}")
    return a.reshape(*a.shape[:-1], n // k, k)


def _winner_mask(blocks: Tensor, winner: Tensor) -> Tensor:
    return torch.zeros_like(blocks).scatter_(-1, winner, 1.0)


def _lwta_mask(a: Tensor, k: int) -> Tensor:
    blocks = _blocks(a, k)
    return _winner_mask(blocks, blocks.argmax(-1, keepdim=True)).reshape(a.shape)


def _slwta(a: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Each block's winner drawn from softmax(a_block) by inverse-CDF sampling; it passes a."""
    blocks = _blocks(a, k)
    cdf = torch.softmax(blocks, -1).cumsum(-1)
    u = _uniform_like((*blocks.shape[:-1], 1), blocks, generator)
    winner = (cdf < u).sum(-1, keepdim=True).clamp_(max=k - 1)
    return (blocks * _winner_mask(blocks, winner)).reshape(a.shape)


def winner_take_all(name: str, k: int = 2) -> Activation:
    """LWTA (``name = "lwta"``) or SLWTA (``"slwta"``) with blocks of ``k`` units."""
    k = int(k)
    if k < 2:
        raise ValueError(f"winner-take-all blocks need at least 2 units, got {k}")
    label = name if k == 2 else f"{name}:{k}"
    if name == "lwta":
        return Activation(label, lambda a: a * _lwta_mask(a, k), lambda a, h, g: g * _lwta_mask(a, k),
                          pointwise=False, block=k)
    if name == "slwta":
        return Activation(label, lambda a, gen=None: _slwta(a, k, gen), lambda a, h, g: g * (h != 0).to(g.dtype),
                          needs_generator=True, pointwise=False, block=k)
    raise ValueError(f"unknown winner-take-all activation {name!r}; known: lwta, slwta")


def _softmax_vjp(a: Tensor, h: Tensor, g: Tensor) -> Tensor:
    return h * (g - (g * h).sum(dim=-1, keepdim=True))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("tanh", torch.tanh, lambda a, h, g: g * (1.0 - h * h)),
        Activation("sigmoid", torch.sigmoid, lambda a, h, g: g * h * (1.0 - h)),
        Activation("relu", torch.relu, lambda a, h, g: g * (a > 0).to(g.dtype)),
        Activation(
            "hard_sigmoid",
            lambda a: torch.clamp(a, 0.0, 1.0),
            lambda a, h, g: g * ((a > 0) & (a < 1)).to(g.dtype),
        ),
        Activation(
            "relu6",
            lambda a: torch.clamp(a, 0.0, 6.0),
            lambda a, h, g: g * ((a > 0) & (a < 6)).to(g.dtype),
        ),
        Activation(
            "ltanh",
            lambda a: _LTANH_A * torch.tanh(_LTANH_B * a),
            lambda a, h, g: g * (_LTANH_A * _LTANH_B) * (1.0 - (h / _LTANH_A) ** 2),
        ),
        Activation("identity", lambda a: a, lambda a, h, g: g),
        Activation("softmax", lambda a: torch.softmax(a, dim=-1), _softmax_vjp, pointwise=False),
        Activation("sign", torch.sign, two_valued=True),
        Activation("step", lambda a: (a > 0).to(a.dtype), two_valued=True),
        Activation("stochastic_binary", _stochastic_binary, needs_generator=True, two_valued=True),
        winner_take_all("lwta"),
        winner_take_all("slwta"),
    ]
}


def two_valued_activations() -> list[str]:
    return [n for n, a in ACTIVATIONS.items() if a.two_valued]


def differentiable_activations() -> list[str]:
    return [n for n, a in ACTIVATIONS.items() if a.differentiable]


def lookup(registry: dict, name: str, what: str):
    """``registry[name]`` or a ValueError that lists the known names."""
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def get_activation(name: str) -> Activation:
    """The registered activation called ``name``, or ``lwta:K`` / ``slwta:K`` for blocks of K
    units (ValueError listing the known ones otherwise)."""
    if isinstance(name, str) and ":" in name:
        base, _, k = name.partition(":")
        if base in ("lwta", "slwta") and k.isdigit():
            return winner_take_all(base, int(k))
    return lookup(ACTIVATIONS, name, "activation")


# --------------------------------------------------------------------------- initialisers

def _normal(shape, std, generator, device, dtype):
    return torch.randn(shape, generator=generator, device=device, dtype=dtype) * std


def _uniform(shape, std, generator, device, dtype):
    # U(-r, r) with r = std·√3 has standard deviation std
    r = std * math.sqrt(3.0)
    return (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2.0 - 1.0) * r


def _orthogonal(shape, std, generator, device, dtype):
    rows, cols = shape
    q, r = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # unique, uniformly distributed
    q = q if rows >= cols else q.T
    return q[:rows, :cols].to(device=device, dtype=dtype)


def _zeros(shape, std, generator, device, dtype):
    return torch.zeros(shape, device=device, dtype=dtype)


INITIALISERS: dict[str, Callable] = {
    "normal": _normal,
    "uniform": _uniform,
    "orthogonal": _orthogonal,
    "zeros": _zeros,
}


def init_weight(
    shape: tuple[int, int],
    init: str = "normal",
    std: float = 0.05,
    generator: torch.Generator | None = None,
    device=None,
    dtype=torch.float32,
) -> Tensor:
    """A new weight matrix drawn by the initialiser ``init``.

    ``normal``: N(0, std²); ``uniform``: U(-std·√3, std·√3) (standard deviation std);
    ``orthogonal``: a random (semi-)orthogonal matrix (``std`` unused); ``zeros``: all zero.
    Random draws take ``generator`` (on the CPU) so a seed reproduces them on any device.
    """
    fn = lookup(INITIALISERS, init, "initialiser")
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"a weight shape needs two positive sizes, got {tuple(shape)}")
    w = fn(tuple(shape), std, generator, "cpu", torch.float32)
    return w.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- layers

def grad_buffer(prm: Tensor) -> Tensor:
    """``prm.grad``, allocated once and then reused: a local rule writes its update into it in
    place (``out=``), and the optimizer reads it there."""
    if prm.grad is None or prm.grad.shape != prm.shape:
        prm.grad = torch.empty_like(prm)
    return prm.grad


def readout_grad(readout: "Dense", inputs: Tensor, logits: Tensor, target: Tensor, weight: Tensor, rows: Tensor,
                 frames: bool) -> Tensor:
    """Write into ``param.grad`` of an affine ``readout`` (logits = inputs W + b) the exact
    gradient of its loss: the cross-entropy of the softmax against target ids, or (``frames``) the
    binary cross-entropy of a sigmoid per unit against target values, each row weighted by
    ``weight`` [B, 1]; ``rows`` is ``arange(B)``. Returns δ = ∂loss/∂logits."""
    if frames:
        delta = torch.sigmoid(logits) - target
    else:
        delta = torch.softmax(logits, dim=1)
        delta[rows, target] -= 1.0
    delta *= weight
    torch.mm(inputs.T, delta, out=grad_buffer(readout.weight))
    torch.sum(delta, 0, out=grad_buffer(readout.bias))
    return delta


class Dense(nn.Module):
    """One synaptic layer in the row-vector layout: ``a = x W (+ b)``, ``h = f(a)``.

    ``weight`` has shape [n_in, n_out]. ``forward`` returns ``h``; ``pre(x)`` returns ``a``.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        activation: str = "tanh",
        bias: bool = True,
        init: str = "normal",
        std: float = 0.05,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.act = get_activation(activation)
        self.weight = nn.Parameter(init_weight((n_in, n_out), init, std, generator))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    @property
    def n_in(self) -> int:
        return self.weight.shape[0]

    @property
    def n_out(self) -> int:
        return self.weight.shape[1]

    def pre(self, x: Tensor) -> Tensor:
        a = x @ self.weight
        return a + self.bias if self.bias is not None else a

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.act(self.pre(x), generator)

    def extra_repr(self) -> str:
        return f"{self.n_in} -> {self.n_out}, activation={self.act.name}, bias={self.bias is not None}"


class Feedback(nn.Module):
    """A matrix that carries errors backward: ``e ↦ e B``.

    ``learned=False``: a fixed random matrix stored as a buffer (FA, DFA).
    ``learned=True``: a parameter (the error weights E of LRA-E and P-TNCN), updated by a rule.
    """

    def __init__(
        self,
        n_from: int,
        n_to: int,
        learned: bool = False,
        init: str = "normal",
        std: float = 0.05,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        w = init_weight((n_from, n_to), init, std, generator)
        if learned:
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", w)
        self.learned = learned

    def forward(self, e: Tensor) -> Tensor:
        return e @ self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} -> {self.weight.shape[1]}, learned={self.learned}"
