"""Share estimators: on constructed exports with known shares each recovers them; ppi's interval is PPI++'s."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stance.errors import StanceError
from stance.prevalence import RESERVOIR, GroupStats, LabelledOutputs, estimate

ROOT = Path(__file__).resolve().parents[1]
K = 4
# How the simulated model errs: rows true class, columns predicted; support and oppose swap 15% of the time.
CONFUSION = np.array([[.75, .15, .05, .05],
                      [.15, .75, .05, .05],
                      [.05, .05, .80, .10],
                      [.05, .05, .10, .80]])


def simulated(n: int, shares, rng):
    """Gold labels and calibrated probabilities of a model with the confusion above (probability = row of it)."""
    gold = rng.choice(K, size=n, p=shares)
    pred = np.array([rng.choice(K, p=CONFUSION[g]) for g in gold])
    probs = 0.7 * np.eye(K)[pred] + 0.3 * rng.dirichlet(np.ones(K), size=n)
    return gold, probs


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    labelled = LabelledOutputs(*simulated(3000, [.25, .25, .25, .25], rng), "simulated dev")
    truth = np.array([.55, .15, .10, .20])                 # far from the labelled posts' shares: prior shift
    gold, probs = simulated(20000, truth, rng)
    stats = GroupStats(K).add(probs[:7000]).add(probs[7000:])
    return labelled, gold, probs, stats


def test_counting_is_biased_and_adjusting_removes_the_bias(world):
    labelled, gold, probs, stats = world
    truth = np.bincount(gold, minlength=K) / len(gold)
    cc = estimate(stats, "cc")
    assert np.abs(cc.shares - truth).max() > 0.05            # swaps pull support towards oppose
    for est in ("acc", "pacc"):
        e = estimate(stats, est, labelled, n_boot=100)
        assert np.abs(e.shares - truth).max() < 0.03, (est, e.shares, truth)
        assert np.all((e.low <= truth) & (truth <= e.high)), (est, e.low, e.high, truth)
        assert abs(e.shares.sum() - 1) < 1e-6


def test_ppi_recovers_the_shares_and_matches_ppi_py(world):
    ppi_py = pytest.importorskip("ppi_py")
    _, gold, probs, stats = world
    truth = np.bincount(gold, minlength=K) / len(gold)
    pick = np.random.default_rng(1).choice(len(gold), 300, replace=False)
    sample = LabelledOutputs(gold[pick], probs[pick], "gold", random_sample=True)
    e = estimate(stats, "ppi", gold_in_group=sample)
    assert np.abs(e.shares - truth).max() < 0.06          # one draw: coverage is tested over many below
    low, high = ppi_py.ppi_mean_ci(np.eye(K)[gold[pick]], probs[pick], probs, alpha=0.05, lam_optim_mode="element")
    point = ppi_py.ppi_mean_pointestimate(np.eye(K)[gold[pick]], probs[pick], probs, lam_optim_mode="element")
    np.testing.assert_allclose(e.shares, point, atol=1e-9)
    np.testing.assert_allclose(e.low, np.clip(low, 0, 1), atol=1e-9)
    np.testing.assert_allclose(e.high, np.clip(high, 0, 1), atol=1e-9)
    onehot = np.eye(K)[gold[pick]]                            # narrower than the gold sample alone
    assert np.all(e.high - e.low < 2 * 1.96 * onehot.std(0) / np.sqrt(len(pick)))


def test_ppi_intervals_cover_over_many_samples():
    rng = np.random.default_rng(2)
    truth = np.array([.4, .3, .1, .2])
    covered = []
    for _ in range(200):
        gold, probs = simulated(1500, truth, rng)
        sample = LabelledOutputs(gold[:150], probs[:150], "gold", random_sample=True)
        e = estimate(GroupStats(K).add(probs), "ppi", gold_in_group=sample)
        covered.append((e.low <= truth) & (truth <= e.high))
    assert np.mean(covered) >= 0.92


def test_pcc_and_cc_intervals_hold_the_point(world):
    _, _, _, stats = world
    for est in ("cc", "pcc"):
        e = estimate(stats, est)
        assert np.all(e.low <= e.shares) and np.all(e.shares <= e.high)
    np.testing.assert_allclose(estimate(stats, "pcc").shares, stats.total / stats.n)


def test_group_stats_merge_and_reservoir_stay_bounded():
    rng = np.random.default_rng(3)
    a, b = GroupStats(K, seed=1), GroupStats(K, seed=2)
    x, y = rng.dirichlet(np.ones(K), RESERVOIR), rng.dirichlet(np.ones(K), 500)
    a.add(x)
    b.add(y)
    a.merge(b)
    assert a.n == RESERVOIR + 500 and len(a.sample) == RESERVOIR
    np.testing.assert_allclose(a.total, x.sum(0) + y.sum(0))
    np.testing.assert_allclose(a.outer, x.T @ x + y.T @ y)


def test_estimators_need_what_they_need(world):
    _, _, _, stats = world
    with pytest.raises(StanceError, match="labelled posts"):
        estimate(stats, "acc")
    with pytest.raises(StanceError, match="gold posts"):
        estimate(stats, "ppi")
    with pytest.raises(StanceError, match="unknown estimator"):
        estimate(stats, "magic")


def test_report_with_gold_and_by(tfidf_model, tmp_path):
    """CLI: ppi from a gold file joined by id, per --by group, in summary.json and the HTML page."""
    import pandas as pd
    from conftest import POSTS
    rows = [{"id": i, "text": POSTS[i % len(POSTS)][0], "region": ["north", "south"][i % 2],
             "created_at": f"2025-09-{1 + i % 20:02d}"} for i in range(400)]
    pd.DataFrame(rows).to_csv(tmp_path / "posts.csv", index=False)
    gold = [{"id": i, "label": POSTS[i % len(POSTS)][1]} for i in range(0, 400, 3)]
    pd.DataFrame(gold).to_csv(tmp_path / "gold.csv", index=False)
    run = lambda *a: subprocess.run([sys.executable, "-m", "stance.cli", *a], capture_output=True, text=True, cwd=ROOT)
    assert run("score", str(tmp_path / "posts.csv"), "-o", str(tmp_path / "scored.csv"), "-m", str(tfidf_model),
               "-q").returncode == 0
    meta = json.loads((tmp_path / "scored.csv.meta.json").read_text())
    assert meta["model"] == str(tfidf_model.resolve()) and meta["runtime"] == "tfidf" and meta["rows"] == 400
    r = run("report", str(tmp_path / "scored.csv"), "-o", str(tmp_path / "rep"), "--estimator", "ppi",
            "--gold", str(tmp_path / "gold.csv"), "--by", "region")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "rep/summary.json").read_text())
    truth = pd.Series([POSTS[i % len(POSTS)][1] for i in range(400)]).value_counts(normalize=True)
    assert summary["estimator"] == "ppi" and set(summary["by"]["region"]) == {"north", "south"}
    for label, v in summary["shares"].items():
        assert v["ci95"][0] <= truth[label] <= v["ci95"][1]
    assert any("134 of 134 gold posts" in n for n in summary["notes"])
    assert any("not marked as a random sample" in n for n in summary["notes"])
    page = (tmp_path / "rep/report.html").read_text()
    assert "ppi" in page and "95% interval" in page
    r = run("report", str(tmp_path / "scored.csv"), "-o", str(tmp_path / "rep2"), "--estimator", "ppi")
    assert r.returncode == 2 and "needs --gold" in r.stderr
    pd.DataFrame(gold).assign(sample_strategy="random").to_csv(tmp_path / "gold_random.csv", index=False)
    r = run("report", str(tmp_path / "scored.csv"), "-o", str(tmp_path / "rep3"), "--estimator", "ppi",
            "--gold", str(tmp_path / "gold_random.csv"))
    assert r.returncode == 0, r.stderr
    notes = json.loads((tmp_path / "rep3/summary.json").read_text())["notes"]
    assert not any("not marked as a random sample" in n for n in notes)      # `stance sample` marked it


def test_emq_recovers_shifted_shares_from_calibrated_posteriors():
    """Posteriors that are exact under a uniform prior (Gaussian classes): EM re-weights them to the new shares."""
    rng = np.random.default_rng(4)

    def posts(n, shares):
        gold = rng.choice(K, size=n, p=shares)
        x = rng.normal(size=(n, K)) + 1.5 * np.eye(K)[gold]
        z = 1.5 * x
        p = np.exp(z - z.max(1, keepdims=True))
        return gold, p / p.sum(1, keepdims=True)

    labelled = LabelledOutputs(*posts(4000, [.25] * 4), "uniform dev")
    truth = np.array([.5, .1, .15, .25])
    gold, probs = posts(20000, truth)
    e = estimate(GroupStats(K).add(probs), "emq", labelled, n_boot=30)
    assert np.abs(e.shares - np.bincount(gold, minlength=K) / len(gold)).max() < 0.03
    assert np.abs(estimate(GroupStats(K).add(probs), "pcc").shares - truth).max() > 0.05   # unadjusted is off


def test_writer_bootstrap_widens_intervals_when_writers_err_differently():
    """Error rates that vary by writer: resampling whole writers puts that variation into the interval."""
    rng = np.random.default_rng(5)
    gold, probs, groups = [], [], []
    for w in range(8):
        swap = 0.02 + 0.03 * w                      # writers from easy to hard for the model
        g = rng.choice(K, size=600)
        confusion = CONFUSION.copy()
        confusion[0] = [1 - swap - .1, swap, .05, .05]    # support read as oppose: one direction, so it moves shares
        pred = np.array([rng.choice(K, p=confusion[x]) for x in g])
        gold.append(g)
        probs.append(0.7 * np.eye(K)[pred] + 0.3 * rng.dirichlet(np.ones(K), size=len(g)))
        groups += [f"b{w}"] * len(g)
    gold, probs = np.concatenate(gold), np.concatenate(probs)
    stats = GroupStats(K).add(simulated(50000, [.4, .3, .1, .2], rng)[1])   # large: export noise is small
    by_post = estimate(stats, "acc", LabelledOutputs(gold, probs, "posts"), n_boot=150)
    by_writer = estimate(stats, "acc", LabelledOutputs(gold, probs, "writers", groups=np.array(groups)), n_boot=150)
    np.testing.assert_allclose(by_post.shares, by_writer.shares)          # same point, wider interval
    assert (by_writer.high - by_writer.low)[:2].mean() > 1.3 * (by_post.high - by_post.low)[:2].mean()
    assert list(LabelledOutputs.writer_groups(["b1-0001", "b2-0002", "b3-0003"])) == ["b1", "b2", "b3"]
    assert LabelledOutputs.writer_groups(["t1", "t2", "t3"]) is None       # ids that name no writer


def test_report_reads_mixed_dates_keeps_gaps_and_chooses_readable_periods(tmp_path):
    import pandas as pd
    from stance.share_report import summarise_scored
    dates = ["2023-01-15T10:00:00Z", "03/20/2023", "2025-12-01", "not a date"] * 5
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(K), len(dates))
    labels = ["support", "oppose", "question", "neutral"]
    df = pd.DataFrame({"text": ["x"] * len(dates), "created_at": dates,
                       "stance": [labels[i] for i in probs.argmax(1)], "confidence": probs.max(1)})
    for j, l in enumerate(labels):
        df[f"p_{l}"] = probs[:, j]
    df.to_csv(tmp_path / "s.csv", index=False)
    s = summarise_scored(str(tmp_path / "s.csv"), estimator="cc")
    ot = s["over_time"]
    assert ot["frequency"] == "monthly" and ot["unparsed_dates"] == 5       # ISO and US dates both read
    assert list(ot["periods"])[0] == "2023-01" and list(ot["periods"])[-1] == "2025-12"
    assert len(ot["periods"]) == 36 and ot["periods"]["2023-02"]["n"] == 0   # empty months kept as gaps
    assert ot["periods"]["2023-03"]["n"] == 5
    assert any("could not be read" in n for n in s["notes"])
