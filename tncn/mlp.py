"""A multilayer classifier built from the shared ``Dense`` layers, and a loop that fits it with any learner.

The network the rules train (row-vector layout, batch B): h^0 = x, a^l = h^{l-1} W^l + b^l,
h^l = f(a^l) for the hidden layers l = 1..L-1, and a softmax output ŷ = softmax(a^L), trained on
the batch mean of an output loss (``tncn.losses``: cross-entropy by default, whose gradient with
respect to a^L is (ŷ - y)/B; or MSE, MAE). The learning rules in ``tncn.learners`` (backprop, FA,
DFA, LRA-E, LRA, DTP) all train this same network, so one word swaps the rule.

``fit`` runs epochs of minibatch steps (``learner.step`` writes ``param.grad``, a stock
``torch.optim`` optimizer applies it), validates after every epoch and can log the angle between
each rule's update and the backprop gradient (``tncn.diagnostics``). A rule that trains in
phases (DTP's inverses, then its forward weights) lists them in ``learner.phases(epoch)``: each
epoch then makes one pass over the data per phase.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from tncn.guard import Watch, check_loss, check_weights
from tncn.layers import Dense
from tncn.losses import get_loss

Tensor = torch.Tensor


class MLP(nn.Module):
    """A feedforward classifier: ``sizes = [n_in, H_1, ..., H_{L-1}, n_classes]``.

    Args:
        sizes: layer widths, input first, classes last (at least two entries).
        activation: f of every hidden layer (any name in ``tncn.layers.ACTIVATIONS``; the
            widths must be multiples of an LWTA block).
        bias: give every layer a bias b^l (initialised to zero).
        init: initialiser of the weights ("normal", "uniform", "orthogonal", "zeros").
        std: standard deviation of the initial weights; ``None`` takes 1/√n_in per layer.
        generator: a ``torch.Generator`` for the initial weights.
        loss: the output loss (a name in ``tncn.losses.LOSSES``: "ce", "mse", "mae"), kept in
            ``loss`` for every rule to read.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "tanh",
        bias: bool = True,
        init: str = "normal",
        std: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        loss: str = "ce",
    ):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) <= 0:
            raise ValueError(f"an MLP needs at least an input and an output size, all positive; got {sizes}")
        self.sizes = sizes
        self.loss = get_loss(loss)
        self.layers = nn.ModuleList(
            Dense(
                n_in, n_out,
                activation=activation if l < len(sizes) - 2 else "softmax",
                bias=bias, init=init,
                std=(1.0 / math.sqrt(n_in)) if std is None else std,
                generator=generator,
            )
            for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))
        )
        block = self.act.block if self.act is not None else 1
        if any(n % block for n in sizes[1:-1]):
            raise ValueError(f"activation {activation!r} works in blocks of {block} units: "
                             f"the hidden widths {sizes[1:-1]} must be multiples of {block}")

    @property
    def act(self):
        """The hidden activation (the output layer's is always softmax)."""
        return self.layers[0].act if len(self.layers) > 1 else None

    def forward_all(self, x: Tensor, generator: Optional[torch.Generator] = None, states: Optional[list] = None):
        """Pre-activations [a^1..a^L] and activations [h^0 = x, h^1, ..., h^L = ŷ].

        ``states``: a list that receives, per layer, the state of ``generator`` before that layer
        drew its samples (None without a generator), so that a rule can repeat a layer's noise."""
        a_s, h_s = [], [x]
        for layer in self.layers:
            a = layer.pre(h_s[-1])
            a_s.append(a)
            if states is not None:
                states.append(generator.get_state() if generator is not None else None)
            h_s.append(layer.act(a, generator))
        return a_s, h_s

    def logits(self, x: Tensor) -> Tensor:
        """a^L, the input of the softmax."""
        h = x
        for layer in self.layers[:-1]:
            h = layer(h)
        return self.layers[-1].pre(h)

    def forward(self, x: Tensor) -> Tensor:
        """Class probabilities ŷ."""
        return torch.softmax(self.logits(x), dim=-1)


@torch.no_grad()
def error_rate(model, x: Tensor, y: Tensor, batch_size: int = 2000) -> float:
    """Fraction of rows of ``x`` whose highest-scoring class differs from ``y``.

    ``model``: an ``MLP``, or a learner, whose ``logits(x)`` scores the classes as the rule
    predicts them (the feedforward pass, or EP's output after its free phase)."""
    wrong = 0
    for i in range(0, len(x), batch_size):
        wrong += (model.logits(x[i:i + batch_size]).argmax(-1) != y[i:i + batch_size]).sum().item()
    return wrong / max(len(x), 1)


# --------------------------------------------------------------------------- training loop

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(
    learner,
    optimizer: torch.optim.Optimizer,
    train: tuple[Tensor, Tensor],
    valid: tuple[Tensor, Tensor],
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    scheduler=None,
    angle_every: int = 0,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = tqdm.write,
    baseline: Optional[float] = None,
) -> list[dict]:
    """Train ``learner.net`` for ``epochs`` epochs; return the per-epoch curve.

    Each epoch shuffles ``train`` with ``generator``, runs ``learner.step(x, y)`` then
    ``optimizer.step()`` on every minibatch (the last, short one included), steps the scheduler
    if any, and measures the validation error. With ``angle_every = k > 0`` the angle between
    the rule's update and the backprop gradient is measured per layer on every k-th training
    batch (before the optimizer step) and averaged over the epoch. ``seconds`` in the curve
    counts the training steps only, not validation or diagnostics. ``progress``: a tqdm bar
    (``None``: only when stderr is a terminal).

    A learner with ``phases(epoch)`` (a list of names) is told each phase by ``set_phase(name)``
    before a pass over the shuffled data; angles are measured on passes whose updates reach the
    weights (phases the learner lists in ``angle_phases``). A learner that keeps state per
    training example (EP's persistent particles) sets ``indexed = True`` and is given the rows'
    positions in ``train`` as ``step(x, y, index=idx)``. The validation error is that of
    ``learner.logits`` (``error_rate``).

    The divergence guard (``tncn.guard``) runs after every epoch: a non-finite training loss or
    weight, or a validation error worse than ``baseline`` (the majority class's) after an earlier
    one was better, raises ``Diverged`` naming the epoch.
    """
    from tncn.diagnostics import update_angles  # diagnostics import this module

    x_train, y_train = train
    net = learner.net
    device = x_train.device
    n = len(x_train)
    steps = math.ceil(n / batch_size)
    phases_of = getattr(learner, "phases", lambda epoch: [None])
    measured = getattr(learner, "angle_phases", None)
    indexed = getattr(learner, "indexed", False)
    curve = []
    watch = Watch(baseline, unit="epoch", name="the validation error")
    for epoch in range(1, epochs + 1):
        phases = phases_of(epoch)
        loss_sum = torch.zeros((), device=device)
        disc_sum = torch.zeros((), device=device)
        angle_sums, angle_count, diag_seconds, counted = None, 0, 0.0, 0
        _sync(device)
        start = time.perf_counter()
        for phase in phases:
            if phase is not None:
                learner.set_phase(phase)
            order = torch.randperm(n, generator=generator).to(device)
            angles_here = angle_every and (measured is None or phase in measured)
            bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}" + (f" ({phase})" if phase else ""), leave=False,
                       disable=None if progress is None else not progress)
            for i in bar:
                idx = order[i * batch_size:(i + 1) * batch_size]
                x, y = x_train[idx], y_train[idx]
                loss = learner.step(x, y, index=idx) if indexed else learner.step(x, y)
                if angles_here and i % angle_every == 0:
                    _sync(device)
                    t0 = time.perf_counter()
                    angles = update_angles(learner, x, y)
                    angle_sums = angles if angle_sums is None else [s + a for s, a in zip(angle_sums, angles)]
                    angle_count += 1
                    diag_seconds += time.perf_counter() - t0
                optimizer.step()
                loss_sum += loss * len(idx)
                counted += len(idx)
                if getattr(learner, "discrepancy", None) is not None:
                    disc_sum += learner.discrepancy * len(idx)
        _sync(device)
        seconds = time.perf_counter() - start - diag_seconds
        if scheduler is not None:
            scheduler.step()
        train_loss = loss_sum.item() / counted
        check_loss(train_loss, epoch, net, unit="epoch")
        check_weights(net, epoch, unit="epoch")
        point = dict(epoch=epoch, train_loss=train_loss, valid_error=error_rate(learner, *valid), seconds=seconds)
        if angle_sums is not None:
            point["angles"] = [a / angle_count for a in angle_sums]
        if getattr(learner, "discrepancy", None) is not None:
            point["discrepancy"] = disc_sum.item() / counted
        curve.append(point)
        extra = ""
        if "angles" in point:
            extra += " | angles to bp " + " ".join(f"{a:.0f}" for a in point["angles"]) + " deg"
        if "discrepancy" in point:
            extra += f" | discrepancy {point['discrepancy']:.4g}"
        log(f"epoch {epoch}: loss {train_loss:.4f}, valid error {100 * point['valid_error']:.2f}% ({seconds:.1f} s){extra}")
        watch.check(point["valid_error"], epoch)
    return curve
