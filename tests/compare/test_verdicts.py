"""The verdict rule and the intervals, against numbers computed by hand."""
import math

import pytest

from statex.compare.spec import VerdictSpec
from statex.compare.verdicts import mean_ci, verdicts


def _rec(variant, seed, task, value, length=256, pairs=32, metric=None):
    params = {"length": length, "pairs": pairs} if task == "mqar" else {"length": length}
    setting = "file=h all" if task == "ppl" else f"length={length}"
    return {"family": "gla", "variant": variant, "seed": seed, "task": task, "setting": setting,
            "metric": metric or ("loss" if task == "ppl" else "accuracy"), "value": value, "params": params}


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    mean, half = mean_ci([0.10, 0.14])  # sd 0.028284, t(1) = 12.706, n 2
    assert mean == pytest.approx(0.12) and half == pytest.approx(12.706 * 0.0282843 / math.sqrt(2), rel=1e-5)
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([0.25] * 40)[1] == 0.0  # beyond the table: the normal's quantile, of a zero spread


def test_the_rule_over_seeds():
    rule = VerdictSpec(capacity_threshold=0.9, min_gain=0.0, loss_tolerance=0.05)
    records = [_rec("base", None, "mqar", 0.5), _rec("base", None, "mqar", 0.95, pairs=4)]
    for seed, (lpt, good, noisy) in enumerate([(0.50, 0.60, 0.70), (0.52, 0.61, 0.40), (0.48, 0.59, 0.55)]):
        records += [_rec("lpt", seed, "mqar", lpt), _rec("lpt", seed, "ppl", 1.0), _rec("lpt", seed, "mqar", 0.95, pairs=4),
                    _rec("statex-good", seed, "mqar", 0.0, pairs=4), _rec("statex-good", seed, "mqar", good),
                    _rec("statex-good", seed, "ppl", 1.02),
                    _rec("statex-noisy", seed, "mqar", noisy), _rec("statex-noisy", seed, "ppl", 1.0),
                    _rec("statex-lossy", seed, "mqar", good), _rec("statex-lossy", seed, "ppl", 1.2)]
    found = {v["variant"]: v for v in verdicts(records, rule)}
    good = found["statex-good"]
    # only the cell where the base is below 0.9 counts (the 4-pair cell, where StateX scores 0, is ignored)
    assert good["cells_past_capacity"] == 1 and good["seeds"] == 3
    assert good["gains"] == pytest.approx([0.10, 0.09, 0.11])
    assert good["gain"] == pytest.approx(0.10) and good["gain_ci"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    assert good["loss_ratio"] == pytest.approx(3.06 / 3.0) and good["verdict"] == "yes"
    noisy = found["statex-noisy"]  # gains 0.20, -0.12, 0.07: mean 0.05, interval 0.40 wide
    assert noisy["gain"] == pytest.approx(0.05) and noisy["seeds_better"] == 2 and noisy["verdict"] == "no"
    assert found["statex-lossy"]["loss_ratio"] == pytest.approx(1.2) and found["statex-lossy"]["verdict"] == "no"


def test_one_seed_uses_the_least_gain_and_the_recall_floor():
    rule = VerdictSpec(capacity_threshold=0.9, min_gain=0.02, loss_tolerance=0.05, recall_floor=0.05)

    def run(base, lpt, sx):
        records = []
        for variant, value in (("base", base), ("lpt", lpt), ("statex-reinit", sx)):
            seed = None if variant == "base" else 0
            records += [_rec(variant, seed, "mqar", value, pairs=p) for p in (16, 64)]
            records.append(_rec(variant, seed, "ppl", 3.0))
        return verdicts(records, rule)[0]

    assert run(0.0, 0.0, 0.0002)["verdict"] == "no recall"  # +0.0002 over cells at chance
    assert run(0.3, 0.4, 0.41)["verdict"] == "no"  # recall, but a gain within the noise bar
    found = run(0.3, 0.4, 0.43)
    assert found["verdict"] == "yes" and found["gain"] == pytest.approx(0.03) and math.isnan(found["gain_ci"])
    assert run(0.95, 0.95, 0.99)["verdict"] == "no cells"  # the grid never goes past the base's capacity


def test_needle_gains_count_only_lengths_past_the_post_training_context():
    rule = VerdictSpec()
    records = [_rec("base", None, "mqar", 0.5)]
    for variant, short, long in (("lpt", 1.0, 0.2), ("statex-inherit", 0.0, 0.6)):
        records += [_rec(variant, 0, "mqar", 0.5), _rec(variant, 0, "passkey", short, length=256),
                    _rec(variant, 0, "passkey", long, length=1024)]
    found = verdicts(records, rule, post_lens={"gla": 256})[0]
    assert found["needle_gain"] == {"passkey": pytest.approx(0.4)}
    assert found["heldout_loss"] != found["heldout_loss"]  # no perplexity: nan, and the loss condition not applied
