"""``tncn classify``: train a feedforward classifier with one learning rule and report its test error.

The rules (backprop, FA, DFA, LRA-E of Ororbia & Mali, AAAI 2019, arXiv 1805.11703) train the same
``tncn.mlp.MLP``, so ``--rule`` swaps one word. Per epoch: a progress bar, the training loss, the
validation error and optionally the angle of each layer's update to the backprop gradient and
LRA-E's local discrepancy; at the end the test error. ``--json`` writes the result with the
per-epoch curve; ``--out DIR`` writes result.json, filters.png and model.pt (a ``tncn.checkpoint``
of kind ``classifier`` holding the result and the learner's state_dict) there.

Example::

    tncn classify --rule lra-e --data mnist --hidden 256,256,256 --activation tanh --epochs 10 \\
        --angles 50 --json runs/lra-e.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from tncn import checkpoint
from tncn.commands import flags
from tncn.errors import UserError
from tncn.layers import ACTIVATIONS, INITIALISERS
from tncn.optim import optimizer_options

DEFAULTS = {"batch_size": 50}
"""Shared flags whose default differs here: the protocol of scripts/compare_rules.py."""
OPTIMIZER = optimizer_options("adam", 1e-3)


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths such as 256,256,256, got {text!r}")
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected at least one positive width, got {text!r}")
    return sizes


def register(subparsers, argv=None) -> None:
    from tncn import learners

    rule = flags.peek(argv, "--rule").rule
    cls = learners.LEARNERS.get(rule)
    p = subparsers.add_parser(
        "classify",
        help="train a feedforward classifier with bp, fa, dfa or lra-e",
        description="Train a feedforward classifier with one learning rule (bp, fa, dfa, lra-e) "
                    "and report its test error; the defaults are the protocol of scripts/compare_rules.py. "
                    "tncn classify --rule NAME --help lists the rule's own options.",
        parents=[flags.parent("data_root", "batch_size", "seed", "device", defaults=DEFAULTS, helps={
                     "batch_size": "examples per update",
                     "seed": "seed of the weights, feedback matrices and batch order"}),
                 flags.outputs("write result.json, filters.png and model.pt here")],
    )
    p.add_argument("--rule", required=True, choices=list(learners.LEARNERS), help="the learning rule")
    p.add_argument("--data", default="mnist",
                   help="mnist, fashion-mnist, notmnist, a folder of IDX files, or hf:NAME (default mnist)")
    p.add_argument("--valid", type=int, default=5000, help="training examples held out for validation (5000)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split (0)")
    p.add_argument("--limit", type=int, help="train on only this many examples (quick runs)")
    p.add_argument("--center", action="store_true", help="subtract the mean training image from every image")
    p.add_argument("--hidden", type=_hidden, default=[256, 256, 256], help="hidden widths (256,256,256)")
    p.add_argument("--activation", default="tanh", help=f"hidden activation: {', '.join(a for a in ACTIVATIONS if a != 'softmax')}")
    p.add_argument("--init", default="normal", help=f"weight initialiser: {', '.join(INITIALISERS)} (normal)")
    p.add_argument("--init-std", type=float, help="standard deviation of the initial weights (1/sqrt(fan-in))")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set (10)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                   help="learning-rate schedule over the epochs: cosine annealing to 0, or constant (cosine)")
    flags.add(p.add_argument_group("optimizer"), OPTIMIZER)
    if cls is not None and cls.OPTIONS:
        flags.add(p.add_argument_group(f"rule {cls.name}"), cls.OPTIONS)
    p.add_argument("--angles", type=int, default=0, metavar="EVERY",
                   help="measure the angle of each layer's update to the backprop gradient every EVERY steps (0: off)")
    p.add_argument("--filters", type=Path, metavar="PNG", help="write a grid of first-layer filters here")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, rule_class=cls)


def run(args) -> int:
    from sequences import images
    from tncn import learners, runs
    from tncn.diagnostics import save_filters
    from tncn.mlp import MLP, error_rate, fit
    from tncn.optim import make_optimizer

    o = flags.read(args, "data_root", "batch_size", "seed", "device", defaults=DEFAULTS)
    opt = flags.values(args, OPTIMIZER)
    rule_opts = flags.given(args, args.rule_class.OPTIONS)
    device = runs.resolve_device(o["device"])
    if args.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {args.epochs}")
    if args.angles < 0:
        raise UserError(f"--angles must be 0 (off) or positive, got {args.angles}")
    out = Path(args.out) if args.out else None
    if out is not None:
        flags.check_out(out, args.force)
    data = images.load(args.data, root=o["data_root"], valid=args.valid, seed=args.split_seed, limit=args.limit)
    if args.center:
        data = data.centered()
    gen = torch.Generator().manual_seed(o["seed"])
    torch.manual_seed(o["seed"])  # stochastic units at evaluation draw from the global generator
    try:
        net = MLP([data.train[0].shape[1], *args.hidden, data.n_classes], activation=args.activation,
                  init=args.init, std=args.init_std, generator=gen)
        learner = learners.make(args.rule, net, seed=o["seed"], **rule_opts).to(device)
        if args.angles and not net.act.differentiable:
            raise ValueError(f"--angles compares with backprop, which needs a differentiable activation, not {args.activation!r}")
        optimizer = make_optimizer(opt["optimizer"], learner.parameters(), opt["lr"], opt["momentum"],
                                   opt["weight_decay"])
    except ValueError as err:
        raise UserError(str(err)) from None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs) if args.schedule == "cosine" else None
    data = data.to(device)
    sizes = data.sizes()
    print(f"{args.rule} on {data.name} ({sizes['train']} train / {sizes['valid']} valid / {sizes['test']} test), "
          f"hidden {','.join(map(str, args.hidden))} {args.activation}, {opt['optimizer']} lr {opt['lr']}, "
          f"{args.epochs} epochs of batch {o['batch_size']} on {device}")
    curve = fit(learner, optimizer, data.train, data.valid, args.epochs, o["batch_size"], gen,
                scheduler=scheduler, angle_every=args.angles, progress=False if args.no_progress else None)
    test_error = error_rate(net, *data.test)
    result = dict(
        rule=args.rule, data=data.name, hidden=args.hidden, activation=args.activation,
        epochs=args.epochs, **opt, schedule=args.schedule, batch_size=o["batch_size"], seed=o["seed"],
        init=args.init, init_std=args.init_std, center=args.center, options=rule_opts,
        sizes=sizes, test_error=test_error, valid_error=curve[-1]["valid_error"],
        train_seconds=sum(p["seconds"] for p in curve), curve=curve,
        device=str(device), torch=str(torch.__version__), machine=platform.machine(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    print(f"test error {100 * test_error:.2f}% (valid {100 * result['valid_error']:.2f}%), "
          f"{result['train_seconds']:.1f} s of training")
    title = f"{args.rule}, {data.name}, {','.join(map(str, args.hidden))} {args.activation}: W1 filters"
    if args.filters:
        save_filters(net.layers[0].weight, args.filters, title, shape=data.shape)
    if args.json:
        _write_json(args.json, result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "result.json", result)
        save_filters(net.layers[0].weight, out / "filters.png", title, shape=data.shape)
        checkpoint.save(out / "model.pt", {"result": result, "state_dict": learner.state_dict()}, "classifier")
    return 0


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
