"""``tncn classify``: train a feedforward classifier with one learning rule and report its test error.

The rules (backprop, FA, DFA, LRA-E of Ororbia & Mali, AAAI 2019, arXiv 1805.11703) train the same
``tncn.mlp.MLP``, so ``--rule`` swaps one word. Per epoch: a progress bar, the training loss, the
validation error and optionally the angle of each layer's update to the backprop gradient and
LRA-E's local discrepancy; at the end the test error. ``--json`` writes the result with the
per-epoch curve; ``--out DIR`` writes result.json, filters.png and model.pt (a state_dict) there.

Example::

    tncn classify --rule lra-e --data mnist --hidden 256,256,256 --activation tanh --epochs 10 \\
        --angles 50 --json runs/lra-e.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tncn.errors import UserError
from tncn.layers import ACTIVATIONS, INITIALISERS

RULE_OPTIONS = {
    "beta": "LRA-E: β, how far targets move from activities (0.1)",
    "gamma": "LRA-E: γ, the error-weight update factor, ∂E = γ ∂Wᵀ (1.0)",
    "e_std": "LRA-E: standard deviation of the initial error weights E (1/sqrt(width))",
    "feedback_std": "FA/DFA: standard deviation of the fixed feedback matrices B (1/sqrt(width))",
}


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths such as 256,256,256, got {text!r}")
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected at least one positive width, got {text!r}")
    return sizes


def register(subparsers) -> None:
    from tncn import learners
    from tncn.mlp import OPTIMIZERS

    p = subparsers.add_parser(
        "classify",
        help="train a feedforward classifier with bp, fa, dfa or lra-e",
        description="Train a feedforward classifier with one learning rule (bp, fa, dfa, lra-e) "
                    "and report its test error; the defaults are the protocol of scripts/compare_rules.py.",
    )
    p.add_argument("--rule", required=True, help=f"learning rule: {', '.join(learners.LEARNERS)}")
    p.add_argument("--data", default="mnist",
                   help="mnist, fashion-mnist, notmnist, a folder of IDX files, or hf:NAME (default mnist)")
    p.add_argument("--data-root", help="folder holding mnist/, fashion_mnist/, notmnist/ (default ../shared/data)")
    p.add_argument("--valid", type=int, default=5000, help="training examples held out for validation (5000)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split (0)")
    p.add_argument("--limit", type=int, help="train on only this many examples (quick runs)")
    p.add_argument("--center", action="store_true", help="subtract the mean training image from every image")
    p.add_argument("--hidden", type=_hidden, default=[256, 256, 256], help="hidden widths (256,256,256)")
    p.add_argument("--activation", default="tanh", help=f"hidden activation: {', '.join(a for a in ACTIVATIONS if a != 'softmax')}")
    p.add_argument("--init", default="normal", help=f"weight initialiser: {', '.join(INITIALISERS)} (normal)")
    p.add_argument("--init-std", type=float, help="standard deviation of the initial weights (1/sqrt(fan-in))")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set (10)")
    p.add_argument("--batch-size", type=int, default=50, help="examples per update (50)")
    p.add_argument("--optimizer", default="adam", help=f"{', '.join(OPTIMIZERS)} (adam)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                   help="learning-rate schedule over the epochs: cosine annealing to 0, or constant (cosine)")
    for opt, text in RULE_OPTIONS.items():
        p.add_argument("--" + opt.replace("_", "-"), type=float, help=text)
    p.add_argument("--fixed-e", action="store_true", help="LRA-E: keep the error weights E at their random draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, feedback matrices and batch order (0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--angles", type=int, default=0, metavar="EVERY",
                   help="measure the angle of each layer's update to the backprop gradient every EVERY steps (0: off)")
    p.add_argument("--filters", type=Path, metavar="PNG", help="write a grid of first-layer filters here")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON here")
    p.add_argument("--out", type=Path, metavar="DIR", help="write result.json, filters.png and model.pt here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}: give cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine (torch sees no GPU)")
    return torch.device(name)


def rule_options(args) -> dict:
    """The rule-specific options given on the command line, checked against the rule."""
    from tncn import learners

    opts = {k: getattr(args, k) for k in RULE_OPTIONS if getattr(args, k) is not None}
    if args.fixed_e:
        opts["learn_e"] = False
    if "seed" in learners.options(args.rule):
        opts["seed"] = args.seed
    return opts


def run(args) -> int:
    from sequences import images
    from tncn import learners
    from tncn.diagnostics import save_filters
    from tncn.mlp import MLP, error_rate, fit, make_optimizer

    device = _device(args.device)
    for name, value in [("--epochs", args.epochs), ("--batch-size", args.batch_size)]:
        if value <= 0:
            raise UserError(f"{name} must be positive, got {value}")
    if args.angles < 0:
        raise UserError(f"--angles must be 0 (off) or positive, got {args.angles}")
    if args.rule not in learners.LEARNERS:
        raise UserError(f"unknown rule {args.rule!r}; known: {', '.join(learners.LEARNERS)}")
    data = images.load(args.data, root=args.data_root, valid=args.valid, seed=args.split_seed, limit=args.limit)
    if args.center:
        data = data.centered()
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # stochastic units at evaluation draw from the global generator
    try:
        net = MLP([data.train[0].shape[1], *args.hidden, data.n_classes], activation=args.activation,
                  init=args.init, std=args.init_std, generator=gen)
        learner = learners.make(args.rule, net, **rule_options(args)).to(device)
        if args.angles and not net.act.differentiable:
            raise ValueError(f"--angles compares with backprop, which needs a differentiable activation, not {args.activation!r}")
        optimizer = make_optimizer(args.optimizer, learner.parameters(), args.lr)
    except ValueError as err:
        raise UserError(str(err)) from None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs) if args.schedule == "cosine" else None
    data = data.to(device)
    sizes = data.sizes()
    print(f"{args.rule} on {data.name} ({sizes['train']} train / {sizes['valid']} valid / {sizes['test']} test), "
          f"hidden {','.join(map(str, args.hidden))} {args.activation}, {args.optimizer} lr {args.lr}, "
          f"{args.epochs} epochs of batch {args.batch_size} on {device}")
    curve = fit(learner, optimizer, data.train, data.valid, args.epochs, args.batch_size, gen,
                scheduler=scheduler, angle_every=args.angles, progress=False if args.no_progress else None)
    test_error = error_rate(net, *data.test)
    result = dict(
        rule=args.rule, data=data.name, hidden=args.hidden, activation=args.activation,
        epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, schedule=args.schedule,
        batch_size=args.batch_size, seed=args.seed, init=args.init, init_std=args.init_std, center=args.center,
        options={k: v for k, v in rule_options(args).items() if k != "seed"},
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
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        _write_json(args.out / "result.json", result)
        save_filters(net.layers[0].weight, args.out / "filters.png", title, shape=data.shape)
        torch.save({"result": result, "state_dict": learner.state_dict()}, args.out / "model.pt")
    return 0


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
