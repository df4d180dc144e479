"""Data-parallel training under ``torchrun`` (torch.distributed): sequence learners (``tncn
train``) and feedforward classifiers (``tncn classify``, at the end of this module).

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
  model-averaging ``average_parameters``). A different algorithm from the one-process run, for any learner.

The same start on every rank: the weights and fixed random matrices are broadcast from rank 0,
each rank > 0 draws its noise from a generator seeded with seed + rank (rank 0 keeps the seed's),
and recurrent state lives in plain tensors, never in module buffers that DDP would overwrite.

Bad input is decided together (``agree``): every rank checks its options, the ranks compare a
hash of their resolved options, and any failure is said once, by rank 0, in one line, while every
rank exits non-zero before anything is written. Only rank 0 writes the run folder.

``tncn classify`` (``tncn.mlp.fit`` with ``group``) is exact data parallelism of the feedforward
rules (``classify_step``). Every rank holds the whole data set, draws the same global batch order
from the same generator and steps on its contiguous rows [lo, hi) of each global batch of b rows
(``rows_of``: ⌈b/N⌉ per rank, so the last short batch of an epoch gives the last ranks fewer rows,
or none; a rank with none steps on one row weighted 0, so that every rank draws alike). Each rule
writes the batch-MEAN update ḡ_r of its n_r rows into ``.grad``; one flat SUM all-reduce of
n_r·ḡ_r over every ``.grad`` (with the loss and the local discrepancy) and a division by b give

    ∂θ = Σ_r n_r ḡ_r / b = (1/b) Σ_{i ∈ batch} g_i(θ),

the one-process update on the global batch, to float rounding, wherever the rule's update is a
mean of per-example terms g_i that depend on the example and the shared weights alone. Every
rule here writes such a mean (DTP's targets use the per-example step η̂ e^L W^{Lᵀ}, its forward
and inverse updates are means over the batch; LRA's refined targets are per example; EP's
∂E/∂θ is a batch mean of per-state terms), and it is exact for deterministic units with: bp,
FA, DFA, LRA-E with absolute targets (``--target-scale absolute``, "auto" for differentiable
units), LRA without ``--clip``, and EP and CHL when no relaxation stops early (a ``--tolerance``
below every step's move: the phases then run their fixed step counts). Not exact, but still one
well-defined run: batch statistics (LRA-E's relative targets, "auto" for two-valued units, use
each shard's rms; dtp-sigma's adaptive σ each shard's spread; LRA's ``--clip`` clips each
shard's mean before the sum; EP/CHL's early stop is decided per shard) and fresh random draws:
stochastic units, DTP's corruption ε (so DTP's inverses, and through them its targets) and the
RBM's Gibbs samples come from each rank's ``UnitNoise`` streams, reseeded with seed +
rank·``STRIDE`` after the broadcast (rank 0 keeps the seed's), so they match the one-process run
in distribution, not draw for draw. EP's random sign of β is one draw per global batch from the seed's generator
on every rank, as one process draws it; its persistent particles are per training example, so
after every step the ranks all-gather the particles of the global batch (``share_particles``)
and every rank holds what one process would. The weights and fixed random matrices are
broadcast from rank 0 at the start (``Group.same_start``); the optimizer then takes the same step
on every rank and the ranks' weights stay bit-identical.
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
        """``average`` mode: the mean of the ranks' parameters after every ``every``-th step (the
        count of training steps done: after steps k, 2k, ...), as ``PeriodicModelAverager``
        does, but of every parameter: that averager skips parameters without ``.grad``, which a
        learner that steps its optimizer itself (``tncn.fused``) never writes."""
        from torch.distributed.algorithms.model_averaging.utils import average_parameters

        if step % self.every == 0:
            average_parameters(iter(module.parameters()), dist.group.WORLD)


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


def launched(body, args) -> int:
    """Run ``body(args, group)`` as this process's rank of a torchrun launch (``group`` None
    outside torchrun) and shut the group down after. A rank stopped on an error that rank 0
    reports (``Silenced``) exits 2 without a word; a divergence, which every rank meets at the
    same epoch, is raised on rank 0 only, the others exiting with the guard's status."""
    from tncn.guard import EXIT_STATUS, Diverged

    group = start()
    try:
        return body(args, group)
    except Silenced:
        return 2
    except Diverged:
        if group is None or group.main:
            raise
        return EXIT_STATUS
    finally:
        stop(group)


def attempt(prepare, *args):
    """Run ``prepare(*args)`` on this rank; a bad-input error (``UserError``, ``OptionError``,
    ``DataError``) is kept for ``agree`` instead of raised. Returns (its result or None, the error
    or None)."""
    from sequences.errors import DataError
    from tncn.options import OptionError

    try:
        return prepare(*args), None
    except (UserError, OptionError, DataError) as err:
        return None, err


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


# --------------------------------------------------------------------------- feedforward classifiers

STRIDE = 1_000_003
"""Rank r's ``UnitNoise`` streams start from their seed + r·STRIDE (a learner's streams are
seeded seed + 1, seed + 2, ...: a stride this large keeps the ranks' streams apart)."""


def rows_of(b: int, group: Group) -> tuple[int, int]:
    """Rank ``group.rank``'s contiguous rows [lo, hi) of a global batch of ``b`` rows (⌈b/N⌉ each,
    fewer or none for the last ranks of a short batch)."""
    width = -(-b // group.world)
    return min(group.rank * width, b), min((group.rank + 1) * width, b)


def classify_start(learner: torch.nn.Module, group: Group) -> None:
    """Rank 0's weights and fixed matrices on every rank, then each rank's own noise streams."""
    from tncn.learners.base import UnitNoise

    group.same_start(learner)
    for module in learner.modules():
        if isinstance(module, UnitNoise):
            module.seed += group.rank * STRIDE


def classify_step(learner, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, group: Group,
                  indexed: bool) -> torch.Tensor:
    """One exact data-parallel step on the global batch (x, y) of training rows ``idx``: the rank
    steps on its rows, then every ``.grad`` (and ``learner.discrepancy``) becomes the global mean
    Σ_r n_r ḡ_r / b; returns the global mean loss. Parameters without a ``.grad`` (DTP's other
    phase) are the same on every rank and stay without one."""
    b = len(idx)
    lo, hi = rows_of(b, group)
    rows = hi - lo
    part = slice(lo, hi) if rows else slice(0, 1)  # no rows: step on one, weighted 0
    loss = learner.step(x[part], y[part], index=idx[part]) if indexed else learner.step(x[part], y[part])
    params = [p for p in learner.parameters() if p.grad is not None]
    disc = getattr(learner, "discrepancy", None)
    dtype = params[0].grad.dtype if params else loss.dtype
    extras = [loss] + ([disc] if disc is not None else [])
    flat = torch.cat([p.grad.reshape(-1) for p in params]
                     + [torch.as_tensor(e, dtype=dtype, device=loss.device).reshape(1) for e in extras]) * rows
    group.all_reduce_(flat)
    flat /= b
    at = 0
    for p in params:
        p.grad = flat[at:at + p.numel()].view_as(p)
        at += p.numel()
    if disc is not None:
        learner.discrepancy = flat[at + 1]
    if indexed and getattr(learner, "persistent", False) and learner.particles is not None:
        share_particles(learner, idx, group)
    return flat[at]


def share_particles(learner, idx: torch.Tensor, group: Group) -> None:
    """Every rank's free states of its rows of the batch ``idx`` into every rank's particles
    (EP, CHL), so that each rank holds the particles one process would."""
    b = len(idx)
    width = -(-b // group.world)
    lo, hi = rows_of(b, group)
    mine = learner.particles[idx[lo:hi]]
    padded = torch.zeros(width, mine.shape[1], dtype=mine.dtype, device=mine.device)
    padded[:hi - lo] = mine
    parts = [torch.empty_like(padded) for _ in range(group.world)]
    dist.all_gather(parts, padded)
    spans = [rows_of(b, Group(r, group.world)) for r in range(group.world)]
    every = torch.cat([part[:h - l] for part, (l, h) in zip(parts, spans)])
    n = int(idx.max()) + 1
    if learner.particles.shape[0] < n:
        grown = learner.particles.new_zeros(n, learner.particles.shape[1])
        seen = learner.visited.new_zeros(n)
        grown[:len(learner.particles)] = learner.particles
        seen[:len(learner.visited)] = learner.visited
        learner.particles, learner.visited = grown, seen
    learner.particles[idx] = every
    learner.visited[idx] = True
