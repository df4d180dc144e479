"""The Parallel Temporal Neural Coding Network (P-TNCN) with any number of latent layers.

Ororbia, Mali, Giles, Kifer, "Continual Learning of Recurrent Neural Networks by Locally Aligning
Distributed Representations", IEEE TNNLS 31(10), 2020 (arXiv 1810.07411); reference behaviour is
the authors' official TensorFlow code (AnkurMali/ContinualPTNCN, ``ptncn_2lyr.py``), reproduced
step for step (tests/test_oracle.py). Row-vector layout, batch B.

Notation (the paper's): layer 0 is the observation x_t (token ids, or a dense frame); layers
l = 1..L are latent, of widths H_l. Per layer l:

- M^l [H_{l-1}, H_l]  bottom-up weights (M^1 reads the previous observation x_{t-1});
- V^l [H_l, H_l]      recurrent (memory) weights;
- U^l [H_{l+1}, H_l]  top-down weights (no U on the top layer; ``top_down=False`` drops them all);
- W^l [H_l, H_{l-1}]  prediction weights: layer l predicts layer l-1;
- E^l [H_{l-1}, H_l]  error weights: carry layer l-1's error up to layer l. Stored transposed,
                      as ``E{l}`` [H_l, H_{l-1}] (the layout of W^l), so that the default rule
                      ΔE^l = γ (ΔW^l)ᵀ is a contiguous scaled copy of ΔW^l.

One time step:

1. hypothesize, from t-1 quantities only:  a^l = y^{l-1}_{t-1} M^l + y^l_{t-1} V^l + y^{l+1}_{t-1} U^l,
   z^l = f(a^l); predictions x̂_t = g_0(z^1 W^1) and p^{l} = φ(z^{l+1} W^{l+1}) (φ = identity in
   the reference). x̂_t is the prediction of x_t made before seeing it: metrics score it.
2. error units (m_t the mask):  e^0 = (x̂_t - x_t) m_t,  e^l = (p^l - z^l) m_t.
3. correct:  d^l = e^{l-1} E^l - α e^l (no own error on the top layer) [+ λ sign(a^l)],
   y^l = f(a^l - β d^l); with K > 1 the errors are recomputed from the corrected states and the
   pre-activations keep moving (a^l ← a^l - β d^l) K times.
4. local updates with ε^l = (z^l - y^l) m_t (``local_updates``):
   ΔW^1 = z^{1ᵀ} e^0, ΔW^l = z^{lᵀ} ε^{l-1} (or e^{l-1}), ΔM^l = y^{l-1ᵀ}_{t-1} ε^l,
   ΔV^l = y^{lᵀ}_{t-1} ε^l, ΔU^l = y^{l+1ᵀ}_{t-1} ε^l, and ΔE^l = γ (ΔW^l)ᵀ or the temporal rule
   ΔE^l = -γ e^{l-1ᵀ}(ε^l_t - ε^l_{t-1}); each clipped to Frobenius norm ``clip`` and divided by B,
   then written into ``param.grad`` for any ``torch.optim`` optimizer (the reference one is
   ``SGD(lr=0.075, momentum=0.95, nesterov=True)``), or, after ``use_optimizer``, stepped by
   the optimizer straight from their two factors (``tncn.fused``; E^l then held as γ W^l + D^l
   where that is exact, and M^1's token rows stepped lazily on request: ``tncn.lazy_rows``). Across the ranks of a data-parallel run
   (``sync``, ``tncn.distributed``) the same order holds on the global batch: each rank's
   unscaled sums are summed by one all-reduce, then clipped, ΔE formed and divided by the global B.
5. carry y^l_t and x_t to t+1.

``train_step`` runs steps 1-5 in one call (steps 1-4 as the pure function ``_fused``), which
``compile_step`` hands to ``torch.compile``. Nothing here builds an autograd graph; memory does
not grow with sequence length.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from tncn.fused import Collect, Fused, GradSink, is_linear, unsupported
from tncn.layers import get_activation, grad_buffer, init_weight, lookup

Tensor = torch.Tensor

OUTPUTS = ("softmax", "sigmoid", "identity")
LAZY_ROWS = 1024
"""The smallest vocabulary whose M^1 ``use_optimizer(lazy_rows=True)`` steps lazily: below it the
dense step of M^1 costs less than the dozen small operations a lazy step takes."""
E_RULES = ("transpose", "temporal")
W_ERRORS = ("epsilon", "e")


def _check_choice(value, choices, what):
    lookup({c: c for c in choices}, value, what)


def _gram(a: Tensor) -> Tensor:
    """a aᵀ: with it, ‖aᵀb‖_F² = Σ (a aᵀ) ⊙ (b bᵀ) costs B×B work instead of a pass over aᵀb."""
    return a @ a.T


class PTNCN(nn.Module):
    """P-TNCN with L ≥ 1 latent layers; defaults are the reference (official code) behaviour.

    Args:
        input_size: vocabulary size V for ``tokens=True``, else the size of a dense observation.
        hidden: widths [H_1, ..., H_L] of the latent layers (the reference: [1000, 1000]).
        tokens: observations are token ids (rows of M^1 are gathered; no one-hot is formed).
        output: g_0, the output function: "softmax" (default for tokens), "sigmoid" (default for
            dense observations, e.g. binary frames) or "identity".
        activation: f, the state activation (any name in ``tncn.layers.ACTIVATIONS``; "tanh").
        beta: β, the state-correction rate (0.1).
        alpha: α, the weight of a layer's own error in its correction (0.001).
        gamma: γ, the error-weight learning factor (1.0).
        K: number of error-correction iterations (1, as the reference).
        e_rule: "transpose" (ΔE = γ ΔWᵀ, the reference default) or "temporal"
            (ΔE^l = -γ e^{l-1ᵀ}(ε^l_t - ε^l_{t-1})).
        hidden_prediction: φ, the activation on predictions of hidden layers ("identity", as the
            reference; the paper also describes using f).
        w_error: error driving the hidden prediction weights W^l, l > 1: "epsilon" (ε^{l-1} =
            z - y, the reference) or "e" (e^{l-1} = p - z, as the paper's equations read).
        top_down: use the top-down weights U (the reference does).
        sparsity: λ of the lateral sparsity penalty λ·sign(a^l) added to d^l (0: off, the reference).
        clip: each summed update is clipped to this Frobenius norm before division by the batch
            size (1.0); ``None`` disables clipping.
        max_norm: bound on the L2 norm of every weight row, enforced by ``project_()`` after each
            optimizer step (``None``: off, the reference).
        init, init_std, e_init_std: initialiser and standard deviations of the weights and of E
            (normal, 0.05, 0.05 as the reference PTB run).
        generator: a ``torch.Generator`` for the initial weights (and stochastic activations).
    """

    def __init__(
        self,
        input_size: int,
        hidden: Sequence[int],
        *,
        tokens: bool = True,
        output: Optional[str] = None,
        activation: str = "tanh",
        beta: float = 0.1,
        alpha: float = 0.001,
        gamma: float = 1.0,
        K: int = 1,
        e_rule: str = "transpose",
        hidden_prediction: str = "identity",
        w_error: str = "epsilon",
        top_down: bool = True,
        sparsity: float = 0.0,
        clip: Optional[float] = 1.0,
        max_norm: Optional[float] = None,
        init: str = "normal",
        init_std: float = 0.05,
        e_init_std: float = 0.05,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if int(input_size) <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if not hidden or min(hidden) <= 0:
            raise ValueError(f"hidden must list at least one positive width, got {hidden}")
        if int(K) < 1:
            raise ValueError(f"K (correction iterations) must be at least 1, got {K}")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive or None, got {clip}")
        if max_norm is not None and max_norm <= 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm}")
        output = output or ("softmax" if tokens else "sigmoid")
        _check_choice(output, OUTPUTS, "output function")
        _check_choice(e_rule, E_RULES, "E rule")
        _check_choice(w_error, W_ERRORS, "w_error")
        if tokens and output != "softmax":
            raise ValueError("token observations need the softmax output")

        self.input_size = int(input_size)
        self.hidden = hidden
        self.L = len(hidden)
        self.tokens = bool(tokens)
        self.output = output
        self.f = get_activation(activation)
        self.phi = get_activation(hidden_prediction)
        self.beta, self.alpha, self.gamma = float(beta), float(alpha), float(gamma)
        self.K = int(K)
        self.e_rule, self.w_error = e_rule, w_error
        self.top_down = bool(top_down)
        self.sparsity = float(sparsity)
        self.clip = None if clip is None else float(clip)
        self.max_norm = None if max_norm is None else float(max_norm)
        self.generator = generator

        sizes = [self.input_size] + hidden
        for l in range(1, self.L + 1):
            def new(shape, std):
                return nn.Parameter(init_weight(shape, init, std, generator))
            setattr(self, f"M{l}", new((sizes[l - 1], sizes[l]), init_std))
            setattr(self, f"V{l}", new((sizes[l], sizes[l]), init_std))
            if self.top_down and l < self.L:
                setattr(self, f"U{l}", new((sizes[l + 1], sizes[l]), init_std))
            setattr(self, f"W{l}", new((sizes[l], sizes[l - 1]), init_std))
            setattr(self, f"E{l}", new((sizes[l], sizes[l - 1]), e_init_std))  # (E^l)ᵀ
        self._state: Optional[dict] = None
        self._hyp: Optional[dict] = None
        self._last: Optional[dict] = None
        self._compiled = None  # torch.compile'd _fused, after compile_step()
        self.sync = None  # the ranks whose updates are summed (tncn.distributed.Group), None: alone
        self._flat = None  # (names, flat buffer, views): the summed updates under ``sync``
        self._stepper: Optional[Fused] = None  # the optimizer fused into train_step (use_optimizer)
        self._held: dict = {}  # {l: D^l} while E^l is held as γ W^l + D^l (use_optimizer)
        self._lazy = None  # M^1's LazyRows while its rows are stepped lazily (use_optimizer)
        self._signs_cache = None  # (signs, tensor) of the update jobs (_signs)

    # ------------------------------------------------------------------ bookkeeping

    def options(self) -> dict:
        """The constructor arguments (except the generator) that rebuild this model."""
        return dict(
            input_size=self.input_size, hidden=list(self.hidden), tokens=self.tokens,
            output=self.output, activation=self.f.name, beta=self.beta, alpha=self.alpha,
            gamma=self.gamma, K=self.K, e_rule=self.e_rule, hidden_prediction=self.phi.name,
            w_error=self.w_error, top_down=self.top_down, sparsity=self.sparsity,
            clip=self.clip, max_norm=self.max_norm,
        )

    def _w(self, kind: str, l: int) -> Optional[Tensor]:
        return getattr(self, f"{kind}{l}", None)

    @property
    def batch_size(self) -> Optional[int]:
        return None if self._state is None else self._state["y"][1].shape[0]

    def reset(self, batch_size: int) -> None:
        """Start new sequences: zero states, zero previous input (state reset between sentences)."""
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        p = self.W1
        z = [None] + [torch.zeros(batch_size, h, device=p.device, dtype=p.dtype) for h in self.hidden]
        if self.tokens:
            x_prev = torch.zeros(batch_size, dtype=torch.long, device=p.device)
        else:
            x_prev = torch.zeros(batch_size, self.input_size, device=p.device, dtype=p.dtype)
        self._state = dict(
            y=z, x=x_prev, m=torch.zeros(batch_size, device=p.device, dtype=p.dtype),
            eps=[None] + [t.clone() for t in z[1:]], t=0,
        )
        self._hyp = None
        self._last = None

    def carry_state(self) -> dict:
        """The state carried to the next step (to save with a checkpoint in stream training)."""
        if self._state is None:
            return {}
        s = self._state
        return {"y": [t.clone() for t in s["y"][1:]], "x": s["x"].clone(), "m": s["m"].clone(),
                "eps": [t.clone() for t in s["eps"][1:]], "t": s["t"]}

    def load_carry_state(self, state: dict) -> None:
        """Restore what ``carry_state`` returned (an empty dict clears the state)."""
        if not state:
            self._state, self._hyp, self._last = None, None, None
            return
        p = self.W1
        to = dict(device=p.device)
        self._state = dict(
            y=[None] + [t.to(dtype=p.dtype, **to) for t in state["y"]],
            x=state["x"].to(**to), m=state["m"].to(dtype=p.dtype, **to),
            eps=[None] + [t.to(dtype=p.dtype, **to) for t in state["eps"]], t=int(state["t"]),
        )
        self._hyp, self._last = None, None

    # ------------------------------------------------------------------ one time step

    def _input_drive(self, x: Tensor, m: Tensor) -> Tensor:
        """x M^1 for the observation x (row gather for token ids, of rows brought current first
        when M^1 is stepped lazily; masked rows give zero)."""
        if self.tokens:
            if self._lazy is not None:
                self._lazy.catch_up(x)
            return self.M1.index_select(0, x) * m.unsqueeze(1)
        return x @ self.M1

    def _predict(self, s: list) -> tuple[Tensor, list]:
        """Logits of x̂ from s^1 and hidden predictions p^l = φ(s^{l+1} W^{l+1}) for l < L."""
        logits = s[1] @ self.W1
        p = [None] * (self.L + 1)
        for l in range(1, self.L):
            p[l] = self.phi(s[l + 1] @ self._w("W", l + 1), self.generator)
        return logits, p

    def _g0(self, logits: Tensor) -> Tensor:
        if self.output == "softmax":
            return torch.softmax(logits, dim=-1)
        if self.output == "sigmoid":
            return torch.sigmoid(logits)
        return logits

    @torch.no_grad()
    def hypothesize(self) -> Tensor:
        """Predict the next observation from the carried states (idempotent until ``correct``).

        Returns x̂_t: probabilities [B, V] for tokens, g_0 of the logits for dense observations.
        The logits are kept as ``last_logits`` (for exact log-likelihoods).
        """
        if self._state is None:
            raise RuntimeError("call reset(batch_size) before the first step")
        if self._hyp is None:
            st = self._state
            self._hyp = self._hypothesis(st["y"], st["x"], st["m"])
        return self._hyp["x_hat"]

    def _hypothesis(self, y: list, x_prev: Tensor, m_prev: Tensor) -> dict:
        """Step 1 from the carried states y^l_{t-1} and x_{t-1}: a^l, z^l, the logits, p^l and x̂_t."""
        a = [None] * (self.L + 1)
        for l in range(1, self.L + 1):
            # the drive is a fresh tensor: the other terms are added in place (an addmm with a
            # separate input costs about twice as much at these sizes)
            a_l = self._input_drive(x_prev, m_prev) if l == 1 else y[l - 1] @ self._w("M", l)
            a_l.addmm_(y[l], self._w("V", l))
            U = self._w("U", l)
            if U is not None:
                a_l.addmm_(y[l + 1], U)
            a[l] = a_l
        z = [None] + [self.f(a[l], self.generator) for l in range(1, self.L + 1)]
        logits, p = self._predict(z)
        return dict(a=a, z=z, logits=logits, p=p, x_hat=self._g0(logits))

    @property
    def last_logits(self) -> Tensor:
        """Logits of the latest prediction x̂ (before g_0)."""
        if self._hyp is None and self._last is None:
            raise RuntimeError("no prediction has been made yet")
        return (self._hyp or self._last)["logits"]

    def _errors(self, x_hat: Tensor, p: list, s: list, x: Tensor, m: Tensor) -> list:
        """Masked error units e^0 = (x̂ - x) m and e^l = (p^l - s^l) m for l < L."""
        mc = m.unsqueeze(1)
        if self.tokens:
            e0 = x_hat * mc
            e0.scatter_add_(1, x.unsqueeze(1), -mc)
        else:
            e0 = (x_hat - x) * mc
        e = [e0] + [None] * self.L
        for l in range(1, self.L):
            e[l] = (p[l] - s[l]) * mc
        return e

    @torch.no_grad()
    def correct(self, x: Tensor, mask: Optional[Tensor] = None, *, update_states: bool = True) -> None:
        """Error-correct the states with the observation x (token ids [B] or a dense [B, D]).

        ``mask`` [B] is 1 for a real observation and 0 for padding (default: all ones); masked rows
        produce no error and no update, and their observation counts as zero input.
        ``update_states=False`` carries the uncorrected hypothesis z instead of the targets y
        (scoring "without the correction phase"); no weight update may follow such a step.
        """
        self.hypothesize()
        x, m = self._check_observation(x, mask)
        h = self._hyp
        y, e, eps = self._correction(h, x, m)
        self._advance(h["z"], h["logits"], y, e, eps, x, m, update_states)

    def _correction(self, h: dict, x: Tensor, m: Tensor) -> tuple[list, list, list]:
        """Steps 2-3: the targets y^l (K corrections), the first error units e^l and ε^l = (z - y) m."""
        z, a = h["z"], h["a"]
        e_first = None
        s, a_k = z, a
        for _ in range(self.K):
            if s is z:
                x_hat, p = h["x_hat"], h["p"]
            else:
                logits, p = self._predict(s)
                x_hat = self._g0(logits)
            e = self._errors(x_hat, p, s, x, m)
            if e_first is None:
                e_first = e
            # a - β d written out: inductor (torch 2.13) drops alpha in add(x, mm, alpha=c)
            # (pytorch/pytorch#167313, #196577), which broke the compiled step
            a_k = [None] + [a_k[l] - self.beta * self._disturbance(l, e, a[l]) for l in range(1, self.L + 1)]
            s = [None] + [self.f(a_k[l], self.generator) for l in range(1, self.L + 1)]
        mc = m.unsqueeze(1)
        eps = [None] + [(z[l] - s[l]) * mc for l in range(1, self.L + 1)]
        return s, e_first, eps

    def _advance(self, z, logits, y, e, eps, x, m, update_states: bool) -> None:
        """Step 5: keep what the updates need, carry y (or z) and x_t to t+1."""
        st = self._state
        self._last = dict(
            z=z, e=e, eps=eps, y_prev=st["y"], x_prev=st["x"], m_prev=st["m"],
            eps_prev=st["eps"], logits=logits, t=st["t"], corrected=update_states,
        )
        st["y"] = y if update_states else z
        st["x"], st["m"], st["eps"] = x, m, eps
        st["t"] += 1
        self._hyp = None

    def _disturbance(self, l: int, e: list, a_l: Tensor) -> Tensor:
        """d^l = e^{l-1} E^l - α e^l (+ λ sign(a^l))."""
        if l < self.L:  # addmm, not d.add_(e, alpha=-α): inductor drops that alpha (see _correction)
            d = torch.addmm(e[l], e[l - 1], self._w("E", l).T, beta=-self.alpha)
        else:
            d = e[l - 1] @ self._w("E", l).T
        if self.sparsity > 0.0:
            d = d + self.sparsity * torch.sign(a_l)
        return d

    def _check_observation(self, x: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        B = self.batch_size
        p = self.W1
        if self.tokens:
            if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
                raise TypeError(f"token observations must be integer ids, got dtype {x.dtype}")
            if x.dim() != 1 or x.shape[0] != B:
                raise ValueError(f"expected token ids of shape [{B}], got {tuple(x.shape)}")
        elif x.dim() != 2 or x.shape != (B, self.input_size):
            raise ValueError(f"expected observations of shape [{B}, {self.input_size}], got {tuple(x.shape)}")
        m = torch.ones(B, device=p.device, dtype=p.dtype) if mask is None else mask.to(device=p.device, dtype=p.dtype)
        if m.shape != (B,):
            raise ValueError(f"expected a mask of shape [{B}], got {tuple(m.shape)}")
        if self.tokens:
            x = torch.where(m > 0, x.to(device=p.device, dtype=torch.long), 0)
        else:
            x = x.to(device=p.device, dtype=p.dtype) * m.unsqueeze(1)
        return x, m

    @torch.no_grad()
    def step(self, x: Tensor, mask: Optional[Tensor] = None, *, update_states: bool = True) -> Tensor:
        """Hypothesize x̂_t from t-1, then correct the states with x_t; returns x̂_t."""
        x_hat = self.hypothesize()
        self.correct(x, mask, update_states=update_states)
        return x_hat

    # ------------------------------------------------------------------ local learning

    @torch.no_grad()
    def local_updates(self) -> bool:
        """Write the local updates of the latest step into ``param.grad``.

        Returns False (and clears the gradients) for the first step after ``reset``, which the
        reference does not learn from (no previous state); True otherwise.
        """
        last = self._last
        if last is None:
            raise RuntimeError("local_updates() needs a step() first")
        if not last["corrected"]:
            raise RuntimeError("no local updates after a step without state correction")
        if self._stepper is not None:
            raise RuntimeError("this model steps its optimizer itself (use_optimizer): train it with train_step")
        if last["t"] == 0:
            return self._no_updates()
        self._updates(last["z"], last["e"], last["eps"], last["y_prev"], last["x_prev"], last["m_prev"],
                      last["eps_prev"], GradSink(self))
        return True

    def _no_updates(self) -> bool:
        """The first step after ``reset`` learns nothing: clear every gradient."""
        for prm in self.parameters():
            prm.grad = None
        return False

    def _updates(self, z, e, eps, y_prev, x_prev, m_prev, eps_prev, sink=None) -> dict:
        """Step 4: the clipped, batch-averaged updates, handed to ``sink`` (``tncn.fused``: into
        ``param.grad``, stepped straight into the optimizer, or by default returned as new tensors
        {parameter name: tensor}).

        Every update is an outer product Aᵀ B of two batch-sized factors. Its Frobenius norm comes
        from the two B×B Gram matrices (‖AᵀB‖² = Σ (AAᵀ) ⊙ (BBᵀ)), all clip factors in one vector
        operation, and each product is formed once, the clip factor and 1/B folded into B.
        """
        jobs = self._jobs(z, e, eps, y_prev, x_prev, eps_prev)
        if self.sync is not None:
            return self._reduced_updates(jobs, m_prev)
        B = z[1].shape[0]
        grams = {}
        for _, A, ka, Bm, kb, _ in jobs:
            for key, t in ((ka, A), (kb, Bm)):
                if key not in grams:
                    if key == ("y", 0) and self.tokens:  # one-hot rows: Gram = [same token]·m mᵀ
                        grams[key] = (t.unsqueeze(0) == t.unsqueeze(1)).to(m_prev.dtype) * torch.outer(m_prev, m_prev)
                    else:
                        grams[key] = _gram(t)
        n2 = (torch.stack([grams[j[2]] for j in jobs]) * torch.stack([grams[j[4]] for j in jobs])).sum((1, 2))
        signs = self._signs(jobs, n2)
        norms = n2.clamp_min(0.0).sqrt() * signs.abs()
        clipped = self._clip_factor(norms)
        scales = clipped * (1.0 / B) * signs
        # ΔE^l = clip(γ clip(ΔW^l)ᵀ) under the transpose rule: stored transposed, c·ΔW^l
        ties = self.gamma * self._clip_factor(norms * clipped * abs(self.gamma))
        if n2.device.type == "cpu" and not torch.compiler.is_compiling():
            scales, ties = scales.tolist(), ties.tolist()  # no wait on a CPU; addmm's alpha takes them
        sink = Collect(self) if sink is None else sink
        held = self._held if sink is self._stepper else {}
        for k, (name, A, (kind, l), Bm, _, _) in enumerate(jobs):
            if (kind, l) == ("y", 0) and self.tokens:  # ΔM^1: an index-add of B rows
                on_host = isinstance(scales[k], float)
                rows = Bm * (m_prev if on_host else m_prev * scales[k]).unsqueeze(1)
                sink.rows(name, A, rows, scales[k] if on_host else 1.0)
                continue
            if kind == "z" and l in held:  # E^l = γ W^l + D^l, rewritten tile by tile (``use_optimizer``)
                sink.outer(name, A, Bm, scales[k], held=(f"E{l}", held[l], self.gamma))
                continue
            tie = kind == "z" and self.e_rule == "transpose"
            sink.outer(name, A, Bm, scales[k], (f"E{l}", ties[k]) if tie else None)
        return sink.grads

    def _jobs(self, z, e, eps, y_prev, x_prev, eps_prev) -> list:
        """The factors of each update Aᵀ B: (parameter name, A, A's key, B, B's key, sign·γ)."""
        transpose_rule = self.e_rule == "transpose"
        jobs = []
        for l in range(1, self.L + 1):
            if l == 1:
                err, err_key = e[0], ("e", 0)
            elif self.w_error == "epsilon":
                err, err_key = eps[l - 1], ("eps", l - 1)
            else:
                err, err_key = e[l - 1], ("e", l - 1)
            jobs.append((f"W{l}", z[l], ("z", l), err, err_key, 1.0))
            if not transpose_rule:
                diff = eps[l] - eps_prev[l]
                jobs.append((f"E{l}", diff, ("diff", l), e[l - 1], ("e", l - 1), -self.gamma))
            jobs.append((f"M{l}", x_prev if l == 1 else y_prev[l - 1], ("y", l - 1), eps[l], ("eps", l), 1.0))
            jobs.append((f"V{l}", y_prev[l], ("y", l), eps[l], ("eps", l), 1.0))
            if self._w("U", l) is not None:
                jobs.append((f"U{l}", y_prev[l + 1], ("y", l + 1), eps[l], ("eps", l), 1.0))
        return jobs

    def _signs(self, jobs: list, like: Tensor) -> Tensor:
        """The sign·γ of each job's update, as a tensor made once per job list."""
        key = tuple(j[5] for j in jobs)
        if self._signs_cache is None or self._signs_cache[0] != key or self._signs_cache[1].device != like.device:
            self._signs_cache = (key, torch.tensor(key, dtype=like.dtype, device=like.device))
        return self._signs_cache[1]

    def _reduced_updates(self, jobs: list, m_prev: Tensor) -> dict:
        """Step 4 across the ranks of ``self.sync`` (``tncn.distributed``), in the one-process order:
        each rank writes the unscaled batch sums Aᵀ B of its shard into one flat buffer (the views
        are the ``param.grad``s), one SUM all-reduce, then every rank clips each summed update,
        forms ΔE^l = γ clip(γ clip(ΔW^l)ᵀ) from the reduced ΔW^l (so E's updates never travel) and
        divides by the global batch ``sync.rows``; padded rows (mask 0) add nothing."""
        names = [j[0] for j in jobs]
        if self._flat is None or self._flat[0] != names:
            flat = torch.empty(sum(getattr(self, n).numel() for n in names), dtype=self.W1.dtype, device=self.W1.device)
            views, at = {}, 0
            for n in names:
                prm = getattr(self, n)
                views[n] = flat[at:at + prm.numel()].view_as(prm)
                at += prm.numel()
            self._flat = (names, flat, views)
        _, flat, grads = self._flat
        for name, A, ka, Bm, _, sign in jobs:
            g = grads[name]
            if ka == ("y", 0) and self.tokens:
                g.zero_().index_add_(0, A, Bm * (m_prev * sign).unsqueeze(1))
            else:
                torch.mm(A.T, Bm if sign == 1.0 else Bm * sign, out=g)
        self.sync.all_reduce_(flat)
        grads = dict(grads)
        norms = torch.stack([torch.linalg.vector_norm(grads[n]) for n in names])
        clipped = self._clip_factor(norms)
        scales = clipped * (1.0 / self.sync.rows)
        for k, n in enumerate(names):
            grads[n].mul_(scales[k])
            getattr(self, n).grad = grads[n]
        if self.e_rule == "transpose":
            for k, (name, _, (kind, l), _, _, _) in enumerate(jobs):
                if kind == "z":
                    factor = self.gamma * self._clip_factor(norms[k] * clipped[k] * abs(self.gamma))
                    grads[f"E{l}"] = torch.mul(grads[name], factor, out=grad_buffer(self._w("E", l)))
        return grads

    def _clip_factor(self, norm: Tensor) -> Tensor:
        """min(1, clip / norm) as TF's clip_by_norm computes it (1 when clipping is off)."""
        if self.clip is None:
            return torch.ones_like(norm)
        return self.clip / torch.clamp(norm, min=self.clip)

    @torch.no_grad()
    def project_(self) -> None:
        """Enforce ``max_norm`` on every weight row (call after the optimizer step; no-op if off)."""
        if self.max_norm is None:
            return
        for prm in self.parameters():
            rows = prm.norm(dim=1, keepdim=True)
            prm.mul_(self.max_norm / rows.clamp_min(self.max_norm))

    # ------------------------------------------------------------------ fused training step

    @torch.no_grad()
    def train_step(self, x: Tensor, mask: Optional[Tensor] = None) -> bool:
        """``step(x, mask)`` then ``local_updates()`` in one call, with the same numbers; returns
        whether updates were made (False on the first step after ``reset``).

        The updates go into ``param.grad`` for the caller's ``optimizer.step()``, unless
        ``use_optimizer`` fused the optimizer into the step: then they are applied here. After
        ``compile_step()`` the whole step (hypothesis, correction, updates) runs as one
        ``torch.compile`` graph, and the updates are handed over as new ``param.grad`` tensors.
        """
        if self._state is None:
            raise RuntimeError("call reset(batch_size) before the first step")
        x, m = self._check_observation(x, mask)
        st = self._state
        learn = st["t"] > 0
        if self._compiled is None:
            core, sink = self._fused, self._stepper or GradSink(self)
        else:
            core, sink = self._compiled, None
        logits, z, y, e, eps, grads = core(st["y"], st["x"], st["m"], st["eps"], x, m, learn, sink)
        self._advance(z, logits, y, e, eps, x, m, True)
        if not learn:
            return self._no_updates()
        if self._compiled is not None:
            for name, g in grads.items():
                getattr(self, name).grad = g
        return True

    def _fused(self, y_prev, x_prev, m_prev, eps_prev, x, m, learn: bool, sink=None):
        """Steps 1-4 as one pure function of the carried state and x_t (what ``compile_step`` compiles)."""
        h = self._hypothesis(y_prev, x_prev, m_prev)
        y, e, eps = self._correction(h, x, m)
        grads = self._updates(h["z"], e, eps, y_prev, x_prev, m_prev, eps_prev, sink) if learn else {}
        return h["logits"], h["z"], y, e, eps, grads

    # ------------------------------------------------------------------ the optimizer inside the step

    @property
    def steps_optimizer(self) -> bool:
        """Whether ``train_step`` applies the optimizer itself (``use_optimizer``)."""
        return self._stepper is not None

    @torch.no_grad()
    def use_optimizer(self, optimizer: torch.optim.Optimizer, offsets: Optional[dict] = None,
                      lazy_rows: bool = False) -> str:
        """Let ``train_step`` step ``optimizer`` itself, straight from each update's factors
        (``tncn.fused``: no ``param.grad``, fewer weight-sized passes), where it can; returns the
        update path in words (``tncn bench`` prints it).

        Where the step is linear in the updates (SGD, momentum or Nesterov without weight decay)
        and ΔE^l = γ (ΔW^l)ᵀ exactly (the transpose rule, and |γ| ≤ 1 or no clip, so that the
        second clip of ΔE never acts), E^l − γ W^l never changes: E^l is then held as γ W^l + D^l
        with D^l fixed at its value now, and E's update, momentum and their traffic disappear,
        with the same numbers up to float rounding. Any other case keeps E's own update, and the
        returned line says why. Call it again after loading weights or optimizer state, with the
        ``offsets`` {l: D^l} that ``held`` gave when the state was saved (a resumed run then
        continues bit for bit; without them D^l is E^l − γ W^l of the loaded weights, which
        equals the saved D^l up to float rounding).

        ``lazy_rows`` (token inputs from a vocabulary of at least ``LAZY_ROWS``, SGD with
        momentum, no weight decay or ``max_norm``): step M^1 lazily (``tncn.lazy_rows``): only the rows a step reads or updates are touched, the
        others catch up in closed form when next read. M^1 and its momentum buffer are then
        current only after ``flush_rows()``, which must run before anything reads them whole.
        """
        self.flush_rows()
        self._stepper, self._held, self._lazy = None, {}, None
        why = (unsupported(optimizer)
               or ("the torch.compile'd step hands its updates over as .grad" if self._compiled is not None else None)
               or ("the data-parallel step sums .grad buffers" if self.sync is not None else None))
        if why:
            return f".grad, then optimizer.step() ({why})"
        lazy = ("M1",) if lazy_rows and self.tokens and self.max_norm is None and self.input_size >= LAZY_ROWS else ()
        self._stepper = Fused(self, optimizer, lazy)
        self._lazy = self._stepper.lazy.get("M1")
        rows = "; M1's rows stepped lazily" if self._lazy is not None else ""
        why = self._why_not_held(optimizer)
        if why:
            return f"fused into the optimizer's state; E updated (not held: {why}){rows}"
        for l in range(1, self.L + 1):
            E = self._w("E", l)
            given = (offsets or {}).get(l)
            self._held[l] = given.to(E) if given is not None and given.shape == E.shape else E - self.gamma * self._w("W", l)
            optimizer.state[E].pop("momentum_buffer", None)
        return f"fused into the optimizer's state; E held as γWᵀ + D (no update of its own){rows}"

    @torch.no_grad()
    def flush_rows(self) -> None:
        """Bring every lazily stepped row of M^1 and its momentum current (``use_optimizer``)."""
        if self._lazy is not None:
            self._lazy.flush()

    def _why_not_held(self, optimizer) -> Optional[str]:
        """Why E^l − γ W^l may change under ``optimizer`` (None: it stays fixed; ``use_optimizer``)."""
        if self.e_rule != "transpose":
            return "the temporal E rule"
        if not is_linear(optimizer):
            return f"{type(optimizer).__name__}{' with weight decay' if type(optimizer) is torch.optim.SGD else ''} " \
                   "is not linear in the updates"
        if self.clip is not None and abs(self.gamma) > 1:
            return "|γ| > 1, so the second clip of ΔE can act"
        if self.max_norm is not None:
            return "max_norm projects E's rows apart from W's"
        for l in range(1, self.L + 1):
            W, E = self._w("W", l), self._w("E", l)
            if self._stepper.group(W) is not self._stepper.group(E):
                return f"W{l} and E{l} are in different parameter groups"
            bw, be = (optimizer.state[p].get("momentum_buffer") for p in (W, E))
            if (bw is None) != (be is None) or (bw is not None and not torch.allclose(be, self.gamma * bw)):
                return f"E{l}'s momentum is not γ times W{l}'s"
        return None

    @property
    def held(self) -> dict:
        """{l: D^l} for the error weights held as E^l = γ W^l + D^l (``use_optimizer``; empty: none)."""
        return dict(self._held)

    def complete_optimizer_state(self, state: dict) -> dict:
        """The attached optimizer's ``state_dict()`` ``state`` as the ``.grad`` path would have it:
        a held E^l's momentum buffer γ·(W^l's), so that a saved state resumes on either path
        (a new dict; ``state`` itself is left as it is)."""
        if not self._held:
            return state
        index = {p: i for i, p in enumerate(p for g in self._stepper.optimizer.param_groups for p in g["params"])}
        packed = dict(state["state"])
        for l in self._held:
            bw = packed.get(index[self._w("W", l)], {}).get("momentum_buffer")
            if bw is not None:
                iE = index[self._w("E", l)]
                packed[iE] = {**packed.get(iE, {}), "momentum_buffer": self.gamma * bw}
        return {**state, "state": packed}

    def compile_step(self) -> None:
        """Run ``train_step`` through ``torch.compile`` (the first steps compile: seconds to a
        minute); numbers equal the eager step's up to float rounding (tests/test_compile.py)."""
        stochastic = [f.name for f in (self.f, self.phi) if f.needs_generator]
        if stochastic:
            raise ValueError(f"the {stochastic[0]} activation draws from a torch.Generator, which "
                             "torch.compile does not trace; train this model eagerly")
        self._compiled = torch.compile(self._fused)
        self.flush_rows()
        self._stepper, self._held, self._lazy = None, {}, None  # the compiled step hands its updates over as .grad

    def extra_repr(self) -> str:
        o = self.options()
        return ", ".join(f"{k}={v}" for k, v in o.items())

