"""The P-TNCN as a sequence learner (the protocol: ``tncn.temporal.base``).

Per time step, exactly the reference recipe (Ororbia et al., IEEE TNNLS 2020; the equations of ``tncn.temporal.ptncn``):
``model.train_step(x_t, m_t)`` (predict x_t from t-1, correct the states with x_t, write the local
updates: ``step`` then ``local_updates`` in one call), score the prediction from
``model.last_logits``, then ``opt.step(); model.project_()`` (no update on the first step after a
reset). Evaluation runs ``model.step`` with every weight frozen, with the state correction
(default) or without it (``update_states=False``). Nothing builds an autograd graph.

Options: ``hidden`` and the ``PTNCN`` constructor's model options, whose defaults are read from
``PTNCN`` itself (the reference behaviour), the optimizer (the reference: Nesterov SGD, lr 0.075,
momentum 0.95) and ``compile`` (run each training step as one ``torch.compile`` graph,
``PTNCN.compile_step``; the same numbers up to float rounding).

Exact data parallelism (``tncn.distributed``): ``distribute`` hands the model the rank group, and
each step's updates are summed over the ranks before the clip, ΔE and the division by the global
batch (``PTNCN._reduced_updates``); not with ``compile``.
"""
from __future__ import annotations

import torch

from tncn.errors import UserError
from tncn.layers import ACTIVATIONS, INITIALISERS
from tncn import space
from tncn.metrics import Tally
from tncn.optim import SCHEDULE, optimizer_options
from tncn.options import BOOL, FLOAT, INT, STR, Option, argument, at_least, non_negative, optional, positive
from tncn.temporal.base import SequenceLearner, hidden_option
from tncn.temporal.ptncn import E_RULES, PTNCN, W_ERRORS

_NAMES = tuple(ACTIVATIONS)


def _model_option(name: str, kind, help: str, **kw) -> Option:
    """An option of the ``PTNCN`` constructor, with the constructor's default."""
    return argument(PTNCN, name, kind, help, **kw)


MODEL_OPTIONS = (
    _model_option("activation", STR, "state activation f", choices=_NAMES),
    _model_option("beta", FLOAT, "β, the state-correction rate", space=space.log_range(0.02, 0.5)),
    _model_option("alpha", FLOAT, "α, weight of a layer's own error in its correction",
                  space=space.log_range(1e-4, 0.1)),
    _model_option("gamma", FLOAT, "γ, the error-weight learning factor"),
    _model_option("K", INT, "error-correction iterations per step", check=at_least(1), space=space.int_range(1, 4)),
    _model_option("e_rule", STR, "rule of the error weights E: ΔE = γΔWᵀ, or the temporal rule", choices=E_RULES,
                  space=space.choice(*E_RULES)),
    _model_option("hidden_prediction", STR, "activation on the predictions of hidden layers", choices=_NAMES,
                  space=space.choice("identity", "tanh")),
    _model_option("w_error", STR, "error driving the hidden prediction weights: ε = z − y, or e", choices=W_ERRORS,
                  space=space.choice(*W_ERRORS)),
    _model_option("top_down", BOOL, "top-down weights U"),
    _model_option("sparsity", FLOAT, "λ of the lateral sparsity penalty (0: off)", check=non_negative),
    _model_option("clip", optional(FLOAT), "Frobenius-norm clip of each summed update", check=positive,
                  space=space.log_range(0.1, 10.0)),
    _model_option("max_norm", optional(FLOAT), "bound on every weight row's norm", check=positive),
    _model_option("init", STR, "weight initialiser", choices=tuple(INITIALISERS)),
    _model_option("init_std", FLOAT, "standard deviation of the initial weights", check=non_negative,
                  space=space.log_range(0.01, 0.2)),
    _model_option("e_init_std", FLOAT, "standard deviation of the initial error weights E", check=non_negative),
)


class PTNCNLearner(SequenceLearner):
    """A ``PTNCN`` over token ids or frames, its optimizer and its carried training state."""

    name = "ptncn"
    label = "P-TNCN"
    has_correction = True
    data_parallel = "one SUM all-reduce of the shards' summed local updates, then the clip, ΔE and 1/B on every rank"
    OPTIONS = (hidden_option([1000, 1000], "widths of the latent layers, any L ≥ 1 (the reference: 1000,1000)"),
               *MODEL_OPTIONS, *optimizer_options("nesterov", 0.075, tune=("nesterov", "adam")), *SCHEDULE,
               Option("compile", BOOL, False, "run each training step as one torch.compile graph (compiling takes "
                                              "up to a minute; the same numbers up to float rounding)", runtime=True))

    @classmethod
    def n_params(cls, size: int, hidden: list, options: dict) -> int:
        """M^l, V^l, W^l, E^l per layer and U^l below the top (``tncn.temporal.ptncn``)."""
        sizes = [size] + list(hidden)
        total = 0
        for l in range(1, len(sizes)):
            total += 3 * sizes[l - 1] * sizes[l] + sizes[l] ** 2  # M, W, E; V
            if options["top_down"] and l < len(hidden):
                total += sizes[l + 1] * sizes[l]  # U
        return total

    @classmethod
    def check_parallel(cls, options: dict, mode: str) -> None:
        super().check_parallel(options, mode)
        if mode == "exact" and options["compile"]:
            raise UserError("--compile does not run under torchrun with --parallel exact: the all-reduce of the "
                            "updates sits inside the compiled step; train eagerly")

    def _exact_parallel(self, group) -> None:
        self.model.sync = group

    def build(self) -> PTNCN:
        o = self.options
        model = PTNCN(self.size, o["hidden"], tokens=not self.frames, generator=self.generator,
                      **{opt.name: o[opt.name] for opt in MODEL_OPTIONS})
        if o["compile"]:
            model.compile_step()
        return model

    # ------------------------------------------------------------------ state

    def carry_state(self):
        return self.model.carry_state() or None

    def load_carry_state(self, state) -> None:
        self.model.load_carry_state(state or {})

    # ------------------------------------------------------------------ segments

    def _segment(self, batch, learn: bool, correction: bool = True) -> Tally:
        tokens, mask, score = self._on_device(batch)
        if batch.reset or self.model.batch_size is None:
            self.model.reset(tokens.shape[1])
        bits = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        for t, scored in enumerate(batch.score.any(dim=1).tolist()):
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

    def _next_logits(self, ids: torch.Tensor, start: bool) -> torch.Tensor:
        if start:
            self.model.reset(1)
        for x in ids:
            self.model.step(x.view(1))
        self.model.hypothesize()
        return self.model.last_logits[0]

    def _predict_frames(self, frames: torch.Tensor, correction: bool) -> torch.Tensor:
        self.model.reset(1)
        out = torch.full(frames.shape, float("nan"))
        for t, x in enumerate(frames):
            x_hat = self.model.step(x.view(1, -1), update_states=correction)
            if t:
                out[t] = x_hat[0].float().cpu()
        return out
