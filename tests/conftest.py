"""Shared test fixtures: offline Hugging Face, the ../shared folder with real data and oracles."""
from __future__ import annotations

import importlib
import os
import random
from pathlib import Path

import pytest
import torch

# The tests use tiny tensors: one thread avoids OpenMP start-up and spin costs on a 2-core machine.
torch.set_num_threads(1)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test saying why (the folder travels beside the repo)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared reference data lives beside the repository in ../shared")
    return path


def segment(x: torch.Tensor, reset: bool, pad: int = 0):
    """A ``Batch`` of observations x [T, B] (ids) or [T, B, D] (frames): every position real and
    scored but the first after a reset; ``pad`` > 0 turns the last ``pad`` positions of row 1 into
    padding (as the lines protocol pads a short sentence)."""
    from sequences.batching import Batch

    mask = torch.ones(x.shape[:2], dtype=x.dtype if x.is_floating_point() else torch.float32)
    if pad:
        mask[-pad:, 1] = 0
        x[-pad:, 1] = 0
    score = mask.bool()
    if reset:
        score[0] = False
    return Batch(x, mask, score, reset)


@pytest.fixture(autouse=True)
def keep_threads():
    """Commands set torch's thread count; every test starts with the suite's one thread."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def drawn_png(path) -> tuple[int, int]:
    """(width, height) of the PNG at ``path``, after checking that it decodes and is not blank."""
    from matplotlib import image

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels[..., :3].std() > 0.01, f"{path} is blank"
    return pixels.shape[1], pixels.shape[0]


@pytest.fixture
def in_process(monkeypatch):
    """Run ``tncn.isolate`` tasks (a compare run of one model, a memory pass) in this process:
    starting a fresh interpreter per task costs seconds on busy cores."""
    from tncn import isolate

    def run(target, task, threads, what):
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)(task)
    monkeypatch.setattr(isolate, "run", run)


@pytest.fixture
def shared():
    """The ../shared folder (skips the test when it is absent)."""
    return shared_path()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A text file of 400 short lines over 16 words (split 90/5/5 by the text loader)."""
    rng = random.Random(0)
    words = "the cat sat on a mat and then a dog ran to the red barn while birds sang".split()
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "\n" for _ in range(400)))
    return path
