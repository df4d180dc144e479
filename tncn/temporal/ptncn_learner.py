"""The P-TNCN as a sequence learner for ``tncn.train`` (the learner protocol is documented there).

Per time step, exactly the reference recipe (Ororbia et al., IEEE TNNLS 2020; DESIGN.md §4):
``model.train_step(x_t, m_t)`` (predict x_t from t-1, correct the states with x_t, write the local
updates: ``step`` then ``local_updates`` in one call), score the prediction from
``model.last_logits``, then ``opt.step(); model.project_()`` (no update on the first step after a
reset). Evaluation runs ``model.step`` with every weight frozen, with the state correction
(default) or without it (``update_states=False``). Nothing builds an autograd graph.

Observations are token ids (``frames=False``: a softmax output over the vocabulary, scored in
bits) or video frames (``frames=True``: flattened frames in [0, 1], a sigmoid output per pixel,
scored by binary cross-entropy per frame; ``tncn.metrics``).

Options (``DEFAULTS``): ``hidden`` and the ``PTNCN`` constructor's model options, whose defaults
are read from ``PTNCN`` itself (the reference behaviour), plus the optimizer (``optimizer``,
``lr``, ``momentum``, ``weight_decay``; see ``tncn.train.make_optimizer``: momentum None is the
optimizer's own default, 0.95 for nesterov) and ``compile`` (run each training step as one
``torch.compile`` graph, ``PTNCN.compile_step``; same numbers up to float rounding). The quick
default run of ``tncn train`` overrides some of them (see ``tncn.commands.train``).
"""
from __future__ import annotations

import inspect

import torch

from tncn.errors import UserError
from tncn.metrics import Tally, score_frames, score_logits
from tncn.temporal.ptncn import PTNCN
from tncn.train import LazyOptimizer

KIND = "ptncn"
MODEL_KEYS = ("activation", "beta", "alpha", "gamma", "K", "e_rule", "hidden_prediction", "w_error",
              "top_down", "sparsity", "clip", "max_norm", "init", "init_std", "e_init_std")
_SIG = inspect.signature(PTNCN).parameters
DEFAULTS = {"hidden": [1000, 1000], **{k: _SIG[k].default for k in MODEL_KEYS},
            "optimizer": "nesterov", "lr": 0.075, "momentum": None, "weight_decay": 0.0, "compile": False}


def build(options: dict, size: int, device="cpu", seed: int = 0, frames: bool = False) -> "PTNCNLearner":
    return PTNCNLearner(options, size, device, seed, frames)


class PTNCNLearner:
    """A ``PTNCN`` over token ids (``size``: the vocabulary) or frames (``size``: pixels per frame),
    its optimizer and its carried training state."""

    kind = KIND
    has_correction = True

    def __init__(self, options: dict, size: int, device="cpu", seed: int = 0, frames: bool = False):
        self.options = dict(options)
        self.frames = bool(frames)
        self.metric = "bce" if self.frames else "bpc"
        self._score = score_frames if self.frames else score_logits
        hidden = [int(h) for h in options["hidden"]]
        if not hidden or min(hidden) <= 0:
            raise UserError(f"hidden widths must be positive, got {','.join(map(str, hidden)) or 'none'}")
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(int(seed))
        try:
            self.model = PTNCN(size, hidden, tokens=not self.frames, generator=self.generator,
                               **{k: options[k] for k in MODEL_KEYS}).to(self.device)
            if options.get("compile"):
                self.model.compile_step()
        except ValueError as err:  # an impossible model option (K < 1, a bad clip, ...)
            raise UserError(str(err)) from None
        self._opt = LazyOptimizer(options, self.model.parameters)
        self._mode = "train"
        self._stash = None  # (carried training state, generator state) while evaluating or sampling

    # ------------------------------------------------------------------ modes and state

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The optimizer, built on first use (evaluation and sampling never need it)."""
        return self._opt.get()

    def _enter(self, mode: str) -> None:
        """Switch between training and evaluation/sampling, keeping the training state aside."""
        if mode == self._mode:
            return
        if self._mode == "train":
            self._stash = (self.model.carry_state(), self.generator.get_state())
        if mode == "train":
            carry, gen = self._stash
            self.model.load_carry_state(carry)
            self.generator.set_state(gen)
            self._stash = None
        self._mode = mode

    def state_dict(self) -> dict:
        carry, gen = (self.model.carry_state(), self.generator.get_state()) if self._mode == "train" else self._stash
        opt = self._opt.state_dict()
        return {"model": self.model.state_dict(), "optimizer": opt, "carry": carry, "generator": gen}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self._opt.load_state_dict(d["optimizer"])
        self._mode, self._stash = "train", None
        self.model.load_carry_state(d["carry"])
        self.generator.set_state(d["generator"])

    # ------------------------------------------------------------------ segments

    def _run(self, batch, learn: bool, correction: bool = True) -> Tally:
        tokens = batch.tokens.to(self.device)
        mask = batch.mask.to(self.device)
        score = batch.score.to(self.device)
        if batch.reset or self.model.batch_size is None:
            self.model.reset(tokens.shape[1])
        bits = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        scored_steps = batch.score.any(dim=1).tolist()
        for t, scored in enumerate(scored_steps):
            if learn:  # step and local updates in one call (one graph when compiled)
                updated = self.model.train_step(tokens[t], mask[t])
            else:
                self.model.step(tokens[t], mask[t], update_states=correction)
            if scored:
                b, h = self._score(self.model.last_logits, tokens[t], score[t])
                bits += b
                hits += h
            if learn and updated:
                self.opt.step()
                self.model.project_()
        return Tally(float(bits), batch.n_scored, int(hits))

    @torch.no_grad()
    def train_segment(self, batch) -> Tally:
        self._enter("train")
        return self._run(batch, learn=True)

    @torch.no_grad()
    def eval_segment(self, batch, correction: bool = True) -> Tally:
        self._enter("eval")
        return self._run(batch, learn=False, correction=correction)

    @torch.no_grad()
    def predict_frames(self, frames: torch.Tensor, correction: bool = True) -> torch.Tensor:
        """The prediction x̂_t of each frame of one sequence ``frames`` [T, D], made before seeing it
        ([T, D]; row 0, not scored as nothing precedes it, is NaN). Weights frozen."""
        self._enter("eval")
        self.model.reset(1)
        out = torch.full(frames.shape, float("nan"))
        for t, x in enumerate(frames.to(self.device)):
            x_hat = self.model.step(x.view(1, -1), update_states=correction)
            if t:
                out[t] = x_hat[0].float().cpu()
        return out

    @torch.no_grad()
    def sample(self, prime: torch.Tensor, length: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
        self._enter("sample")
        self.model.reset(1)
        for x in prime.to(self.device):
            self.model.step(x.view(1))
        out = torch.zeros(length, dtype=torch.long)
        for i in range(length):
            self.model.hypothesize()
            logits = self.model.last_logits[0].float().cpu()
            if temperature == 0:
                out[i] = logits.argmax()
            else:
                out[i] = torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator)[0]
            self.model.step(out[i:i + 1].to(self.device))
        return out
