"""Restricted Boltzmann machines trained by contrastive divergence (Hinton, "Training Products of
Experts by Minimizing Contrastive Divergence", Neural Computation 2002; persistent CD: Tieleman,
ICML 2008), as a rule for the feedforward ``tncn.mlp.MLP``, with a readout trained on top.

Each hidden layer l is the hidden layer of an RBM whose visible layer is the layer below
(v = h^{l-1}, in [0, 1]): energy E(v, h) = -v·b_v - h·c - v W h with the layer's own W^l and
c = b^l, and a visible bias b_v of the rule's own. Its free energy and conditionals are

    F(v) = -v·b_v - Σ_j softplus(c_j + (v W)_j),   p(h_j = 1 | v) = σ(c_j + (v W)_j),
    p(v_i = 1 | h) = σ(b_v,i + (W h)_i),

so the network's forward pass h^l = σ(a^l) is the RBM's mean hidden activity. CD-k estimates
the log-likelihood gradient ⟨v hᵀ⟩_data - ⟨v hᵀ⟩_model with a Gibbs chain of k steps started at
the data (or, persistent, at the chain's last state): each step samples h ~ p(h | v), then
v ~ p(v | h), and the negative statistics use p(h | v) of the chain's last v (binary units
throughout, so that a long chain samples the model: the data's grey levels enter only the
positive phase). The update, written into ``.grad`` with
the sign of a loss gradient and averaged over the batch:

    ∂W = -(vᵀ p(h|v) - v_kᵀ p(h|v_k)) / B,   ∂c = -mean(p(h|v) - p(h|v_k)),   ∂b_v = -mean(v - v_k)

All RBMs of a deep network learn at once, each on the mean activities of the one below (a
greedy stack trained concurrently); the softmax output layer is the readout, trained by the
true gradient of the output loss on the top hidden layer. No error reaches the hidden layers:
they model their input, unsupervised.

How well an RBM models binary data v is its log-likelihood log p(v) = -F(v) - log Z, with the
partition function Z = Σ_v exp(-F(v)) (Salakhutdinov & Murray, "On the quantitative analysis of
deep belief networks", ICML 2008, section 2):

- ``log_partition_exact``: log Z by enumerating the smaller layer (the visible states through
  F(v), or the hidden states through the analogous F(h)), for RBMs with at most 20 units on one
  side: the reference for tests and tiny models.
- ``log_partition_ais``: annealed importance sampling (Neal, "Annealed importance sampling",
  Statistics and Computing 2001; Salakhutdinov & Murray 2008, section 3): M chains start at
  exact samples of a base-rate model p_A (W = 0, c = 0, visible biases b_A from the data's
  pixel means, ``base_rate_bias``) and pass through p_β(v) ∝ exp(f_β(v)),

      f_β(v) = (1-β) v·b_A + β v·b_v + Σ_j softplus(β (c_j + (v W)_j)),

  for 0 = β_0 < β_1 < ... < β_K = 1 (f_0 = log p*_A with Z_A = Π_i (1 + e^{b_A,i}) 2^{n_h},
  f_1 = -F), one Gibbs sweep at each β_k (h ~ σ(β(c + vW)), v ~ σ((1-β) b_A + β(b_v + W h)));
  each chain's log-weight is log w = Σ_k f_{β_k}(v_k) - f_{β_{k-1}}(v_k), v_k the state the
  chain holds when β rises from β_{k-1} to β_k, and Ẑ = Z_A · mean(w) is an unbiased estimate
  of Z (Neal 2001), so log Ẑ underestimates log Z on average and the log-likelihood it gives
  errs on the high side; by far when the chains never reach a mode that holds much of Z
  (``RBM.monitor`` therefore also starts from the RBM's own visible biases). Reported with
  log(Ẑ ± 3σ̂), σ̂ the standard error of Ẑ over the chains, as S&M do. Default: 100 chains
  (S&M's number) and 10,000 evenly spaced β (``linear_betas``, which says why not S&M's own
  schedule).
- ``log_likelihood``: the mean of -F(v) - log Z over rows of binary data.
- ``pseudo_likelihood``: the mean log pseudo-likelihood Σ_i log p(v_i | v_-i) (Besag 1975),
  with log p(v_i | v_-i) = log σ(F(v with v_i flipped) - F(v)): exact over all units, or the
  stochastic estimate n_v · log p(v_i | v_-i) of one unit i per example drawn at random, the
  usual cheap monitor, unbiased for the exact one.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from tncn.learners.base import Learner, UnitNoise, output_error
from tncn.options import BOOL, INT, argument, positive

Tensor = torch.Tensor


def free_energy(v: Tensor, weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor) -> Tensor:
    """F(v) = -v·b_v - Σ_j softplus(c_j + (v W)_j), one value per row of ``v``."""
    return -(v @ visible_bias) - torch.nn.functional.softplus(v @ weight + hidden_bias).sum(-1)


EXACT_UNITS = 20
"""``log_partition_exact`` enumerates 2^n states of its smaller layer: n at most this."""


def log_partition_exact(weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor) -> Tensor:
    """log Z = log Σ_v exp(-F(v)) exactly, enumerating all states of the smaller layer: the
    visible states through F(v), or, with fewer hidden units, the hidden states through
    F(h) = -h·c - Σ_i softplus(b_v,i + (W h)_i) (the same sum, taken over v first). Refuses RBMs
    with more than ``EXACT_UNITS`` units on both sides (2^20 states take seconds)."""
    n_v, n_h = weight.shape
    if min(n_v, n_h) > EXACT_UNITS:
        raise ValueError(f"log_partition_exact enumerates 2^n states of the smaller layer, n at most {EXACT_UNITS}; "
                         f"this RBM has {n_v} visible and {n_h} hidden units (use log_partition_ais)")
    if n_h < n_v:  # enumerate h: F(h) is the free energy of the transposed RBM
        weight, hidden_bias, visible_bias = weight.T, visible_bias, hidden_bias
    n = min(n_v, n_h)
    bits = 2 ** torch.arange(n, device=weight.device)
    chunk = 2 ** 14
    parts = []
    for start in range(0, 2 ** n, chunk):
        index = torch.arange(start, min(start + chunk, 2 ** n), device=weight.device)
        states = (index[:, None] & bits).ne(0).to(weight.dtype)
        parts.append(torch.logsumexp(-free_energy(states, weight, hidden_bias, visible_bias), 0))
    return torch.logsumexp(torch.stack(parts), 0)


def base_rate_bias(data: Tensor, eps: float = 1e-3) -> Tensor:
    """Visible biases b_A = log(p / (1 - p)) of the base-rate model of AIS (Salakhutdinov &
    Murray 2008, section 4.1): p the mean of each unit over the rows of ``data``, clipped to
    [eps, 1 - eps] so that units always off (MNIST's border pixels) get a finite bias."""
    if data.ndim != 2 or len(data) == 0:
        raise ValueError(f"base_rate_bias needs data rows [N, n_visible], got shape {tuple(data.shape)}")
    p = data.mean(0).clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def linear_betas(steps: int = 10_000) -> Tensor:
    """``steps + 1`` inverse temperatures evenly spaced from 0 to 1 (float64): the default AIS
    schedule, 10,000 sweeps. On the RBMs ``tncn classify --rule rbm`` trains (visible biases near
    0, the structure in W) the log-weights of chains from the data's base rate spread most at
    small β, where Salakhutdinov & Murray's schedule (steps of 1e-3 to 0.5, 1e-4 to 0.9, 1e-5 to
    1; 14,500 sweeps) is coarsest: on the 784×500 MNIST RBM its ±3σ̂ interval is ±0.43 nats, this
    one's ±0.12, in two thirds the time (30-80 s with 100 chains on one CPU core)."""
    if int(steps) < 1:
        raise ValueError(f"an AIS schedule needs at least one step, got {steps}")
    return torch.linspace(0, 1, int(steps) + 1, dtype=torch.float64)


class LogZ(NamedTuple):
    """An AIS estimate of log Z and its interval log(Ẑ ± 3σ̂) (low is -inf when 3σ̂ ≥ Ẑ)."""
    log_z: float
    low: float
    high: float


@torch.no_grad()
def log_partition_ais(weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor, base_bias: Tensor,
                      betas: Optional[Tensor] = None, chains: int = 100, seed: int = 0) -> LogZ:
    """log Z of the RBM (W [n_v, n_h], c, b_v) by annealed importance sampling from the base-rate
    model with visible biases ``base_bias`` (``base_rate_bias`` of the training data; any base
    gives an unbiased Ẑ, a closer one a smaller variance, and one from which the chains never
    reach a mode of the RBM a log Ẑ too low, interval and all: see ``RBM.monitor``, which also
    starts from ``base_bias = visible_bias``): ``chains`` independent runs through
    the inverse temperatures ``betas`` (increasing from 0 to 1; default ``linear_betas()``), one
    Gibbs sweep at each, their log-weights accumulated in float64 and averaged by logsumexp (see
    the module docstring). The draws come from a generator seeded with ``seed`` on the weights'
    device, so a seed gives the same estimate again."""
    betas = linear_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64).cpu()
    if betas.ndim != 1 or len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or bool((betas.diff() < 0).any()):
        raise ValueError("betas must be a 1-D schedule of inverse temperatures rising from 0 to 1")
    if int(chains) < 2:
        raise ValueError(f"AIS needs at least 2 chains (for its interval), got {chains}")
    n_v, n_h = weight.shape
    gen = torch.Generator(device=weight.device).manual_seed(int(seed))

    def sample(p: Tensor) -> Tensor:
        return (torch.rand(p.shape, generator=gen, device=p.device, dtype=p.dtype) < p).to(p.dtype)

    def state(v: Tensor) -> tuple:  # what f_β needs of v: c + vW, v·b_A, v·b_v
        v64 = v.double()
        return v @ weight + hidden_bias, v64 @ b_a, v64 @ b_v

    def f(beta: float, a: Tensor, vb_a: Tensor, vb_v: Tensor) -> Tensor:  # f_β(v), summed in float64
        return (1 - beta) * vb_a + beta * vb_v + torch.nn.functional.softplus(beta * a).double().sum(-1)

    b_a, b_v = base_bias.double(), visible_bias.double()
    base = base_bias.to(weight.dtype)
    v = sample(torch.sigmoid(base).expand(int(chains), n_v))
    s = state(v)
    log_w = -f(0.0, *s)
    for beta in betas[1:-1].tolist():
        log_w += f(beta, *s)
        h = sample(torch.sigmoid(beta * s[0]))
        v = sample(torch.sigmoid((1 - beta) * base + beta * (h @ weight.T + visible_bias)))
        s = state(v)
        log_w -= f(beta, *s)
    log_w += f(1.0, *s)
    log_z_base = float(torch.nn.functional.softplus(b_a).sum()) + n_h * math.log(2)
    top = float(log_w.max())
    w = torch.exp(log_w - top)  # weights relative to the largest
    mean, spread = float(w.mean()), 3 * float(w.std()) / math.sqrt(len(w))
    shift = log_z_base + top
    low = math.log(mean - spread) + shift if mean > spread else -math.inf
    return LogZ(math.log(mean) + shift, low, math.log(mean + spread) + shift)


EXACT_PL_UNITS = 64
"""``RBM.monitor`` takes the exact pseudo-likelihood up to this many inputs, the stochastic one beyond."""


def _check_binary(v: Tensor, what: str) -> None:
    if v.ndim != 2 or len(v) == 0:
        raise ValueError(f"{what} needs data rows [N, n_visible], got shape {tuple(v.shape)}")
    if not bool(((v == 0) | (v == 1)).all()):
        raise ValueError(f"{what} is a probability of binary data: binarise it first (e.g. v > 0.5)")


@torch.no_grad()
def log_likelihood(v: Tensor, weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor, log_z: float) -> Tensor:
    """The mean log p(v) = -F(v) - log Z over the rows of binary ``v``, with ``log_z`` from
    ``log_partition_ais`` (or ``log_partition_exact``)."""
    _check_binary(v, "log_likelihood")
    return -free_energy(v, weight, hidden_bias, visible_bias).mean() - log_z


@torch.no_grad()
def pseudo_likelihood(v: Tensor, weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor,
                      stochastic: bool = False, seed: int = 0) -> Tensor:
    """The mean log pseudo-likelihood Σ_i log p(v_i | v_-i) of the rows of binary ``v``, where
    log p(v_i | v_-i) = log σ(F(v ⊕ e_i) - F(v)) and flipping v_i shifts c + vW by s_i W_i
    (s_i = 1 - 2 v_i). Exact: all n_v units of every row (N·n_v·n_h softplus terms, in chunks);
    ``stochastic``: one unit per row, drawn uniformly (generator seeded with ``seed``), times
    n_v, an unbiased estimate at the cost of one free energy."""
    _check_binary(v, "pseudo_likelihood")
    a = v @ weight + hidden_bias
    softplus = torch.nn.functional.softplus
    base = softplus(a).sum(-1)
    s = 1 - 2 * v
    n_v, n_h = weight.shape
    if stochastic:
        gen = torch.Generator(device=v.device).manual_seed(int(seed))
        i = torch.randint(n_v, (len(v),), generator=gen, device=v.device)
        s_i = s.gather(1, i[:, None])
        delta = -s_i[:, 0] * visible_bias[i] - (softplus(a + s_i * weight[i]).sum(-1) - base)
        return n_v * torch.nn.functional.logsigmoid(delta).mean()
    total = v.new_zeros(())
    rows = max(1, 2 ** 22 // (n_v * n_h))
    for start in range(0, len(v), rows):
        a_c, s_c, base_c = a[start:start + rows], s[start:start + rows], base[start:start + rows]
        flipped = softplus(a_c[:, None, :] + s_c[:, :, None] * weight).sum(-1)  # [rows, n_v]
        delta = -s_c * visible_bias - (flipped - base_c[:, None])
        total = total + torch.nn.functional.logsigmoid(delta).sum()
    return total / len(v)


class RBM(Learner):
    """CD-k (or persistent CD) on every hidden layer, a readout on top.

    Args:
        net: a ``tncn.mlp.MLP`` with sigmoid hidden units (the RBM's mean hidden activity).
        k: Gibbs steps of the negative chain.
        persistent: keep the chains between steps (PCD; one chain per example of the batch, so
            the batch size must stay fixed) instead of restarting them at the data.
        seed: seeds the Gibbs samples.
    """

    name = "rbm"
    activation = "sigmoid"

    def __init__(self, net, k: int = 1, persistent: bool = False, seed: int = 0):
        super().__init__(net)
        if any(layer.bias is None for layer in net.layers[:-1]):
            raise ValueError("rule 'rbm' needs the hidden biases of the network (the RBMs' c)")
        if int(k) < 1:
            raise ValueError(f"k must be a positive number of Gibbs steps, got {k}")
        self.k, self.persistent = int(k), bool(persistent)
        w = net.layers[0].weight
        self.visible_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(layer.n_in, device=w.device, dtype=w.dtype)) for layer in net.layers[:-1])
        self.noise = UnitNoise(int(seed) + 1)
        self.chains: list[Optional[Tensor]] = [None] * (len(net.layers) - 1)

    OPTIONS = (
        argument(__init__, "k", INT, "Gibbs steps of the negative phase (CD-k)", check=positive),
        argument(__init__, "persistent", BOOL, "persistent chains (PCD) instead of restarting at the data"),
    )

    def _sample(self, p: Tensor) -> Tensor:
        gen = self.noise.generator(p.device)
        u = torch.rand(p.shape, generator=gen, device=gen.device, dtype=p.dtype).to(p.device)
        return (u < p).to(p.dtype)

    @torch.no_grad()
    def gibbs(self, l: int, v: Tensor, steps: int) -> Tensor:
        """``steps`` Gibbs steps of layer l's RBM from visible v: sample h ~ p(h | v), then v ~ p(v | h)."""
        for _ in range(steps):
            v = self._sample(self.visible_mean(l, self._sample(torch.sigmoid(self.net.layers[l].pre(v)))))
        return v

    def visible_mean(self, l: int, h: Tensor) -> Tensor:
        """p(v = 1 | h) of layer l's RBM."""
        return torch.sigmoid(h @ self.net.layers[l].weight.T + self.visible_bias[l])

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the CD updates of every hidden layer and the readout's gradient; return the loss."""
        a_s, h_s = self.net.forward_all(x)
        batch = x.shape[0]
        for l, layer in enumerate(self.net.layers[:-1]):
            v, p_h = h_s[l], h_s[l + 1]
            start = self.chains[l] if self.persistent and self.chains[l] is not None else v
            if start.shape != v.shape:
                raise ValueError(f"persistent chains hold {start.shape[0]} examples, this batch {batch}: "
                                 "keep the batch size fixed (or drop the short last batch)")
            v_k = self.gibbs(l, start, self.k)
            if self.persistent:
                self.chains[l] = v_k
            p_k = torch.sigmoid(layer.pre(v_k))
            layer.weight.grad = -(v.T @ p_h - v_k.T @ p_k) / batch
            layer.bias.grad = -(p_h - p_k).mean(0)
            self.visible_bias[l].grad = -(v - v_k).mean(0)
        e, loss = output_error(self.net, a_s[-1], h_s[-1], y)
        top = self.net.layers[-1]
        top.weight.grad = h_s[-2].T @ e / batch
        if top.bias is not None:
            top.bias.grad = e.mean(0)
        return loss

    @torch.no_grad()
    def free_energy(self, v: Tensor, l: int = 0) -> Tensor:
        """The free energy F(v) of layer l's RBM for each row of ``v`` (the data, for l = 0)."""
        layer = self.net.layers[l]
        return free_energy(v, layer.weight, layer.bias, self.visible_bias[l])

    @torch.no_grad()
    def prepare(self, x: Tensor) -> None:
        """Start the first RBM's visible biases at the log base rates of the training rows ``x``,
        log(p_i / (1 - p_i)) with p_i clipped to [0.01, 0.99] (Hinton, "A Practical Guide to
        Training Restricted Boltzmann Machines", 2010, section 8.1). From zero biases the
        hidden units learn to switch pixels off, and the all-off hidden state, whose images are
        noise, takes most of Z: the 784×500 MNIST RBM of ``tncn classify --rule rbm --hidden 500
        --lr 3e-3`` scored -212.3 nats of test log-likelihood from zero biases and -143.8 from
        these (``scripts/rbm_likelihood.py``), at the same test error. ``tncn classify`` calls it
        before training; inputs outside [0, 1] are refused (ValueError)."""
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise ValueError(f"rule 'rbm' models inputs in [0, 1] (binary units' probabilities), these range over "
                             f"[{low:.3g}, {high:.3g}]: do not centre them (--no-center)")
        self.visible_bias[0].copy_(base_rate_bias(x, eps=1e-2))

    def measure(self, x: Tensor) -> dict:
        """``monitor(x)`` without AIS (cheap): the first RBM's mean free energy and pseudo-log-likelihood."""
        return self.monitor(x)

    @torch.no_grad()
    def monitor(self, x: Tensor, ais: bool = False, betas: Optional[Tensor] = None, chains: int = 100,
                seed: int = 0) -> dict:
        """How well the first RBM models the rows of ``x``: their mean free energy, mean
        pseudo-log-likelihood (``pseudo_likelihood``: exact over all units for at most
        ``EXACT_PL_UNITS`` inputs, the stochastic one-unit estimate beyond) and, with ``ais``,
        log Z by ``log_partition_ais`` (``betas``, ``chains``, ``seed`` passed on) with its interval
        and the mean log-likelihood, in nats per row. AIS runs from two bases, the base rate of the
        rows (``base_rate_bias``, Salakhutdinov & Murray's) and the RBM's own visible biases
        (p(v | h = 0)), and the larger estimate counts (``log_z``, also ``log_z_data_base`` and
        ``log_z_visible_base``): a run that misses a mode underestimates log Z, while by Markov's
        inequality no run overestimates Z by a factor e^t with probability above e^-t. The second
        base is there for the mode that CD training never visits: on the 784×500 MNIST RBM of
        ``tncn classify --rule rbm --hidden 500 --lr 3e-3`` the hidden units switch pixels off
        (W ≪ 0, b_v ≈ 0), and h = 0 with noise images holds nearly all of Z: log Z ≈ 504.0 from
        the visible base (≥ Σ_i softplus(b_v,i) = 503.97, the h = 0 term alone), but 485.7 from
        the base rate, whose chains stay among the digits. Each run costs 10,000 Gibbs sweeps of
        ``chains`` rows by default: 30-80 s for that RBM on one CPU core.

        The likelihoods are those of binary data, and an RBM puts no probability on grey levels:
        ``x`` is binarised here at 0.5 (v_i = 1 where x_i > 0.5; deterministic, so two calls see
        the same rows; stochastic binarisation, as Salakhutdinov & Murray 2008 used for MNIST,
        gives other, lower numbers), and every number is of the binarised rows."""
        layer = self.net.layers[0]
        weight, hidden_bias, visible_bias = layer.weight, layer.bias, self.visible_bias[0]
        v = (x > 0.5).to(weight.dtype)
        result = {
            "free_energy": float(free_energy(v, weight, hidden_bias, visible_bias).mean()),
            "pseudo_log_likelihood": float(pseudo_likelihood(v, weight, hidden_bias, visible_bias,
                                                             stochastic=v.shape[1] > EXACT_PL_UNITS, seed=seed)),
        }
        if ais:
            runs = [log_partition_ais(weight, hidden_bias, visible_bias, base, betas, chains, seed)
                    for base in (base_rate_bias(v), visible_bias)]
            z = max(runs, key=lambda run: run.log_z)
            result.update(log_z=z.log_z, log_z_low=z.low, log_z_high=z.high,
                          log_z_data_base=runs[0].log_z, log_z_visible_base=runs[1].log_z,
                          log_likelihood=float(log_likelihood(v, weight, hidden_bias, visible_bias, z.log_z)))
        return result

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """p(v | h) for h ~ p(h | x) of the first RBM: the mean of one Gibbs step from the data."""
        return self.visible_mean(0, self._sample(torch.sigmoid(self.net.layers[0].pre(x))))
