"""Run one task in a fresh Python process, so that its memory peak and allocator state are its own.

``run(target, task, threads)`` calls the function ``target`` (``"module:function"``, taking and
returning a JSON-able dict) in a new interpreter with ``threads`` CPU threads and returns its
result. The child's output goes to this process's stdout and stderr. A SIGTERM to this process
(a ``kill``) ends the child too; a child that fails is a one-line ``UserError``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tncn.errors import UserError


def run(target: str, task: dict, threads: int, what: str) -> dict:
    """The result of ``target(task)`` computed in a child process (``what`` names it in errors)."""
    with tempfile.TemporaryDirectory(prefix="tncn-task-") as tmp:
        spec, result = Path(tmp) / "task.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"threads": threads, "task": task}))
        module, _, name = target.partition(":")
        code = f"import sys; from {module} import {name} as f; from tncn.isolate import child; child(f, *sys.argv[1:])"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        previous = signal.signal(signal.SIGTERM, _exit_on_term)
        try:  # a SIGTERM ends the child too: subprocess.run kills it on any exception
            proc = subprocess.run([sys.executable, "-c", code, str(spec), str(result)], env=env)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if proc.returncode != 0:
            raise UserError(f"the {what} run stopped with exit status {proc.returncode} (its messages are above)")
        return json.loads(result.read_text())


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def child(target, spec_path: str, result_path: str) -> None:
    """What the child process runs: ``target(task)`` with the task's thread count."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    Path(result_path).write_text(json.dumps(target(spec["task"])))
