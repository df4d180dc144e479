"""Diagnostics of the feedforward learning rules (``tncn.learners``; Ororbia & Mali, AAAI 2019,
arXiv 1805.11703, whose figures show the angle of LRA-E's updates against backprop's).

- ``angle``: the angle in degrees between two tensors taken as flat vectors,
  arccos(⟨u, v⟩ / (‖u‖ ‖v‖)); 90° for an all-zero tensor (no direction at all).
- ``update_angles``: per layer, the angle between the weight update a rule wrote into
  ``param.grad`` and the backprop gradient ∂L/∂W^l on the same batch.
- ``local_discrepancy``: LRA-E's total local discrepancy Σ_{l<L} ‖e^l‖² (mean over the batch);
  LRA and DTP keep their own total discrepancy of the last step in ``learner.discrepancy``.
- ``filter_grid`` / ``save_filters``: the first-layer weights W^1 as a grid of images, one per
  hidden unit (a matplotlib ``Figure`` saved as PNG, no pyplot).
- ``pca_2d`` / ``draw_embedding`` / ``save_embedding``: the topmost hidden layer's
  post-activations on a data set, projected on their two leading principal axes and coloured by
  class (the picture of the topmost post-activities in Ororbia's LRA talk).
- ``reconstruction_grid`` / ``save_reconstructions``: images above their reconstructions (an
  autoencoder's, an RBM's), one row per model, as a grey-scale picture.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from tncn import files
from tncn.learners.backprop import backprop_grads

Tensor = torch.Tensor


def angle(u: Tensor, v: Tensor) -> float:
    """The angle between ``u`` and ``v`` in degrees (flattened); 90 when either is all zero."""
    u, v = u.detach().flatten().double(), v.detach().flatten().double()
    nu, nv = u.norm(), v.norm()
    if nu == 0 or nv == 0:
        return 90.0
    cos = torch.clamp((u @ v) / (nu * nv), -1.0, 1.0)
    return math.degrees(math.acos(cos.item()))


def update_angles(learner, x: Tensor, y: Tensor) -> list[float]:
    """Per layer, the angle between ``W.grad`` (the rule's last update) and backprop's ∂L/∂W on (x, y).

    Call it right after ``learner.step(x, y)``; ``param.grad`` is read, not changed.
    Needs a differentiable hidden activation (backprop's gradient does not exist otherwise).
    """
    net = learner.net
    if net.act is not None and not net.act.differentiable:
        raise ValueError(f"angles against backprop need a differentiable activation, not {net.act.name!r}")
    params = list(net.parameters())
    grads, _ = backprop_grads(net, x, y)
    reference = {id(p): g for p, g in zip(params, grads)}
    out = []
    for layer in net.layers:
        w = layer.weight
        if w.grad is None:
            raise ValueError("no update in weight.grad: call learner.step(x, y) first")
        out.append(angle(w.grad, reference[id(w)]))
    return out


def local_discrepancy(learner, x: Tensor, y: Tensor) -> float:
    """Σ_{l<L} ‖e^l‖² of LRA-E's local errors on (x, y), averaged over the batch (no update made)."""
    _, errors, _ = learner.local_errors(x, y)
    return float(sum((e * e).sum(1).mean() for e in errors[:-1]))


def filter_grid(weight: Tensor, shape: Optional[tuple[int, int]] = None, count: int = 100) -> np.ndarray:
    """The first ``count`` columns of ``weight`` [n_in, n_units] as images tiled in a square grid.

    Each filter is scaled to [0, 1] on its own (max |w| maps to 0 or 1, zero to 0.5); the
    image shape defaults to the square √n_in × √n_in. Tiles are separated by one-pixel lines of 0.5.
    """
    w = weight.detach().float().cpu().numpy()
    n_in, n_units = w.shape
    if shape is None:
        side = int(round(math.sqrt(n_in)))
        if side * side != n_in:
            raise ValueError(f"inputs of size {n_in} are not square images; give shape=(rows, cols)")
        shape = (side, side)
    rows_px, cols_px = shape
    if rows_px * cols_px != n_in:
        raise ValueError(f"shape {shape} does not hold {n_in} inputs")
    count = min(count, n_units)
    cols = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / cols))
    grid = np.full((rows * (rows_px + 1) + 1, cols * (cols_px + 1) + 1), 0.5, dtype=np.float32)
    for k in range(count):
        f = w[:, k]
        scale = np.abs(f).max()
        img = 0.5 + 0.5 * f / scale if scale > 0 else np.full(n_in, 0.5)
        r, c = divmod(k, cols)
        grid[1 + r * (rows_px + 1):1 + r * (rows_px + 1) + rows_px,
             1 + c * (cols_px + 1):1 + c * (cols_px + 1) + cols_px] = img.reshape(rows_px, cols_px)
    return grid


def save_filters(weight: Tensor, path, title: str = "", shape=None, count: int = 100) -> Path:
    """Write ``filter_grid(weight)`` as a grey-scale PNG at ``path``; return the path."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    grid = filter_grid(weight, shape, count)
    path = Path(path)
    scale = 2.0 / 100  # two screen pixels per weight at dpi 100
    fig = Figure(figsize=(grid.shape[1] * scale, grid.shape[0] * scale + (0.4 if title else 0)))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    files.save_figure(fig, path, bbox_inches="tight")
    return path


@torch.no_grad()
def top_hidden(model, x: Tensor, batch_size: int = 2000) -> Tensor:
    """The topmost hidden layer's activities for the rows of ``x``: h^{L-1} of the forward pass of
    an ``MLP``, or of a learner that represents its inputs otherwise (EP's and CHL's settled
    states: its ``top_hidden(x)``)."""
    net = getattr(model, "net", model)
    if len(net.layers) < 2:
        raise ValueError("the network has no hidden layer to embed")
    out = []
    for i in range(0, len(x), batch_size):
        h = x[i:i + batch_size]
        if hasattr(model, "top_hidden"):
            out.append(model.top_hidden(h))
            continue
        for layer in net.layers[:-1]:
            h = layer(h)
        out.append(h)
    return torch.cat(out)


def pca_2d(h: Tensor) -> np.ndarray:
    """The rows of ``h`` projected on their two leading principal axes, [n, 2] (float64).

    Each axis is signed so that its largest-magnitude loading is positive (a deterministic picture)."""
    a = h.detach().double().cpu()
    a = a - a.mean(0)
    if a.shape[1] < 2:
        a = torch.cat([a, torch.zeros(len(a), 2 - a.shape[1], dtype=a.dtype)], 1)
    _, _, v = torch.linalg.svd(a, full_matrices=False)
    axes = v[:2].T
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return (a @ (axes * torch.where(signs == 0, 1.0, signs))).numpy()


def draw_embedding(ax, net, x: Tensor, y: Tensor, legend: bool = True) -> None:  # net: an MLP or a learner
    """Scatter the topmost hidden layer's activities on ``x`` into ``ax``: PCA to 2-D (``pca_2d``),
    one colour per class ``y``."""
    from matplotlib import colormaps

    points, labels = pca_2d(top_hidden(net, x)), y.cpu().numpy()
    cmap = colormaps["tab10"]
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=2, alpha=0.6, color=cmap(int(c) % 10), label=str(int(c)))
    if legend:
        ax.legend(markerscale=4, fontsize=7, loc="upper right", title="class", title_fontsize=7)


def save_embedding(net, x: Tensor, y: Tensor, path, title: str = "", count: int = 5000) -> Path:
    """A scatter plot of the topmost hidden layer's post-activations on (the first ``count`` of)
    ``x``, projected by PCA to 2-D and coloured by the class ``y``; written as PNG at ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    draw_embedding(ax, net, x[:count], y[:count])
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    if title:
        ax.set_title(title, fontsize=9)
    files.save_figure(fig, Path(path), bbox_inches="tight")
    return Path(path)


def _image_shape(n: int, shape: Optional[tuple[int, int]]) -> tuple[int, int]:
    if shape is None:
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise ValueError(f"images of {n} pixels are not square; give shape=(rows, cols)")
        shape = (side, side)
    if shape[0] * shape[1] != n:
        raise ValueError(f"shape {tuple(shape)} does not hold {n} pixels")
    return tuple(shape)


def reconstruction_grid(rows: Sequence[Tensor], shape: Optional[tuple[int, int]] = None,
                        columns: int = 10) -> np.ndarray:
    """Rows of images tiled into one picture: ``rows`` are tensors [N, pixels] of the same N images
    (the originals, then each model's reconstructions), values in [0, 1] (clipped), flattened
    row-major to ``shape`` (default square). Image k of every row goes in the same column; with
    more than ``columns`` images the rows wrap in blocks of ``columns`` (each block the originals
    above their reconstructions). Tiles are separated by one-pixel lines of 0.5, blocks by three."""
    rows = [r.detach().float().cpu().clamp(0.0, 1.0).numpy() for r in rows]
    n, pixels = rows[0].shape
    if any(r.shape != (n, pixels) for r in rows):
        raise ValueError(f"every row needs the same {n} images of {pixels} pixels; got "
                         f"{', '.join(str(tuple(r.shape)) for r in rows)}")
    rows_px, cols_px = _image_shape(pixels, shape)
    columns = max(1, min(int(columns), n))
    blocks = int(math.ceil(n / columns))
    block_h = len(rows) * (rows_px + 1)
    grid = np.full((blocks * block_h + (blocks - 1) * 2 + 1, columns * (cols_px + 1) + 1), 0.5, dtype=np.float32)
    for k in range(n):
        b, c = divmod(k, columns)
        for r, images in enumerate(rows):
            top = 1 + b * (block_h + 2) + r * (rows_px + 1)
            left = 1 + c * (cols_px + 1)
            grid[top:top + rows_px, left:left + cols_px] = images[k].reshape(rows_px, cols_px)
    return grid


def save_reconstructions(originals: Tensor, reconstructions: Union[Tensor, Sequence[Tensor]], path,
                         title: str = "", shape: Optional[tuple[int, int]] = None,
                         labels: Sequence[str] = (), columns: int = 10) -> Path:
    """Write ``originals`` [N, pixels] above their ``reconstructions`` (a tensor [N, pixels], or a
    list of them, one row per model) as a grey-scale PNG at ``path``; images in [0, 1], flattened
    to ``shape`` (default square). ``labels`` names the rows (the originals first); the images wrap
    in blocks of ``columns`` (``reconstruction_grid``). Returns the path."""
    from matplotlib.figure import Figure

    if torch.is_tensor(reconstructions):
        reconstructions = [reconstructions]
    rows = [originals, *reconstructions]
    if labels and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows (the originals and each reconstruction)")
    grid = reconstruction_grid(rows, shape, columns)
    rows_px = _image_shape(originals.shape[1], shape)[0]
    scale = 2.0 / 100  # two screen pixels per image pixel at dpi 100
    fig = Figure(figsize=(grid.shape[1] * scale + (1.2 if labels else 0), grid.shape[0] * scale + (0.4 if title else 0)))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    if labels:
        blocks = int(math.ceil(len(originals) / max(1, min(int(columns), len(originals)))))
        block_h = len(rows) * (rows_px + 1)
        centres = [1 + b * (block_h + 2) + r * (rows_px + 1) + rows_px / 2 - 0.5
                   for b in range(blocks) for r in range(len(rows))]
        ax.set_yticks(centres, list(labels) * blocks, fontsize=8)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    else:
        ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    files.save_figure(fig, Path(path), bbox_inches="tight")
    return Path(path)
