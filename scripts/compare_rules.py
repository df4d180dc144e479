"""The experiments of Ororbia's talk "Local Representation Alignment: A Biologically Motivated
Algorithm for Training Neural Systems" on identical MLPs, as one script: its tables and pictures
for docs/learners.md.

Rules (``tncn.learners``): backprop, FA, DFA, LRA-E (Ororbia & Mali, AAAI 2019, arXiv 1805.11703),
LRA with the Cauchy local loss (Ororbia et al., arXiv 1803.01834), DTP (Lee et al. 2015) and DTP
with adaptive noise ("dtp-sigma": our reading of DTP-σ, labelled by its schedule). Parts
(``--part``):

- ``deep``: deep and thin networks, 3×256, 8×256 and 8×64 tanh, every rule, MNIST and
  Fashion-MNIST; LRA-E also with sign units; a control row, "readout only", trains just the softmax
  layer on the frozen random hidden layers of the same initial network (Adam, same epochs and
  batches), the floor any rule must beat to show that its hidden layers learn. Pictures: the angle
  of every rule's update to backprop's per layer, the total discrepancy of LRA, LRA-E and DTP, the
  topmost hidden layer on the test set (PCA, by class) per rule.
- ``filters``: first-layer filters of every rule after one pass over MNIST (3×256 tanh).
- ``null``: training from all-zero weights (``--init zeros``), MNIST 3×256, units tanh, ReLU6,
  LWTA, SLWTA and sign, every rule that accepts the unit; the table gives the test error and
  ‖W¹‖ after training (0.00 = never moved).
- ``stochastic``: stochastic networks, MNIST 3×256: stochastic binary units (LRA-E; the others
  need f′) and SLWTA units (every rule; f′ is the sampled winner's mask).
- ``grid``: the talk's summary grid on MNIST 3×256 tanh: every rule × the output losses CNLL
  (``ce``), MSE and MAE × the optimizers SGD, Adam and RMSprop, each at one untuned rate
  (``GRID_RATES``), so read it as "trains or not", not as a ranking.
- ``autoencode``: MNIST autoencoders 784-256-64-256-784 (tanh, sigmoid outputs; ``tncn
  autoencode``), every rule × the reconstruction losses binary cross-entropy (``ce``), MSE and
  MAE, at the rules' ``SETTINGS``: the test reconstruction loss (mean per image) and per-pixel
  squared error, against two controls, the mean training image and "readout only" (only the
  output layer trained, on the frozen random encoder and decoder); the picture puts test digits
  above every rule's reconstructions.

Every run is ``tncn classify`` (``tncn autoencode`` for the autoencoders; called in-process) with
the settings of ``SETTINGS``; its folder
under ``--out`` (result.json, model.pt) is kept, and a run whose result.json exists is not
repeated, so an interrupted comparison resumes and the tables can be rebuilt from the stored
runs. Protocol (``PROTOCOL``): the 60k training images split 55k/5k into train/validation (split
seed 0), the 10k test images, pixels in [0, 1] (centred for two-valued units, ``tncn classify``'s
per-activation default), batch 50, ``--epochs`` epochs with a cosine learning-rate schedule,
weights N(0, 1/fan-in), zero biases; test error of the final weights, mean ± sd over ``--seeds``.

Measured for docs/learners.md on a 2-core x86_64 CPU machine (torch 2.13 CPU), two single-thread
processes side by side, then the tables and pictures from the stored runs::

    OMP_NUM_THREADS=1 python scripts/compare_rules.py --part deep --seeds 0 --data mnist &
    OMP_NUM_THREADS=1 python scripts/compare_rules.py --part deep --seeds 0 --data fashion-mnist &
    wait   # (and the other parts and seeds likewise)
    python scripts/compare_rules.py --part deep --seeds 0 1 --docs docs

The autoencoders, one process at a time (about 20 minutes on that machine)::

    OMP_NUM_THREADS=1 python scripts/compare_rules.py --part autoencode --epochs 5 --seeds 0 --docs docs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sequences import images  # noqa: E402
from tncn.cli import main as tncn_main  # noqa: E402
from tncn.commands.classify import BY_ACTIVATION  # noqa: E402
from tncn.commands.autoencode import pictured  # noqa: E402
from tncn.diagnostics import draw_embedding, filter_grid, save_reconstructions, top_hidden  # noqa: E402
from tncn.learners import LEARNERS  # noqa: E402
from tncn.losses import RECONSTRUCTION_LOSSES  # noqa: E402
from tncn.mlp import MLP, error_rate, reconstruction_error  # noqa: E402

RULES = ["bp", "fa", "dfa", "lra-e", "lra", "dtp", "dtp-sigma"]
LOCAL = ["fa", "dfa", "lra-e", "lra", "dtp", "dtp-sigma"]  # the rules whose angles to bp are drawn
DISCREPANCY = ["lra-e", "lra", "dtp", "dtp-sigma"]
DATA = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
NETWORKS = {"3x256": [256] * 3, "8x256": [256] * 8, "8x64": [64] * 8}
NULL_UNITS = ["tanh", "relu6", "lwta", "slwta", "sign"]
STOCHASTIC_UNITS = ["stochastic_binary", "slwta"]
PROTOCOL = ["--batch-size", "50", "--schedule", "cosine", "--valid", "5000", "--split-seed", "0"]

OPTIMIZER = ["--optimizer", "adam", "--lr", "1e-3"]  # every rule on units with a scale
SETTINGS = {
    # rule -> its own options (every unit but the two-valued ones)
    "bp": [], "fa": [], "dfa": [],
    # E ~ N(0, 1/256), on the scale of the Wᵀ it stands in for. In tanh networks each layer's local
    # error is about β times the one above, so with the paper's β = 0.1 the first layer of the
    # 8-layer net gets updates near 1e-12, below Adam's eps: β = 0.3 keeps them alive (chosen on
    # MNIST validation error).
    "lra-e": ["--beta", "0.3"],
    "lra": [],  # Cauchy loss, σ_E = 1, β = 0.03, K = 1
    "dtp": [],  # η̂ = 0.1 per example, fixed σ = 0.36
    "dtp-sigma": [],  # σ = 0.5·std(lower layer)
}
TWO_VALUED = {"lra-e": []}  # the rules for two-valued units, at tncn classify's per-activation defaults
ABSOLUTE = ["--target-scale", "absolute", "--lr", "1e-3", "--beta", "0.1"]  # LRA-E's sign defaults before them
READOUT_LR = 1e-3
GRID_RATES = {"sgd": "0.05", "adam": "1e-3", "rmsprop": "3e-4"}
LOSSES = ["ce", "mse", "mae"]
AUTOENCODER = [256, 64, 256]  # encoder and decoder widths of the autoencoders
AE_LOSSES = ["ce", "mse", "mae"]  # reconstruction losses: binary cross-entropy per pixel, MSE, MAE


def settings(rule: str, act: str) -> list[str]:
    return TWO_VALUED[rule] if act in BY_ACTIVATION else OPTIMIZER + SETTINGS[rule]


def accepts(rule: str, act: str) -> bool:
    """Whether ``rule`` trains ``act`` units (two-valued ones: only the rules of ``TWO_VALUED``)."""
    return act not in BY_ACTIVATION or rule in TWO_VALUED


def run_name(data, net, act, rule, seed, init="normal", tag=None):
    tail = "" if init == "normal" else f"_{init}"
    return f"{data}_{net}_{act}_{rule}_s{seed}{tail}" + (f"_{tag}" if tag is not None else "")


def classify(data, net, act, rule, seed, epochs, out: Path, root, init="normal", tag=None, flags=None) -> dict:
    """One ``tncn classify`` run (or its stored result), in its own folder under ``out``; ``flags``
    replace the rule's ``SETTINGS`` (and ``tag`` names the run apart)."""
    folder = out / run_name(data, net, act, rule, seed, init, tag)
    if not (folder / "result.json").exists():
        argv = ["classify", "--rule", rule, "--data", data, "--hidden", ",".join(map(str, NETWORKS[net])),
                "--activation", act, "--epochs", str(epochs), "--seed", str(seed), "--init", init, "--no-progress",
                "--out", str(folder), "--force", *PROTOCOL, *(flags if flags is not None else settings(rule, act))]
        if root:
            argv += ["--data-root", str(root)]
        if act == "tanh" and init == "normal" and tag is None and rule != "bp":
            argv += ["--angles", "50"]
        print("tncn " + " ".join(argv), flush=True)
        if tncn_main(argv) != 0:
            raise SystemExit(f"run failed: {' '.join(argv)}")
    return dict(json.loads((folder / "result.json").read_text()), folder=str(folder))


def readout_only(data, net, act, seed, epochs, out: Path, root) -> dict:
    """The control: only the softmax layer trains (Adam), on the frozen initial hidden layers."""
    path = out / (run_name(data, net, act, "readout", seed) + ".json")
    if path.exists():
        return json.loads(path.read_text())
    d = images.load(data, root=root, valid=5000, seed=0)
    if BY_ACTIVATION.get(act, {}).get("center"):
        d = d.centered()
    gen = torch.Generator().manual_seed(seed)
    mlp = MLP([d.train[0].shape[1], *NETWORKS[net], d.n_classes], activation=act, generator=gen)
    seconds = _fit_readout(mlp, d.train[0], d.train[1], epochs, gen)
    result = dict(rule="readout", data=data, hidden=NETWORKS[net], activation=act, epochs=epochs, seed=seed,
                  test_error=error_rate(mlp, *d.test), valid_error=error_rate(mlp, *d.valid),
                  train_seconds=seconds, curve=[])
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _fit_readout(mlp: MLP, x, targets, epochs: int, gen) -> float:
    """Train only ``mlp``'s output layer, by Adam on the exact gradient of ``mlp.loss``, on the
    frozen initial hidden layers (batches of 50, cosine schedule); return the seconds it took."""
    with torch.no_grad():
        feats = top_hidden(mlp, x)
    top = mlp.layers[-1]
    opt = torch.optim.Adam(top.parameters(), lr=READOUT_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(feats), generator=gen)
        for i in range(0, len(feats), 50):
            idx = order[i:i + 50]
            value = mlp.loss.value(top.pre(feats[idx]), targets[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
        sched.step()
    return time.perf_counter() - start


def cell(results) -> str:
    errs = [100 * r["test_error"] for r in results]
    if len(errs) == 1:
        return f"{errs[0]:.2f}"
    return f"{statistics.mean(errs):.2f} ± {statistics.stdev(errs):.2f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _net_label(net: str) -> str:
    return net.replace("x", "×")


# --------------------------------------------------------------------------- part (a): deep and thin

def deep(args) -> dict:
    results = {}
    for seed in args.seeds:
        for data in args.data:
            for net in NETWORKS:
                for rule in RULES:
                    results[(data, net, "tanh", rule, seed)] = classify(
                        data, net, "tanh", rule, seed, args.epochs, args.out, args.data_root)
                results[(data, net, "tanh", "readout", seed)] = readout_only(
                    data, net, "tanh", seed, args.epochs, args.out, args.data_root)
                if net != "8x64":
                    results[(data, net, "sign", "lra-e", seed)] = classify(
                        data, net, "sign", "lra-e", seed, args.epochs, args.out, args.data_root)
                    results[(data, net, "sign", "lra-e absolute", seed)] = classify(
                        data, net, "sign", "lra-e", seed, args.epochs, args.out, args.data_root,
                        tag="absolute", flags=ABSOLUTE)
                    results[(data, net, "sign", "readout", seed)] = readout_only(
                        data, net, "sign", seed, args.epochs, args.out, args.data_root)
    return results


def deep_tables(results, args) -> str:
    seeds = args.seeds
    cols = [(d, n) for d in args.data for n in NETWORKS]
    head = ["rule"] + [f"{DATA[d]} {_net_label(n)}" for d, n in cols]
    rows = []
    for rule in RULES + ["readout"]:
        name = "readout only (control)" if rule == "readout" else rule
        rows.append([name] + [cell([results[(d, n, "tanh", rule, s)] for s in seeds]) for d, n in cols])
    sign_cols = [(d, n) for d in args.data for n in NETWORKS if n != "8x64"]
    sign_rows = [[name] + [cell([results[(d, n, "sign", rule, s)] for s in seeds]) for d, n in sign_cols]
                 for rule, name in (("lra-e", "lra-e"), ("lra-e absolute", f"lra-e `{' '.join(ABSOLUTE)}`"),
                                    ("readout", "readout only (control)"))]
    sec_rows = [[rule] + [f"{statistics.mean(results[(d, n, 'tanh', rule, s)]['train_seconds'] / args.epochs for s in seeds):.1f}"
                          for d, n in cols] for rule in RULES]
    text = (f"Test error (%) after {args.epochs} epochs, tanh units, mean ± sd over seeds "
            f"{', '.join(map(str, seeds))} (`scripts/compare_rules.py --part deep`):\n\n" + _table(head, rows)
            + "\n\nSign units (LRA-E at `tncn classify`'s sign defaults: centred inputs, Adam 2e-3, relative "
              "targets; the other rules need f′):\n\n"
            + _table(["rule"] + [f"{DATA[d]} {_net_label(n)} sign" for d, n in sign_cols], sign_rows)
            + "\n\nTraining seconds per epoch (one thread per run, two runs side by side on 2 cores):\n\n"
            + _table(head, sec_rows) + "\n")
    settings_text = "\n".join(f"- {rule}: `{' '.join(OPTIMIZER + opts)}`" for rule, opts in SETTINGS.items())
    return text + (f"\nCommon protocol: `{' '.join(PROTOCOL)}`; per-rule settings (tanh):\n\n{settings_text}\n")


def angle_plot(results, seed, path: Path) -> None:
    from matplotlib.figure import Figure

    nets = [n for n in NETWORKS if ("mnist", n, "tanh", LOCAL[0], seed) in results]
    fig = Figure(figsize=(3.0 * len(LOCAL), 2.8 * len(nets)))
    axes = fig.subplots(len(nets), len(LOCAL), sharey=True, squeeze=False)
    for r, net in enumerate(nets):
        for c, rule in enumerate(LOCAL):
            ax = axes[r][c]
            curve = results[("mnist", net, "tanh", rule, seed)]["curve"]
            epochs = [p["epoch"] for p in curve]
            n_layers = len(curve[0]["angles"]) - 1  # the output layer's update is backprop's for every rule
            for layer in range(n_layers):
                ax.plot(epochs, [p["angles"][layer] for p in curve], marker="o", ms=2,
                        color=_shade(layer, n_layers), label=f"W{layer + 1}")
            ax.axhline(90, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0, 100)
            ax.set_title(f"{rule}, {_net_label(net)}", fontsize=9)
            ax.set_xlabel("epoch")
            if c == 0:
                ax.set_ylabel("angle to backprop (°)")
        axes[r][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Angle between each hidden layer's update and the backprop gradient on the same batch "
                 f"(MNIST, tanh, mean per epoch, seed {seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def discrepancy_plot(results, seed, path: Path) -> None:
    from matplotlib.figure import Figure

    nets = list(NETWORKS)
    fig = Figure(figsize=(4.2 * len(nets), 3.4))
    axes = fig.subplots(1, len(nets), squeeze=False)[0]
    for ax, net in zip(axes, nets):
        for rule in DISCREPANCY:
            curve = results[("mnist", net, "tanh", rule, seed)]["curve"]
            ax.plot([p["epoch"] for p in curve], [p["discrepancy"] for p in curve], marker="o", ms=3, label=rule)
        ax.set_yscale("log")
        ax.set_title(f"MNIST {_net_label(net)} tanh", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("total discrepancy (mean per example)")
    axes[-1].legend(fontsize=8)
    fig.suptitle("Total local discrepancy per epoch: LRA-E Σ‖h − y‖², LRA Σ log(1 + (h − z)²), DTP Σ‖h − ĥ‖²",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _trained_net(result: dict, data: images.ImageData) -> MLP:
    saved = torch.load(Path(result["folder"]) / "model.pt", weights_only=True)
    net = MLP([data.train[0].shape[1], *result["hidden"], data.n_classes], activation=result["activation"])
    net.load_state_dict({k[len("net."):]: v for k, v in saved["state_dict"].items() if k.startswith("net.")})
    return net


def embedding_plot(results, seed, net_name, path: Path, root) -> None:
    from matplotlib.figure import Figure

    data = images.load("mnist", root=root, valid=5000, seed=0)
    x, y = data.test[0][:3000], data.test[1][:3000]
    fig = Figure(figsize=(3.0 * len(RULES), 3.2))
    axes = fig.subplots(1, len(RULES))
    for ax, rule in zip(axes, RULES):
        result = results[("mnist", net_name, "tanh", rule, seed)]
        draw_embedding(ax, _trained_net(result, data), x, y, legend=False)
        ax.set_title(f"{rule} ({100 * result['test_error']:.2f} %)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Topmost hidden layer on 3,000 MNIST test images, PCA to 2-D, coloured by class "
                 f"({_net_label(net_name)} tanh, seed {seed}; test error in brackets)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _shade(layer, n):
    from matplotlib import colormaps

    return colormaps["viridis"](layer / max(n - 1, 1))


# --------------------------------------------------------------------------- part: filters after one pass

def filters(args) -> str:
    from matplotlib.figure import Figure

    seed = args.seeds[0]
    fig = Figure(figsize=(2.6 * len(RULES), 2.9))
    axes = fig.subplots(1, len(RULES))
    rows = []
    for ax, rule in zip(axes, RULES):
        r = classify("mnist", "3x256", "tanh", rule, seed, 1, args.out, args.data_root, tag="e1")
        saved = torch.load(Path(r["folder"]) / "model.pt", weights_only=True)
        ax.imshow(filter_grid(saved["state_dict"]["net.layers.0.weight"], (28, 28), count=36), cmap="gray",
                  vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{rule} ({100 * r['test_error']:.1f} %)", fontsize=9)
        rows.append([rule, f"{100 * r['test_error']:.2f}"])
    fig.suptitle(f"First-layer filters (first 36 units) after one pass over MNIST (3×256 tanh, seed {seed}; "
                 "test error in brackets)", fontsize=9)
    fig.tight_layout()
    if args.docs:
        fig.savefig(args.docs / "learners_filters.png", dpi=80)
    return "Test error (%) after one epoch (MNIST 3×256 tanh):\n\n" + _table(["rule", "test error"], rows) + "\n"


# --------------------------------------------------------------------------- parts (b), (c)

def _norm_w1(result) -> float:
    saved = torch.load(Path(result["folder"]) / "model.pt", weights_only=True)
    return saved["state_dict"]["net.layers.0.weight"].norm().item()


def unit_table(args, units, init, title) -> str:
    seeds = args.seeds
    rows = []
    for rule in RULES:
        row = [rule]
        for act in units:
            if not accepts(rule, act):
                row.append("needs f′" if LEARNERS[rule].needs_derivative else "—")
                continue
            runs = [classify("mnist", "3x256", act, rule, s, args.epochs, args.out, args.data_root, init=init)
                    for s in seeds]
            norm = f" (‖W¹‖ {statistics.mean(_norm_w1(r) for r in runs):.1f})" if init == "zeros" else ""
            row.append(cell(runs) + norm)
        rows.append(row)
    return (f"{title}, MNIST 3×256, test error (%) after {args.epochs} epochs, seeds {', '.join(map(str, seeds))} "
            f"(`scripts/compare_rules.py --part {args.part}`):\n\n" + _table(["rule"] + units, rows) + "\n")


def grid(args) -> str:
    seeds = args.seeds
    cols = [(loss, opt) for loss in LOSSES for opt in GRID_RATES]
    rows = []
    for rule in RULES:
        row = [rule]
        for loss, opt in cols:
            flags = ["--loss", loss, "--optimizer", opt, "--lr", GRID_RATES[opt], *SETTINGS[rule]]
            row.append(cell([classify("mnist", "3x256", "tanh", rule, s, args.epochs, args.out, args.data_root,
                                      tag=f"{loss}_{opt}_e{args.epochs}", flags=flags) for s in seeds]))
        rows.append(row)
    rates = ", ".join(f"{o} {r}" for o, r in GRID_RATES.items())
    return (f"Summary grid, MNIST 3×256 tanh, test error (%) after {args.epochs} epochs, seeds "
            f"{', '.join(map(str, seeds))}, one untuned rate per optimizer ({rates}; "
            f"`scripts/compare_rules.py --part grid`):\n\n"
            + _table(["rule"] + [f"{loss} {opt}" for loss, opt in cols], rows) + "\n")


# --------------------------------------------------------------------------- part: autoencoders

def _ae_name(data, rule, loss, seed, epochs) -> str:
    return run_name(data, "ae" + "-".join(map(str, AUTOENCODER)), "tanh", rule, seed, tag=f"{loss}_e{epochs}")


def autoencode_run(data, rule, loss, seed, epochs, out: Path, root) -> dict:
    """One ``tncn autoencode`` run (or its stored result) at the rule's ``SETTINGS``."""
    folder = out / _ae_name(data, rule, loss, seed, epochs)
    if not (folder / "result.json").exists():
        argv = ["autoencode", "--rule", rule, "--data", data, "--hidden", ",".join(map(str, AUTOENCODER)),
                "--activation", "tanh", "--loss", loss, "--epochs", str(epochs), "--seed", str(seed), "--no-progress",
                "--out", str(folder), "--force", *PROTOCOL, *OPTIMIZER, *SETTINGS[rule]]
        if root:
            argv += ["--data-root", str(root)]
        print("tncn " + " ".join(argv), flush=True)
        if tncn_main(argv) != 0:
            raise SystemExit(f"run failed: {' '.join(argv)}")
    return dict(json.loads((folder / "result.json").read_text()), folder=str(folder))


def autoencoder_readout_only(data, loss_name, seed, epochs, out: Path, root) -> dict:
    """The control: only the output layer trains (Adam, the exact gradient of the reconstruction
    loss) on the frozen initial encoder and decoder; batches and schedule as the rules'."""
    path = out / (_ae_name(data, "readout", loss_name, seed, epochs) + ".json")
    if path.exists():
        return json.loads(path.read_text())
    d = images.load(data, root=root, valid=5000, seed=0)
    loss = RECONSTRUCTION_LOSSES[loss_name]
    gen = torch.Generator().manual_seed(seed)
    n_in = d.train[0].shape[1]
    mlp = MLP([n_in, *AUTOENCODER, n_in], activation="tanh", generator=gen, loss=loss)
    seconds = _fit_readout(mlp, d.train[0], d.train[0], epochs, gen)
    test = reconstruction_error(mlp, d.test[0], d.test[0], loss)
    result = dict(rule="readout", data=data, hidden=AUTOENCODER, loss=loss_name, epochs=epochs, seed=seed,
                  test_loss=test["loss"], test_pixel_mse=test["pixel_mse"],
                  train_seconds=seconds, curve=[])
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _trained_autoencoder(result: dict, n_in: int) -> MLP:
    saved = torch.load(Path(result["folder"]) / "model.pt", weights_only=True)
    net = MLP([n_in, *result["hidden"], n_in], activation=result["activation"], loss=RECONSTRUCTION_LOSSES[result["loss"]])
    net.load_state_dict({k[len("net."):]: v for k, v in saved["state_dict"].items() if k.startswith("net.")})
    return net


def _ae_cell(results, key: str, digits: int) -> str:
    values = [r[key] for r in results]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def autoencoder_curves(runs, readout, seed, path: Path) -> None:
    """Per loss, every rule's validation pixel MSE per epoch, with the two controls' test values."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(AE_LOSSES), 3.6))
    axes = fig.subplots(1, len(AE_LOSSES), squeeze=False)[0]
    for ax, loss in zip(axes, AE_LOSSES):
        for rule in RULES:
            curve = runs[(rule, loss, seed)]["curve"]
            ax.plot([p["epoch"] for p in curve], [p["valid_pixel_mse"] for p in curve], marker="o", ms=3, label=rule)
        ax.axhline(readout[(loss, seed)]["test_pixel_mse"], color="grey", ls="--", lw=1, label="readout only")
        ax.axhline(runs[(RULES[0], loss, seed)]["mean_image"]["pixel_mse"], color="black", ls=":", lw=1,
                   label="mean image")
        ax.set_yscale("log")
        ax.set_title(f"loss {loss}", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("validation pixel MSE")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Autoencoders 784-" + "-".join(map(str, AUTOENCODER)) + "-784 on MNIST: validation pixel MSE per "
                 f"epoch (controls: their test values; seed {seed})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def autoencoders(args) -> str:
    seeds, data = args.seeds, args.data[0]
    runs = {(rule, loss, s): autoencode_run(data, rule, loss, s, args.epochs, args.out, args.data_root)
            for loss in AE_LOSSES for rule in RULES for s in seeds}
    readout = {(loss, s): autoencoder_readout_only(data, loss, s, args.epochs, args.out, args.data_root)
               for loss in AE_LOSSES for s in seeds}
    head = ["rule"] + [f"{loss} {what}" for loss in AE_LOSSES for what in ("loss", "pixel MSE")]
    rows = []
    for rule in RULES:
        rows.append([rule] + [_ae_cell([runs[(rule, loss, s)] for s in seeds], key, d) for loss in AE_LOSSES
                              for key, d in (("test_loss", 2), ("test_pixel_mse", 4))])
    rows.append(["readout only (control)"] + [_ae_cell([readout[(loss, s)] for s in seeds], key, d)
                                              for loss in AE_LOSSES for key, d in (("test_loss", 2), ("test_pixel_mse", 4))])
    mean = {loss: runs[(RULES[0], loss, seeds[0])]["mean_image"] for loss in AE_LOSSES}
    rows.append(["mean training image (control)"] + [f"{mean[loss][key]:.{d}f}" for loss in AE_LOSSES
                                                     for key, d in (("loss", 2), ("pixel_mse", 4))])
    sec_rows = [[rule] + [f"{statistics.mean(runs[(rule, loss, s)]['train_seconds'] / args.epochs for s in seeds):.1f}"
                          for loss in AE_LOSSES] for rule in RULES]
    d = images.load(data, root=args.data_root, valid=5000, seed=0)
    n_in = d.train[0].shape[1]
    norms = [[rule] + [f"{_trained_autoencoder(runs[(rule, loss, seeds[0])], n_in).layers[0].weight.norm():.1f}"
                       for loss in AE_LOSSES] for rule in RULES]
    initial = MLP([n_in, *AUTOENCODER, n_in], generator=torch.Generator().manual_seed(seeds[0])).layers[0].weight
    norms.append(["initial weights"] + [f"{initial.norm():.1f}"] * len(AE_LOSSES))
    widths = "-".join(map(str, AUTOENCODER))
    settings_text = "\n".join(f"- {rule}: `{' '.join(OPTIMIZER + SETTINGS[rule])}`" for rule in RULES)
    text = (f"Autoencoders 784-{widths}-784 (tanh, sigmoid outputs), {DATA[data]}, test reconstruction error after "
            f"{args.epochs} epochs, seeds {', '.join(map(str, seeds))} (`scripts/compare_rules.py --part autoencode "
            f"--epochs {args.epochs}`): per reconstruction loss, the loss (mean per test image: binary cross-entropy "
            "summed over the pixels, ½ Σ squared error, Σ absolute error) and the per-pixel squared error "
            "(x̂ − x)² (mean over pixels and images, comparable across losses):\n\n" + _table(head, rows)
            + "\n\nTraining seconds per epoch (one thread, one run at a time on a shared 2-core machine):\n\n"
            + _table(["rule"] + AE_LOSSES, sec_rows)
            + f"\n\nThe norm of the first layer's weights ‖W¹‖ after training (seed {seeds[0]}):\n\n"
            + _table(["rule"] + AE_LOSSES, norms)
            + f"\n\nCommon protocol: `{' '.join(PROTOCOL)}`, `--hidden {','.join(map(str, AUTOENCODER))}`; "
              f"per-rule settings (those of the classifiers):\n\n{settings_text}\n")
    if args.docs:
        autoencoder_curves(runs, readout, seeds[0], args.docs / "learners_autoencode_curves.png")
        picks = pictured(d.test[1])
        x = d.test[0][picks]
        loss = AE_LOSSES[0]
        with torch.no_grad():
            shown = [_trained_autoencoder(runs[(rule, loss, seeds[0])], n_in)(x) for rule in RULES]
        labels = ["test images"] + [f"{rule} ({runs[(rule, loss, seeds[0])]['test_pixel_mse']:.4f})" for rule in RULES]
        save_reconstructions(x, shown, args.docs / "learners_autoencode.png",
                             f"{DATA[data]} test digits and their reconstructions, autoencoders 784-{widths}-784 tanh, "
                             f"loss {loss}, {args.epochs} epochs, seed {seeds[0]} (test pixel MSE in brackets)",
                             shape=d.shape, labels=labels)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["deep", "filters", "null", "stochastic", "grid", "autoencode"], default="deep")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--data-root", type=Path, help="folder holding mnist/ and fashion_mnist/ "
                                                  "(default $TNCN_DATA, else ~/.cache/tncn)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "compare")
    p.add_argument("--docs", type=Path, help="write the part's table (markdown) and pictures into this folder")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
    if args.part == "deep":
        results = deep(args)
        text = deep_tables(results, args)
        if args.docs and "mnist" in args.data:
            angle_plot(results, args.seeds[0], args.docs / "learners_angles.png")
            discrepancy_plot(results, args.seeds[0], args.docs / "learners_discrepancy.png")
            embedding_plot(results, args.seeds[0], "3x256", args.docs / "learners_embedding.png", args.data_root)
        name = "learners_table.md"
    elif args.part == "filters":
        text, name = filters(args), "learners_one_pass.md"
    elif args.part == "grid":
        text, name = grid(args), "learners_grid.md"
    elif args.part == "autoencode":
        text, name = autoencoders(args), "learners_autoencode.md"
    elif args.part == "null":
        text = unit_table(args, NULL_UNITS, "zeros", "All weights initialised to zero")
        name = "learners_null_init.md"
    else:
        text = unit_table(args, STOCHASTIC_UNITS, "normal", "Stochastic units")
        name = "learners_stochastic.md"
    print(text)
    if args.docs:
        (args.docs / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
