"""Bouncing-glyph videos: Moving MNIST and its variants as sequences of frames.

Srivastava, Mansimov & Salakhutdinov (2015), "Unsupervised learning of video representations
using LSTMs", made videos of handwritten digits bouncing in a larger frame ("Moving MNIST");
Ororbia, Mali, Giles & Kifer (2020), "Continual learning of recurrent neural networks by locally
aligning distributed representations" (IEEE TNNLS), train P-TNCN on such Bouncing MNIST and
Bouncing notMNIST sequences. Here a sequence is ``n_frames`` frames of ``size`` x ``size``
pixels in which ``n_glyphs`` glyphs move independently.

Physics (``trajectory``): each glyph starts at a uniform random top-left position in
[0, size - glyph] on both axes and moves with a constant velocity of uniform random direction
and speed uniform in [2, 4] pixels per frame (Srivastava's digits move a few pixels a frame).
Positions advance in float and are reflected off the borders (p < 0: p = -p; p > lim:
p = 2 lim - p; the velocity on that axis flips), then rounded to whole pixels. Overlapping
glyphs combine by the pixelwise maximum; pixel values are the uint8 glyph values / 255.

Data forms (``load``):

- ``bouncing-mnist``, ``bouncing-fashion``, ``bouncing-notmnist``: the MNIST, Fashion-MNIST and
  notMNIST IDX folders under the data root (``sequences.images.data_root``: the ``root`` given,
  else ``$TNCN_DATA``, else ``~/.cache/tncn``);
- ``bouncing:PATH``: any folder of MNIST-format IDX files (see ``sequences.images``);
- ``bouncing-glyphs``: the digits 0-9 rendered offline from matplotlib's bundled fonts
  (``render_glyphs``; no data file).

Split rule (``glyph_splits``): the glyph images of train, valid and test are disjoint, also in
content: repeated images (the notMNIST sample here has about 200 exact duplicates) are kept
once, at their first occurrence, and test images equal to a train-file image are dropped. A folder with train and
t10k files: the last 5,000 of a fixed seeded permutation (seed 0) of the train file are valid,
the rest train, and test is the t10k file. A folder with one file (notMNIST here has only t10k):
a fixed seeded permutation (seed 0) split 80/10/10. Rendered glyphs are split by font
(``VALID_FONTS``, ``TEST_FONTS``), so test glyphs come from fonts never seen in training.

Sequences are generated on the fly, never stored: sequence i of a split is determined by
(seed, split, i) alone (``np.random.default_rng([seed, split_index, i])`` draws its glyphs, then
their trajectories), so it is the same in every batch composition and order.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Optional

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

from sequences import images
from sequences.batching import Batch
from sequences.errors import DataError

NAMED = {"bouncing-mnist": "mnist", "bouncing-notmnist": "notmnist",
         "bouncing-fashion": "fashion_mnist", "bouncing-glyphs": None}
"""Video data names and their IDX folder under the data root (``None``: rendered glyphs)."""

SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 10_000, "valid": 500, "test": 500}
"""Sequences per split."""

SPLIT_SEED = 0  # the fixed permutation that splits a glyph file
N_VALID = 5000  # glyphs of a train file held out for validation
SPEED = (2.0, 4.0)  # pixels per frame
FORMS = f"{', '.join(NAMED)}, or bouncing:PATH (a folder of MNIST-format IDX files)"

GLYPH = 28  # rendered glyphs: 28 x 28 like MNIST, the glyph scaled to fit a 20 x 20 box
BOX = 20
FONTS = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
    "cmr10", "cmb10", "cmss10", "cmti10", "cmtt10",
)
"""The text fonts of matplotlib's mpl-data/fonts/ttf used by ``render_glyphs`` (font index = position)."""
VALID_FONTS = ("DejaVuSansMono-BoldOblique", "STIXGeneralItalic", "cmss10")
TEST_FONTS = ("DejaVuSerif-Bold", "STIXGeneralBol", "cmtt10")
"""Rendered glyphs: 3 of the 21 fonts validate, 3 test, the other 15 train (about 70/15/15)."""
ANGLES = (0.0, 12.0, -12.0)  # rotations (degrees) of each rendered digit


# --------------------------------------------------------------------------- glyphs

def is_video(spec: str) -> bool:
    """True when ``spec`` names bouncing-glyph video data (a name of ``NAMED`` or ``bouncing:PATH``)."""
    return spec in NAMED or spec.startswith("bouncing:")


def canonical(spec: str) -> str:
    """``spec`` with the folder of ``bouncing:PATH`` made absolute (a saved run then reads it from anywhere)."""
    if spec.startswith("bouncing:") and len(spec) > len("bouncing:"):
        return "bouncing:" + str(Path(spec[len("bouncing:"):]).expanduser().resolve())
    return spec


@functools.lru_cache(maxsize=1)
def render_glyphs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits 0-9 in every font of ``FONTS`` at every angle of ``ANGLES``, rendered offline.

    Returns uint8 glyphs [N, 28, 28] (white on black, anti-aliased, each scaled so that its larger
    side is 20 pixels and centred by its bounding box, as MNIST fits digits in a 20 x 20 box),
    int64 labels [N] (the digit) and int64 font indices [N] (into ``FONTS``). All glyphs are drawn
    as paths on one Agg canvas and cut out. Deterministic; cached (the arrays are read-only).
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D, IdentityTransform

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    n = len(FONTS) * 10 * len(ANGLES)
    cols = 32
    rows = -(-n // cols)
    height = rows * GLYPH
    fig = Figure(figsize=(cols * GLYPH / 100, height / 100), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    labels, fonts = [], []
    for f, font in enumerate(FONTS):
        prop = FontProperties(fname=str(folder / f"{font}.ttf"))
        for digit in range(10):
            outline = TextPath((0, 0), str(digit), size=100, prop=prop)
            for angle in ANGLES:
                path = Affine2D().rotate_deg(angle).transform_path(outline)
                box = path.get_extents()
                r, c = divmod(len(labels), cols)
                fit = (Affine2D().translate(-box.x0 - box.width / 2, -box.y0 - box.height / 2)
                       .scale(BOX / max(box.width, box.height))
                       .translate(c * GLYPH + GLYPH / 2, height - r * GLYPH - GLYPH / 2))
                fig.add_artist(PathPatch(fit.transform_path(path), facecolor="white", edgecolor="none",
                                         antialiased=True, transform=IdentityTransform()))
                labels.append(digit)
                fonts.append(f)
    canvas.draw()
    sheet = np.asarray(canvas.buffer_rgba())[:height, :, 0]
    glyphs = sheet.reshape(rows, GLYPH, cols, GLYPH).transpose(0, 2, 1, 3).reshape(-1, GLYPH, GLYPH)[:n]
    out = (np.ascontiguousarray(glyphs, dtype=np.uint8), np.array(labels, dtype=np.int64),
           np.array(fonts, dtype=np.int64))
    for a in out:
        a.setflags(write=False)
    return out


def _folder(spec: str, root) -> Path:
    """The IDX folder of ``spec`` (a ``NAMED`` name or ``bouncing:PATH``), checked to exist."""
    if spec.startswith("bouncing:"):
        folder = Path(spec[len("bouncing:"):]).expanduser()
        if not folder.is_dir():
            raise DataError(f"{spec}: no folder {folder} (bouncing:PATH needs a folder of MNIST-format IDX files)")
        return folder
    if spec not in NAMED:
        raise DataError(f"unknown video data {spec!r}: give {FORMS}")
    folder = images.data_root(root) / NAMED[spec]
    if not folder.is_dir():
        raise DataError(f"{images.missing(spec, folder)}; or give bouncing:PATH, a folder of its IDX files")
    return folder


def glyph_splits(spec: str, root=None) -> dict[str, np.ndarray]:
    """uint8 glyph arrays [N, rows, cols] for train, valid and test, pairwise disjoint.

    See the module docstring for the rule. ``root``: the data root for named sets
    (``sequences.images.data_root``). The arrays are cached and read-only.
    """
    if spec == "bouncing-glyphs":
        return dict(_rendered_splits())
    folder = _folder(spec, root)
    return dict(_file_splits(str(folder.resolve())))


@functools.lru_cache(maxsize=1)
def _rendered_splits() -> tuple:
    glyphs, _, fonts = render_glyphs()
    held = {"valid": VALID_FONTS, "test": TEST_FONTS}
    of = {split: np.isin(fonts, [FONTS.index(f) for f in names]) for split, names in held.items()}
    of["train"] = ~(of["valid"] | of["test"])
    return tuple((split, _frozen(glyphs[of[split]])) for split in SPLITS)


@functools.lru_cache(maxsize=4)
def _file_splits(folder: str) -> tuple:
    present = images.splits(folder)
    if not present:
        raise DataError(f"{folder} holds no IDX image set: expected train- or t10k-images-idx3-ubyte[.gz] "
                        f"with the matching labels-idx1 file")
    seen: set = set()
    first = _distinct(images.load_glyphs(folder, present[0])[0], seen)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(first))
    if len(present) == 2:
        if len(first) <= N_VALID:
            raise DataError(f"{folder}: the train file has {len(first)} distinct images; more than {N_VALID} "
                            f"are needed")
        parts = {"train": first[order[:-N_VALID]], "valid": first[order[-N_VALID:]],
                 "test": _distinct(images.load_glyphs(folder, "t10k")[0], seen)}
    else:
        tenth = len(first) // 10
        if tenth == 0:
            raise DataError(f"{folder}: {len(first)} distinct images are too few to split 80/10/10")
        parts = {"train": first[order[:-2 * tenth]], "valid": first[order[-2 * tenth:-tenth]],
                 "test": first[order[-tenth:]]}
    return tuple((split, _frozen(parts[split])) for split in SPLITS)


def _distinct(glyphs: np.ndarray, seen: set) -> np.ndarray:
    """The glyphs whose bytes are not in ``seen`` (adding them), first occurrences in order."""
    keep = []
    for i, g in enumerate(glyphs):
        key = g.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return glyphs[keep]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.uint8)
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------- physics

def trajectory(n_frames: int, size: int, glyph: int, rng: np.random.Generator) -> np.ndarray:
    """int64 top-left positions [n_frames, 2] (row, col) of a glyph of side ``glyph`` bouncing in a
    ``size`` x ``size`` frame (see the module docstring); every position is in [0, size - glyph].

    Draws from ``rng``: the start (2 uniforms), the direction, the speed. The reflections are
    computed in closed form: reflecting at 0 and lim is the triangle wave of the free motion
    p0 + v t with period 2 lim, which also covers a step longer than lim (several bounces).
    """
    lim = float(size - glyph)
    start = rng.uniform(0.0, lim, size=2)
    angle = rng.uniform(0.0, 2 * math.pi)
    speed = rng.uniform(*SPEED)
    if lim == 0:
        return np.zeros((n_frames, 2), dtype=np.int64)
    free = start + np.arange(n_frames)[:, None] * (speed * np.array([math.sin(angle), math.cos(angle)]))
    wave = np.mod(free, 2 * lim)
    return np.rint(np.where(wave > lim, 2 * lim - wave, wave)).astype(np.int64)


def _paint(frames: np.ndarray, glyphs: np.ndarray, pos: np.ndarray) -> None:
    """Draws glyphs [N, K, g, g] at top-left positions [N, K, T, 2] into uint8 frames
    [N, T, size, size] in place, combining overlaps by the maximum.

    A strided view holds every g x g window of every frame, so one fancy index per glyph slot
    reads and writes all N * T blocks at once (the blocks of one slot never share memory).
    """
    N, K, g = glyphs.shape[:3]
    T, S = frames.shape[1:3]
    s = frames.strides
    windows = as_strided(frames, (N, T, S - g + 1, S - g + 1, g, g), (*s, s[2], s[3]))
    n, t = np.arange(N)[:, None], np.arange(T)[None, :]
    for k in range(K):
        r, c = pos[:, k, :, 0], pos[:, k, :, 1]
        windows[n, t, r, c] = np.maximum(windows[n, t, r, c], glyphs[:, k, None])


def bouncing_sequence(glyphs: list[np.ndarray], n_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 frames [n_frames, size, size] in [0, 1]: each uint8 glyph (square) moves along its own
    ``trajectory`` (drawn from ``rng`` in order); overlaps combine by the pixelwise maximum."""
    stack = np.stack([np.asarray(g, dtype=np.uint8) for g in glyphs])
    pos = np.stack([trajectory(n_frames, size, stack.shape[1], rng) for _ in glyphs])
    frames = np.zeros((1, n_frames, size, size), dtype=np.uint8)
    _paint(frames, stack[None], pos[None])
    return frames[0].astype(np.float32) / 255.0


# --------------------------------------------------------------------------- data and batches

class FrameSpace:
    """The observation space of a video set (the analogue of a vocabulary): frames of ``shape``,
    read by a model as ``len(space)`` = rows * cols inputs and outputs."""

    level = "frames"

    def __init__(self, shape):
        self.shape = (int(shape[0]), int(shape[1]))

    def __len__(self) -> int:
        return self.shape[0] * self.shape[1]

    def __eq__(self, other) -> bool:
        return isinstance(other, FrameSpace) and self.shape == other.shape

    def __repr__(self) -> str:
        return f"FrameSpace({self.shape[0]}x{self.shape[1]})"

    def to_dict(self) -> dict:
        return {"level": self.level, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameSpace":
        if d.get("level") != cls.level:
            raise ValueError(f"not a frame space: level {d.get('level')!r}")
        return cls(d["shape"])


@dataclass(eq=False)
class VideoData:
    """Bouncing-glyph sequences of three splits, drawn on the fly from disjoint glyph pools."""

    source: str
    glyphs: dict  # split -> uint8 [N, g, g]
    n_frames: int
    size: int
    n_glyphs: int
    seed: int = 0
    sizes: dict = field(default_factory=lambda: dict(SPLIT_SIZES))

    level: ClassVar[str] = "frames"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def vocabulary(self, protocol: Optional[str] = None) -> FrameSpace:
        """The frame space (``protocol`` is accepted for the interface of ``Corpus.vocabulary``)."""
        return FrameSpace(self.shape)

    def _split(self, split: str) -> int:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        return SPLITS.index(split)

    def generate(self, split: str, indices) -> np.ndarray:
        """uint8 frames [len(indices), T, size, size] of the sequences ``indices`` of ``split``."""
        s = self._split(split)
        pool = self.glyphs[split]
        g = pool.shape[1]
        chosen, pos = [], []
        for i in indices:
            rng = np.random.default_rng([self.seed, s, int(i)])
            chosen.append(rng.integers(len(pool), size=self.n_glyphs))
            pos.append([trajectory(self.n_frames, self.size, g, rng) for _ in range(self.n_glyphs)])
        frames = np.zeros((len(chosen), self.n_frames, self.size, self.size), dtype=np.uint8)
        if chosen:
            _paint(frames, pool[np.stack(chosen)], np.array(pos))
        return frames

    def sequence(self, split: str, i: int) -> np.ndarray:
        """float32 frames [T, rows, cols] in [0, 1] of sequence ``i`` of ``split``."""
        self._split(split)
        if not 0 <= i < self.sizes[split]:
            raise DataError(f"the {split} split has {self.sizes[split]} sequences; there is no sequence {i}")
        return self.generate(split, [i])[0].astype(np.float32) / 255.0

    def batches(self, split: str, space: FrameSpace, protocol: Optional[str] = None, batch_size: int = 32,
                seq_len: Optional[int] = None, seed: int = 0, clamp: bool = False) -> "VideoBatches":
        """``VideoBatches`` over ``split`` (``protocol`` and ``seq_len`` are accepted for the interface of
        ``Corpus.batches``; ``clamp``, for evaluation, lowers ``batch_size`` to the split's size)."""
        self._split(split)
        if not isinstance(space, FrameSpace):
            raise DataError(f"a {getattr(space, 'level', type(space).__name__)}-level model cannot read "
                            f"frames ({self.source})")
        if space.shape != self.shape:
            raise DataError(f"the model was trained on frames of shape {space.shape[0]}x{space.shape[1]} "
                            f"and this data has {self.size}x{self.size} ({self.source})")
        if clamp:
            batch_size = max(1, min(batch_size, self.sizes[split]))
        return VideoBatches(self, split, batch_size, seed)

    def mean_frame_bce(self, n_sequences: int = 200) -> float:
        """No-context baseline: nats per frame (summed over pixels) of predicting each pixel of the test
        frames 2..T by its mean intensity over the first ``n_sequences`` training sequences."""
        if n_sequences < 1:
            raise DataError(f"the baseline needs at least one training sequence, got {n_sequences}")
        n = min(n_sequences, self.sizes["train"])
        total = np.zeros((self.size, self.size))
        for lo in range(0, n, 64):
            total += self.generate("train", range(lo, min(n, lo + 64))).sum((0, 1), dtype=np.float64)
        p = np.clip(total / (255.0 * n * self.n_frames), 1e-6, 1 - 1e-6)
        log_p, log_q = np.log(p), np.log1p(-p)
        bce, n_test = 0.0, self.sizes["test"]
        for lo in range(0, n_test, 64):
            x = self.generate("test", range(lo, min(n_test, lo + 64)))[:, 1:].astype(np.float64) / 255.0
            bce -= float((x * log_p + (1 - x) * log_q).sum())
        return bce / (n_test * (self.n_frames - 1))


class VideoBatches:
    """The batches of one split (the interface of ``sequences.batching.LineBatches``): frames
    float32 [T, B, rows*cols], every frame real, all but the first of each sequence scored."""

    protocol = "sequences"
    unknown = 0

    def __init__(self, data: VideoData, split: str, batch_size: int, seed: int = 0):
        n = data.sizes[split]
        if batch_size <= 0:
            raise DataError(f"the batch size must be positive, got {batch_size}")
        if batch_size > n:
            raise DataError(f"batch size {batch_size} is larger than the data: the {split} split of "
                            f"{data.source} has {n} sequences")
        self.data, self.split, self.batch_size, self.seed = data, split, batch_size, seed
        self.n_sequences = n
        self.n_tokens = n * data.n_frames
        self.n_scored = n * (data.n_frames - 1)

    def __len__(self) -> int:
        return -(-self.n_sequences // self.batch_size)

    def order(self, epoch: Optional[int] = None) -> np.ndarray:
        """The sequence indices of one pass: 0, 1, 2, ... (``epoch=None``) or seeded by (seed, epoch)."""
        if epoch is None:
            return np.arange(self.n_sequences)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_sequences)

    def epoch(self, epoch: Optional[int] = None, start: int = 0) -> Iterator[Batch]:
        """The batches of one pass; ``epoch`` seeds the shuffle (None: fixed order for evaluation);
        ``start`` skips that many batches (to resume inside an epoch)."""
        order, B, T = self.order(epoch), self.batch_size, self.data.n_frames
        for k in range(start, len(self)):
            idx = order[k * B:(k + 1) * B]
            frames = self.data.generate(self.split, idx)  # [B, T, rows, cols]
            tokens = torch.from_numpy(frames.reshape(len(idx), T, -1).transpose(1, 0, 2).astype(np.float32))
            tokens /= 255.0
            score = torch.ones(T, len(idx), dtype=torch.bool)
            score[0] = False
            yield Batch(tokens, torch.ones(T, len(idx)), score, reset=True)


def load(spec: str, n_frames: int = 20, size: int = 64, n_glyphs: int = 2, root=None, seed: int = 0) -> VideoData:
    """Bouncing-glyph video data named by ``spec`` (see the module docstring for the forms)."""
    if not is_video(spec):
        raise DataError(f"unknown video data {spec!r}: give {FORMS}")
    if n_frames < 2:
        raise DataError(f"a video sequence needs at least 2 frames, got {n_frames}")
    if n_glyphs < 1:
        raise DataError(f"a video needs at least 1 glyph per frame, got {n_glyphs}")
    if size < GLYPH:
        raise DataError(f"the frame size must be at least the glyph size {GLYPH}, got {size}")
    pools = glyph_splits(spec, root)
    shape = pools["train"].shape[1:]
    if shape[0] != shape[1] or shape[0] > size:
        raise DataError(f"{spec}: glyphs of shape {shape[0]}x{shape[1]} need to be square and fit a "
                        f"{size}x{size} frame")
    return VideoData(spec, pools, int(n_frames), int(size), int(n_glyphs), int(seed))


def frames_figure(true: np.ndarray, predicted: np.ndarray, title: str = ""):
    """A matplotlib figure: true frames [T, rows, cols] on top, predicted below (NaN, e.g. the
    first predicted frame that nothing precedes, shows empty), one column per frame, at most 20."""
    from matplotlib.figure import Figure

    n = min(len(true), 20)
    fig = Figure(figsize=(0.9 * n + 0.8, 2.2 if title else 2.0), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for row, (name, frames) in enumerate((("true", true), ("predicted", predicted))):
        for t in range(n):
            ax = axes[row, t]
            ax.imshow(np.asarray(frames[t], dtype=np.float32), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name)
    if title:
        fig.suptitle(title)
    return fig
