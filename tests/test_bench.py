"""The benchmark's FLOP count against the closed form, and its memory probe on a short sequence."""
import json
import subprocess
import sys

import pytest
import torch

import tncn
from tncn import bench


@pytest.mark.parametrize("H, V", [(1000, 49), (256, 49), (1000, 10000)])
def test_flops_per_token_closed_form(H, V):
    # L = 2, tokens, default E rule: 2·(11 H² + 3 H V) (docs/performance.md: 22.3 MFLOP at H=1000, V=49)
    assert bench.ptncn_flops_per_token(tncn.PTNCN(V, [H, H])) == 2 * (11 * H * H + 3 * H * V)


def test_flops_count_the_temporal_rule_and_dense_inputs():
    H, D = 30, 20
    base = 2 * (11 * H * H + 3 * H * D)
    assert bench.ptncn_flops_per_token(tncn.PTNCN(D, [H, H], e_rule="temporal")) == base + 2 * (H * H + D * H)
    assert bench.ptncn_flops_per_token(tncn.PTNCN(D, [H, H], tokens=False)) == base + 2 * 2 * D * H


def test_step_bytes_and_bound_closed_forms():
    model = tncn.PTNCN(49, [1000, 1000])
    E, other = 49 * 1000 + 1000 * 1000, 2 * 49 * 1000 + 5 * 1000 * 1000  # E1, E2; M1, W1 and V1, U1, M2, V2, W2
    n = E + other  # 6.15 M weights
    # .grad: every update written once (ΔE read from ΔW and written), then the 5 passes of fused Nesterov
    assert bench.ptncn_step_bytes(model) == 4 * (6 * other + 7 * E)
    assert bench.ptncn_step_bytes(model, "sgd") == 4 * (4 * other + 5 * E)
    # fused into the optimizer with E held: 4 passes a weight (M1: 2 more, its zeroed row scratch), 3 for E
    model.use_optimizer(torch.optim.SGD(model.parameters(), lr=0.075, momentum=0.95, nesterov=True))
    M1 = 49 * 1000
    assert bench.ptncn_step_bytes(model) == 4 * (4 * other + 2 * M1 + 3 * E)
    model.use_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))  # plain SGD: M1 takes B rows, not counted
    assert bench.ptncn_step_bytes(model, "sgd") == 4 * (2 * (other - M1) + 3 * E)
    flops = bench.ptncn_flops_per_token(model)
    # only products: the matmul rate over the FLOPs; only traffic: the bandwidth over the bytes, per batch
    assert bench.ptncn_bound(flops, 0, 50, 100.0, 35.0) == pytest.approx(100e9 / flops)
    assert bench.ptncn_bound(0.0, 10**9, 50, 100.0, 35.0) == pytest.approx(50 * 35.0)
    both = 50 / (50 * flops / 100e9 + 6 * 4 * n / 35e9)
    assert bench.ptncn_bound(flops, 6 * 4 * n, 50, 100.0, 35.0) == pytest.approx(both)


def test_gpu_rows_run_on_a_cpu_at_a_tiny_size():
    """The GPU table's code path (without the CUDA graph, which needs CUDA): a P-TNCN row with its
    fractions and the same-size LSTM row, timed in turn."""
    rows = bench.gpu_rows("cpu", 1, 100.0, widths=(8,), batches=(3,), graph=False, progress=lambda m: None)
    ptncn, lstm = rows
    assert ptncn.config == "GPU P-TNCN L=2 H=8 B=3 V=49" and lstm.config.startswith("GPU LSTM L=2 H=8 B=3")
    flops = bench.ptncn_flops_per_token(tncn.PTNCN(49, [8, 8]))
    assert ptncn.useful_gflops == pytest.approx(ptncn.tokens_per_s * flops / 1e9)
    assert ptncn.fraction_of_matmul_peak == pytest.approx(ptncn.useful_gflops / 100.0)
    assert f"P-TNCN / LSTM = {ptncn.tokens_per_s / lstm.tokens_per_s:.2f}" in ptncn.note


def test_interleaved_rates_time_every_learner():
    learners = {"fused": bench.ptncn_learner([8, 8], 11), ".grad": bench.ptncn_learner([8, 8], 11, fused=False)}
    rates = bench.learner_train_rates(learners, 3, 4, repeats=2)
    assert set(rates) == set(learners) and all(r > 0 for r in rates.values())
    assert "E held" in learners["fused"].update_path and learners[".grad"].update_path.startswith(".grad")


def test_ptncn_memory_does_not_grow_with_sequence_length():
    short = bench.peak_memory_mb("ptncn", {"hidden": [64, 64]}, 20, batch=8)
    long = bench.peak_memory_mb("ptncn", {"hidden": [64, 64]}, 400, batch=8)
    assert long["growth_mb"] < 5 and long["peak_mb"] < short["peak_mb"] * 1.05 + 5


@pytest.mark.slow
def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "tncn", "bench", "--quick", "--repeats", "1", "--json", str(out)], check=True)
    result = json.loads(out.read_text())
    ptncn = [r for r in result["rows"] if r["config"].startswith("P-TNCN") and "B=50" in r["config"]]
    memory = [r for r in result["rows"] if r["config"].startswith("memory")]
    assert len(ptncn) == 2 and len(memory) == 4  # --quick: H = 256 eager and compiled; T = 100, 1000
    flops = bench.ptncn_flops_per_token(tncn.PTNCN(49, [256, 256]))
    for r in ptncn:  # the derived columns are what the measured rates give
        assert r["useful_gflops"] == pytest.approx(r["tokens_per_s"] * flops / 1e9)
        assert r["fraction_of_matmul_peak"] == pytest.approx(r["useful_gflops"] / result["matmul_gflops"])
        assert r["fraction_of_bound"] == pytest.approx(r["tokens_per_s"] / r["bound_tokens_per_s"])
    assert all(r["peak_memory_mb"] > 50 for r in memory)  # a process with torch loaded
    online = {r["config"].split(" L=1")[0]: r for r in result["rows"] if " L=1 " in r["config"]}
    assert set(online) == {"RTRL", "UORO", "SnAp-1"}  # --quick: the first width of each
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 50 for r in online.values())
