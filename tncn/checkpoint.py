"""Checkpoints as plain data: state_dicts, tensors, numbers and strings; never a pickled object.

``save`` writes with ``torch.save`` into a temporary file beside the target, flushes it to disk
and renames it over the target (``tncn.files.atomic``), so a kill during a save leaves the
previous checkpoint intact. ``load`` reads with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers, and turns every failure into a one-line ``UserError``: a
missing file, a truncated or corrupt file, a file that holds pickled objects, a file that is not a
tncn checkpoint, or a checkpoint of another kind (e.g. a classifier where a sequence model is
expected). ``rng_state``/``set_rng_state`` capture the global torch generators.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from tncn import files
from tncn.errors import UserError

FORMAT = "tncn"
VERSION = 1
FILENAME = "checkpoint.pt"


def resolve(path) -> Path:
    """A run folder means its ``checkpoint.pt``; a file path is taken as it is."""
    path = Path(path).expanduser()
    return path / FILENAME if path.is_dir() else path


def save(path, payload: dict, kind: str) -> Path:
    """Write ``payload`` (plain data) atomically (``tncn.files.atomic``), tagged with the tncn
    format and ``kind``."""
    path = resolve(path)
    with files.atomic(path) as fh:
        torch.save({"format": FORMAT, "version": VERSION, "kind": kind, **payload}, fh)
    return path


def load(path, kind: str) -> dict:
    """The payload saved by ``save`` with this ``kind``, on the CPU."""
    path = resolve(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():
            raise UserError(f"{path} holds pickled Python objects, not a tncn checkpoint (refusing to load it)") from None
        raise UserError(f"{path} is truncated, corrupt or not a checkpoint ({_cause(err)})") from None
    except Exception as err:  # torch's reader fails on foreign bytes with many exception types
        raise UserError(f"{path} is truncated, corrupt or not a checkpoint ({_cause(err)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a tncn checkpoint")
    if data.get("version") != VERSION:
        raise UserError(f"{path} is a tncn checkpoint of format version {data.get('version')}; this tncn reads version {VERSION}")
    if data.get("kind") != kind:
        raise UserError(f"{path} holds a tncn {data.get('kind')} checkpoint, not a {kind} checkpoint")
    return data


def _cause(err: Exception) -> str:
    """What torch says went wrong, in one line, without its advice to load unsafely."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # the weights-only reader: keep its cause, drop the advice
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    if "weights_only" in line:
        line = type(err).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def rng_state() -> dict:
    """The global torch random states (CPU, and every CUDA device when CUDA is initialised)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
