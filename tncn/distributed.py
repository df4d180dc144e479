"""Data-parallel training of sequence learners under ``torchrun`` (torch.distributed).

Each of the N processes (ranks) of ``torchrun --nproc_per_node=N -m tncn train ...`` builds the
same global batches as a one-process run and trains on its contiguous shard of the B rows
(``shard``: B/N rows, the batch's own T steps, so every rank runs the global T whatever the
lengths of its own sequences). Two ways to combine the ranks (``--parallel``):

- ``exact``: data parallelism that equals the one-process run on the same global batch, up to
  float rounding. A local rule (P-TNCN) writes the *unscaled* batch sums of its shard's updates,
  one flat SUM all-reduce covers every communicated ``.grad``, then the rule's own
  post-reduction step runs on every rank (P-TNCN: clip each summed update, ΔE^l = γ clip(ΔW^l)ᵀ
  from the reduced ΔW, divide by the global B; ``tncn.temporal.ptncn``). BPTT baselines run under
  ``DistributedDataParallel`` (``tncn.temporal.bptt_learner``). The optimizer then takes the same
  step on every rank, so the ranks' weights stay bit-identical.
- ``average``: local SGD (Lin et al., "Don't use large mini-batches, use local SGD", ICLR 2020):
  each rank learns from its shard alone, as a one-process run with batch B/N would, and the
  parameters are averaged over the ranks every k training steps (torch.distributed's
  ``PeriodicModelAverager``). A different algorithm from the one-process run, for any learner.

The same start on every rank: the weights and fixed random matrices are broadcast from rank 0,
each rank > 0 draws its noise from a generator seeded with seed + rank (rank 0 keeps the seed's),
and recurrent state lives in plain tensors, never in module buffers that DDP would overwrite.

Bad input is decided together (``agree``): every rank checks its options, the ranks compare a
hash of their resolved options, and any failure is said once, by rank 0, in one line, while every
rank exits non-zero before anything is written. Only rank 0 writes the run folder.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from tncn.errors import UserError
from tncn.metrics import Tally

TIMEOUT = datetime.timedelta(minutes=5)
"""How long a collective waits for the other ranks before every rank fails (a save by rank 0
takes seconds; torch's default of 30 minutes would hide a dead rank for half an hour)."""


class Silenced(Exception):
    """A rank > 0 stops on an error that rank 0 reports: exit non-zero without a message."""


@dataclass
class Group:
    """The ranks of one run and how they combine (``mode``: exact or average, every ``every``
    steps); ``rows`` is the global row count of the batch being trained (P-TNCN's divisor) and
    ``steps`` the training steps done (set from the progress on resume)."""

    rank: int
    world: int
    local_rank: int = 0
    mode: str = "exact"
    every: int = 1
    rows: int = 0
    steps: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives

    def all_reduce_(self, flat: torch.Tensor) -> torch.Tensor:
        """SUM ``flat`` over the ranks, in place (the same bits on every rank)."""
        dist.all_reduce(flat)
        return flat

    def tally(self, t: Tally) -> Tally:
        """The global tally: sums over the ranks."""
        v = torch.tensor([t.total, t.scored, t.correct], dtype=torch.float64)
        dist.all_reduce(v)
        return Tally(float(v[0]), int(v[1]), int(v[2]))

    def share(self, t: Tally) -> Tally:
        """Rank 0's tally on every rank."""
        v = torch.tensor([t.total, t.scored, t.correct], dtype=torch.float64)
        dist.broadcast(v, src=0)
        return Tally(float(v[0]), int(v[1]), int(v[2]))

    def counts(self, values: list) -> list:
        """Integer counts summed over the ranks."""
        v = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(v)
        return v.tolist()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a stop request seen by one rank stops all)."""
        v = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        return bool(v[0])

    def gather(self, obj) -> Optional[list]:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def same_start(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers (fixed random matrices) on every rank."""
        with torch.no_grad():
            for t in (*module.parameters(), *module.buffers()):
                dist.broadcast(t.data, src=0)

    def average(self, module: torch.nn.Module, step: int) -> None:
        """``average`` mode: the mean of the ranks' parameters after every ``every``-th step."""
        from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

        averager = PeriodicModelAverager(period=self.every, warmup_steps=0)
        averager.step = step  # the count of training steps done: averages after steps k, 2k, ...
        averager.average_parameters(module.parameters())


# --------------------------------------------------------------------------- start and stop

def start(init_method: Optional[str] = None, rank: Optional[int] = None, world: Optional[int] = None,
          timeout: datetime.timedelta = TIMEOUT) -> Optional[Group]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``), or the one given (``init_method``, e.g. a
    ``file://`` store, with ``rank`` and ``world``); None for a single process. Collectives on
    CPU tensors use gloo, on CUDA tensors NCCL (where torch has it and a GPU is present)."""
    if init_method is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
    if not dist.is_available() or not dist.is_gloo_available():
        raise UserError(f"this torch ({torch.__version__}) has no torch.distributed with gloo; "
                        f"run a single process")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if init_method is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, timeout=timeout)
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def stop(group: Optional[Group]) -> None:
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()


def device_name(name: str, group: Optional[Group]) -> str:
    """The device a rank trains on: under torchrun ``cuda`` means the rank's own GPU, cuda:LOCAL_RANK."""
    if group is not None and name == "cuda":
        return f"cuda:{group.local_rank}"
    return name


def fingerprint(*parts) -> str:
    """A hash of the options a rank was started with (plain data)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def message(err: Exception) -> str:
    """An error as ``tncn.cli`` prints it (an option's error names its flag)."""
    render = getattr(err, "render", None)
    return render("--" + err.key.replace("_", "-")) if render is not None and hasattr(err, "key") else str(err)


def agree(group: Optional[Group], error: Optional[Exception], digest: str, shared=None):
    """Decide together whether the run may start: every rank passes the error its checks raised
    (None: none) and the ``fingerprint`` of its options; returns rank 0's ``shared`` value (the
    run folder, whose default name holds the time). On any error, or options that differ from
    rank 0's, rank 0 raises a one-line ``UserError`` and every other rank raises ``Silenced``."""
    if group is None:
        if error is not None:
            raise error
        return shared
    seen = [None] * group.world
    dist.all_gather_object(seen, (None if error is None else message(error), digest, shared))
    bad = next((r for r, (m, _, _) in enumerate(seen) if m is not None), None)
    if bad is None:
        bad = next((r for r, (_, h, _) in enumerate(seen) if h != seen[0][1]), None)
        why = None if bad is None else (
            f"rank {bad} was started with other options than rank 0 (options hash {seen[bad][1]}, rank 0's "
            f"{seen[0][1]}): start every rank with the same command line")
    else:
        why = seen[bad][0] if bad == 0 else f"rank {bad}: {seen[bad][0]}"
    if why is None:
        return seen[0][2]
    if not group.main:
        raise Silenced(why)
    if bad == 0 and error is not None:
        raise error
    raise UserError(why)


# --------------------------------------------------------------------------- sharding

def shard(batch, group: Group):
    """Rank ``group.rank``'s contiguous share of ``batch``'s B rows, ceil(B/N) wide: every step of
    the global batch (the same T on every rank), rows past B padded (mask 0, never scored, no
    update). Sets ``group.rows`` = B, the global batch the rules divide by."""
    from sequences.batching import Batch

    B = batch.tokens.shape[1]
    width = -(-B // group.world)
    lo, hi = min(group.rank * width, B), min((group.rank + 1) * width, B)
    group.rows = B

    def take(t: torch.Tensor) -> torch.Tensor:
        part = t[:, lo:hi]
        if hi - lo == width:
            return part
        pad = torch.zeros((t.shape[0], width - (hi - lo), *t.shape[2:]), dtype=t.dtype)
        return torch.cat([part, pad], dim=1)

    return Batch(take(batch.tokens), take(batch.mask), take(batch.score), batch.reset)
