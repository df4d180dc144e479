"""Recurrent next-symbol models trained by back-propagation through time: the baselines of P-TNCN.

Two implementations of one family: ids [T, B] and a carried state go in, the top layer's outputs
[T, B, H_L] and the new state come out (``forward``); ``logits(top)`` is the affine map of the
softmax output layer (logits o_t = h^L_t W_out + b_out score the symbol after the one consumed at t).

- ``KernelLM``: PyTorch's own fused kernels, one module per layer so widths may differ:
  ``nn.RNN`` (Elman 1990, tanh), ``nn.GRU`` (Cho et al. 2014) or ``nn.LSTM`` (Hochreiter &
  Schmidhuber 1997, with forget gate). Fastest; the state is ``h`` (``(h, c)`` for the LSTM) per layer.
- ``ElmanLM``: the Elman network assembled from the shared ``tncn.layers.Dense`` layers, so one
  network can be trained by BPTT and by a local rule alike (``tncn.temporal.bptt_alignment``):

      a^l_t = x^l_t W_in^l + b^l + h^l_{t-1} W_rec^l,   h^l_t = f(a^l_t),   x^{l+1}_t = h^l_t,

  with x^1_t the one-hot of the symbol (a row of W_in^1, as P-TNCN's M^1) or its embedding.
  A Python loop over time exposes every pre-activation (``trajectory``); slower than the kernels.

Input (both): ``onehot`` (x^1 = one-hot of the id) or ``embedding`` (a learned table of width
``embed``, default the first hidden width). Dense observations (float [T, B, D], e.g. video
frames) go in as they are, and the output layer then has D units (a sigmoid per pixel, applied by
the learner's loss): build the model with ``vocab`` = D and ``input="onehot"`` (its sizes are the
same). Initial weights are drawn from a ``torch.Generator``
(a seed fixes them): U(-1/√H, 1/√H) for the recurrent weights, biases (kernels; PyTorch's own
default) and the output layer, N(0, 1) for the embedding; the Dense Elman's biases start at zero.
``n_params`` counts parameters in closed form (``tncn compare --match params`` sizes a model by it).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from tncn.layers import Dense, get_activation

Tensor = torch.Tensor

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn": 1, "gru": 3, "lstm": 4, "elman": 1}
INPUTS = ("onehot", "embedding")


def _input_width(vocab: int, hidden: Sequence[int], input: str, embed: Optional[int]) -> tuple[int, Optional[int]]:
    """(width of x^1, width of the embedding table or None)."""
    if input not in INPUTS:
        raise ValueError(f"unknown input {input!r}; choose one of: {', '.join(INPUTS)}")
    if input == "onehot":
        if embed is not None:
            raise ValueError("an embedding width applies to the embedding input only (input is onehot)")
        return vocab, None
    width = int(hidden[0] if embed is None else embed)
    if width <= 0:
        raise ValueError(f"the embedding width must be positive, got {width}")
    return width, width


def _check_sizes(vocab: int, hidden: Sequence[int]) -> list[int]:
    try:
        hidden = [int(h) for h in hidden]
    except (TypeError, ValueError):
        raise ValueError(f"hidden must list the widths of the layers, got {hidden!r}") from None
    if int(vocab) <= 0:
        raise ValueError(f"the vocabulary size must be positive, got {vocab}")
    if not hidden or min(hidden) <= 0:
        raise ValueError(f"hidden must list at least one positive width, got {hidden}")
    return hidden


def n_params(kind: str, vocab: int, hidden: Sequence[int], input: str = "onehot", embed: Optional[int] = None) -> int:
    """Parameters of a ``kind`` model (rnn, gru, lstm: PyTorch's two bias vectors per gate; elman: one)."""
    hidden = _check_sizes(vocab, hidden)
    n_in, table = _input_width(vocab, hidden, input, embed)
    g = GATES[kind]
    total = vocab * table if table else 0
    for h in hidden:
        total += g * h * (n_in + h) + (h if kind == "elman" else 2 * g * h)
        n_in = h
    return total + hidden[-1] * vocab + vocab


class KernelLM(nn.Module):
    """Embedding or one-hot input, ``cell`` layers on PyTorch's fused kernels, softmax output."""

    def __init__(self, cell: str, vocab: int, hidden: Sequence[int], input: str = "onehot",
                 embed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}")
        hidden = _check_sizes(vocab, hidden)
        n_in, table = _input_width(vocab, hidden, input, embed)
        self.cell, self.vocab, self.hidden = cell, int(vocab), hidden
        self.embed = nn.Embedding(vocab, table) if table else None
        sizes = [n_in] + hidden
        self.layers = nn.ModuleList(CELLS[cell](sizes[l], sizes[l + 1]) for l in range(len(hidden)))
        self.head = nn.Linear(hidden[-1], vocab)
        with torch.no_grad():
            if self.embed is not None:
                self.embed.weight.normal_(0.0, 1.0, generator=generator)
            for layer, h in zip(self.layers, hidden):
                for p in layer.parameters():
                    p.uniform_(-1.0 / math.sqrt(h), 1.0 / math.sqrt(h), generator=generator)
            for p in self.head.parameters():
                p.uniform_(-1.0 / math.sqrt(hidden[-1]), 1.0 / math.sqrt(hidden[-1]), generator=generator)

    def forward(self, ids: Tensor, state: Optional[list] = None) -> tuple[Tensor, list]:
        if ids.is_floating_point():  # dense observations (video frames) go in as they are
            x = ids.to(self.head.weight.dtype)
        else:
            x = self.embed(ids) if self.embed is not None else nn.functional.one_hot(ids, self.vocab).to(self.head.weight.dtype)
        new = []
        for l, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[l])
            new.append(s)
        return x, new

    def logits(self, top: Tensor) -> Tensor:
        return self.head(top)

    def fan_in(self, name: str, p: Tensor, ids: bool) -> Optional[int]:
        """How many inputs the weight ``name`` sums per unit ([out, in] layout), None for biases,
        the embedding and the first layer's one-hot input weights (``ids``: the model reads ids)."""
        if p.dim() < 2 or name.startswith("embed.") or (ids and self.embed is None and name == "layers.0.weight_ih_l0"):
            return None
        return p.shape[1]


class ElmanLM(nn.Module):
    """The Elman network from ``Dense`` layers: ``inputs[l]`` (W_in^l, b^l, activation f),
    ``recurrent[l]`` (W_rec^l, no bias), ``head`` (W_out, b_out, softmax), ``embed`` (embedding input)."""

    def __init__(self, vocab: int, hidden: Sequence[int], activation: str = "tanh", input: str = "onehot",
                 embed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        super().__init__()
        hidden = _check_sizes(vocab, hidden)
        if not get_activation(activation).differentiable:
            raise ValueError(f"BPTT needs the derivative of the activation and {activation!r} has none")
        n_in, table = _input_width(vocab, hidden, input, embed)
        self.vocab, self.hidden = int(vocab), hidden
        self.embed = Dense(vocab, table, "identity", bias=False, std=1.0, generator=generator) if table else None
        sizes = [n_in] + hidden

        def std(h):  # U(-1/√h, 1/√h) has standard deviation 1/√(3h)
            return 1.0 / math.sqrt(3.0 * h)
        self.inputs = nn.ModuleList(Dense(sizes[l], sizes[l + 1], activation, bias=True, init="uniform",
                                          std=std(sizes[l + 1]), generator=generator) for l in range(len(hidden)))
        self.recurrent = nn.ModuleList(Dense(h, h, "identity", bias=False, init="uniform", std=std(h), generator=generator)
                                       for h in hidden)
        self.head = Dense(hidden[-1], vocab, "softmax", bias=True, init="uniform", std=std(hidden[-1]), generator=generator)

    def fan_in(self, name: str, p: Tensor, ids: bool) -> Optional[int]:
        """As ``KernelLM.fan_in``, for the [in, out] layout of ``Dense``."""
        if p.dim() < 2 or name.startswith("embed.") or (ids and self.embed is None and name == "inputs.0.weight"):
            return None
        return p.shape[0]

    def _drive(self, l: int, x: Tensor) -> Tensor:
        """x^l W_in^l + b^l for all steps at once ([T, B, H_l]); layer 1 reads ids."""
        layer = self.inputs[l]
        if l == 0 and not x.is_floating_point():
            if self.embed is None:  # one-hot rows of W_in^1
                return layer.weight.index_select(0, x.reshape(-1)).view(*x.shape, -1) + layer.bias
            x = self.embed.weight.index_select(0, x.reshape(-1)).view(*x.shape, -1)
        return layer.pre(x)

    def trajectory(self, ids: Tensor, state: Optional[list] = None) -> tuple[list, list, list, list]:
        """Per layer: the inputs x^l [T, B, n_in] (ids for layer 1), the pre-activations a^l and the
        states h^l [T, B, H_l] after each step, and the states before the first step."""
        T, B = ids.shape[:2]
        p = self.head.weight
        h0 = [torch.zeros(B, h, device=p.device, dtype=p.dtype) for h in self.hidden] if state is None else list(state)
        xs, pres, outs = [], [], []
        x = ids
        for l, (layer, rec) in enumerate(zip(self.inputs, self.recurrent)):
            drive = self._drive(l, x)
            h, a_l, h_l = h0[l], [], []
            for t in range(T):
                a = torch.addmm(drive[t], h, rec.weight)
                h = layer.act(a)
                a_l.append(a)
                h_l.append(h)
            xs.append(x)
            empty = drive.new_zeros(0, B, layer.n_out)
            pres.append(torch.stack(a_l) if T else empty)
            outs.append(torch.stack(h_l) if T else empty)
            x = outs[-1]
        return xs, pres, outs, h0

    def forward(self, ids: Tensor, state: Optional[list] = None) -> tuple[Tensor, list]:
        _, _, outs, h0 = self.trajectory(ids, state)
        new = [o[-1] if len(o) else h for o, h in zip(outs, h0)]
        return outs[-1], new

    def logits(self, top: Tensor) -> Tensor:
        return self.head.pre(top)


def build_model(kind: str, vocab: int, hidden: Sequence[int], input: str = "onehot", embed: Optional[int] = None,
                activation: str = "tanh", generator: Optional[torch.Generator] = None) -> nn.Module:
    """A ``KernelLM`` (rnn, gru, lstm) or an ``ElmanLM`` (elman; the only one with ``activation``)."""
    if kind == "elman":
        return ElmanLM(vocab, hidden, activation, input, embed, generator)
    if activation != "tanh":
        raise ValueError(f"the {kind} kernel has its own activations; activation applies to elman only")
    return KernelLM(kind, vocab, hidden, input, embed, generator)
