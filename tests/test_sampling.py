"""`stance sample`: each strategy picks what it says, keeps every column, never empty or repeated texts."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stance.errors import StanceError
from stance.sampling import sample_scored

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scored(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    probs = rng.dirichlet(np.ones(4) * 0.5, n)
    labels = np.array(["support", "oppose", "question", "neutral"])
    df = pd.DataFrame({"id": range(n), "text": [f"post number {i} about boats" for i in range(n)],
                       "lang": rng.choice(["en", "es"], n), "likes": range(n)})
    df.loc[5, "text"] = ""                       # empty: never picked
    df.loc[7, "text"] = "POST number 6 about  boats"   # a repeat of row 6 once folded: never picked
    df["stance"] = labels[probs.argmax(1)]
    df["confidence"] = probs.max(1)
    for j, l in enumerate(labels):
        df[f"p_{l}"] = probs[:, j]
    df["stance_note"] = ""
    path = tmp_path / "scored.csv"
    df.to_csv(path, index=False)
    return path, df


def test_random_is_seeded_uniform_and_skips_empty_and_repeats(scored):
    path, df = scored
    a = sample_scored(str(path), 50, "random", seed=1)
    b = sample_scored(str(path), 50, "random", seed=1)
    c = sample_scored(str(path), 50, "random", seed=2)
    ids = [int(r["id"]) for r in a.rows]
    assert ids == [int(r["id"]) for r in b.rows] and ids != [int(r["id"]) for r in c.rows]
    assert len(set(ids)) == 50 and 5 not in ids and 7 not in ids
    assert a.skipped_empty == 1 and a.skipped_repeats == 1 and a.eligible == 398
    assert set(a.rows[0]) >= {"id", "text", "lang", "likes", "stance", "sample_strategy", "sample_rank"}
    many = Counter(int(r["id"]) < 200 for s in range(40) for r in sample_scored(str(path), 20, "random", seed=s).rows)
    assert 0.4 < many[True] / 800 < 0.6                       # both halves of the file equally likely


def test_uncertainty_picks_the_smallest_margins(scored):
    path, df = scored
    picked = sample_scored(str(path), 30, "uncertainty").rows
    p = np.sort(df[[c for c in df.columns if c.startswith("p_")]].to_numpy(), axis=1)
    margin = p[:, -1] - p[:, -2]
    eligible = np.array([i not in (5, 7) for i in range(len(df))])
    assert set(int(r["id"]) for r in picked) == set(np.flatnonzero(eligible)[np.argsort(margin[eligible])[:30]])


def test_stratified_spreads_over_label_and_language(scored):
    path, _ = scored
    cells = Counter((r["stance"], r["lang"]) for r in sample_scored(str(path), 40, "stratified").rows)
    assert len(cells) == 8 and max(cells.values()) - min(cells.values()) <= 1


def test_diverse_picks_n_distinct_posts(scored):
    path, _ = scored
    rows = sample_scored(str(path), 10, "diverse", seed=3).rows
    assert len({r["id"] for r in rows}) == 10


def test_cli_writes_a_sample_report_reads_it_as_random(scored, tmp_path):
    path, _ = scored
    out = tmp_path / "to_label.csv"
    r = subprocess.run([sys.executable, "-m", "stance.cli", "sample", str(path), "-n", "25", "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert len(df) == 25 and set(df["sample_strategy"]) == {"random"} and "likes" in df.columns
    with pytest.raises(StanceError, match="needs a file written by `stance score`"):
        bare = tmp_path / "bare.csv"
        pd.DataFrame({"text": ["a", "b"]}).to_csv(bare, index=False)
        sample_scored(str(bare), 1, "uncertainty")
