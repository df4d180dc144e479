"""Run folders of ``tncn train`` and loading a trained sequence model back.

A run folder holds ``config.json`` (the resolved options), ``metrics.jsonl`` (one JSON object per
validation, see ``tncn.train.fit``; non-finite numbers as ``null``), ``checkpoint.pt`` (the
latest, saved at each validation), ``best.pt`` (the checkpoint of the best validation so far),
``curves.png`` (the score against training tokens and against wall time) and, for video,
``frames.png`` (true and predicted frames of a test sequence). Every file is written atomically
(``tncn.files``); ``clean`` removes the temporary files a kill left behind.

The checkpoint (``tncn.checkpoint``, kind ``"sequence"``) holds plain data only: ``config``,
``vocab`` (``Vocabulary.to_dict``, or ``FrameSpace.to_dict`` for video), ``learner`` (the
learner's state_dict: model, optimizer, carried state, its RNG), ``progress``
(``tncn.train.Progress``) and ``rng`` (the global torch RNG states); a run under torchrun
(``tncn.distributed``; only rank 0 writes) adds ``ranks``, each rank's own carried and random
state (its whole learner under ``--parallel average``), and ``config.json`` its ``world_size``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sequences import text, video
from sequences.vocab import Vocabulary
from tncn import checkpoint, files
from tncn.errors import UserError
from tncn.metrics import METRICS
from tncn.options import OptionError
from tncn.temporal import build_learner, learner_class
from tncn.train import Progress

KIND = "sequence"
BEST = "best.pt"
FILES = ("config.json", "metrics.jsonl", checkpoint.FILENAME, BEST, "curves.png", "frames.png")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, refusing CUDA where it is not available (an ``OptionError``
    of the option ``device``)."""
    def refuse(why: str):
        return OptionError("device", f"{{}} {name}: {why}")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise refuse("not a device name (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise refuse(f"CUDA is not available here (torch {torch.__version__}, "
                         f"{'built without CUDA' if torch.version.cuda is None else 'no usable GPU'})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise refuse(f"only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise refuse("only cpu and cuda are supported")
    return dev


def open_data(spec: str, config: dict):
    """The data ``spec`` as a run with ``config`` reads it: a ``sequences.video.VideoData`` with the
    run's frame settings (and ``data_root``) for video specs, else a ``sequences.text.Corpus`` at
    the run's level (PTB forms fix their own level)."""
    if video.is_video(spec):
        if config.get("level") not in (None, "frames"):
            raise UserError(f"{spec} is video data and this model was trained on {config['level']} symbols")
        return video.load(spec, config["frames"], config["frame_size"], config["glyphs"], root=config.get("data_root"))
    if config.get("level") == "frames":
        raise UserError(f"{spec} is text and this model was trained on video frames")
    return text.load(spec, None if spec.startswith(("ptb-char", "ptb-word")) else config.get("level"))


def saved_config(out: Path) -> dict:
    """The config.json of the run folder ``out`` (empty when it has none)."""
    try:
        config = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def saved_model(out: Path) -> Optional[str]:
    """The model of the run folder ``out`` by its config.json (None when it has none)."""
    return saved_config(out).get("model")


def learner_options(config: dict) -> dict:
    """The learner's options out of a flat run config."""
    return {k: config[k] for k in learner_class(config["model"]).defaults()}


@dataclass
class Run:
    """A trained sequence model loaded from a checkpoint."""

    config: dict
    vocab: object  # a Vocabulary, or a FrameSpace for video
    learner: object
    progress: Progress
    rng: dict
    path: Path
    ranks: Optional[list] = None  # a distributed run's per-rank states (see ``save``)


def load(path, device: Optional[str] = None, runtime: Optional[dict] = None) -> Run:
    """The checkpoint at ``path`` (a run folder or a checkpoint file), rebuilt on ``device``
    (default: the device it was trained on), with ``runtime`` options (``Option.runtime``, such
    as ``compile``) changed where given."""
    data = checkpoint.load(path, KIND)
    where = checkpoint.resolve(path)
    try:
        config = data["config"]
        frames = data["vocab"].get("level") == "frames"
        vocab = (video.FrameSpace if frames else Vocabulary).from_dict(data["vocab"])
        device = resolve_device(device or config["device"])
        options = {**learner_options(config), **(runtime or {})}
        learner = build_learner(config["model"], options, len(vocab), device, config["seed"], frames)
        learner.load_state_dict(data["learner"])
        progress = Progress.from_dict(data["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{where}: its model or vocabulary does not fit its saved weights ({text})") from None
    return Run(config, vocab, learner, progress, data.get("rng", {}), where, data.get("ranks"))


def save(out: Path, config: dict, vocab: Vocabulary, learner, progress: Progress, ranks: Optional[list] = None) -> Path:
    """The checkpoint of a run; ``ranks``: under torchrun, what each rank holds of its own
    (``{"learner": SequenceLearner.rank_state(...), "rng": ...}`` per rank, rank 0 first)."""
    payload = {"config": config, "vocab": vocab.to_dict(), "learner": learner.state_dict(),
               "progress": progress.to_dict(), "rng": checkpoint.rng_state()}
    if ranks is not None:
        payload["ranks"] = ranks
    return checkpoint.save(out / checkpoint.FILENAME, payload, KIND)


def keep_best(out: Path) -> None:
    """Make ``best.pt`` the checkpoint just saved: a hard link where the file system has them (no
    copy; ``checkpoint.pt`` is later replaced by a new file and the link keeps this one), else a copy."""
    src, dst = out / checkpoint.FILENAME, out / BEST
    link = out / f"{BEST}.link{files.TMP}"
    link.unlink(missing_ok=True)
    try:
        os.link(src, link)
        os.replace(link, dst)
    except OSError:
        link.unlink(missing_ok=True)
        with files.atomic(dst) as fh, open(src, "rb") as fs:
            shutil.copyfileobj(fs, fh)


def unstarted(out: Path) -> bool:
    """``out`` is a run folder whose run never saved a checkpoint (it was stopped or killed before
    its first validation): it holds nothing but the run's own files and their temporaries."""
    if not out.is_dir() or (out / checkpoint.FILENAME).exists():
        return False
    ours = tuple(f"{name}." for name in FILES)
    return all(f.name in FILES or (f.name.startswith(ours) and f.name.endswith(files.TMP)) for f in out.iterdir())


def clean(out: Path) -> list:
    """Remove the temporary files of the run's own files that a kill left in ``out``."""
    return files.clean(out, FILES)


def write_config(out: Path, config: dict) -> None:
    files.write_json(out / "config.json", config)


def write_metrics(out: Path, records: list) -> None:
    files.write_text(out / "metrics.jsonl", "".join(files.dumps(r) + "\n" for r in records))


def append_metric(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(files.dumps(record) + "\n")


def plot_curves(out: Path, records: list, unit: str = "bits per symbol", baseline: Optional[float] = None,
                metric: str = "bpc") -> None:
    """``curves.png``: the train and valid score (``metric``: bpc or bce) against training tokens and
    against wall time; ``baseline``: the no-context score (unigram entropy, mean-pixel BCE)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, key, label in zip(fig.subplots(1, 2), ("tokens", "elapsed_s"), ("training tokens", "wall time (s)")):
        x = [r[key] for r in records]
        ax.plot(x, [r[f"train_{metric}"] for r in records], "o-", label="train (running)")
        ax.plot(x, [r[f"valid_{metric}"] for r in records], "s-", label="valid")
        if baseline is not None:
            ax.axhline(baseline, color="gray", ls="--", lw=1,
                       label=METRICS[metric].baseline)
        ax.set_xlabel(label)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend()
    files.save_figure(fig, out / "curves.png")


def plot_frames(path: Path, learner, data, split: str = "test", index: int = 0, correction: bool = True) -> None:
    """A PNG (a run's ``frames.png``) of sequence ``index`` of ``split`` of the video ``data`` and
    ``learner``'s prediction of each frame, made before seeing it (weights frozen)."""
    clip = data.sequence(split, index)
    T, rows, cols = clip.shape
    predicted = learner.predict_frames(torch.from_numpy(clip.reshape(T, -1)), correction=correction)
    title = f"{learner.label}: {data.source} {split} sequence {index}, true (top) and predicted (bottom)"
    files.save_figure(video.frames_figure(clip, predicted.numpy().reshape(T, rows, cols), title=title), path)
