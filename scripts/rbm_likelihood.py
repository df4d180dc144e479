"""Log-likelihood of RBMs trained by ``tncn classify --rule rbm``, on binarised test images.

For each ``model.pt`` (a ``tncn.checkpoint`` of kind ``classifier``; a run folder means its
model.pt) the script takes the first hidden layer's RBM and prints one row: log Z by annealed
importance sampling (``tncn.learners.rbm.log_partition_ais``, ``--chains`` chains, ``--steps``
evenly spaced inverse temperatures) with its interval log(Ẑ ± 3σ̂), from two bases as
``RBM.monitor`` does: the base rate of the binarised training images (Salakhutdinov & Murray, "On
the quantitative analysis of deep belief networks", ICML 2008) and the RBM's own visible biases;
the lower bound log Z ≥ Σ_i softplus(b_v,i) (the h = 0 term); the exact log Z where one layer has
at most 20 units; the mean log-likelihood -F(v) - log Z of the binarised test and training
images with the larger AIS estimate; the exact mean pseudo-log-likelihood of the test images;
and the seconds the two AIS runs took.

Images are binarised at 0.5 (``RBM.monitor``'s choice), or with ``--binarise sample`` drawn once
as Bernoulli(intensity) from ``--seed``, as Salakhutdinov & Murray did for MNIST.

    tncn classify --rule rbm --hidden 500 --lr 3e-3 --epochs 10 --data-root DIR --out runs/rbm500
    OMP_NUM_THREADS=1 python scripts/rbm_likelihood.py runs/rbm500 --data-root DIR
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sequences import images  # noqa: E402
from tncn import checkpoint  # noqa: E402
from tncn.errors import UserError  # noqa: E402
from tncn.learners import rbm  # noqa: E402


def first_rbm(path) -> tuple[str, tuple]:
    """A label and (W, c, b_v) of the first RBM of the classifier checkpoint at ``path``."""
    path = Path(path) / "model.pt" if Path(path).is_dir() else Path(path)
    try:
        data = checkpoint.load(path, "classifier")
    except UserError as err:
        raise SystemExit(str(err)) from None
    r = data["result"]
    if r.get("rule") != "rbm":
        raise SystemExit(f"{path}: a {r.get('rule')} classifier, not an rbm one")
    if r.get("center"):
        raise SystemExit(f"{path}: trained on centred images, whose RBM is not one of binary pixels")
    sd = data["state_dict"]
    options = r.get("options", {})
    cd = ("PCD-" if options.get("persistent") else "CD-") + str(options.get("k", 1))
    label = (f"{path.parent.name}: {cd}, {','.join(map(str, r['hidden']))} hidden, "
             f"lr {r['lr']:g}, {r['epochs']} ep, test err {100 * r['test_error']:.2f}%")
    return label, (sd["net.layers.0.weight"].float(), sd["net.layers.0.bias"].float(), sd["visible_bias.0"].float())


def binarise(x: torch.Tensor, how: str, gen: torch.Generator) -> torch.Tensor:
    if how == "threshold":
        return (x > 0.5).float()
    return (torch.rand(x.shape, generator=gen) < x).float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model.pt files (or run folders) of tncn classify --rule rbm")
    ap.add_argument("--data", default="mnist", help="the image set the models were trained on (default mnist)")
    ap.add_argument("--data-root", help="folder of the named image sets (default: $TNCN_DATA or ~/.cache/tncn)")
    ap.add_argument("--binarise", choices=["threshold", "sample"], default="threshold",
                    help="pixels > 0.5, or one Bernoulli draw per pixel (default threshold)")
    ap.add_argument("--chains", type=int, default=100, help="AIS chains (default 100)")
    ap.add_argument("--steps", type=int, default=10_000, help="AIS inverse temperatures, evenly spaced (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of AIS and of the sampled binarisation")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = images.load(args.data, root=args.data_root)
    gen = torch.Generator().manual_seed(args.seed)
    train, test = binarise(data.train[0], args.binarise, gen), binarise(data.test[0], args.binarise, gen)
    base = rbm.base_rate_bias(train)
    betas = rbm.linear_betas(args.steps)
    print(f"{data.name}, {args.binarise} binarisation, {len(test)} test / {len(train)} training images; "
          f"AIS: {args.chains} chains, {args.steps} temperatures, seed {args.seed}")
    print("| model | log Z, AIS from base rate | log Z, AIS from b_v | log Z ≥ (h = 0) | exact log Z "
          "| test log p(v) | train log p(v) | test pseudo-LL | AIS s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.models:
        label, (w, c, b) = first_rbm(path)
        start = time.perf_counter()
        runs = [rbm.log_partition_ais(w, c, b, bias, betas, args.chains, args.seed) for bias in (base, b)]
        seconds = time.perf_counter() - start
        log_z = max(run.log_z for run in runs)
        bound = float(torch.nn.functional.softplus(b.double()).sum())
        exact = f"{float(rbm.log_partition_exact(w, c, b)):.2f}" if min(w.shape) <= rbm.EXACT_UNITS else "-"
        ll_test = float(rbm.log_likelihood(test, w, c, b, log_z))
        ll_train = float(rbm.log_likelihood(train, w, c, b, log_z))
        pl = float(rbm.pseudo_likelihood(test, w, c, b))
        ais = " | ".join(f"{z.log_z:.2f} [{z.low:.2f}, {z.high:.2f}]" for z in runs)
        print(f"| {label} | {ais} | {bound:.2f} | {exact} | {ll_test:.2f} | {ll_train:.2f} | {pl:.2f} "
              f"| {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
