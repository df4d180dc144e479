"""``tncn autoencode``: train an autoencoder with one learning rule and report its test reconstruction error.

An autoencoder here is the rules' ``tncn.mlp.MLP`` whose output layer reconstructs its input:
784-256-64-256-784 (``--hidden`` gives the encoder's and decoder's widths), sigmoid output units
for pixels in [0, 1], trained on a reconstruction loss (``tncn.losses.RECONSTRUCTION_LOSSES``:
the binary cross-entropy per pixel, MSE or MAE) whose target is the input itself. The rules that
send the output error down (``tncn.learners``: backprop, FA, DFA, LRA-E, LRA, DTP) train it as
they train a classifier; a rule trains autoencoders when its class declares the reconstruction
losses it knows (``reconstruction_losses``); the others (the RBM's contrastive divergence, whose
hidden layers never see the output error) are refused in one line.

Per epoch: a progress bar, the training loss, the validation reconstruction loss (the mean
per-image loss) and the per-pixel squared error (comparable across losses); at the end the same
two on the test set, next to those of the no-learning reconstruction by the mean training image
(the divergence guard's baseline). ``--json`` writes the result with the per-epoch curve;
``--out DIR`` writes result.json, reconstructions.png (test images above their reconstructions)
and model.pt (a ``tncn.checkpoint`` of kind ``autoencoder``: the result and the learner's
state_dict). Data, flags and per-activation defaults are ``tncn classify``'s: with
``--center`` the network sees the centred image and still reconstructs the raw one.

Example::

    tncn autoencode --rule dfa --data mnist --hidden 256,64,256 --epochs 5 --out runs/ae-dfa
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from tncn import checkpoint, files
from tncn.commands import classify, flags
from tncn.errors import UserError
from tncn.layers import ACTIVATIONS, INITIALISERS
from tncn.losses import RECONSTRUCTION_LOSSES
from tncn.options import OptionError

DEFAULT_LOSS = "ce"
"""The default reconstruction loss: the binary cross-entropy per pixel, which gave every rule but
backprop its lowest test pixel MSE on MNIST (backprop's was a little lower with mse;
docs/learners.md, "Autoencoders")."""
_SHARED = {o.name: o for o in classify.OWN}
OWN = (
    _SHARED["valid"], _SHARED["split_seed"], _SHARED["limit"],
    replace(_SHARED["hidden"], default=[256, 64, 256], help="hidden widths, encoder then decoder"),
    _SHARED["init_std"],
    replace(_SHARED["epochs"], default=5),
    _SHARED["angles"],
)
"""The command's own numeric options: ``tncn classify``'s, with an autoencoder's widths and epochs."""
PICTURED = 10
"""Test images drawn in reconstructions.png: the first of each class, then the next ones."""


def register(subparsers, argv=None) -> None:
    from tncn import learners

    rule = flags.peek(argv, "--rule").rule
    cls = learners.LEARNERS.get(rule)
    able = ", ".join(autoencoding_rules())
    p = classify.image_parser(
        subparsers, "autoencode", f"train an autoencoder with one learning rule ({able})",
        f"Train an autoencoder (sigmoid outputs reconstructing the input) with one learning rule ({able}) and "
        "report its test reconstruction error; the data and flags are tncn classify's.",
        "write result.json, reconstructions.png and model.pt here")
    two_valued = ", ".join(classify.BY_ACTIVATION)
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=None,
                   help="feed the network the image minus the mean training image (the target stays the raw "
                        f"image; default: on for {two_valued} units, off otherwise)")
    p.add_argument("--activation",
                   help=f"hidden activation: {', '.join(a for a in ACTIVATIONS if a != 'softmax')} "
                        "(lwta:K, slwta:K for blocks of K units; default tanh)")
    p.add_argument("--loss", default=DEFAULT_LOSS, choices=list(RECONSTRUCTION_LOSSES),
                   help="reconstruction loss: " + "; ".join(f"{n}, {l.help}" for n, l in RECONSTRUCTION_LOSSES.items())
                        + f" ({DEFAULT_LOSS})")
    p.add_argument("--init", default="normal", help=f"weight initialiser: {', '.join(INITIALISERS)} (normal)")
    flags.add(p, OWN)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                   help="learning-rate schedule over the epochs: cosine annealing to 0, or constant (cosine)")
    flags.add(p.add_argument_group("optimizer", f"(with Adam, {two_valued} units default to lr 2e-3)"),
              classify.OPTIMIZER)
    if cls is not None and cls.OPTIONS:
        flags.add(p.add_argument_group(f"rule {cls.name}"), cls.OPTIONS)
    p.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, rule_class=cls)


def autoencoding_rules() -> list[str]:
    """The rules that train autoencoders: those declaring the reconstruction losses they know."""
    from tncn import learners

    return [name for name, cls in learners.LEARNERS.items() if cls.reconstruction_losses]


def check_rule(cls, loss: str) -> None:
    """Refuse (``UserError``, one line) a rule that does not train autoencoders, or not on ``loss``."""
    known = cls.reconstruction_losses
    if not known:
        raise UserError(f"rule {cls.name!r} does not train autoencoders (it does not carry the reconstruction "
                        f"error to its hidden layers); the rules that do: {', '.join(autoencoding_rules())}")
    if loss not in known:
        raise UserError(f"rule {cls.name!r} trains autoencoders on the reconstruction loss "
                        f"{' or '.join(known)}, not {loss!r}")


def pictured(labels: torch.Tensor, count: int = PICTURED) -> torch.Tensor:
    """Indices of ``count`` test images to draw: the first of each class in class order, then the
    next images in file order."""
    first = [int(torch.nonzero(labels == c)[0]) for c in torch.unique(labels)][:count]
    chosen = set(first)
    rest = [i for i in range(len(labels)) if i not in chosen][:count - len(first)]
    return torch.tensor(first + rest, dtype=torch.long)


def run(args) -> int:
    from sequences import images
    from tncn import runs
    from tncn.diagnostics import save_reconstructions
    from tncn.losses import get_reconstruction_loss
    from tncn.mlp import MLP, MeanImage, fit, reconstruction_error, reconstruction_scores

    check_rule(args.rule_class, args.loss)
    args.activation = args.activation or "tanh"
    o = flags.read(args, "data_root", "batch_size", "seed", "device", defaults=classify.DEFAULTS)
    by_activation = classify.BY_ACTIVATION.get(args.activation, {})
    opt = flags.values(args, classify.OPTIMIZER)
    if "lr" in by_activation and "lr" not in flags.given(args, classify.OPTIMIZER) and opt["optimizer"] == "adam":
        opt["lr"] = by_activation["lr"]
    rule_opts = flags.given(args, args.rule_class.OPTIONS)
    own = flags.values(args, OWN)
    device = runs.resolve_device(o["device"])
    out = Path(args.out) if args.out else None
    if out is not None:
        flags.check_out(out, args.force)
    json_path = flags.output_file(args.json, "--json")
    center = by_activation.get("center", False) if args.center is None else args.center
    raw = images.load(args.data, root=o["data_root"], valid=own["valid"], seed=own["split_seed"], limit=own["limit"])
    fed = raw.centered() if center else raw
    n_train = len(raw.train[0])
    if o["batch_size"] > n_train:
        raise OptionError("batch_size", f"{{}} {o['batch_size']:,} is larger than the {n_train:,} training examples")
    gen = torch.Generator().manual_seed(o["seed"])
    torch.manual_seed(o["seed"])  # stochastic units at evaluation draw from the global generator
    loss = get_reconstruction_loss(args.loss)
    n_in = raw.train[0].shape[1]
    learner, optimizer, scheduler = classify.trainer(
        args, lambda: MLP([n_in, *own["hidden"], n_in], activation=args.activation, init=args.init,
                          std=own["init_std"], generator=gen, loss=loss),
        rule_opts, opt, own, o["seed"], device)
    net = learner.net
    split = {name: (getattr(fed, name)[0].to(device), getattr(raw, name)[0].to(device))
             for name in ("train", "valid", "test")}  # (input, target = the raw image)
    sizes = raw.sizes()
    widths = ",".join(map(str, own["hidden"]))
    print(f"{args.rule} autoencoder on {raw.name} ({sizes['train']} train / {sizes['valid']} valid / {sizes['test']} "
          f"test), {n_in}-{widths.replace(',', '-')}-{n_in} {args.activation}{', centred inputs' if center else ''}, "
          f"loss {args.loss}, {opt['optimizer']} lr {opt['lr']}, {own['epochs']} epochs of batch {o['batch_size']} "
          f"on {device}")
    mean = MeanImage(split["train"][1].mean(0))
    baseline = reconstruction_error(mean, *split["valid"], loss)["loss"] if sizes["valid"] else None
    curve = fit(learner, optimizer, split["train"], split["valid"], own["epochs"], o["batch_size"], gen,
                scheduler=scheduler, angle_every=own["angles"], progress=False if args.no_progress else None,
                baseline=baseline, scores=reconstruction_scores(loss))
    test = reconstruction_error(learner, *split["test"], loss)
    result = dict(
        rule=args.rule, data=raw.name, hidden=own["hidden"], activation=args.activation,
        epochs=own["epochs"], **opt, schedule=args.schedule, batch_size=o["batch_size"], seed=o["seed"],
        init=args.init, init_std=own["init_std"], center=center, loss=args.loss, options=rule_opts,
        sizes=sizes, test_loss=test["loss"], test_pixel_mse=test["pixel_mse"],
        valid_loss=curve[-1]["valid_loss"], valid_pixel_mse=curve[-1]["valid_pixel_mse"],
        mean_image=reconstruction_error(mean, *split["test"], loss),
        train_seconds=sum(p["seconds"] for p in curve), curve=curve,
        device=str(device), torch=str(torch.__version__), machine=platform.machine(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    print(f"test reconstruction loss {test['loss']:.4g}, pixel MSE {test['pixel_mse']:.4g} (the mean image: "
          f"{result['mean_image']['loss']:.4g}, {result['mean_image']['pixel_mse']:.4g}), "
          f"{result['train_seconds']:.1f} s of training")
    if json_path:
        files.write_json(json_path, result, indent=1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files.write_json(out / "result.json", result, indent=1)
        picks = pictured(raw.test[1]).to(device)
        x, target = split["test"][0][picks], split["test"][1][picks]
        with torch.no_grad():
            shown = net.outputs(learner.logits(x))
        save_reconstructions(target, shown, out / "reconstructions.png",
                             f"{args.rule}, {raw.name}, {widths} {args.activation}, loss {args.loss}: test images "
                             "above their reconstructions", shape=raw.shape)
        checkpoint.save(out / "model.pt", {"result": result, "state_dict": learner.state_dict()}, "autoencoder")
    return 0
