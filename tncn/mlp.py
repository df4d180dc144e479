"""A multilayer network built from the shared ``Dense`` layers, and a loop that fits it with any learner.

The network the rules train (row-vector layout, batch B): h^0 = x, a^l = h^{l-1} W^l + b^l,
h^l = f(a^l) for the hidden layers l = 1..L-1, and an output ŷ = g(a^L) whose units the output
loss decides (``tncn.losses``), trained on the batch mean of that loss: a classifier has a softmax
output and cross-entropy by default, whose gradient with respect to a^L is (ŷ - y)/B (or MSE,
MAE); an autoencoder has sigmoid outputs that reconstruct its input (the target is the input
itself; MSE, MAE or the binary cross-entropy per pixel). The learning rules in ``tncn.learners``
(backprop, FA, DFA, LRA-E, LRA, DTP) all train this same network, so one word swaps the rule.
Under torchrun ``fit`` trains one run over the ranks by data parallelism (``tncn.distributed``:
exact to float rounding for the rules and options it lists).

``fit`` runs epochs of minibatch steps (``learner.step`` writes ``param.grad``, a stock
``torch.optim`` optimizer applies it), validates after every epoch and can log the angle between
each rule's update and the backprop gradient (``tncn.diagnostics``). What it validates is a list
of ``Score``s: the classification error (``error_rate``) by default, the reconstruction loss and
per-pixel squared error of an autoencoder (``reconstruction_error``). A rule that trains in
phases (DTP's inverses, then its forward weights) lists them in ``learner.phases(epoch)``: each
epoch then makes one pass over the data per phase.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn
from tqdm import tqdm

from tncn.guard import Watch, check_loss, check_weights
from tncn.layers import Dense
from tncn.losses import OutputLoss, get_loss

Tensor = torch.Tensor


class MLP(nn.Module):
    """A feedforward network: ``sizes = [n_in, H_1, ..., H_{L-1}, n_out]`` (n_out: the classes of a
    classifier, the input size of an autoencoder).

    Args:
        sizes: layer widths, input first, outputs last (at least two entries).
        activation: f of every hidden layer (any name in ``tncn.layers.ACTIVATIONS``; the
            widths must be multiples of an LWTA block).
        bias: give every layer a bias b^l (initialised to zero).
        init: initialiser of the weights ("normal", "uniform", "orthogonal", "zeros").
        std: standard deviation of the initial weights; ``None`` takes 1/√n_in per layer.
        generator: a ``torch.Generator`` for the initial weights.
        loss: the output loss, kept in ``loss`` for every rule to read: a classification loss by
            name (``tncn.losses.LOSSES``: "ce", "mse", "mae") or any ``tncn.losses.OutputLoss``
            (a reconstruction loss of ``tncn.losses.RECONSTRUCTION_LOSSES`` for an autoencoder);
            its ``output`` names the output layer's activation (softmax, sigmoid).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "tanh",
        bias: bool = True,
        init: str = "normal",
        std: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        loss: Union[str, OutputLoss] = "ce",
    ):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) <= 0:
            raise ValueError(f"an MLP needs at least an input and an output size, all positive; got {sizes}")
        self.sizes = sizes
        self.loss = get_loss(loss) if isinstance(loss, str) else loss
        self.layers = nn.ModuleList(
            Dense(
                n_in, n_out,
                activation=activation if l < len(sizes) - 2 else self.loss.output,
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
        """The hidden activation (the output layer's is the loss's, ``loss.output``)."""
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
        """a^L, the input of the output units."""
        h = x
        for layer in self.layers[:-1]:
            h = layer(h)
        return self.layers[-1].pre(h)

    def outputs(self, logits: Tensor) -> Tensor:
        """ŷ = g(a^L) of given logits: class probabilities (softmax) or reconstructed pixels (sigmoid)."""
        return self.layers[-1].act(logits)

    def forward(self, x: Tensor) -> Tensor:
        """The output ŷ: class probabilities, or an autoencoder's reconstruction of ``x``."""
        return self.outputs(self.logits(x))


@torch.no_grad()
def error_rate(model, x: Tensor, y: Tensor, batch_size: int = 2000) -> float:
    """Fraction of rows of ``x`` whose highest-scoring class differs from ``y``.

    ``model``: an ``MLP``, or a learner, whose ``logits(x)`` scores the classes as the rule
    predicts them (the feedforward pass, or EP's output after its free phase)."""
    wrong = 0
    for i in range(0, len(x), batch_size):
        wrong += (model.logits(x[i:i + batch_size]).argmax(-1) != y[i:i + batch_size]).sum().item()
    return wrong / max(len(x), 1)


@torch.no_grad()
def reconstruction_error(model, x: Tensor, target: Tensor, loss: OutputLoss, batch_size: int = 2000) -> dict:
    """How well ``model`` reconstructs ``target`` from ``x``: ``loss``, the mean per-example
    reconstruction loss ℓ, and ``pixel_mse``, the mean of (x̂_i − t_i)² over every pixel of every
    example (comparable across losses).

    ``model``: anything with ``logits(x)`` (an ``MLP``, a learner, ``MeanImage``); the
    reconstruction is ``loss.outputs`` of its logits."""
    total, squared = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        logits, t = model.logits(x[i:i + batch_size]), target[i:i + batch_size]
        out = loss.outputs(logits)
        total += loss.per_example(logits, out, t).sum().item()
        squared += ((out - t) ** 2).sum().item()
    n = max(len(x), 1)
    return {"loss": total / n, "pixel_mse": squared / (n * max(math.prod(target.shape[1:]), 1))}


class MeanImage:
    """The no-learning reconstruction: every input reconstructed by one image (the mean training
    image), as logits of sigmoid outputs clamped to [ε, 1 − ε] so that every loss stays finite.
    ``reconstruction_error(MeanImage(mean), ...)`` is the autoencoder's no-context baseline."""

    def __init__(self, image: Tensor, eps: float = 1e-4):
        self.image = image.clamp(eps, 1.0 - eps)

    def logits(self, x: Tensor) -> Tensor:
        return torch.logit(self.image).expand(len(x), -1)


@dataclass(frozen=True)
class Score:
    """A validation score of ``fit`` (lower is better): ``measure(learner, x, y)`` on the
    validation split, kept in the curve under ``key`` and logged as its words; ``name`` is how the
    divergence guard calls it; ``percent``: logged as a percentage. A ``measure`` that returns a
    dict of several scores names its entry in ``part``; ``fit`` calls each measure once an epoch."""

    key: str
    name: str
    measure: Callable[[object, Tensor, Tensor], object]
    percent: bool = False
    part: Optional[str] = None

    def of(self, measured) -> float:
        """This score out of what its ``measure`` returned."""
        return measured if self.part is None else measured[self.part]

    def show(self, value: float) -> str:
        words = self.key.replace("_", " ")
        return f"{words} {100 * value:.2f}%" if self.percent else f"{words} {value:.4g}"


CLASSIFICATION = (Score("valid_error", "the validation error", error_rate, percent=True),)
"""``fit``'s default: the validation error rate of ``learner.logits``."""


def reconstruction_scores(loss: OutputLoss) -> tuple[Score, Score]:
    """An autoencoder's validation scores: the mean per-example loss (watched by the guard) and the
    per-pixel squared error (``reconstruction_error``)."""
    def measure(model, x, t):
        return reconstruction_error(model, x, t, loss)

    return (Score("valid_loss", "the validation reconstruction loss", measure, part="loss"),
            Score("valid_pixel_mse", "the validation pixel MSE", measure, part="pixel_mse"))


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
    scores: Sequence[Score] = CLASSIFICATION,
    group=None,
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
    positions in ``train`` as ``step(x, y, index=idx)``. After every epoch each of ``scores`` is
    measured on ``valid`` and kept in the curve under its key: by default the validation error of
    ``learner.logits`` (``error_rate``); an autoencoder's ``reconstruction_scores``, whose
    ``train`` and ``valid`` pair inputs with their targets.

    The divergence guard (``tncn.guard``) runs after every epoch: a non-finite training loss or
    weight, or a first score worse than ``baseline`` (the majority class's error, the mean
    image's reconstruction loss) after an earlier one was better, raises ``Diverged`` naming the
    epoch.

    ``group`` (a ``tncn.distributed.Group``, under torchrun): exact data parallelism; every rank
    draws the same batches and steps on its share of each (``tncn.distributed.classify_step``),
    the updates, loss and discrepancy are the global batch's, and angles are measured on the
    global batch, on every rank.
    """
    from tncn.diagnostics import update_angles  # diagnostics import this module
    from tncn.distributed import classify_step

    x_train, y_train = train
    net = learner.net
    device = x_train.device
    n = len(x_train)
    steps = math.ceil(n / batch_size)
    phases_of = getattr(learner, "phases", lambda epoch: [None])
    measured = getattr(learner, "angle_phases", None)
    indexed = getattr(learner, "indexed", False)
    curve = []
    watch = Watch(baseline, unit="epoch", name=scores[0].name)
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
                if group is None:
                    loss = learner.step(x, y, index=idx) if indexed else learner.step(x, y)
                else:
                    loss = classify_step(learner, x, y, idx, group, indexed)
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
        validated = len(valid[0]) > 0  # --valid 0: no validation split, so no score (None), no guard
        results = {}  # each measure once, a dict for the scores it gives
        if validated:
            for score in scores:
                if score.measure not in results:
                    results[score.measure] = score.measure(learner, *valid)
        point = dict(epoch=epoch, train_loss=train_loss,
                     **{s.key: s.of(results[s.measure]) if validated else None for s in scores}, seconds=seconds)
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
        shown = ", ".join(s.show(point[s.key]) for s in scores) if validated else "no validation split"
        log(f"epoch {epoch}: loss {train_loss:.4f}, {shown} ({seconds:.1f} s){extra}")
        if validated:
            watch.check(point[scores[0].key], epoch)
    return curve
