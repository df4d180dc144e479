"""Preset files: a learner's options as a JSON file that ``tncn train --preset FILE`` and
``tncn compare --preset MODEL=FILE`` read (``tncn tune`` writes its best trial as one).

The file: ``{"format": "tncn-preset", "model": NAME, "options": {...}, "source": {...}}``, where
``options`` are options of the learner ``model`` (read and checked by its declarations when
loaded) and ``source`` says where they come from (free-form: the study, its data, the score).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from tncn import files
from tncn.errors import UserError
from tncn.options import OptionError, find
from tncn.temporal import LEARNERS, learner_class

FORMAT = "tncn-preset"


def is_file(name: str) -> bool:
    """``name`` means a preset file (it ends in .json or names an existing file), not a built-in preset."""
    return str(name).endswith(".json") or Path(name).expanduser().is_file()


def save(path, model: str, options: dict, source: Optional[dict] = None) -> Path:
    path = Path(path)
    files.write_json(path, {"format": FORMAT, "model": model, "options": options, "source": source or {}})
    return path


def load(path) -> tuple[str, dict, dict]:
    """The ``(model, options, source)`` of the preset file at ``path``; a UserError names what is wrong."""
    path = Path(path).expanduser()
    data = files.read_json(path, f"preset {path}")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a tncn preset file (no \"format\": \"{FORMAT}\")")
    model, options = data.get("model"), data.get("options")
    if model not in LEARNERS:
        raise UserError(f"preset {path}: unknown model {model!r}; the models: {', '.join(LEARNERS)}")
    if not isinstance(options, dict):
        raise UserError(f"preset {path}: \"options\" must be an object of {model} options")
    cls = learner_class(model)
    read = {}
    for key, value in options.items():
        try:
            read[key] = find(cls.OPTIONS, key, f"model {model}").read(value)
        except OptionError as err:
            raise UserError(f"preset {path}: {err.render(key)}") from None
    return model, read, data.get("source") or {}
