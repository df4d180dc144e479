"""Optimizer steps taken straight from an update's factors, without ``param.grad``.

A local rule's update of a weight is an outer product g = Aᵀ B of two batch-sized factors (A, B
of B rows; the clip factor and 1/B already folded into B), or for token inputs B rows added at
the token ids. Under the ``.grad`` contract g is written into ``param.grad`` and a ``torch.optim``
optimizer reads it back: with Nesterov momentum that is six weight-sized passes a step (write g;
read weight, g and momentum; write weight and momentum), over a working set of three
weight-sized arrays. ``Fused`` applies the optimizer's own step as g is formed, in the optimizer's
own state (``state_dict`` unchanged, so a run may resume on either path):

- SGD without momentum: one ``addmm`` into the weight, w ← (1 − lr·λ) w − lr·Aᵀ B (λ the weight
  decay): read and write the weight.
- SGD with heavy-ball momentum μ, no weight decay: one ``addmm`` into the momentum buffer,
  b ← μ b + Aᵀ B (b ← Aᵀ B on the first step), then w ← w − lr·b.
- Nesterov (and heavy ball with weight decay), Adam (Kingma & Ba 2015): g is formed tile by
  tile of rows (``TILE`` elements, one scratch buffer per width, so a tile stays in cache), and
  torch's fused kernel steps those rows of the weight from it at once: the weight and its buffers
  are read and written once, g never reaches memory.
- Token rows (``rows``): with momentum, optionally stepped lazily (``tncn.lazy_rows``).

A sink is what a rule hands its updates to, through ``outer(name, A, B, scale, tied)`` and
``rows(name, ids, R, scale)``: ``GradSink`` keeps the ``.grad`` contract (for any optimizer),
``Collect`` returns new tensors (what a ``torch.compile``'d step hands over), ``Fused`` steps.
A ``tied`` update (P-TNCN's ΔE = c·ΔW) reuses the product of the update it is tied to, and
``Fused.outer``'s ``held`` rewrites a weight held as D + γ·W tile by tile. The numbers equal
``.grad`` + ``torch.optim`` within float rounding (tests/test_fused.py).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from tncn import lazy_rows
from tncn.layers import grad_buffer

Tensor = torch.Tensor


TILE = 2**19
"""Elements of the scratch buffer one update is formed in, tile by tile of rows (2 MiB in float32):
small enough to stay in a core's L2 cache while the optimizer's kernel reads it back."""


def product(A: Tensor, B: Tensor, scale, out: Optional[Tensor] = None) -> Tensor:
    """scale · Aᵀ B, into ``out`` (new when None). A float ``scale`` rides in the product as addmm's
    alpha; a tensor one (on a GPU, where reading it back would wait) scales the small factor B."""
    if isinstance(scale, Tensor):
        return torch.mm(A.T, B * scale, out=out)
    if out is None:
        out = A.new_empty(A.shape[1], B.shape[1])
    return torch.addmm(out, A.T, B, beta=0.0, alpha=scale, out=out)


class Collect:
    """The updates as new tensors {name: g} (no buffers: the shape a compiled graph returns)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.grads = model, {}

    def outer(self, name: str, A: Tensor, B: Tensor, scale, tied: Optional[tuple] = None) -> None:
        """g = scale · Aᵀ B for the parameter ``name``; ``tied`` (name, c): also c·g for that one."""
        self.grads[name] = g = product(A, B, scale)
        if tied is not None:
            self.grads[tied[0]] = g * tied[1]

    def rows(self, name: str, ids: Tensor, R: Tensor, scale) -> None:
        """g = scale · (the rows R added at rows ``ids`` of a zero matrix shaped as ``name``)."""
        self.grads[name] = torch.zeros_like(getattr(self.model, name)).index_add_(0, ids, R, alpha=scale)


class GradSink(Collect):
    """The ``.grad`` contract: each update written once, into the parameter's reused ``.grad``."""

    def outer(self, name, A, B, scale, tied=None):
        g = product(A, B, scale, out=grad_buffer(getattr(self.model, name)))
        if tied is not None:
            torch.mul(g, tied[1], out=grad_buffer(getattr(self.model, tied[0])))

    def rows(self, name, ids, R, scale):
        grad_buffer(getattr(self.model, name)).zero_().index_add_(0, ids, R, alpha=scale)


@functools.cache
def fused_sgd_steps(dtype: torch.dtype) -> bool:
    """Whether torch's fused CPU SGD kernel steps ``dtype`` weights correctly: torch 2.12-2.13
    leave every full SIMD block of a bfloat16 or float16 weight unchanged and garble the momentum
    (pytorch/pytorch#191763, fixed by #192545). Two Nesterov steps on 64 elements, exact in bf16."""
    p, g, b = torch.ones(64, dtype=dtype), torch.ones(64, dtype=dtype), torch.zeros(64, dtype=dtype)
    for first in (True, False):  # b = 1, p = 1 - 0.5·1.5 = 0.25; then b = 1.5, p = 0.25 - 0.5·1.75
        torch._fused_sgd_([p], [g], [b], weight_decay=0.0, momentum=0.5, lr=0.5, dampening=0.0, nesterov=True,
                          maximize=False, is_first_step=first)
    return bool((p == -0.625).all()) and bool((b == 1.5).all())


def unsupported(optimizer: torch.optim.Optimizer) -> Optional[str]:
    """Why ``Fused`` cannot step ``optimizer`` (None: it can). Only the stock SGD and Adam with
    the options their fused kernels take are recognised; every other optimizer keeps ``.grad``."""
    kind = type(optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam):
        return f"{kind.__name__} is not SGD or Adam"
    for group in optimizer.param_groups:
        flags = [k for k in ("maximize", "differentiable", "amsgrad", "decoupled_weight_decay", "capturable")
                 if group.get(k)]
        if kind is torch.optim.SGD and group["dampening"]:
            flags.append("dampening")
        if flags:
            return f"{kind.__name__} with {', '.join(flags)}"
        if kind is torch.optim.SGD and any(p.device.type == "cpu" and not fused_sgd_steps(p.dtype)
                                           for p in group["params"]):
            return "torch's fused CPU SGD kernel skips most bfloat16/float16 updates (pytorch/pytorch#191763)"
    return None


def is_linear(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's change of a weight is linear in the sequence of its updates (SGD,
    momentum or Nesterov without weight decay, one learning rate for every weight at a step)."""
    return type(optimizer) is torch.optim.SGD and all(g["weight_decay"] == 0 for g in optimizer.param_groups)


class Fused(GradSink):
    """Steps ``optimizer`` (``unsupported`` is None) from the factors (the module docstring)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lazy: tuple = ()):
        """``lazy``: names of the parameters whose ``rows`` updates are stepped lazily
        (``tncn.lazy_rows``), where the optimizer's group allows it (``lazy_rows.supports``)."""
        why = unsupported(optimizer)
        if why:
            raise ValueError(f"cannot fuse the update into this optimizer: {why}")
        super().__init__(model)
        self.optimizer = optimizer
        self.sgd = type(optimizer) is torch.optim.SGD
        self._group = {p: g for g in optimizer.param_groups for p in g["params"]}
        self._scratch: dict = {}
        self.lazy = {}  # {name: LazyRows}
        for name in lazy:
            prm = getattr(model, name)
            if lazy_rows.supports(optimizer, self.group(prm)):
                self.lazy[name] = lazy_rows.LazyRows(prm, self.group(prm), optimizer.state[prm])

    def group(self, prm: Tensor) -> dict:
        return self._group[prm]

    def _scratch_for(self, prm: Tensor, rows: int) -> Tensor:
        key = (min(rows, prm.shape[0]), prm.shape[1], prm.dtype, prm.device)
        if key not in self._scratch:
            self._scratch[key] = prm.new_empty(key[:2])
        return self._scratch[key]

    def outer(self, name, A, B, scale, tied=None, held=None):
        """As ``Collect.outer``, the update stepped into the optimizer; ``held`` (name, D, γ): after
        each tile of rows is stepped, that parameter's rows become D + γ·(the new rows), while the
        tile is still in cache (P-TNCN's held E^l = γ W^l + D^l)."""
        prm = getattr(self.model, name)
        g = self.group(prm)
        direct = self.sgd and tied is None and held is None and not isinstance(scale, Tensor)
        if direct and g["momentum"] == 0:
            prm.addmm_(A.T, B, beta=1.0 - g["lr"] * g["weight_decay"], alpha=-g["lr"] * scale)
            return
        if direct and not g["nesterov"] and g["weight_decay"] == 0:
            first = self._begin(prm)
            buf = self.optimizer.state[prm]["momentum_buffer"]
            buf.addmm_(A.T, B, beta=0.0 if first else g["momentum"], alpha=scale)
            prm.add_(buf, alpha=-g["lr"])
            return
        rows = max(1, TILE // prm.shape[1])
        scratch = self._scratch_for(prm, rows)
        other = None if tied is None else getattr(self.model, tied[0])
        first = self._begin(prm), other is not None and self._begin(other)
        for r in range(0, prm.shape[0], rows):
            part = product(A[:, r:r + rows], B, scale, out=scratch[:min(rows, prm.shape[0] - r)])
            self._step(prm, part, r, first[0])
            if other is not None:
                self._step(other, part.mul_(tied[1]), r, first[1])
            if held is not None:
                tile = slice(r, r + part.shape[0])
                torch.add(held[1][tile], prm[tile], alpha=held[2], out=getattr(self.model, held[0])[tile])

    def rows(self, name, ids, R, scale):
        if name in self.lazy:
            self.lazy[name].step(ids, R if scale == 1.0 else R * scale)
            return
        prm = getattr(self.model, name)
        g = self.group(prm)
        if self.sgd and g["momentum"] == 0 and not isinstance(scale, Tensor):
            if g["weight_decay"]:
                prm.mul_(1.0 - g["lr"] * g["weight_decay"])
            prm.index_add_(0, ids, R, alpha=-g["lr"] * scale)
            return
        grad = self._scratch_for(prm, prm.shape[0]).zero_().index_add_(0, ids, R, alpha=scale)
        self._step(prm, grad, 0, self._begin(prm))

    def _begin(self, prm: Tensor) -> bool:
        """Create the optimizer's state of ``prm`` if it has none (as torch's step does) and count
        an Adam step; returns whether this is its first step."""
        state = self.optimizer.state[prm]
        first = not state
        if self.sgd:
            if first and self.group(prm)["momentum"] != 0:
                state["momentum_buffer"] = torch.empty_like(prm)
            return first
        if first:
            state["step"] = torch.zeros((), dtype=torch.float32, device=prm.device)
            state["exp_avg"] = torch.zeros_like(prm)
            state["exp_avg_sq"] = torch.zeros_like(prm)
        state["step"] += 1
        return first

    def _step(self, prm: Tensor, grad: Tensor, r: int, first: bool) -> None:
        """The optimizer's own step of the rows r, r + 1, ... of ``prm`` that ``grad`` holds the
        update of (torch's fused kernels)."""
        g, state = self.group(prm), self.optimizer.state[prm]
        rows = slice(r, r + grad.shape[0])
        if self.sgd:
            momentum = g["momentum"]
            torch._fused_sgd_([prm[rows]], [grad], [state["momentum_buffer"][rows]] if momentum else [],
                              weight_decay=g["weight_decay"], momentum=momentum, lr=g["lr"], dampening=0.0,
                              nesterov=g["nesterov"], maximize=False, is_first_step=first and momentum != 0)
            return
        beta1, beta2 = g["betas"]
        torch._fused_adam_([prm[rows]], [grad], [state["exp_avg"][rows]], [state["exp_avg_sq"][rows]], [],
                           [state["step"]], lr=g["lr"], beta1=beta1, beta2=beta2, weight_decay=g["weight_decay"],
                           eps=g["eps"], amsgrad=False, maximize=False)
