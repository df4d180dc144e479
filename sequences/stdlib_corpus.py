"""The embedded default corpus: English text every Python installation ships, no download needed.

The documents are the docstrings (module, class and function) of the standard library's own
``.py`` files, read with ``ast`` (third-party packages and the ``test`` packages left out), and
the language-reference topics of ``pydoc_data.topics``; duplicates are dropped. About 2 MB of
prose with code examples (Python 3.11: 1.6 MB of docstrings and 0.47 MB of topics).

The split is deterministic: documents are ordered by the SHA-1 of their text and cut at 90 % and
95 % of the characters, so train/valid/test hold whole documents (a random-looking but fixed
sample of modules). The text depends on the Python version; for one version it is always the
same. It is built once (a few seconds) into ``$TNCN_CACHE`` (default ``~/.cache/tncn``) as
``train.txt``, ``valid.txt`` and ``test.txt``, documents separated by a blank line, and then read
like any folder of split files.
"""
from __future__ import annotations

import ast
import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__"}
FRACTIONS = (0.90, 0.95)


def stdlib_files() -> list[Path]:
    """The standard library's own ``.py`` files, sorted by relative path."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # prune third-party and test packages
        found += [Path(folder, n) for n in names if n.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def docstrings(path: Path) -> list[str]:
    """The module, class and function docstrings of one file (none if it does not parse)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node, clean=True))]


def reference_topics() -> list[str]:
    """The language-reference topics shipped in ``pydoc_data`` (empty if it is absent)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [topics[k] for k in sorted(topics)]


def documents() -> list[str]:
    """All documents, normalised to "\\n" line ends, stripped, duplicates dropped (first kept)."""
    docs = [d for p in stdlib_files() for d in docstrings(p)] + reference_topics()
    seen, out = set(), []
    for d in docs:
        d = d.replace("\r\n", "\n").replace("\r", "\n").strip()
        if d and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def split_documents(docs: list[str]) -> dict[str, list[str]]:
    """Order by SHA-1 of the text, then cut at 90 % and 95 % of the characters (whole documents)."""
    docs = sorted(docs, key=lambda d: hashlib.sha1(d.encode("utf-8")).hexdigest())
    total = sum(len(d) for d in docs)
    parts: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    seen = 0
    for d in docs:
        frac = seen / total
        parts["train" if frac < FRACTIONS[0] else "valid" if frac < FRACTIONS[1] else "test"].append(d)
        seen += len(d)
    return parts


def cache_root() -> Path:
    return Path(os.environ.get("TNCN_CACHE") or Path.home() / ".cache" / "tncn")


def directory() -> Path:
    """The folder with the corpus's ``train.txt``, ``valid.txt``, ``test.txt`` (built on first use).

    Its name holds the Python version and a digest of the file list and sizes, so a changed
    standard library gets a new folder."""
    files = stdlib_files()
    listing = "\n".join(f"{p.as_posix()} {p.stat().st_size}" for p in files)
    key = hashlib.sha1(listing.encode()).hexdigest()[:12]
    v = sys.version_info
    out = cache_root() / f"stdlib-py{v.major}.{v.minor}.{v.micro}-{key}"
    if (out / "test.txt").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    for split, docs in split_documents(documents()).items():
        (tmp / f"{split}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    try:
        tmp.rename(out)  # atomic: a half-built corpus is never seen
    except OSError:  # built meanwhile by another process
        shutil.rmtree(tmp, ignore_errors=True)
    return out
