"""What every feedforward learning rule shares: a module that owns the network
and the rule's own matrices, and writes each update into ``param.grad``.

The update of every parameter plays the role of a gradient (the optimizer subtracts it), averaged
over the batch as the gradient of the mean loss would be. The output error is the same for every
rule: ∂ℓ/∂a^L of the network's output loss (``net.loss``, ``tncn.losses``), per example; for
softmax with cross-entropy it is ŷ - y.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch import nn

from tncn.layers import Feedback, differentiable_activations
from tncn.options import FLOAT, argument, optional, positive

Tensor = torch.Tensor


class Learner(nn.Module):
    """Base of the rules: ``step(x, y)`` fills ``param.grad`` for ``parameters()`` and returns the loss.

    ``parameters()`` holds the network's weights and any learned matrices of the rule (LRA-E's E),
    so ``optimizer = torch.optim.X(learner.parameters())`` trains all of them; fixed random
    feedback matrices are buffers (in ``state_dict``, moved by ``.to(device)``, never trained).

    Declared on each rule's class: ``name`` (its key in ``tncn.learners.LEARNERS``), ``OPTIONS``
    (its keyword options as ``tncn.options.Option``s, defaults read from its signature, from which
    ``tncn classify --rule NAME`` builds its flags), ``needs_derivative`` (it refuses
    activations without f′), ``activation`` (the hidden activation it trains, None: any;
    ``tncn classify`` takes it as the rule's default) and ``activations`` (the ones it accepts
    where there are several; empty: ``activation`` only), and ``cost`` (a rule that minimises an
    objective of its own instead of ``net.loss`` describes it here, and its updates are not the
    feedforward network's gradient), ``reconstruction_losses`` (the names in
    ``tncn.losses.RECONSTRUCTION_LOSSES`` it trains autoencoders with; empty: none, as for the
    RBM, whose hidden layers never see the output error). A rule whose constructor takes ``seed``
    draws random matrices from it.
    """

    name: ClassVar[str]
    OPTIONS: ClassVar[tuple] = ()
    needs_derivative: ClassVar[bool] = False
    activation: ClassVar[Optional[str]] = None
    activations: ClassVar[tuple] = ()
    cost: ClassVar[Optional[str]] = None
    reconstruction_losses: ClassVar[tuple] = ()

    def __init__(self, net):
        super().__init__()
        if self.needs_derivative:
            require_derivative(net, self.name)
        allowed = self.activations or ((self.activation,) if self.activation else ())
        if allowed and net.act is not None and net.act.name not in allowed:
            raise ValueError(f"rule {self.name!r} trains {' or '.join(allowed)} hidden units "
                             f"(--activation {allowed[0]}), not {net.act.name!r}")
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def logits(self, x: Tensor) -> Tensor:
        """Class scores as the rule predicts them (``tncn.mlp.error_rate``): the network's a^L,
        unless the rule predicts otherwise (EP and CHL: the output after the free phase)."""
        return self.net.logits(x)

    def prepare(self, x: Tensor) -> None:
        """Set data-dependent starting values from the training inputs ``x`` before training
        (the RBM's visible biases); nothing by default."""

    def measure(self, x: Tensor) -> dict:
        """The rule's own measurements for the result, on the test inputs ``x`` (EP's relaxation
        cost, the RBM's pseudo-likelihood); none by default."""
        return {}

    def param_groups(self, lr: float) -> list[dict]:
        """The optimizer's parameter groups at base learning rate ``lr``: one, unless the rule
        gives its layers rates of their own (EP's per-layer rates)."""
        return [{"params": list(self.parameters()), "lr": lr}]


def require_derivative(net, rule: str) -> None:
    """Refuse a network whose hidden activation has no derivative f′ (sign, step, ...)."""
    act = net.act
    if act is not None and not act.differentiable:
        raise ValueError(
            f"rule {rule!r} needs the derivative f' of the activation and {act.name!r} has none; "
            f"use lra-e, or one of {', '.join(a for a in differentiable_activations() if a != 'softmax')}"
        )


class FixedFeedbackRule(Learner):
    """A rule that carries errors through fixed random matrices B (FA, DFA), kept in ``feedback``.

    Args:
        net: a ``tncn.mlp.MLP`` with a differentiable hidden activation.
        feedback_std: standard deviation of the entries of each B; ``None`` takes 1/√n for a B
            that carries an error to a layer of width n, the scale of the forward weights.
        seed: seeds the draw of the feedback matrices.
    """

    needs_derivative = True

    def __init__(self, net, feedback_std: Optional[float] = None, seed: int = 0):
        super().__init__(net)
        gen = torch.Generator().manual_seed(int(seed))
        dev = net.layers[0].weight.device
        self.feedback = nn.ModuleList(
            Feedback(n_from, n_to, learned=False, generator=gen,
                     std=(1.0 / math.sqrt(n_to)) if feedback_std is None else feedback_std).to(dev)
            for n_from, n_to in self.shapes(net)
        )

    OPTIONS = (argument(__init__, "feedback_std", optional(FLOAT), "standard deviation of the fixed feedback "
                        "matrices B (none: 1/sqrt(width))", check=positive),)

    @staticmethod
    def shapes(net) -> list[tuple[int, int]]:
        """The [n_from, n_to] shapes of the matrices B, drawn in this order."""
        raise NotImplementedError


class UnitNoise(nn.Module):
    """A stream of random draws for a rule (the samples of stochastic units, DTP's noise),
    reproducible from a seed kept in the ``state_dict`` (a loaded learner draws alike), and
    repeatable: ``tncn.mlp.MLP.forward_all(x, generator, states)`` records the generator's state
    before each layer, and ``replay(state)`` gives a generator that draws that layer's noise again,
    so that a rule can evaluate a unit at a target input under the same noise as its own sample
    (common random numbers), and e = h - f(target) measures the shift, not two draws."""

    def __init__(self, seed: int):
        super().__init__()
        self.register_buffer("seed", torch.tensor(int(seed)))
        self._gen: Optional[torch.Generator] = None
        self._seeded: Optional[int] = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator on ``device``, started from ``seed``."""
        seed = int(self.seed)
        if self._gen is None or self._gen.device != device or self._seeded != seed:
            self._gen = torch.Generator(device=device).manual_seed(seed)
            self._seeded = seed
        return self._gen

    def for_units(self, act, device: torch.device) -> Optional[torch.Generator]:
        """The generator for ``act``'s samples on ``device`` (None for deterministic units)."""
        return self.generator(device) if act is not None and act.needs_generator else None

    def replay(self, state) -> Optional[torch.Generator]:
        """A generator that repeats the draw a layer made from ``state`` (None: deterministic units)."""
        if state is None:
            return None
        gen = torch.Generator(device=self._gen.device)
        gen.set_state(state)
        return gen


def output_error(net, logits: Tensor, probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The per-example output error ∂ℓ/∂a^L of ``net.loss`` (ŷ - onehot(y) for cross-entropy)
    and the batch-mean loss."""
    return net.loss.error(logits, probs, y)


def write_layer_grads(net, h_s: list[Tensor], deltas: list[Tensor]) -> None:
    """Set ∂W^l = h^{l-1ᵀ} δ^l / B and ∂b^l = Σ_batch δ^l / B for every layer l."""
    batch = h_s[0].shape[0]
    for layer, h_in, delta in zip(net.layers, h_s[:-1], deltas):
        layer.weight.grad = (h_in.T @ delta) / batch
        if layer.bias is not None:
            layer.bias.grad = delta.sum(0) / batch
