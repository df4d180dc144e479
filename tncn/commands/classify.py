"""``tncn classify``: train a feedforward classifier with one learning rule and report its test error.

The rules (``tncn.learners``: backprop, FA, DFA, LRA-E and LRA of Ororbia et al., DTP of Lee et
al., RBMs trained by contrastive divergence with a readout) train the same ``tncn.mlp.MLP``, so ``--rule`` swaps one word. Per epoch: a progress bar,
the training loss, the validation error and optionally the angle of each layer's update to the
backprop gradient, and the rule's total local discrepancy where it has one; at the end the test
error. ``--json`` writes the result with the per-epoch curve; ``--out DIR`` writes result.json,
filters.png, embedding.png (the topmost hidden layer on the test set, by PCA), for the RBM
reconstructions.png (test images and their one-step Gibbs reconstructions), and model.pt (a
``tncn.checkpoint`` of kind ``classifier`` holding the result and the learner's state_dict) there.

Defaults chosen per activation (``BY_ACTIVATION``): two-valued units (sign, step, stochastic
binary) see centred images (the mean training image subtracted) and train at Adam 2e-3; on raw
non-negative pixels their networks stall (LRA-E, MNIST 3×256 sign: 88.5 % validation error after
one epoch raw, 13.5 % centred at 2e-3 with its relative targets).

Under ``torchrun --nproc_per_node=N -m tncn classify ...`` the N processes train one run with
exact data parallelism (``tncn.distributed``, which lists the rules it is exact for): the same
global batches on every rank, each rank stepping on its B/N rows (``--batch-size`` must be a
multiple of N), one SUM all-reduce of the row-weighted updates per step. Every rank validates;
rank 0 alone prints, tests and writes ``--json``, ``--out``, ``--filters`` and ``--embedding``,
and the result records ``world_size`` (EP's and CHL's relaxation measures are rank 0's
shard's). Bad input is one line from rank 0 and every rank exits 2.

Example::

    tncn classify --rule lra-e --data mnist --hidden 256,256,256 --activation tanh --epochs 10 \\
        --angles 50 --json runs/lra-e.json
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from tncn import checkpoint, distributed, files
from tncn.commands import flags
from tncn.errors import UserError
from tncn.layers import ACTIVATIONS, INITIALISERS, two_valued_activations
from tncn.losses import LOSSES
from tncn.optim import optimizer_options
from tncn.options import FLOAT, INT, WIDTHS, Option, OptionError, non_negative, optional, positive

DEFAULTS = {"batch_size": 50}
"""Shared flags whose default differs here: the protocol of scripts/compare_rules.py."""
OPTIMIZER = optimizer_options("adam", 1e-3)
BY_ACTIVATION = {a: {"center": True, "lr": 2e-3} for a in two_valued_activations()}
"""Defaults that differ by hidden activation (flags given on the command line win): two-valued
units see centred images (on raw non-negative pixels their networks stall) and a larger rate."""


OWN = (
    Option("valid", INT, 5000, "training examples held out for validation", check=non_negative),
    Option("split_seed", INT, 0, "seed of the train/validation split"),
    Option("limit", optional(INT), None, "train on only this many examples (quick runs)", check=positive),
    Option("hidden", WIDTHS, [256, 256, 256], "hidden widths"),
    Option("init_std", optional(FLOAT), None, "standard deviation of the initial weights (none: 1/sqrt(fan-in))",
           check=positive),
    Option("epochs", INT, 10, "passes over the training set", check=positive),
    Option("angles", INT, 0, "measure the angle of each layer's update to the backprop gradient every N steps "
                             "(0: off)", check=non_negative),
)
"""The command's own numeric options, read and checked like a learner's."""


def image_parser(subparsers, name: str, help: str, description: str, outputs: str):
    """The parser of a command that trains one rule on an image set (``classify``, ``autoencode``):
    the shared data, batch, seed, device and output flags, ``--rule`` and ``--data``."""
    from tncn import learners

    p = subparsers.add_parser(
        name, help=help,
        description=f"{description} tncn {name} --rule NAME --help lists the rule's own options.",
        parents=[flags.parent("data_root", "batch_size", "seed", "device", defaults=DEFAULTS, helps={
                     "batch_size": "examples per update",
                     "seed": "seed of the weights, feedback matrices and batch order"}),
                 flags.outputs(outputs)],
    )
    p.add_argument("--rule", required=True, choices=list(learners.LEARNERS), help="the learning rule")
    p.add_argument("--data", default="mnist",
                   help="mnist, fashion-mnist, notmnist, a folder of IDX files, or hf:NAME (default mnist)")
    return p


def register(subparsers, argv=None) -> None:
    from tncn import learners

    rule = flags.peek(argv, "--rule").rule
    cls = learners.LEARNERS.get(rule)
    rules = ", ".join(learners.LEARNERS)
    p = image_parser(subparsers, "classify", f"train a feedforward classifier with one learning rule ({rules})",
                     f"Train a feedforward classifier with one learning rule ({rules}) and report its test error; "
                     "the defaults are the protocol of scripts/compare_rules.py.",
                     "write result.json, filters.png, embedding.png (rbm: reconstructions.png) and model.pt here")
    two_valued = ", ".join(BY_ACTIVATION)
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=None,
                   help=f"subtract the mean training image from every image (default: on for {two_valued} units, "
                        "off otherwise)")
    p.add_argument("--activation",
                   help=f"hidden activation: {', '.join(a for a in ACTIVATIONS if a != 'softmax')} "
                        "(lwta:K, slwta:K for blocks of K units; default tanh, or the one the rule trains: "
                        "sigmoid for rbm)")
    p.add_argument("--loss", choices=list(LOSSES),
                   help="output loss: " + "; ".join(f"{n}, {l.help}" for n, l in LOSSES.items())
                        + " (ce; ep and chl minimise their own cost)")
    p.add_argument("--init", default="normal", help=f"weight initialiser: {', '.join(INITIALISERS)} (normal)")
    flags.add(p, OWN)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                   help="learning-rate schedule over the epochs: cosine annealing to 0, or constant (cosine)")
    flags.add(p.add_argument_group("optimizer", f"(with Adam, {two_valued} units default to lr 2e-3)"), OPTIMIZER)
    if cls is not None and cls.OPTIONS:
        flags.add(p.add_argument_group(f"rule {cls.name}"), cls.OPTIONS)
    p.add_argument("--filters", type=Path, metavar="PNG", help="write a grid of first-layer filters here")
    p.add_argument("--embedding", type=Path, metavar="PNG",
                   help="write the topmost hidden layer's activities on the test set here (PCA to 2-D, by class)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, rule_class=cls)


def trainer(args, new_net, rule_opts: dict, opt: dict, own: dict, seed: int, device):
    """The learner ``args.rule`` on the network ``new_net()`` builds, on ``device``, its optimizer
    (the rule's parameter groups) and the learning-rate schedule; a network or option the rule
    refuses, or ``--angles`` where backprop's gradient is no reference, is a ``UserError``."""
    from tncn import learners
    from tncn.optim import make_optimizer

    own_cost = args.rule_class.cost
    try:
        net = new_net()
        learner = learners.make(args.rule, net, seed=seed, **rule_opts).to(device)
        if own["angles"] and own_cost:
            raise ValueError(f"--angles compares with backprop's gradient of the feedforward network, which rule "
                             f"{args.rule} does not follow (it minimises {own_cost})")
        if own["angles"] and not net.act.differentiable:
            raise ValueError(f"--angles compares with backprop, which needs a differentiable activation, not {args.activation!r}")
        optimizer = make_optimizer(opt["optimizer"], learner.param_groups(opt["lr"]), opt["lr"], opt["momentum"],
                                   opt["weight_decay"])
    except ValueError as err:
        raise UserError(str(err)) from None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, own["epochs"]) if args.schedule == "cosine" else None
    return learner, optimizer, scheduler


def _prepare(args, group) -> tuple:
    """Every check the command makes before it trains; the data loaded and the learner built, as
    the tuple ``_run`` unpacks (built on every rank before the ranks agree that all went well)."""
    from sequences import images
    from tncn import runs
    from tncn.mlp import MLP

    args.activation = args.activation or args.rule_class.activation or "tanh"
    o = flags.read(args, "data_root", "batch_size", "seed", "device", defaults=DEFAULTS)
    by_activation = BY_ACTIVATION.get(args.activation, {})
    opt = flags.values(args, OPTIMIZER)
    given_opt = flags.given(args, OPTIMIZER)
    if "lr" in by_activation and "lr" not in given_opt and opt["optimizer"] == "adam":
        opt["lr"] = by_activation["lr"]
    rule_opts = flags.given(args, args.rule_class.OPTIONS)
    own_cost = args.rule_class.cost
    if own_cost and args.loss is not None:
        raise UserError(f"rule {args.rule} minimises its own cost ({own_cost}); --loss does not apply")
    args.loss = args.loss or "ce"
    own = flags.values(args, OWN)
    device = runs.resolve_device(distributed.device_name(o["device"], group))
    out = Path(args.out) if args.out else None
    if out is not None:
        flags.check_out(out, args.force)
    json_path, filters_path = flags.output_file(args.json, "--json"), flags.output_file(args.filters, "--filters")
    embedding_path = flags.output_file(args.embedding, "--embedding")
    center = by_activation.get("center", False) if args.center is None else args.center
    data = images.load(args.data, root=o["data_root"], valid=own["valid"], seed=own["split_seed"], limit=own["limit"])
    if center:
        data = data.centered()
    n_train = len(data.train[1])
    if o["batch_size"] > n_train:
        raise OptionError("batch_size", f"{{}} {o['batch_size']:,} is larger than the {n_train:,} training examples")
    if group is not None and o["batch_size"] % group.world:
        raise UserError(f"--batch-size {o['batch_size']} does not split over {group.world} processes: "
                        f"give a multiple of {group.world} (each rank trains batch-size / {group.world} rows)")
    gen = torch.Generator().manual_seed(o["seed"])
    torch.manual_seed(o["seed"])  # stochastic units at evaluation draw from the global generator
    learner, optimizer, scheduler = trainer(
        args, lambda: MLP([data.train[0].shape[1], *own["hidden"], data.n_classes], activation=args.activation,
                          init=args.init, std=own["init_std"], generator=gen, loss=args.loss),
        rule_opts, opt, own, o["seed"], device)
    try:
        learner.prepare(data.train[0].to(device))
    except ValueError as err:
        raise UserError(str(err)) from None
    return (o, opt, rule_opts, own, own_cost, device, out, json_path, filters_path, embedding_path, center, data, gen,
            learner, optimizer, scheduler)


def run(args) -> int:
    return distributed.launched(_run, args)


def _run(args, group) -> int:
    from tncn.diagnostics import save_embedding, save_filters, save_reconstructions
    from tncn.mlp import error_rate, fit

    setup, failure = distributed.attempt(_prepare, args, group)
    digest = distributed.fingerprint({k: v for k, v in vars(args).items()
                                      if isinstance(v, (str, int, float, bool, list, Path, type(None)))})
    distributed.agree(group, failure, digest)
    (o, opt, rule_opts, own, own_cost, device, out, json_path, filters_path, embedding_path, center, data, gen,
     learner, optimizer, scheduler) = setup
    main = group is None or group.main
    world = 1 if group is None else group.world
    net = learner.net
    data = data.to(device)
    sizes = data.sizes()
    if main:
        print(f"{args.rule} on {data.name} ({sizes['train']} train / {sizes['valid']} valid / {sizes['test']} test), "
              f"hidden {','.join(map(str, own['hidden']))} {args.activation}{', centred' if center else ''}, "
              f"loss {own_cost or args.loss}, {opt['optimizer']} lr {opt['lr']}, "
              f"{own['epochs']} epochs of batch {o['batch_size']} on {device}"
              + (f" x {world} processes" if world > 1 else ""))
    counts = torch.bincount(data.train[1].cpu(), minlength=data.n_classes)
    majority = float((data.valid[1].cpu() != counts.argmax()).float().mean()) if len(data.valid[1]) else None
    if group is not None:
        distributed.classify_start(learner, group)
    curve = fit(learner, optimizer, data.train, data.valid, own["epochs"], o["batch_size"], gen,
                scheduler=scheduler, angle_every=own["angles"],
                progress=False if args.no_progress or not main else None,
                log=tqdm.write if main else (lambda line: None), baseline=majority, group=group)
    if not main:  # rank 0 alone tests, prints and writes
        return 0
    test_error = error_rate(learner, *data.test)
    result = dict(
        rule=args.rule, data=data.name, hidden=own["hidden"], activation=args.activation,
        epochs=own["epochs"], **opt, schedule=args.schedule, batch_size=o["batch_size"], seed=o["seed"],
        init=args.init, init_std=own["init_std"], center=center, loss=args.loss, options=rule_opts,
        sizes=sizes, test_error=test_error, rule_measures=learner.measure(data.test[0]), valid_error=curve[-1]["valid_error"],
        train_seconds=sum(p["seconds"] for p in curve), curve=curve,
        device=str(device), world_size=world, torch=str(torch.__version__), machine=platform.machine(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    valid = "no validation split" if result["valid_error"] is None else f"valid {100 * result['valid_error']:.2f}%"
    print(f"test error {100 * test_error:.2f}% ({valid}), "
          f"{result['train_seconds']:.1f} s of training")
    title = f"{args.rule}, {data.name}, {','.join(map(str, own['hidden']))} {args.activation}: W1 filters"
    if filters_path:
        save_filters(net.layers[0].weight, filters_path, title, shape=data.shape)
    embed_title = f"{args.rule}, {data.name}, {','.join(map(str, own['hidden']))} {args.activation}: top hidden layer (test set)"
    if embedding_path:
        save_embedding(learner, *data.test, embedding_path, embed_title)
    if json_path:
        files.write_json(json_path, result, indent=1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files.write_json(out / "result.json", result, indent=1)
        save_filters(net.layers[0].weight, out / "filters.png", title, shape=data.shape)
        save_embedding(learner, *data.test, out / "embedding.png", embed_title)
        if hasattr(learner, "reconstruct"):  # the RBM: one Gibbs step from 20 test images
            shown = data.test[0][:20]
            save_reconstructions(shown, learner.reconstruct(shown), out / "reconstructions.png",
                                 f"{args.rule}, {data.name}: test images and p(v | h), h ~ p(h | v)",
                                 shape=data.shape, labels=["test images", "reconstructions"])
        checkpoint.save(out / "model.pt", {"result": result, "state_dict": learner.state_dict()}, "classifier")
    return 0
