"""Writing files so that a kill never leaves half of one, and JSON that any JSON reader parses.

Every file tncn writes goes first to a temporary file beside its target (``NAME.XXXXXXXX.tmp``),
is flushed to disk and then renamed over the target (``os.replace``): a reader sees the old file
or the new one, never a mix. A kill in the middle of a write leaves only the temporary file, which
``clean`` removes when the same run starts again. Numbers that are not finite (NaN, ±inf) are
written as JSON ``null`` (``json_safe``): Python's ``json`` would write bare ``NaN``, which is
not JSON.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

TMP = ".tmp"


@contextmanager
def atomic(path):
    """A binary file handle whose content replaces ``path`` in one rename when the block ends
    (and never, if it raises)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path, text: str) -> None:
    with atomic(path) as fh:
        fh.write(text.encode("utf-8"))


def json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON ``null``), tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value, indent=None) -> str:
    """JSON text of ``value``, non-finite numbers as ``null``."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path, value, indent: int = 2) -> None:
    write_text(path, dumps(value, indent) + "\n")


def read_json(path, what: str):
    """The JSON value in the file at ``path``; a missing, unreadable or malformed file is a one-line
    UserError that starts with ``what`` (e.g. ``--space FILE``)."""
    from tncn.errors import UserError

    try:
        return json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{what}: {err.strerror or err}") from None
    except ValueError as err:
        raise UserError(f"{what} is not JSON ({err})") from None


def save_figure(fig, path, dpi: int = 100, **options) -> None:
    """A matplotlib figure as a PNG at ``path`` (its folder made if needed), written atomically;
    ``options`` go to ``savefig``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as fh:
        fig.savefig(fh, format="png", dpi=dpi, **options)


def clean(folder, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that writes of ``names`` in ``folder`` left behind (a kill
    during a write); returns what was removed."""
    folder = Path(folder)
    removed = []
    for name in names:
        for tmp in folder.glob(f"{name}.*{TMP}"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


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
