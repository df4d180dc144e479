"""P-TNCN against vectors recorded from the authors' official TensorFlow implementation.

../shared/oracles/*.npz hold every prediction, state, error unit, update and post-optimizer weight
of a 2-layer reference run (vocab 49, hidden 16, batch 4, 10 steps) for both E rules.
"""
import json

import numpy as np
import pytest
import torch

import tncn
from conftest import shared_path

RECORDED = ["x_hat", "z1", "z2", "y1", "y2", "e0", "e1"]


def as_stored(arrays: dict) -> dict:
    """The recorded arrays in tncn.PTNCN's layout: E^l is stored transposed ([H_l, H_{l-1}])."""
    return {k: torch.from_numpy(v.T.copy() if k.startswith("E") else v) for k, v in arrays.items()}


def replay(name: str, **options) -> float:
    """Run our PTNCN over the recorded tokens; return the largest deviation from the record."""
    f = np.load(shared_path("oracles", f"{name}.npz"))
    cfg = json.loads(str(f["config_json"]))
    model = tncn.PTNCN(
        cfg["vocab"], [cfg["hidden"]] * 2, beta=cfg["beta"], alpha=cfg["alpha_e"], gamma=cfg["gamma"],
        clip=cfg["update_clip_norm"], e_rule="temporal" if cfg["temporal_error_rule"] else "transpose",
        **options,
    )
    model.load_state_dict(as_stored({k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("init/")}))
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True)
    tokens = torch.from_numpy(f["tokens"]).long()
    model.reset(tokens.shape[0])
    worst = 0.0
    for t in range(tokens.shape[1]):
        x = tokens[:, t]
        x_hat = model.step(x, (x >= 0).float())
        last = model._last
        ours = {"x_hat": x_hat, "z1": last["z"][1], "z2": last["z"][2], "y1": model._state["y"][1],
                "y2": model._state["y"][2], "e0": last["e"][0], "e1": last["e"][1]}
        for key in RECORDED:
            worst = max(worst, np.abs(ours[key].numpy() - f[f"t{t}/{key}"]).max())
        updated = model.local_updates()
        assert updated == (t >= cfg["first_update_step"])
        if updated:
            for n, p in model.named_parameters():
                worst = max(worst, np.abs(p.grad.numpy() - as_stored({n: f[f"t{t}/delta/{n}"]})[n].numpy()).max())
            opt.step()
            for n, p in model.named_parameters():
                worst = max(worst, np.abs(p.detach().numpy() - as_stored({n: f[f"t{t}/after/{n}"]})[n].numpy()).max())
    return worst


@pytest.mark.parametrize("name", ["ptncn_official_default", "ptncn_official_temporal_rule"])
def test_reproduces_official_implementation(name):
    assert replay(name) < 1e-5


def test_explicit_K1_is_the_reference():
    assert replay("ptncn_official_default", K=1) < 1e-5


def test_K2_departs_from_the_reference():
    assert replay("ptncn_official_default", K=2) > 1e-4
