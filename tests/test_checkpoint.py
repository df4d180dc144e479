"""Checkpoints: plain data only, atomic writes, and one clear error for each kind of bad file."""
from __future__ import annotations

import argparse

import pytest
import torch

from tncn import checkpoint
from tncn.errors import UserError


def payload():
    return {"weights": {"W": torch.arange(6.0).view(2, 3)}, "step": 7, "names": ["a", "b"], "none": None}


def test_round_trip_and_resolve(tmp_path):
    path = checkpoint.save(tmp_path, payload(), "sequence")  # a folder means its checkpoint.pt
    assert path == tmp_path / "checkpoint.pt"
    got = checkpoint.load(tmp_path, "sequence")
    assert got["step"] == 7 and got["names"] == ["a", "b"] and got["none"] is None
    assert torch.equal(got["weights"]["W"], torch.arange(6.0).view(2, 3))
    assert torch.load(path, weights_only=True)["kind"] == "sequence"  # loadable without unpickling objects
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, payload(), "sequence")
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def dies_half_way(obj, fh):
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, {"step": 8}, "sequence")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_bad_checkpoints_get_one_line_errors(tmp_path):
    path = checkpoint.save(tmp_path / "ok.pt", payload(), "sequence")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated, corrupt or not a checkpoint"):
        checkpoint.load(tmp_path / "cut.pt", "sequence")
    (tmp_path / "noise.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="truncated, corrupt or not a checkpoint"):
        checkpoint.load(tmp_path / "noise.pt", "sequence")
    torch.save({"format": "tncn", "version": 1, "kind": "sequence", "x": argparse.Namespace(a=1)}, tmp_path / "obj.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        checkpoint.load(tmp_path / "obj.pt", "sequence")
    torch.save({"state": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a tncn checkpoint"):
        checkpoint.load(tmp_path / "other.pt", "sequence")
    with pytest.raises(UserError, match="holds a tncn sequence checkpoint, not a classifier"):
        checkpoint.load(path, "classifier")
    with pytest.raises(UserError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing.pt", "sequence")


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))


def test_foreign_bytes_are_refused_in_one_line_that_never_advises_unsafe_loading(tmp_path):
    """Random bytes make torch's reader fail in many ways (IndexError, RuntimeError, an
    UnpicklingError that suggests weights_only=False): each is one UserError line without that advice."""
    import pickle
    import random

    rng = random.Random(0)
    blobs = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4000))) for _ in range(30)]
    blobs.append(pickle.dumps(list(range(5)), protocol=4) + b"\x95" * 8)  # a pickle opcode the reader refuses
    for i, blob in enumerate(blobs):
        path = tmp_path / f"noise{i}.pt"
        path.write_bytes(blob)
        with pytest.raises(UserError) as err:
            checkpoint.load(path, "sequence")
        message = str(err.value)
        assert "\n" not in message and "weights_only" not in message, message
