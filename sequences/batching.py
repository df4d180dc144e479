"""Batches for sequence models under the two protocols, as [T, B] tensors with masks.

- ``lines``: one line (sentence) per sequence; sequences of similar length are batched together
  (shuffled pools of 50 batches, sorted by length inside a pool) and padded; the state is reset
  before every batch and the first symbol of each sequence is not scored (nothing precedes it).
  This is the reference P-TNCN protocol on character PTB.
- ``stream``: the split as one continuous stream of N symbols, laid out as B parallel rows of
  ceil(N / B) consecutive symbols (the last row padded) and cut into segments of ``seq_len``
  steps; the state is reset before the first segment only and carried across segments; every
  symbol is scored except the first of each row (the same rule as ``lines``: a symbol is scored
  when something precedes it in its sequence).

Every batch has ``tokens`` [T, B] int64 (0 at padding), ``mask`` [T, B] float32 (1 for a real
symbol), ``score`` [T, B] bool (positions whose prediction counts) and ``reset`` (start new
sequences before this batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from sequences.errors import DataError

PROTOCOLS = ("lines", "stream")
POOL = 50  # lines protocol: batches per length-sorted pool


@dataclass
class Batch:
    tokens: torch.Tensor
    mask: torch.Tensor
    score: torch.Tensor
    reset: bool

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def n_scored(self) -> int:
        return int(self.score.sum())


class LineBatches:
    """Padded batches of whole sequences (the ``lines`` protocol)."""

    protocol = "lines"

    def __init__(self, seqs: list[torch.Tensor], batch_size: int, seed: int = 0, what: str = "data"):
        seqs = [s for s in seqs if len(s) >= 2]  # a 1-symbol sequence has nothing to score
        if batch_size <= 0:
            raise DataError(f"the batch size must be positive, got {batch_size}")
        if batch_size > len(seqs):
            raise DataError(
                f"batch size {batch_size} is larger than the data: {what} has {len(seqs)} "
                f"sequences of at least 2 symbols (lines protocol)")
        self.batch_size, self.seed = batch_size, seed
        self.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.ids = torch.cat(seqs)
        self.n_tokens = int(self.lengths.sum())
        self.n_scored = self.n_tokens - len(seqs)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def _groups(self, epoch: Optional[int]) -> list[np.ndarray]:
        n, B = len(self.lengths), self.batch_size
        if epoch is None:  # evaluation: a fixed order, sorted by length
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + B] for i in range(0, n, B)]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n)
        groups = []
        for p in range(0, n, B * POOL):
            pool = perm[p:p + B * POOL]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            groups += [pool[i:i + B] for i in range(0, len(pool), B)]
        return [groups[i] for i in rng.permutation(len(groups))]

    def epoch(self, epoch: Optional[int] = None, start: int = 0) -> Iterator[Batch]:
        """The batches of one pass; ``epoch`` seeds the shuffle (None: fixed order for evaluation);
        ``start`` skips that many batches (to resume inside an epoch)."""
        for idx in self._groups(epoch)[start:]:
            T = int(self.lengths[idx].max())
            tokens = torch.zeros(T, len(idx), dtype=torch.long)
            mask = torch.zeros(T, len(idx), dtype=torch.float32)
            for b, i in enumerate(idx):
                lo, hi = self.offsets[i], self.offsets[i + 1]
                tokens[: hi - lo, b] = self.ids[lo:hi]
                mask[: hi - lo, b] = 1.0
            score = mask.bool()
            score[0] = False
            yield Batch(tokens, mask, score, reset=True)


class StreamBatches:
    """Segments of B parallel streams carried across batches (the ``stream`` protocol)."""

    protocol = "stream"

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, what: str = "data"):
        N = len(ids)
        if batch_size <= 0 or seq_len <= 0:
            raise DataError(f"the batch size and segment length must be positive, got {batch_size} and {seq_len}")
        if 2 * batch_size > N:
            raise DataError(
                f"batch size {batch_size} is larger than the data: {what} has {N} symbols, enough "
                f"for at most {N // 2} parallel streams of 2 or more symbols (stream protocol)")
        self.batch_size, self.seq_len = batch_size, seq_len
        rows = -(-N // batch_size)
        flat = torch.zeros(batch_size * rows, dtype=torch.long)
        flat[:N] = ids
        real = torch.zeros(batch_size * rows, dtype=torch.float32)
        real[:N] = 1.0
        self.tokens = flat.view(batch_size, rows).T.contiguous()
        self.mask = real.view(batch_size, rows).T.contiguous()
        self.score = self.mask.bool()
        self.score[0] = False
        self.n_tokens = N
        self.n_scored = int(self.score.sum())

    def __len__(self) -> int:
        return -(-self.tokens.shape[0] // self.seq_len)

    def epoch(self, epoch: Optional[int] = None, start: int = 0) -> Iterator[Batch]:
        """The segments in stream order (``epoch`` is accepted for a common interface: a stream is
        never shuffled); ``start`` skips that many segments (to resume inside an epoch)."""
        S = self.seq_len
        for k in range(start, len(self)):
            sl = slice(k * S, (k + 1) * S)
            yield Batch(self.tokens[sl], self.mask[sl], self.score[sl], reset=(k == 0))
