"""What every feedforward learning rule shares (DESIGN.md §3): a module that owns the network
and the rule's own matrices, and writes each update into ``param.grad``.

The update of every parameter plays the role of a gradient (the optimizer subtracts it), averaged
over the batch as the gradient of the mean cross-entropy would be. The output error is the same
for every rule: softmax with cross-entropy gives ∂L/∂a^L = (ŷ - y)/B.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch import nn

from tncn.layers import Feedback, differentiable_activations
from tncn.options import FLOAT, Option, optional, positive

Tensor = torch.Tensor


class Learner(nn.Module):
    """Base of the rules: ``step(x, y)`` fills ``param.grad`` for ``parameters()`` and returns the loss.

    ``parameters()`` holds the network's weights and any learned matrices of the rule (LRA-E's E),
    so ``optimizer = torch.optim.X(learner.parameters())`` trains all of them; fixed random
    feedback matrices are buffers (in ``state_dict``, moved by ``.to(device)``, never trained).

    Declared on each rule's class: ``name`` (its key in ``tncn.learners.LEARNERS``), ``OPTIONS``
    (its keyword options as ``tncn.options.Option``s, defaults read from its signature, from which
    ``tncn classify --rule NAME`` builds its flags) and ``needs_derivative`` (it refuses
    activations without f′). A rule whose constructor takes ``seed`` draws random matrices from it.
    """

    name: ClassVar[str]
    OPTIONS: ClassVar[tuple] = ()
    needs_derivative: ClassVar[bool] = False

    def __init__(self, net):
        super().__init__()
        if self.needs_derivative:
            require_derivative(net, self.name)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def require_derivative(net, rule: str) -> None:
    """Refuse a network whose hidden activation has no derivative f′ (sign, step, ...)."""
    act = net.act
    if act is not None and not act.differentiable:
        raise ValueError(
            f"rule {rule!r} needs the derivative f' of the activation and {act.name!r} has none; "
            f"use lra-e, or one of {', '.join(a for a in differentiable_activations() if a != 'softmax')}"
        )


FEEDBACK_STD = Option("feedback_std", optional(FLOAT), None, "standard deviation of the fixed feedback matrices B "
                      "(none: 1/sqrt(width))", check=positive)
"""The option of the rules that draw fixed feedback (FA, DFA); their constructors' default is None too."""


def fixed_feedback(net, shapes: list[tuple[int, int]], std: Optional[float], seed: int) -> nn.ModuleList:
    """Fixed random feedback matrices B of the given [n_from, n_to] shapes, drawn in order from one
    generator seeded by ``seed``, on the network's device; ``std`` None takes 1/√n_to each."""
    gen = torch.Generator().manual_seed(int(seed))
    dev = net.layers[0].weight.device
    return nn.ModuleList(
        Feedback(n_from, n_to, learned=False, std=(1.0 / math.sqrt(n_to)) if std is None else std,
                 generator=gen).to(dev)
        for n_from, n_to in shapes
    )


def output_error(logits: Tensor, probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The per-example output error ŷ - onehot(y) and the mean cross-entropy loss."""
    e = probs.clone()
    e[torch.arange(len(y), device=y.device), y] -= 1.0
    loss = torch.nn.functional.cross_entropy(logits, y)
    return e, loss


def write_layer_grads(net, h_s: list[Tensor], deltas: list[Tensor]) -> None:
    """Set ∂W^l = h^{l-1ᵀ} δ^l / B and ∂b^l = Σ_batch δ^l / B for every layer l."""
    batch = h_s[0].shape[0]
    for layer, h_in, delta in zip(net.layers, h_s[:-1], deltas):
        layer.weight.grad = (h_in.T @ delta) / batch
        if layer.bias is not None:
            layer.bias.grad = delta.sum(0) / batch
