"""Checkpoints as plain data: state_dicts, tensors, numbers and strings; never a pickled object.

``save`` writes with ``torch.save`` into a temporary file beside the target, flushes it to disk
and renames it over the target (``os.replace``), so a kill during a save leaves the previous
checkpoint intact. ``load`` reads with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers, and turns every failure into a one-line ``UserError``: a
missing file, a truncated or corrupt file, a file that holds pickled objects, a file that is not a
tncn checkpoint, or a checkpoint of another kind (e.g. a classifier where a sequence model is
expected). ``rng_state``/``set_rng_state`` capture the global torch generators.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from tncn.errors import UserError

FORMAT = "tncn"
VERSION = 1
FILENAME = "checkpoint.pt"


def resolve(path) -> Path:
    """A run folder means its ``checkpoint.pt``; a file path is taken as it is."""
    path = Path(path).expanduser()
    return path / FILENAME if path.is_dir() else path


def save(path, payload: dict, kind: str) -> Path:
    """Write ``payload`` (plain data) atomically, tagged with the tncn format and ``kind``."""
    path = resolve(path)
    data = {"format": FORMAT, "version": VERSION, "kind": kind, **payload}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path, kind: str) -> dict:
    """The payload saved by ``save`` with this ``kind``, on the CPU."""
    path = resolve(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():
            raise UserError(f"{path} holds pickled Python objects, not a tncn checkpoint (refusing to load it)") from None
        raise UserError(f"{path} is truncated or corrupt ({_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is truncated or corrupt ({_first_line(err)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a tncn checkpoint")
    if data.get("version") != VERSION:
        raise UserError(f"{path} is a tncn checkpoint of format version {data.get('version')}; this tncn reads version {VERSION}")
    if data.get("kind") != kind:
        raise UserError(f"{path} holds a tncn {data.get('kind')} checkpoint, not a {kind} checkpoint")
    return data


def _first_line(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


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
