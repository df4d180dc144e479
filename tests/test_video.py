"""Tests of the bouncing-glyph videos (sequences/video.py; Moving MNIST of Srivastava et al. 2015 as
Bouncing MNIST / notMNIST in Ororbia et al. 2020). Expected values come from the physics and the
split rules as documented, worked by hand or by small independent references.
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections import Counter

import numpy as np
import pytest

from conftest import shared_path
from sequences import video
from sequences.vocab import Vocabulary
from sequences.errors import DataError


@pytest.fixture(scope="module")
def small():
    """Rendered glyphs, 5 frames of 32x32 with 2 glyphs, 10/7/5 sequences."""
    data = video.load("bouncing-glyphs", n_frames=5, size=32, n_glyphs=2, seed=3)
    return dataclasses.replace(data, sizes={"train": 10, "valid": 7, "test": 5})


class Scripted:
    """A stand-in generator whose ``uniform`` returns scripted values: the start (row, col), the
    direction angle, the speed, in the order ``trajectory`` documents."""

    def __init__(self, row, col, angle, speed):
        self.values = [np.array([row, col]), angle, speed]

    def uniform(self, low, high, size=None):
        return self.values.pop(0)


def reflect_reference(p: float, v: float, lim: float, n: int) -> list[int]:
    """One axis, stepped: p += v, then p < 0: p = -p, v = -v; p > lim: p = 2 lim - p, v = -v."""
    out = [round(p)]
    for _ in range(n - 1):
        p += v
        if p < 0:
            p, v = -p, -v
        if p > lim:
            p, v = 2 * lim - p, -v
        out.append(round(p))
    return out


# --------------------------------------------------------------------------- physics

def test_trajectory_hand_worked_horizontal():
    # lim = 36 - 28 = 8; row fixed at 1; col 5 moving right at 3 px/frame:
    # 5, 8 (= lim, stays), 11 -> 16 - 11 = 5 (v = -3), 2, -1 -> 1 (v = +3), 4, 7, 10 -> 6
    pos = video.trajectory(8, 36, 28, Scripted(1.0, 5.0, 0.0, 3.0))
    assert pos.tolist() == [[1, c] for c in (5, 8, 5, 2, 1, 4, 7, 6)]


def test_trajectory_hand_worked_diagonal():
    # speed 2.5 along (sin, cos) = (0.6, 0.8): v = (1.5, 2.0) per frame, lim = 8
    # rows 0.2 1.7 3.2 4.7 6.2 7.7 9.2->6.8 5.3  -> 0 2 3 5 6 8 7 5
    # cols 7 9->7 5 3 1 -1->1 3 5                 -> 7 7 5 3 1 1 3 5
    pos = video.trajectory(8, 36, 28, Scripted(0.2, 7.0, math.atan2(3, 4), 2.5))
    assert pos[:, 0].tolist() == [0, 2, 3, 5, 6, 8, 7, 5]
    assert pos[:, 1].tolist() == [7, 7, 5, 3, 1, 1, 3, 5]


def test_trajectory_matches_stepped_reflection_reference():
    lim = 40 - 28
    for k in range(200):
        draws = np.random.default_rng(k)
        start, angle, speed = draws.uniform(0, lim, size=2), draws.uniform(0, 2 * math.pi), draws.uniform(2, 4)
        pos = video.trajectory(50, 40, 28, np.random.default_rng(k))
        v = (speed * math.sin(angle), speed * math.cos(angle))
        assert pos[:, 0].tolist() == reflect_reference(start[0], v[0], lim, 50)
        assert pos[:, 1].tolist() == reflect_reference(start[1], v[1], lim, 50)


@pytest.mark.parametrize("size", [28, 29, 30, 34, 64])
def test_trajectory_stays_inside(size):
    rng = np.random.default_rng(size)
    for _ in range(1000 if size == 34 else 100):
        pos = video.trajectory(100, size, 28, rng)
        assert pos.shape == (100, 2) and np.issubdtype(pos.dtype, np.integer)
        assert pos.min() >= 0 and pos.max() <= size - 28


def test_speed_constant_between_reflections():
    rng = np.random.default_rng(1)
    lim = 100 - 28
    for _ in range(200):
        pos = video.trajectory(60, 100, 28, rng)
        for axis in range(2):
            p = pos[:, axis]
            step = np.diff(p)
            # no reflection can happen on a step that starts and ends 5+ px from both borders
            free = (np.minimum(p[:-1], p[1:]) >= 5) & (np.maximum(p[:-1], p[1:]) <= lim - 5)
            if free.sum() >= 2:
                size = np.abs(step[free])
                assert size.max() - size.min() <= 1  # |v| rounded down or up
                assert size.max() <= 4
            # the direction only changes at a border (within one step of 4 px)
            turns = np.flatnonzero(np.sign(step[1:]) * np.sign(step[:-1]) < 0) + 1
            assert all(p[t] <= 4 or p[t] >= lim - 4 for t in turns)


def test_single_glyph_content_preserved():
    glyph = np.random.default_rng(0).integers(1, 256, size=(28, 28), dtype=np.uint8)
    frames = video.bouncing_sequence([glyph], 12, 40, np.random.default_rng(7))
    pos = video.trajectory(12, 40, 28, np.random.default_rng(7))
    assert frames.shape == (12, 40, 40) and frames.dtype == np.float32
    for t, (r, c) in enumerate(pos):
        expected = np.zeros((40, 40), dtype=np.float32)
        expected[r:r + 28, c:c + 28] = glyph / 255.0
        np.testing.assert_allclose(frames[t], expected, rtol=0, atol=1e-7)


def test_overlap_is_pixelwise_maximum():
    draws = np.random.default_rng(1)
    a, b = (draws.integers(0, 256, size=(28, 28), dtype=np.uint8) for _ in range(2))
    frames = video.bouncing_sequence([a, b], 10, 30, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    pa, pb = video.trajectory(10, 30, 28, rng), video.trajectory(10, 30, 28, rng)
    for t in range(10):
        ca, cb = np.zeros((30, 30)), np.zeros((30, 30))
        ca[pa[t, 0]:pa[t, 0] + 28, pa[t, 1]:pa[t, 1] + 28] = a
        cb[pb[t, 0]:pb[t, 0] + 28, pb[t, 1]:pb[t, 1] + 28] = b
        np.testing.assert_allclose(frames[t], np.maximum(ca, cb) / 255.0, atol=1e-7)
    assert frames.min() >= 0 and frames.max() <= 1


# --------------------------------------------------------------------------- glyphs and splits

def test_rendered_glyphs():
    glyphs, labels, fonts = video.render_glyphs()
    assert glyphs.dtype == np.uint8 and glyphs.shape[1:] == (28, 28)
    assert len(glyphs) == len(labels) == len(fonts) == len(video.FONTS) * 10 * len(video.ANGLES)
    assert sorted(set(labels.tolist())) == list(range(10))
    assert set(fonts.tolist()) == set(range(len(video.FONTS)))
    assert (glyphs.max(axis=(1, 2)) > 200).all()  # every glyph has ink
    ink = glyphs > 0  # fits the 20 x 20 box (plus anti-aliasing) with a black border
    assert not ink[:, :3].any() and not ink[:, -3:].any() and not ink[:, :, :3].any() and not ink[:, :, -3:].any()
    assert len({g.tobytes() for g in glyphs}) == len(glyphs)
    assert video.render_glyphs()[0] is glyphs  # cached


def test_rendered_splits_by_font():
    glyphs, _, fonts = video.render_glyphs()
    by_bytes = {g.tobytes(): f for g, f in zip(glyphs, fonts)}
    splits = video.glyph_splits("bouncing-glyphs")
    used = {s: {by_bytes[g.tobytes()] for g in a} for s, a in splits.items()}
    assert used["train"].isdisjoint(used["test"]) and used["train"].isdisjoint(used["valid"])
    assert used["valid"].isdisjoint(used["test"])
    assert {video.FONTS[f] for f in used["test"]} == set(video.TEST_FONTS)
    assert sum(len(a) for a in splits.values()) == len(glyphs)
    assert_disjoint(splits)


def assert_disjoint(splits):
    seen = {s: {g.tobytes() for g in a} for s, a in splits.items()}
    assert set(seen) == {"train", "valid", "test"}
    assert all(seen[s] for s in seen)
    assert seen["train"].isdisjoint(seen["valid"]) and seen["train"].isdisjoint(seen["test"])
    assert seen["valid"].isdisjoint(seen["test"])


def test_mnist_splits():
    root = shared_path("data")
    splits = video.glyph_splits("bouncing-mnist", root)
    assert {s: len(a) for s, a in splits.items()} == {"train": 55000, "valid": 5000, "test": 10000}
    assert_disjoint(splits)
    again = video.glyph_splits("bouncing-mnist", root)
    assert all(np.array_equal(splits[s], again[s]) for s in splits)


def test_notmnist_splits():
    folder = shared_path("data", "notmnist")
    from sequences import images
    original = images.load_glyphs(folder, "t10k")[0]
    splits = video.glyph_splits("bouncing-notmnist", folder.parent)
    assert_disjoint(splits)
    distinct = {g.tobytes() for g in original}
    got = [g.tobytes() for a in splits.values() for g in a]
    assert len(got) == len(set(got)) and set(got) == distinct  # each distinct image exactly once
    n = len(distinct)
    assert len(splits["valid"]) == len(splits["test"]) == n // 10


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_folder_form_split_80_10_10(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
    imgs[59] = imgs[0]  # a repeated image is kept once
    write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(60, dtype=np.uint8))
    spec = f"bouncing:{tmp_path}"
    assert video.is_video(spec)
    splits = video.glyph_splits(spec)
    assert {s: len(a) for s, a in splits.items()} == {"train": 49, "valid": 5, "test": 5}
    assert_disjoint(splits)
    assert Counter(g.tobytes() for a in splits.values() for g in a) == Counter(g.tobytes() for g in imgs[:59])
    data = video.load(spec, n_frames=3, size=30, n_glyphs=1)
    assert data.sequence("test", 0).shape == (3, 30, 30)


# --------------------------------------------------------------------------- sequences and batches

def test_determinism(small):
    same = dataclasses.replace(small)
    other = dataclasses.replace(small, seed=4)
    for i in range(3):
        np.testing.assert_array_equal(small.sequence("train", i), same.sequence("train", i))
    assert not np.array_equal(small.sequence("train", 0), other.sequence("train", 0))
    assert not np.array_equal(small.sequence("train", 0), small.sequence("valid", 0))
    assert not np.array_equal(small.sequence("train", 0), small.sequence("train", 1))
    b1 = [b.tokens for b in small.batches("train", small.vocabulary(), batch_size=4).epoch(2)]
    b2 = [b.tokens for b in same.batches("train", same.vocabulary(), batch_size=4).epoch(2)]
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(b1, b2))


def test_sequence_same_in_any_batch(small):
    space = small.vocabulary()
    expected = [small.sequence("train", i).reshape(5, -1) for i in range(10)]
    for batch_size, epoch in ((3, None), (4, 0), (10, 1), (1, 5)):
        batches = small.batches("train", space, batch_size=batch_size, seed=9)
        order = batches.order(epoch)
        got = np.concatenate([b.tokens.numpy() for b in batches.epoch(epoch)], axis=1)  # [T, n, D]
        assert sorted(order.tolist()) == list(range(10))
        for col, i in enumerate(order):
            np.testing.assert_array_equal(got[:, col], expected[i])


def test_batches_shape_and_masks(small):
    batches = small.batches("valid", small.vocabulary(), "lines", 3, None, 0, False)
    assert batches.protocol == "sequences" and batches.unknown == 0
    assert len(batches) == 3  # 7 sequences in 3 + 3 + 1
    assert batches.n_tokens == 7 * 5 and batches.n_scored == 7 * 4
    out = list(batches.epoch())
    assert [b.tokens.shape[1] for b in out] == [3, 3, 1]
    for b in out:
        assert tuple(b.tokens.shape) == (5, b.tokens.shape[1], 32 * 32) and b.reset
        assert b.tokens.dtype.is_floating_point and 0 <= float(b.tokens.min()) and float(b.tokens.max()) <= 1
        assert b.mask.eq(1).all() and tuple(b.mask.shape) == (5, b.tokens.shape[1])
        assert not b.score[0].any() and b.score[1:].all()
    assert sum(b.n_scored for b in out) == batches.n_scored
    assert sum(b.n_tokens for b in out) == batches.n_tokens
    np.testing.assert_array_equal(out[2].tokens[:, 0].numpy(), small.sequence("valid", 6).reshape(5, -1))


def test_epoch_order_and_start(small):
    batches = small.batches("train", small.vocabulary(), batch_size=4, seed=2)
    assert batches.order().tolist() == list(range(10))
    e0, e1 = batches.order(0), batches.order(1)
    assert sorted(e0.tolist()) == list(range(10)) and not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, small.batches("train", small.vocabulary(), batch_size=2, seed=2).order(0))
    full = [b.tokens.numpy() for b in batches.epoch(0)]
    rest = [b.tokens.numpy() for b in batches.epoch(0, start=2)]
    assert len(full) == 3 and len(rest) == 1
    np.testing.assert_array_equal(rest[0], full[2])
    assert list(batches.epoch(0, start=3)) == []


def test_mean_frame_bce_by_hand():
    data = video.load("bouncing-glyphs", n_frames=4, size=30, n_glyphs=1, seed=1)
    data = dataclasses.replace(data, sizes={"train": 3, "valid": 1, "test": 2})
    train = np.stack([data.sequence("train", i) for i in range(2)]).astype(np.float64)
    p = np.clip(train.mean(axis=(0, 1)), 1e-6, 1 - 1e-6)
    total, frames = 0.0, 0
    for i in range(2):
        for x in data.sequence("test", i)[1:].astype(np.float64):
            total += -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
            frames += 1
    assert data.mean_frame_bce(n_sequences=2) == pytest.approx(total / frames, rel=1e-6)  # frames are float32
    assert data.mean_frame_bce(n_sequences=50) == pytest.approx(data.mean_frame_bce(n_sequences=3))


# --------------------------------------------------------------------------- space, errors, figures

def test_frame_space():
    space = video.FrameSpace((64, 64))
    assert len(space) == 4096 and space.level == "frames" and space.shape == (64, 64)
    back = video.FrameSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert back == space and back != video.FrameSpace((32, 32))


def test_is_video():
    assert all(video.is_video(name) for name in video.NAMED)
    assert video.is_video("bouncing:/some/folder")
    assert not video.is_video("mnist") and not video.is_video("stdlib")


@pytest.mark.parametrize("kwargs, words", [
    ({"n_frames": 1}, "at least 2 frames"),
    ({"size": 27}, "at least the glyph size 28"),
    ({"n_glyphs": 0}, "at least 1 glyph"),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(DataError, match=words):
        video.load("bouncing-glyphs", **kwargs)


def test_unknown_and_missing_data(tmp_path):
    with pytest.raises(DataError, match="bouncing:PATH"):
        video.load("bouncing-cifar")
    with pytest.raises(DataError) as err:
        video.load("bouncing-mnist", root=tmp_path)
    assert str(tmp_path / "mnist") in str(err.value) and "bouncing:PATH" in str(err.value)
    with pytest.raises(DataError, match="no folder"):
        video.load(f"bouncing:{tmp_path / 'nothing'}")
    with pytest.raises(DataError, match="no IDX image set"):
        video.load(f"bouncing:{tmp_path}")


def test_batch_errors(small):
    with pytest.raises(DataError, match="trained on frames of shape 64x64 and this data has 32x32"):
        small.batches("train", video.FrameSpace((64, 64)))
    with pytest.raises(DataError, match="batch size 8 is larger than the data"):
        small.batches("test", small.vocabulary(), batch_size=8)
    assert small.batches("test", small.vocabulary(), batch_size=8, clamp=True).batch_size == 5
    with pytest.raises(DataError, match="char-level model cannot read frames"):
        small.batches("train", Vocabulary.build("char", ["ab"]))
    with pytest.raises(DataError, match="unknown split"):
        small.sequence("dev", 0)


def test_frames_figure(tmp_path, small):
    true = small.sequence("test", 0)
    predicted = np.concatenate([np.full((1, 32, 32), np.nan, np.float32), true[:-1]])
    fig = video.frames_figure(true, predicted, title="bouncing glyphs")
    assert fig.axes[0].get_ylabel() == "true" and fig.axes[len(true)].get_ylabel() == "predicted"
    path = tmp_path / "frames.png"
    fig.savefig(path, format="png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
