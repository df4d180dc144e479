"""A plain, line-by-line P-TNCN step (the equations of ``tncn.temporal.ptncn``), written for reading, testing and benchmarking.

The same equations as ``tncn.temporal.ptncn`` in their most direct form: one-hot inputs, every
update formed as a full outer product, clipped after it is formed, no buffers reused. It is the
independent implementation the tests compare the fast model against (for any depth and option),
and the "naive step" baseline of ``scripts/bench_step.py``. Not for training.

Weights are a dict {"M1": [H_0, H_1], "V1", "U1", "W1", "E1", ...} in the row-vector layout, E^l
stored transposed as in ``tncn.PTNCN`` ("E1" is [H_1, H_0]);
``state`` is {"y": [y^1..y^L], "x": x_{t-1} (dense), "eps": [ε^1..ε^L] of t-1}.
"""
from __future__ import annotations

import torch

from tncn.layers import get_activation


def naive_zero_state(weights: dict, L: int, batch: int) -> dict:
    hidden = [weights[f"V{l}"].shape[0] for l in range(1, L + 1)]
    n_in = weights["M1"].shape[0]
    zeros = [torch.zeros(batch, h, dtype=weights["M1"].dtype) for h in hidden]
    return {"y": zeros, "x": torch.zeros(batch, n_in, dtype=weights["M1"].dtype), "eps": [z.clone() for z in zeros]}


def _clip(d: torch.Tensor, c) -> torch.Tensor:
    if c is None:
        return d
    n = torch.linalg.norm(d)
    return d * c / torch.maximum(n, torch.tensor(c, dtype=d.dtype))


def naive_step(weights: dict, state: dict, x: torch.Tensor, m: torch.Tensor, *, L: int,
               output="softmax", activation="tanh", hidden_prediction="identity", beta=0.1,
               alpha=0.001, gamma=1.0, K=1, e_rule="transpose", w_error="epsilon",
               top_down=True, sparsity=0.0, clip=1.0):
    """One P-TNCN step on a dense observation ``x`` [B, H_0] with mask ``m`` [B].

    Returns (x_hat, new_state, deltas) where deltas are the updates handed to the optimizer
    (clipped, divided by B) for every weight.
    """
    f, phi = get_activation(activation), get_activation(hidden_prediction)
    g0 = {"softmax": lambda v: torch.softmax(v, -1), "sigmoid": torch.sigmoid, "identity": lambda v: v}[output]
    w = weights
    B = x.shape[0]
    mc = m[:, None]
    x = x * mc
    y_prev = [state["x"]] + state["y"]            # index l: y^l_{t-1}, with y^0 = x_{t-1}
    U = {l: w.get(f"U{l}") if top_down else None for l in range(1, L + 1)}
    # 1. hypothesize
    a, z = {}, {}
    for l in range(1, L + 1):
        a[l] = y_prev[l - 1] @ w[f"M{l}"] + y_prev[l] @ w[f"V{l}"]
        if l < L and U[l] is not None:
            a[l] = a[l] + y_prev[l + 1] @ U[l]
        z[l] = f(a[l])

    def errors(s):
        x_hat = g0(s[1] @ w["W1"])
        e = {0: (x_hat - x) * mc}
        for l in range(1, L):
            e[l] = (phi(s[l + 1] @ w[f"W{l + 1}"]) - s[l]) * mc
        return x_hat, e

    # 2-3. errors and K corrections
    s, a_k = dict(z), dict(a)
    x_hat = e0 = None
    for k in range(K):
        xh, e = errors(s)
        if k == 0:
            x_hat, e0 = xh, e
        for l in range(1, L + 1):
            d = e[l - 1] @ w[f"E{l}"].T
            if l < L:
                d = d - alpha * e[l]
            if sparsity:
                d = d + sparsity * torch.sign(a[l])
            a_k[l] = a_k[l] - beta * d
        s = {l: f(a_k[l]) for l in range(1, L + 1)}
    y = s
    eps = {l: (z[l] - y[l]) * mc for l in range(1, L + 1)}
    # 4. updates
    deltas = {}
    for l in range(1, L + 1):
        err = e0[0] if l == 1 else (eps[l - 1] if w_error == "epsilon" else e0[l - 1])
        dW = _clip(z[l].T @ err, clip)
        deltas[f"W{l}"] = dW / B
        if e_rule == "transpose":
            deltas[f"E{l}"] = _clip(gamma * dW, clip) / B  # (ΔE^l)ᵀ = γ ΔW^l
        else:
            deltas[f"E{l}"] = _clip(-gamma * (eps[l] - state["eps"][l - 1]).T @ e0[l - 1], clip) / B
        deltas[f"M{l}"] = _clip(y_prev[l - 1].T @ eps[l], clip) / B
        deltas[f"V{l}"] = _clip(y_prev[l].T @ eps[l], clip) / B
        if l < L and U[l] is not None:
            deltas[f"U{l}"] = _clip(y_prev[l + 1].T @ eps[l], clip) / B
    new_state = {"y": [y[l] for l in range(1, L + 1)], "x": x, "eps": [eps[l] for l in range(1, L + 1)]}
    return x_hat, new_state, deltas
