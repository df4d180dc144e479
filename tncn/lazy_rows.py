"""Exact lazy momentum for a weight whose update touches a few rows a step (P-TNCN's M^1 for
token inputs: ΔM^1 = x_{t-1}ᵀ ε^1 adds B rows, and the hypothesis reads only the rows of x_{t-1}).

With SGD momentum μ (no weight decay), a row r that gets no update for k steps at learning rate
lr moves in closed form (b its momentum buffer, w the row):

    heavy ball:  b ← μ^k b,   w ← w − lr · μ (1 − μ^k) / (1 − μ) · b
    Nesterov:    b ← μ^k b,   w ← w − lr · μ² (1 − μ^k) / (1 − μ) · b

So only the rows a step reads or updates need be touched: ``catch_up(ids)`` brings rows current
(before they are read), ``step(ids, G)`` applies one real step to them, and every other row
stays behind, its count of idle steps kept in ``last``. ``flush()`` brings every row current; it
must run before anything reads the whole weight or its buffer (a checkpoint, averaging), and runs
by itself when the learning rate changes (the closed form assumes one rate). At a vocabulary of
V = 10,000 this replaces five passes over a 10 M-weight matrix and its buffer each step by a few
row gathers; the numbers equal the dense step up to float rounding (tests/test_fused.py).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def supports(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether the closed form holds: SGD with momentum, no weight decay, no dampening."""
    return (type(optimizer) is torch.optim.SGD and group["momentum"] > 0 and group["weight_decay"] == 0
            and not group["dampening"])


class LazyRows:
    """The lazily stepped rows of ``prm`` under ``group`` (an SGD group, ``supports``) whose
    momentum buffer lives in ``state`` (the optimizer's state of ``prm``, in torch's format)."""

    def __init__(self, prm: Tensor, group: dict, state: dict):
        self.prm, self.group, self.state = prm, group, state
        self.last = torch.zeros(prm.shape[0], dtype=torch.long, device=prm.device)  # each row current through
        self.n = 0  # optimizer steps taken
        self.lr = group["lr"]  # the rate of the idle steps not yet applied

    def _factors(self, k: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per row with k idle steps: μ^k, and lr times the closed form's factor of b (columns)."""
        mu = self.group["momentum"]
        decay = torch.pow(torch.tensor(mu, dtype=like.dtype, device=like.device), k.to(like.dtype)).unsqueeze(1)
        return decay, (self.lr * (mu * mu if self.group["nesterov"] else mu) / (1 - mu)) * (1 - decay)

    def catch_up(self, ids: Tensor) -> None:
        """Bring the rows ``ids`` current (repeated ids are fine: they agree)."""
        buf = self.state.get("momentum_buffer")
        if buf is None:  # no step yet: idle steps change nothing
            return
        decay, moved = self._factors(self.n - self.last[ids], buf)
        b = buf[ids]
        self.prm.index_copy_(0, ids, self.prm[ids] - moved * b)
        buf.index_copy_(0, ids, decay * b)
        self.last[ids] = self.n

    def flush(self) -> None:
        """Bring every row current (in place: one pass over the weight and two over the buffer)."""
        buf = self.state.get("momentum_buffer")
        if buf is None or not self.n:
            return
        decay, moved = self._factors(self.n - self.last, buf)
        self.prm.addcmul_(moved, buf, value=-1.0)
        buf.mul_(decay)
        self.last.fill_(self.n)

    def step(self, ids: Tensor, R: Tensor) -> None:
        """One optimizer step whose update is the rows R added at rows ``ids`` (others: zero).
        The rows ``ids`` must be current: P-TNCN's hypothesis brought them current when it read
        them, earlier in the same step (``catch_up``)."""
        if self.group["lr"] != self.lr:  # the pending idle steps ran at the old rate
            self.flush()
            self.lr = self.group["lr"]
        buf = self.state.get("momentum_buffer")
        if buf is None:  # torch's first step sets b = g; b = μ·0 + g is the same
            buf = self.state["momentum_buffer"] = torch.zeros_like(self.prm)
        same = (ids.unsqueeze(0) == ids.unsqueeze(1)).to(R.dtype)
        G = same @ R  # each position's row gets the sum over its id's positions (repeats agree)
        mu = self.group["momentum"]
        b = buf[ids] * mu + G
        w = self.prm[ids] - self.lr * (G + mu * b if self.group["nesterov"] else b)
        buf.index_copy_(0, ids, b)
        self.prm.index_copy_(0, ids, w)
        self.n += 1
        self.last[ids] = self.n
