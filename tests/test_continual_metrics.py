"""The continual-learning summaries on a 3 x 3 matrix worked out by hand, and their plots/table."""
from __future__ import annotations

import math

import pytest

from conftest import drawn_png
from tncn import continual

R = [[2.0, 3.0, 3.5],
     [2.4, 1.5, 3.2],
     [2.6, 1.9, 1.2]]
INITIAL = [4.0, 4.0, 4.0]
NAMES = ["a", "b", "c"]


def approx(x):
    return pytest.approx(x, abs=1e-12)


def test_summaries_of_losses_by_hand():
    s = continual.summarize(R, higher_is_better=False, initial=INITIAL)
    assert set(s) == {"average_final", "bwt", "forgetting", "average_forgetting", "fwt", "learning"}
    assert s["average_final"] == approx((2.6 + 1.9 + 1.2) / 3)  # 1.9
    # s = -1: BWT = ((2.0 - 2.6) + (1.5 - 1.9)) / 2 = (-0.6 - 0.4) / 2
    assert s["bwt"] == approx(-0.5)
    # forgetting of a: best (lowest) of 2.0, 2.4 is 2.0; 2.6 - 2.0 = 0.6; of b: 1.9 - 1.5 = 0.4
    assert s["forgetting"][0] == approx(0.6)
    assert s["forgetting"][1] == approx(0.4)
    assert s["forgetting"][2] is None
    assert s["average_forgetting"] == approx(0.5)
    # FWT = ((4.0 - 3.0) + (4.0 - 3.2)) / 2 = (1.0 + 0.8) / 2
    assert s["fwt"] == approx(0.9)
    assert s["learning"] == [approx(2.0), approx(1.5), approx(1.2)]


def test_summaries_of_accuracies_by_hand():
    s = continual.summarize(R, higher_is_better=True, initial=INITIAL)
    assert s["average_final"] == approx(1.9)  # the raw score: no sign
    # s = +1: BWT = ((2.6 - 2.0) + (1.9 - 1.5)) / 2
    assert s["bwt"] == approx(0.5)
    # forgetting of a: best (highest) of 2.0, 2.4 is 2.4 (after b); 2.4 - 2.6 = -0.2; of b: 1.5 - 1.9
    assert s["forgetting"][0] == approx(-0.2)
    assert s["forgetting"][1] == approx(-0.4)
    assert s["forgetting"][2] is None
    assert s["average_forgetting"] == approx(-0.3)
    # FWT = ((3.0 - 4.0) + (3.2 - 4.0)) / 2
    assert s["fwt"] == approx(-0.9)
    assert s["learning"] == [approx(2.0), approx(1.5), approx(1.2)]


def test_no_initial_no_fwt_and_numpy_input():
    np = pytest.importorskip("numpy")
    s = continual.summarize(np.array(R))
    assert s["fwt"] is None
    assert s["bwt"] == approx(-0.5)
    assert all(isinstance(v, float) for v in (s["average_final"], s["bwt"], s["average_forgetting"]))


def test_one_task():
    s = continual.summarize([[1.25]], initial=[3.0])
    assert s == {"average_final": 1.25, "bwt": None, "forgetting": [None], "average_forgetting": None,
                 "fwt": None, "learning": [1.25]}


@pytest.mark.parametrize("bad, initial, words", [
    ([[1.0, 2.0]], None, "square"),
    ([[1.0, 2.0], [3.0]], None, "square"),
    ([], None, "square"),
    ([[1.0, math.nan], [1.0, 2.0]], None, "non-finite entry at [0][1]"),
    ([[1.0, 2.0], [math.inf, 2.0]], None, "non-finite entry at [1][0]"),
    ([[1.0, "x"], [1.0, 2.0]], None, "numbers"),
    ([[1.0, 2.0], [1.0, 2.0]], [1.0], "2 numbers"),
    ([[1.0, 2.0], [1.0, 2.0]], [1.0, math.nan], "finite"),
])
def test_validation(bad, initial, words):
    with pytest.raises(ValueError, match=None) as err:
        continual.summarize(bad, initial=initial)
    assert words in str(err.value)


def _curves(scale=1.0):
    tokens = [0, 50, 100, 150, 200, 250, 300]
    return {"tokens": tokens,
            "scores": {"a": [4.0 * scale, 2.5, 2.0, 2.2, 2.4, 2.5, 2.6],
                       "b": [4.0, 3.5, 3.0, 2.0, 1.5, 1.7, 1.9],
                       "c": [4.0, 3.8, 3.5, 3.4, 3.2, 2.0, 1.2]},
            "boundaries": [100, 200, 300]}


@pytest.mark.parametrize("models", [1, 2])
def test_plots_write_png(tmp_path, models):
    matrices = {"P-TNCN": R, "LSTM": [[v * 0.9 for v in row] for row in R]}
    matrices = dict(list(matrices.items())[:models])
    out = tmp_path / "matrix.png"
    continual.plot_matrix(out, matrices, NAMES, "bits per character")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    continual.plot_matrix(tmp_path / "acc.png", matrices, NAMES, "accuracy", higher_is_better=True)
    side = max(3.0, 0.9 * len(NAMES) + 1.8)  # the figure plot_matrix sizes, at 100 dpi
    assert drawn_png(tmp_path / "acc.png") == (round(100 * (side * models + 1.2)), round(100 * side))
    curves = dict(list({"P-TNCN": _curves(), "LSTM": _curves(1.1)}.items())[:models])
    out = tmp_path / "curves.png"
    continual.plot_curves(out, curves, NAMES, "bits per character")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "curves.png", "matrix.png"]  # no tmp left


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="2 task names"):
        continual.plot_matrix(tmp_path / "m.png", {"x": R}, ["a", "b"], "bpc")
    with pytest.raises(ValueError, match="at least one"):
        continual.plot_matrix(tmp_path / "m.png", {}, NAMES, "bpc")
    bad = _curves()
    bad["scores"]["a"] = bad["scores"]["a"][:-1]
    with pytest.raises(ValueError, match="6 scores on 'a' for 7 token counts"):
        continual.plot_curves(tmp_path / "c.png", {"x": bad}, NAMES, "bpc")


def test_format_table():
    matrices = {"P-TNCN": R, "one": [[1.25]]}
    summaries = {"P-TNCN": continual.summarize(R, initial=INITIAL), "one": continual.summarize([[1.25]])}
    text = continual.format_table(summaries, {"P-TNCN": R}, NAMES, "bpc")
    assert "### P-TNCN" in text
    assert "| bpc | a | b | c |" in text
    assert "| after b | 2.400 | 1.500 | 3.200 |" in text
    assert "average final 1.900 bpc" in text
    assert "BWT -0.500" in text and "average forgetting +0.500" in text and "FWT +0.900" in text
    one = continual.format_table(summaries, {"one": matrices["one"]}, ["solo"], "bpc")
    assert "| after solo | 1.250 |" in one
    assert "average final 1.250 bpc" in one and "BWT" not in one.split("(BWT")[0]
