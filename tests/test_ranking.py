"""DD-Ranking's label-robust score on hand-made numbers."""

import math

import pytest

from hellodd.ranking import lrs_of, lrs_rows, lrs_table


def test_lrs_follows_ddranking_formula_on_fractions():
    r = lrs_of(whole_hard=90.0, set_hard=60.0, set_acc=70.0, random_acc=65.0)
    assert r["hlr"] == pytest.approx(30.0) and r["ior"] == pytest.approx(5.0)
    alpha = 0.5 * 0.05 - 0.5 * 0.30
    assert r["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert 0 < r["lrs"] < 1
    # a set as good as all the data that beats random by 100 points scores 1; the reverse 0
    assert lrs_of(50, 50, 100, 0)["lrs"] == pytest.approx(
        (math.exp(0.5) - math.exp(-1)) / (math.e - math.exp(-1))
    )
    assert lrs_of(100, 0, 0, 100)["lrs"] == pytest.approx(0.0)
    # DD-Ranking's own code reads points: the same numbers saturate
    assert lrs_of(90.0, 60.0, 70.0, 65.0, percent=True)["lrs"] < 0


def test_lrs_rows_need_a_random_twin_and_a_hard_row():
    base = {"run": "r", "ipc": 10, "student": "convnet", "random": False, "std": 0.0}
    entries = [
        {**base, "source": "hard", "mean": 60.0, "vs_random": 2.0},
        {**base, "source": "projector", "mean": 70.0, "vs_random": 5.0},
        {**base, "source": "stored", "mean": 72.0},  # no random-subset twin: no row
    ]
    rows = lrs_rows(entries, {"r": {"arch": "convnet", "score": 90.0}})
    assert [r["source"] for r in rows] == ["hard", "projector"]
    assert rows[1]["ior"] == pytest.approx(5.0) and rows[1]["hlr"] == pytest.approx(30.0)
    text = lrs_table(rows, {"r": {"arch": "convnet", "score": 90.0}})
    assert "| projector | convnet | 30.00 | +5.00 |" in text
    assert lrs_rows(entries, {}) == []  # no whole-data reference: no score
