"""Text corpora for character and word models: the data forms, their splits, vocabularies, batches.

``load(data, level=None)`` accepts:

- ``stdlib``: the embedded default corpus (docstrings and reference topics of the Python standard
  library, built once and cached; see ``sequences.stdlib_corpus``). No download.
- ``PATH`` to a text file: its lines split deterministically 90/5/5 (first 90 % train, next 5 %
  valid, last 5 % test).
- ``PATH`` to a folder with one train, one valid (or validation/dev) and one test file, found by
  the words in their names (``train.txt``, ``ptb.valid.txt``, ...).
- ``ptb-char:DIR`` / ``ptb-word:DIR``: Mikolov's PTB files ``ptb.char.{train,valid,test}.txt`` /
  ``ptb.{train,valid,test}.txt`` in DIR. The char reader handles the format's quirks: characters
  separated by single spaces, ``_`` for a space (kept as the symbol, as the reference does), a
  leading space on every line after the first and a trailing ``"\\n "`` that a naive reader sees
  as a blank last line (PTB has no blank lines: both readers drop them).
- ``hf:NAME`` or ``hf:NAME:CONFIG``: a Hugging Face hub dataset (its ``text`` column, or its only
  string column); splits train/validation/test, or train alone split 90/5/5.

Local files are read through Hugging Face ``datasets`` (``load_dataset("text", ...)``, with its
cache) after a check that each file exists, is not empty and is valid UTF-8. ``level`` is "char"
(default) or "word" (whitespace-separated words); the PTB forms fix it.

A ``Corpus`` holds each split as a list of lines (a str per line for char, a word list for word).
Under the ``lines`` protocol every line of 2 or more symbols is one sequence; under ``stream`` the
lines are joined, each followed by an end-of-line symbol ("\\n" or "<eos>"). The vocabulary is
built from the training split under the chosen protocol (``Corpus.vocabulary``) and the batches
come from ``Corpus.batches`` (see ``sequences.batching``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sequences.batching import PROTOCOLS, LineBatches, StreamBatches
from sequences.vocab import EOL, LEVELS, Vocabulary
from sequences.errors import DataError

SPLITS = ("train", "valid", "test")
SPLIT_WORDS = {"train": {"train"}, "valid": {"valid", "validation", "dev", "val"}, "test": {"test"}}
FORMS = "stdlib, a text file, a folder with train/valid/test files, ptb-char:DIR, ptb-word:DIR, hf:NAME[:CONFIG]"


@dataclass
class Corpus:
    """The splits of one text corpus as lines of symbols."""

    source: str
    level: str
    lines: dict  # split -> list of lines (str for char, list of words for word)

    def sequences(self, split: str, protocol: str) -> list:
        """The symbol sequences of ``split`` under ``protocol``: one per line (2+ symbols) or one stream."""
        _check(protocol, PROTOCOLS, "protocol")
        lines = self.lines[split]
        if protocol == "lines":
            return [ln for ln in lines if len(ln) >= 2]
        eol = EOL[self.level]
        if self.level == "char":
            return ["".join(ln + eol for ln in lines)]
        return [[w for ln in lines for w in (*ln, eol)]]

    def vocabulary(self, protocol: str) -> Vocabulary:
        """Every symbol of the training split under ``protocol``, plus the unknown token."""
        return Vocabulary.build(self.level, self.sequences("train", protocol))

    def encode(self, split: str, protocol: str, vocab: Vocabulary) -> tuple[list[torch.Tensor], int]:
        """Id tensors of the sequences of ``split`` and how many symbols were unknown to ``vocab``."""
        if vocab.level != self.level:
            raise DataError(f"a {vocab.level}-level model cannot read {self.level}-level data ({self.source})")
        out, unknown = [], 0
        for seq in self.sequences(split, protocol):
            ids, n = vocab.encode(seq)
            out.append(ids)
            unknown += n
        return out, unknown

    def batches(self, split: str, vocab: Vocabulary, protocol: str, batch_size: int,
                seq_len: Optional[int] = None, seed: int = 0, clamp: bool = False):
        """``LineBatches`` or ``StreamBatches`` over ``split``; ``.unknown`` counts unknown symbols.

        ``seq_len``: the segment length of the stream protocol. ``clamp`` (for evaluation): use
        fewer rows than ``batch_size`` when the split is too small for it."""
        seqs, unknown = self.encode(split, protocol, vocab)
        what = f"the {split} split of {self.source}"
        if protocol == "lines":
            rows = sum(len(s) >= 2 for s in seqs)
            out = LineBatches(seqs, max(1, min(batch_size, rows)) if clamp else batch_size, seed, what=what)
        else:
            if seq_len is None:
                raise DataError("the stream protocol needs a segment length (seq_len)")
            rows = len(seqs[0]) // 2
            out = StreamBatches(seqs[0], max(1, min(batch_size, rows)) if clamp else batch_size, seq_len, what=what)
        out.unknown = unknown
        return out


def _check(value, choices, what):
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def canonical(data: str) -> str:
    """``data`` with a local path made absolute, so that a saved run can be read from any folder."""
    from sequences import video

    if video.is_video(data):
        return video.canonical(data)
    for prefix in ("ptb-char:", "ptb-word:"):
        if data.startswith(prefix) and len(data) > len(prefix):
            return prefix + str(Path(data[len(prefix):]).expanduser().resolve())
    if data in ("stdlib", "ptb-char", "ptb-word") or data.startswith("hf:"):
        return data
    return str(Path(data).expanduser().resolve())


def load(data: str, level: Optional[str] = None) -> Corpus:
    """The corpus named by ``data`` (see the module docstring for the forms)."""
    if level is not None:
        _check(level, LEVELS, "level")
    for prefix, fixed in (("ptb-char", "char"), ("ptb-word", "word")):
        if data == prefix or data.startswith(prefix + ":"):
            if level not in (None, fixed):
                raise DataError(f"{prefix} is {fixed}-level data, not {level}-level")
            return _ptb(data, fixed)
    level = level or "char"
    if data == "stdlib":
        from sequences import stdlib_corpus
        return _from_files(data, _split_files(stdlib_corpus.directory()), level, _plain)
    if data.startswith("hf:"):
        return _hub(data, level)
    path = Path(data).expanduser()
    if path.is_dir():
        return _from_files(data, _split_files(path), level, _plain)
    if path.is_file():
        lines = _read_lines({"train": path})["train"]
        return _split_90_5_5(data, [_plain(ln, level) for ln in lines], level, path)
    raise DataError(f"data {data!r}: no such file or folder (data forms: {FORMS})")


# --------------------------------------------------------------------------- line parsers

def _plain(line: str, level: str):
    return line if level == "char" else line.split()


def _ptb_char(line: str, level: str) -> str:
    """'a e r _ b' (with a leading space after the first line) -> 'aer_b'."""
    chars = line.split()
    if any(len(c) != 1 for c in chars):
        bad = next(c for c in chars if len(c) != 1)
        raise DataError(f"{bad!r} in a ptb.char line is not one character: is this Mikolov's character PTB file?")
    return "".join(chars)


def _ptb(data: str, level: str) -> Corpus:
    prefix, _, root = data.partition(":")
    if not root:
        raise DataError(f"{prefix} needs its folder: {prefix}:DIR (the folder with the ptb.*.txt files)")
    stem = "ptb.char" if level == "char" else "ptb"
    files = {s: Path(root).expanduser() / f"{stem}.{s}.txt" for s in SPLITS}
    parse = _ptb_char if level == "char" else _plain
    return _from_files(data, files, level, parse, keep_blank=False)


# --------------------------------------------------------------------------- files and splits

def _split_files(folder: Path) -> dict:
    """One file per split in ``folder``, found by the words of the file names."""
    found = {}
    for split in SPLITS:
        hits = sorted(p for p in folder.iterdir()
                      if p.is_file() and SPLIT_WORDS[split] & set(re.split(r"[._\-\s]+", p.name.lower())))
        if not hits:
            raise DataError(f"{folder} has no {split} file: a data folder needs train, valid and test files "
                            f"(for example train.txt, valid.txt, test.txt)")
        if len(hits) > 1:
            hint = " (for Penn Treebank use --data ptb-char:DIR or ptb-word:DIR)" if any(p.name.startswith("ptb.") for p in hits) else ""
            raise DataError(f"{folder} has several {split} files: {', '.join(p.name for p in hits)}{hint}")
        found[split] = hits[0]
    return found


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path} is empty")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: undecodable bytes at offset {err.start} (byte 0x{raw[err.start]:02x}); "
                        f"text files must be UTF-8") from None


def _read_lines(files: dict) -> dict:
    """The lines of each file (through ``datasets.load_dataset("text")``, cached by datasets)."""
    for path in files.values():
        _check_file(Path(path))
    with _quiet_datasets() as datasets:
        ds = datasets.load_dataset("text", data_files={k: str(v) for k, v in files.items()})
    return {k: ds[k].data.column("text").to_pylist() for k in files}


def _from_files(source: str, files: dict, level: str, parse, keep_blank: bool = True) -> Corpus:
    """``keep_blank=False`` drops empty lines (PTB has none; its char files end in a blank one)."""
    raw = _read_lines(files)
    lines = {s: [x for x in (parse(ln, level) for ln in raw[s]) if keep_blank or len(x)] for s in SPLITS}
    for s in SPLITS:
        if not any(len(ln) for ln in lines[s]):
            raise DataError(f"{files[s]} has no {level} symbols")
    return Corpus(source, level, lines)


def _split_90_5_5(source: str, lines: list, level: str, origin) -> Corpus:
    """First 90 % of the lines train, next 5 % valid, last 5 % test."""
    n = len(lines)
    a, b = math.floor(0.9 * n), math.floor(0.95 * n)
    parts = {"train": lines[:a], "valid": lines[a:b], "test": lines[b:]}
    for s, part in parts.items():
        if not any(len(ln) for ln in part):
            raise DataError(f"{origin} has {n} lines, too few to split 90/5/5 into train/valid/test "
                            f"(the {s} part would be empty); give more lines or a folder with train/valid/test files")
    return Corpus(source, level, parts)


# --------------------------------------------------------------------------- Hugging Face hub

def _hub(data: str, level: str) -> Corpus:
    spec = data[3:]
    name, _, config = spec.partition(":")
    if not name:
        raise DataError("hf: needs a dataset name, e.g. hf:wikitext:wikitext-2-raw-v1")
    with _quiet_datasets() as datasets:
        try:
            ds = datasets.load_dataset(name, config or None)
        except ConnectionError as err:
            raise DataError(f"{data}: the Hugging Face hub cannot be reached ({_first_line(err)}) and no cached "
                            f"copy exists; run once with network access (HF_DATASETS_OFFLINE unset) or give a "
                            f"local file or folder") from None
        except Exception as err:  # datasets raises many types for a bad name or config
            raise DataError(f"{data}: {_first_line(err)}") from None
    names = {"train": ["train"], "valid": ["validation", "valid", "dev"], "test": ["test"]}
    have = {s: next((n for n in names[s] if n in ds), None) for s in SPLITS}
    if have["train"] is None:
        raise DataError(f"{data} has no train split (it has: {', '.join(ds)})")
    lines = {s: _hub_lines(ds[have[s]], data) for s in SPLITS if have[s]}
    if have["valid"] and have["test"]:
        return Corpus(data, level, {s: [_plain(ln, level) for ln in lines[s]] for s in SPLITS})
    return _split_90_5_5(data, [_plain(ln, level) for ln in lines["train"]], level, data)


def _hub_lines(split, data: str) -> list[str]:
    cols = [c for c, f in split.features.items() if getattr(f, "dtype", None) == "string"]
    col = "text" if "text" in cols else (cols[0] if len(cols) == 1 else None)
    if col is None:
        raise DataError(f"{data}: no 'text' column and not exactly one string column (columns: {', '.join(split.features)})")
    out = []
    for row in split[col]:
        out.extend(row.splitlines() or [""])
    return out


def _first_line(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


class _quiet_datasets:
    """Import ``datasets`` with its progress bars off for the duration (restored afterwards)."""

    def __enter__(self):
        import datasets
        self.datasets, self.was = datasets, datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        return datasets

    def __exit__(self, *exc):
        if self.was:
            self.datasets.enable_progress_bars()
