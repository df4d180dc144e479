"""The one optimizer factory of tncn, its declared options and a lazily built optimizer.

Every learner (sequence or feedforward) writes its updates into ``param.grad`` and a stock
``torch.optim`` optimizer applies them (``tncn.learners.base``, ``tncn.temporal.base``), except
where a learner steps the optimizer itself, straight from its updates' factors (P-TNCN with SGD
or Adam: ``tncn.fused``; the same numbers, in the optimizer's own state). The names:

- ``sgd``: plain SGD (``momentum`` optional, 0 when not given);
- ``momentum``: SGD with heavy-ball momentum;
- ``nesterov``: SGD with Nesterov momentum, the P-TNCN reference (lr 0.075; Ororbia et al. 2020);
- ``adam``: Adam (Kingma & Ba 2015) with torch's defaults (betas 0.9, 0.999; eps 1e-8);
- ``rmsprop``: RMSprop with torch's defaults (alpha 0.99).

A sequence learner also declares ``SCHEDULE``, a learning-rate schedule by training step (one
segment of the stream, as ``--steps`` counts them), off by default: ``warmup`` W steps of linear
warm-up, then (``half_life`` h) an exponential decay that halves the rate every h steps. The
rate at step t (0-based) is lr · min(1, (t+1)/W) · 2^(−max(0, t+1−W)/h) (``lr_factor``). It
needs no total step count, so it works the same under a wall-clock budget, and its step count
lives in the optimizer's state (resuming continues it).

``momentum`` not given means ``MOMENTUM`` (0.95, the P-TNCN reference value) for ``momentum`` and
``nesterov``; it applies to the SGD family only. SGD and Adam use torch's fused kernels (one pass
over each weight; at H = 1000 the fused Nesterov step takes about half the time of the default
one, see docs/performance.md); their numbers equal the default kernels' up to float rounding.
SGD keeps torch's default kernel for bfloat16 and float16 weights on a CPU when the fused one
steps them wrongly (pytorch/pytorch#191763).
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional

import torch

from tncn import space
from tncn.options import FLOAT, INT, STR, Option, OptionError, non_negative, optional, positive

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop")
MOMENTUM = 0.95
"""Momentum of ``momentum`` and ``nesterov`` when none is given (the P-TNCN reference value)."""
KEYS = ("optimizer", "lr", "momentum", "weight_decay")


LR_RANGES = {"sgd": (0.005, 0.5), "momentum": (0.005, 0.3), "nesterov": (0.005, 0.3), "adam": (1e-4, 3e-2),
             "rmsprop": (1e-4, 1e-2)}
"""The learning rates ``tncn tune`` searches for each optimizer by default (log scale)."""


def optimizer_options(optimizer: str = "adam", lr: float = 1e-3, tune: tuple = (),
                      lr_range: Optional[tuple] = None) -> tuple[Option, ...]:
    """The declared optimizer options, with a learner's own default optimizer and learning rate.

    Their search space (``tncn.space``): the optimizers ``tune`` (default: only ``optimizer``),
    each with its learning-rate range (``LR_RANGES``; ``lr_range`` for the default optimizer)."""
    tune = tuple(tune) or (optimizer,)
    ranges = {name: (lr_range if name == optimizer and lr_range else LR_RANGES[name]) for name in tune}
    if len(tune) > 1:
        optimizer_space = space.choice(*tune, then={name: {"lr": space.log_range(*r)} for name, r in ranges.items()})
        lr_space = None
    else:
        optimizer_space, lr_space = None, space.log_range(*ranges[optimizer])
    return (
        Option("optimizer", STR, optimizer, "the optimizer that applies the updates", choices=OPTIMIZERS,
               space=optimizer_space),
        Option("lr", FLOAT, lr, "learning rate", check=positive, space=lr_space),
        Option("momentum", optional(FLOAT), None,
               f"momentum of sgd, momentum and nesterov (none: {MOMENTUM} for momentum and nesterov, 0 for sgd)",
               check=lambda v: None if v is None or 0 <= v < 1 else "must be in [0, 1)"),
        Option("weight_decay", FLOAT, 0.0, "L2 weight decay", check=non_negative),
    )


SCHEDULE = (
    Option("warmup", INT, 0, "training steps of linear learning-rate warm-up (0: none)", check=non_negative),
    Option("half_life", optional(INT), None, "training steps after the warm-up in which the learning rate halves "
                                             "(none: constant)", check=positive),
)


def lr_factor(t: int, warmup: int, half_life: Optional[int]) -> float:
    """The learning-rate multiplier at training step ``t`` (0-based; the module docstring)."""
    factor = min(1.0, (t + 1) / warmup) if warmup else 1.0
    if half_life:
        factor *= 0.5 ** (max(0, t + 1 - warmup) / half_life)
    return factor


def _scheduled(group: dict, warmup: int, half_life: Optional[int]) -> None:
    """Set ``group["lr"]`` for its step count (``base_lr`` and ``scheduled_steps`` ride in the
    optimizer's state dict, so a resumed run continues its schedule)."""
    group.setdefault("base_lr", group["lr"])
    group.setdefault("scheduled_steps", 0)
    group["lr"] = group["base_lr"] * lr_factor(group["scheduled_steps"], warmup, half_life)


def optimizer_factory(name: str, lr: float, momentum: Optional[float] = None,
                      weight_decay: float = 0.0) -> Callable[[Iterable], torch.optim.Optimizer]:
    """Check the settings now and return ``params -> optimizer`` (see the module docstring).

    Building a torch optimizer imports torch's compiler stack (seconds), which a learner defers
    until it trains: evaluation and sampling never need it."""
    if name not in OPTIMIZERS:
        raise OptionError("optimizer", f"{{}} must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    for key, value, check in (("lr", lr, positive), ("weight_decay", weight_decay, non_negative)):
        if check(value):
            raise OptionError(key, f"{{}} {check(value)}, got {value}")
    if name in ("adam", "rmsprop"):
        if momentum is not None:
            raise OptionError("momentum", f"{{}} applies to sgd, momentum and nesterov, not {name}")
        if name == "adam":
            return lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        return lambda params: torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if momentum is None:
        momentum = 0.0 if name == "sgd" else MOMENTUM
    if not 0 <= momentum < 1 or (name != "sgd" and momentum == 0):
        allowed = "[0, 1)" if name == "sgd" else f"(0, 1) for {name}"
        raise OptionError("momentum", f"{{}} must be in {allowed}, got {momentum}")
    return lambda params: _sgd(params, lr=lr, momentum=momentum, nesterov=name == "nesterov",
                               weight_decay=weight_decay)


def _sgd(params, **options) -> torch.optim.SGD:
    """SGD with torch's fused kernel, unless a weight is one that kernel steps wrongly (bfloat16 or
    float16 on a CPU under torch 2.12-2.13: ``tncn.fused.fused_sgd_steps``)."""
    from tncn.fused import fused_sgd_steps

    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    fused = all(p.device.type != "cpu" or fused_sgd_steps(p.dtype) for p in tensors)
    return torch.optim.SGD(params, fused=fused, **options)


def make_optimizer(name: str, params, lr: float, momentum: Optional[float] = None,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params`` (see ``optimizer_factory``)."""
    return optimizer_factory(name, lr, momentum, weight_decay)(params)


class LazyOptimizer:
    """The optimizer that ``options`` (the ``KEYS``, and the ``SCHEDULE`` where given) name, built
    on first use (evaluation and sampling never need it); its state can be saved and loaded
    before it exists."""

    def __init__(self, options: dict, params: Callable[[], Iterable]):
        self._new = optimizer_factory(*(options[k] for k in KEYS))
        self._schedule = (options.get("warmup", 0), options.get("half_life"))
        self._params = params
        self._opt: Optional[torch.optim.Optimizer] = None
        self._pending: Optional[dict] = None  # a loaded state, applied when the optimizer is built

    def get(self) -> torch.optim.Optimizer:
        if self._opt is None:
            self._opt = self._new(self._params())
            if self._pending is not None:
                self._opt.load_state_dict(self._pending)
                self._pending = None
            if any(self._schedule):
                for group in self._opt.param_groups:
                    _scheduled(group, *self._schedule)
        return self._opt

    def advance(self) -> None:
        """One step of the learning-rate schedule (a sequence learner calls it once per training
        segment, so its steps are those of ``--steps``); nothing without a schedule."""
        if any(self._schedule):
            for group in self.get().param_groups:
                group["scheduled_steps"] += 1
                _scheduled(group, *self._schedule)

    def state_dict(self) -> dict:
        return self._pending if self._opt is None and self._pending is not None else self.get().state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._opt, self._pending = None, copy.deepcopy(state)  # never share moment buffers
