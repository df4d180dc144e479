"""One P-TNCN training step replayed as a CUDA graph (``GraphStep``; the ``ptncn`` learner's
``cuda_graph`` option).

A ``PTNCN`` whose optimizer is fused into its step (``PTNCN.use_optimizer``, ``steps_optimizer``)
learns in place: weights, optimizer state and the stepper's scratch buffers keep their addresses,
and on a GPU the clip factors stay device tensors, so a warmed-up ``train_step`` has no host
synchronisation. ``GraphStep`` records that step once as a ``torch.cuda.CUDAGraph`` over static
buffers (the observation and mask, and the carried state y^l, x_{t-1}, m_{t-1}, ε^l) and replays
it: the captured body reads the static state, runs ``PTNCN._fused`` (steps 1-4 and the optimizer
step) and ends by copying the new state into the static state, so consecutive replays chain with
no host work but the two ``copy_`` of the new observation and mask. After each replay the
model's ``_state`` and ``_last`` are what an eager ``train_step`` leaves (``last_logits``,
``carry_state`` work as usual).

What runs eagerly instead: the first step after ``reset`` (which does not learn), and the first
``WARMUP`` learning steps after (re)building the buffers, which run the same body on the static
buffers on a side stream, as PyTorch's CUDA-graph notes require, so that every lazily created
buffer and optimizer state exists before capture. An eager call of the model in between (an
evaluation, a ``reset``, a loaded state) is noticed by identity of the state tensors, and the
static state is refreshed from the model (device copies) before the next replay.

The learning rate and the other hyperparameters of the optimizer's groups are Python floats
baked into the captured kernels: the graph is captured again whenever one of them changed (the
learner's schedule changes ``lr`` once per segment). A new optimizer or stepper (a load), new
parameter storage or a new batch size rebuild the buffers and warm up again.

``capture=False`` runs the same body eagerly on the static buffers at every step (no graph):
that path, which any device runs, is what the CPU tests compare with plain ``train_step``.
"""
from __future__ import annotations

from typing import Optional

import torch

from tncn.temporal.ptncn import PTNCN

Tensor = torch.Tensor

WARMUP = 3
"""Eager learning steps on the static buffers (on a side stream) before the first capture."""

HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "betas", "eps")
"""The optimizer-group entries the captured kernels bake in as Python numbers."""


def unsupported(model: PTNCN, device=None) -> Optional[str]:
    """Why ``GraphStep`` cannot capture ``model``'s training step on ``device`` (None: it can,
    once its optimizer is fused into the step; ``device`` None: any device, as ``capture=False``)."""
    device = None if device is None else torch.device(device)
    if device is not None and device.type != "cuda":
        return f"a CUDA graph runs on a CUDA device, not {device.type}"
    stochastic = [f.name for f in (model.f, model.phi) if f.needs_generator]
    if stochastic:
        return (f"the {stochastic[0]} activation draws from a torch.Generator on the host, which a CUDA graph "
                "cannot replay; train this model eagerly")
    return None


class GraphStep:
    """``step(x, mask)`` is ``model.train_step(x, mask)``, replayed as one CUDA graph once warm
    (see the module docstring). ``model`` must step its optimizer itself (``use_optimizer``)."""

    def __init__(self, model: PTNCN, capture: bool = True):
        if not model.steps_optimizer:
            raise ValueError("a CUDA graph needs the optimizer fused into the step (PTNCN.use_optimizer); "
                             "this model's updates go through .grad")
        why = unsupported(model, model.W1.device if capture else None)
        if why:
            raise ValueError(why)
        self.model, self.capture = model, bool(capture)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.captures = 0  # graphs captured so far (tests read it)
        self._layout = None  # what the static buffers were built for (_layout_key)
        self._hyper = None  # the optimizer hyperparameters the graph was captured with
        self._warm = 0  # warm-up steps run on the current buffers
        self._side: Optional[torch.cuda.Stream] = None  # the stream warm-up steps run on

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, x: Tensor, mask: Optional[Tensor] = None) -> bool:
        """One training step of the model on (x, mask); returns whether it learned (False on
        the first step after ``reset``, which runs eagerly)."""
        model = self.model
        st = model._state
        if st is None or st["t"] == 0 or not model.steps_optimizer:
            return model.train_step(x, mask)
        layout = self._layout_key()
        if layout != self._layout:
            self._build(layout)
        if not self._fits(x, mask):
            model._check_observation(x, mask)  # raises the model's own error
        if not self._synced():
            self._sync()
        self._x.copy_(x)
        if mask is None:
            self._m.fill_(1)
        else:
            self._m.copy_(mask)
        if not self.capture:
            out = self._body()
        elif self._warm < WARMUP:
            out = self._on_side_stream()
            self._warm += 1
        else:
            if self.graph is None or self._hyper != self._hyper_key():
                self._capture()
            self.graph.replay()
            out = self._out
        self._publish(out, st["t"])
        return True

    def _body(self) -> dict:
        """What the graph holds: the checked observation, ``PTNCN._fused`` on the static state
        (optimizer step included), then the static state refreshed with the new one."""
        model = self.model
        x, m = model._check_observation(self._x, self._m)
        y_s, x_s, m_s, eps_s = self._state
        logits, z, y, e, eps, _ = model._fused(y_s, x_s, m_s, eps_s, x, m, True, model._stepper)
        y_p, x_p, m_p, eps_p = self._prev  # the state this step started from (_last's *_prev)
        for dst, src in ((x_p, x_s), (m_p, m_s), *zip(y_p[1:], y_s[1:]), *zip(eps_p[1:], eps_s[1:])):
            dst.copy_(src)
        for dst, src in ((x_s, x), (m_s, m), *zip(y_s[1:], y[1:]), *zip(eps_s[1:], eps[1:])):
            dst.copy_(src)
        return dict(logits=logits, z=z, e=e, eps=eps)

    def _publish(self, out: dict, t: int) -> None:
        """Leave the model's ``_state`` and ``_last`` as an eager ``train_step`` at step t does."""
        model = self.model
        y_s, x_s, m_s, eps_s = self._state
        y_p, x_p, m_p, eps_p = self._prev
        model._last = dict(z=out["z"], e=out["e"], eps=out["eps"], y_prev=list(y_p), x_prev=x_p, m_prev=m_p,
                           eps_prev=list(eps_p), logits=out["logits"], t=t, corrected=True)
        model._state = dict(y=list(y_s), x=x_s, m=m_s, eps=list(eps_s), t=t + 1)
        model._hyp = None

    # ------------------------------------------------------------------ capture

    def _on_side_stream(self) -> dict:
        if self._side is None:
            self._side = torch.cuda.Stream(device=self.model.W1.device)
        side = self._side
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self._body()
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self) -> None:
        """Record ``_body`` (recording runs no kernel: the weights and state do not move)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self._body()
        self.graph, self._hyper = graph, self._hyper_key()
        self.captures += 1

    def _hyper_key(self) -> tuple:
        return tuple(tuple(g.get(k) for k in HYPER) for g in self.model._stepper.optimizer.param_groups)

    # ------------------------------------------------------------------ static buffers

    def _layout_key(self) -> tuple:
        """What the buffers and a captured graph depend on besides the hyperparameters."""
        model = self.model
        held = tuple(sorted((l, d.data_ptr()) for l, d in model._held.items()))
        return (model.batch_size, model.W1.dtype, model.W1.device, model._stepper,
                tuple(p.data_ptr() for p in model.parameters()), held)

    def _build(self, layout: tuple) -> None:
        """New static buffers shaped as the model's carried state; warm up again before capture."""
        st = self.model._state

        def like(s: dict) -> tuple:
            return ([None] + [torch.empty_like(t) for t in s["y"][1:]], torch.empty_like(s["x"]),
                    torch.empty_like(s["m"]), [None] + [torch.empty_like(t) for t in s["eps"][1:]])

        self._state, self._prev = like(st), like(st)
        self._x, self._m = torch.empty_like(st["x"]), torch.empty_like(st["m"])
        self.graph, self._hyper, self._out, self._warm = None, None, None, 0
        self._layout = layout

    def _fits(self, x: Tensor, mask: Optional[Tensor]) -> bool:
        """Whether x and mask can be copied into the static inputs as the model would read them."""
        if x.shape != self._x.shape or (mask is not None and mask.shape != self._m.shape):
            return False
        return x.dtype.is_floating_point != self.model.tokens

    def _synced(self) -> bool:
        """Whether the model's carried state is the static state (no eager call since the last step)."""
        st = self.model._state
        y_s, x_s, m_s, eps_s = self._state
        return (st["x"] is x_s and st["m"] is m_s and all(a is b for a, b in zip(st["y"][1:], y_s[1:]))
                and all(a is b for a, b in zip(st["eps"][1:], eps_s[1:])))

    def _sync(self) -> None:
        """Copy the model's carried state into the static state (device copies, no host wait)."""
        st = self.model._state
        y_s, x_s, m_s, eps_s = self._state
        for dst, src in ((x_s, st["x"]), (m_s, st["m"]), *zip(y_s[1:], st["y"][1:]), *zip(eps_s[1:], st["eps"][1:])):
            dst.copy_(src)
