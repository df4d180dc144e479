"""Character and word vocabularies for sequence models, saved with checkpoints as plain data.

A ``Vocabulary`` maps symbols (single characters, or whitespace-separated words) to ids. Id 0 is
always the unknown token (``"\\ufffd"`` for characters, ``"<unk>"`` for words): a symbol that was
not in the training split maps to it at evaluation, is counted (``encode`` returns how many), and
is scored like any other symbol, so an unknown symbol can never index outside the model's output.
The other ids are the training symbols by decreasing count (ties by symbol), so ids are
deterministic. ``counts[i]`` is how often symbol i occurs in the training split (the unigram model
used for the baseline entropy and for an empty sampling prime).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch

LEVELS = ("char", "word")
UNK = {"char": "\ufffd", "word": "<unk>"}
EOL = {"char": "\n", "word": "<eos>"}  # the end-of-line symbol of the stream protocol


class Vocabulary:
    """Symbols of one level ("char" or "word"); id 0 is the unknown token."""

    def __init__(self, level: str, symbols: Sequence[str], counts: Sequence[int]):
        if level not in LEVELS:
            raise ValueError(f"unknown vocabulary level {level!r}; known: {', '.join(LEVELS)}")
        if not symbols or symbols[0] != UNK[level]:
            raise ValueError(f"a {level} vocabulary starts with its unknown token {UNK[level]!r}")
        if len(symbols) != len(counts) or len(set(symbols)) != len(symbols):
            raise ValueError("a vocabulary needs distinct symbols and one count per symbol")
        if level == "char" and any(len(s) != 1 for s in symbols):
            raise ValueError("a character vocabulary holds single characters")
        self.level = level
        self.symbols = list(symbols)
        self.counts = [int(c) for c in counts]
        self.index = {s: i for i, s in enumerate(self.symbols)}
        if level == "char":  # sorted code points -> ids, for vectorised encoding
            cps = np.array([ord(s) for s in self.symbols], dtype=np.int64)
            order = np.argsort(cps)
            self._cps, self._ids = cps[order], order

    @classmethod
    def build(cls, level: str, sequences: Iterable[Sequence[str]]) -> "Vocabulary":
        """The vocabulary of every symbol in ``sequences`` (strings for char, word lists for word)."""
        counts: Counter = Counter()
        for seq in sequences:
            counts.update(seq)
        unk = UNK[level]
        rest = sorted((s for s in counts if s != unk), key=lambda s: (-counts[s], s))
        return cls(level, [unk] + rest, [counts.get(unk, 0)] + [counts[s] for s in rest])

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    @property
    def unk(self) -> int:
        return 0

    def encode(self, seq: Sequence[str]) -> tuple[torch.Tensor, int]:
        """Ids (int64 tensor) of the symbols of ``seq`` and the number that were unknown."""
        if self.level == "char":
            cps = np.frombuffer(str(seq).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
            pos = np.searchsorted(self._cps, cps).clip(max=len(self._cps) - 1)
            known = self._cps[pos] == cps
            ids = np.where(known, self._ids[pos], self.unk)
            return torch.from_numpy(ids), int((~known).sum())
        ids = [self.index.get(s, -1) for s in seq]
        unknown = ids.count(-1)
        return torch.tensor([i if i >= 0 else self.unk for i in ids], dtype=torch.long), unknown

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids: characters joined as they are, words joined by single spaces."""
        sep = "" if self.level == "char" else " "
        return sep.join(self.symbols[int(i)] for i in ids)

    def to_dict(self) -> dict:
        """Plain data (lists of str and int) for a checkpoint; ``from_dict`` reverses it."""
        return {"level": self.level, "symbols": list(self.symbols), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(d["level"], d["symbols"], d["counts"])
