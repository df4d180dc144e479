"""Shared test fixtures: offline Hugging Face, the ../shared folder with real data and oracles."""
from __future__ import annotations

import os
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


@pytest.fixture
def shared():
    """The ../shared folder (skips the test when it is absent)."""
    return shared_path()
