"""The one optimizer factory of tncn, its declared options and a lazily built optimizer.

Every learner (sequence or feedforward) writes its updates into ``param.grad`` and a stock
``torch.optim`` optimizer applies them (``tncn.learners.base``, ``tncn.temporal.base``). The names:

- ``sgd``: plain SGD (``momentum`` optional, 0 when not given);
- ``momentum``: SGD with heavy-ball momentum;
- ``nesterov``: SGD with Nesterov momentum, the P-TNCN reference (lr 0.075; Ororbia et al. 2020);
- ``adam``: Adam (Kingma & Ba 2015) with torch's defaults (betas 0.9, 0.999; eps 1e-8);
- ``rmsprop``: RMSprop with torch's defaults (alpha 0.99).

``momentum`` not given means ``MOMENTUM`` (0.95, the P-TNCN reference value) for ``momentum`` and
``nesterov``; it applies to the SGD family only. SGD and Adam use torch's fused kernels (one pass
over each weight; at H = 1000 the fused Nesterov step takes about half the time of the default
one, see docs/performance.md); their numbers equal the default kernels' up to float rounding.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional

import torch

from tncn import space
from tncn.options import FLOAT, STR, Option, OptionError, non_negative, optional, positive

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
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov",
                                          weight_decay=weight_decay, fused=True)


def make_optimizer(name: str, params, lr: float, momentum: Optional[float] = None,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params`` (see ``optimizer_factory``)."""
    return optimizer_factory(name, lr, momentum, weight_decay)(params)


class LazyOptimizer:
    """The optimizer that ``options`` (the ``KEYS``) name, built on first use (evaluation and
    sampling never need it); its state can be saved and loaded before it exists."""

    def __init__(self, options: dict, params: Callable[[], Iterable]):
        self._new = optimizer_factory(*(options[k] for k in KEYS))
        self._params = params
        self._opt: Optional[torch.optim.Optimizer] = None
        self._pending: Optional[dict] = None  # a loaded state, applied when the optimizer is built

    def get(self) -> torch.optim.Optimizer:
        if self._opt is None:
            self._opt = self._new(self._params())
            if self._pending is not None:
                self._opt.load_state_dict(self._pending)
                self._pending = None
        return self._opt

    def state_dict(self) -> dict:
        return self._pending if self._opt is None and self._pending is not None else self.get().state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._opt, self._pending = None, copy.deepcopy(state)  # never share moment buffers
