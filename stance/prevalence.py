"""Stance shares corrected for the model's errors, each with a 95% interval.

Counting predicted labels (`cc`) treats predictions as the truth: a model that
swaps support and oppose on some posts biases every share, and the bias moves
when the true shares move. The other estimators correct for that:

- `pcc`: the mean of the calibrated probabilities.
- `acc` / `pacc`: adjusted classify-and-count (Forman 2008) and its probabilistic form (Bella et al.
  2010): the shares `p` solving `q = M p`, where `q` is what the model says about the export and
  `M[i, j]` how often (or how strongly) posts of true class j get label i, measured on labelled posts.
- `emq`: the EM prior adjustment of Saerens et al. (2002) on the posteriors.
- `ppi`: prediction-powered inference (PPI++, Angelopoulos et al. 2023): a random gold sample from the
  export corrects the mean of the probabilities; its interval is valid without trusting the model.

The adjustments are QuaPy's (`ACC.solve_adjustment`, `PACC.getPteCondEstim`, `EMQ.EM`). Intervals
come from a bootstrap over the labelled posts (over whole writers where their ids name them, so that how
much error rates vary between writers is in the interval) and the export (acc, pacc, emq), Wilson (cc), the
normal approximation (pcc), and PPI++'s own formula, computed from running sums so that a report
never holds every row (checked equal to `ppi_py.ppi_mean_ci` by the tests). Everything here works on
`GroupStats`, which one pass over a scored file fills per group (day, language, ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import StanceError

ESTIMATORS = ("cc", "pcc", "acc", "pacc", "emq", "ppi")
NEEDS_LABELLED = ("acc", "pacc", "emq", "ppi")
OUTPUTS_FILE = "labelled_outputs.json"     # written into model folders by `stance train`
RESERVOIR = 20000                           # posteriors kept per group for `emq`
Z95 = 1.959963984540054


@dataclass
class LabelledOutputs:
    """The model's calibrated probabilities on posts whose true label is known."""

    gold: np.ndarray            # (n,) label ids
    probs: np.ndarray           # (n, k)
    source: str                 # where they come from, for the report
    random_sample: bool = False  # drawn at random from the scored export (what `ppi` needs)
    groups: Optional[np.ndarray] = None   # writer of each post, when known: the bootstrap resamples writers

    @staticmethod
    def writer_groups(ids: Optional[Sequence]) -> Optional[np.ndarray]:
        """Writers from ids of the form `<writer>-<n>` (the corpus's `b3-0012`), when every id has one.

        A new export is like posts by a new writer: error rates measured on some writers move when the
        writers change, so resampling whole writers puts that into the interval.
        """
        if ids is None or not len(ids):
            return None
        prefixes = [str(i).rsplit("-", 1) for i in ids]
        if not all(len(p) == 2 and p[0] and p[1].isdigit() for p in prefixes):
            return None
        groups = np.array([p[0] for p in prefixes])
        return groups if len(set(groups)) >= 3 else None

    @classmethod
    def from_model(cls, folder: Path, labels: Sequence[str]) -> "LabelledOutputs":
        path = Path(folder) / OUTPUTS_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StanceError(f"the model folder has no {OUTPUTS_FILE} (it was trained by an older version)",
                              path=str(folder), hint="retrain it, or pass --gold with labelled posts") from None
        except (OSError, ValueError) as exc:
            raise StanceError(f"damaged {OUTPUTS_FILE}: {exc}", path=str(path)) from None
        if raw.get("labels") != list(labels):
            raise StanceError(f"{OUTPUTS_FILE} has labels {raw.get('labels')}, the scored file {list(labels)}",
                              path=str(path))
        splits = [s for s in raw["splits"].values()]
        gold = np.concatenate([np.asarray(s["gold"], dtype=int) for s in splits])
        probs = np.concatenate([np.asarray(s["probs"], dtype=float) for s in splits])
        ids = [i for s in splits for i in s.get("ids", [])]
        groups = cls.writer_groups(ids) if len(ids) == len(gold) else None
        what = ("labelled posts, each predicted by models that never saw its writer" if list(raw["splits"]) ==
                ["out-of-writer"] else " + ".join(raw["splits"]) + " posts")
        return cls(gold, probs, f"the model's {what} ({len(gold):,}"
                   + (f" by {len(set(groups))} writers)" if groups is not None else ")"), groups=groups)


def write_labelled_outputs(folder: Path, labels: Sequence[str], splits: Dict[str, tuple]) -> None:
    """Store {split: (gold label ids, calibrated probabilities, post ids or None)} in a model folder, for
    `acc`, `pacc` and `emq`."""
    data = {"labels": list(labels),
            "splits": {name: {"gold": [int(g) for g in gold], "probs": np.round(probs, 5).tolist(),
                              **({"ids": [str(i) for i in ids]} if ids is not None else {})}
                       for name, (gold, probs, ids) in splits.items()}}
    (Path(folder) / OUTPUTS_FILE).write_text(json.dumps(data), encoding="utf-8")


@dataclass
class GroupStats:
    """Running sums of one group's probabilities, and a bounded random sample of them (for `emq`)."""

    k: int
    n: int = 0
    counts: np.ndarray = None       # predicted-label counts
    total: np.ndarray = None        # sum of probabilities
    outer: np.ndarray = None        # sum of p p^T
    sample: np.ndarray = None       # up to RESERVOIR rows of probabilities
    keys: np.ndarray = None         # their random priorities
    seed: int = 0

    def __post_init__(self):
        self.counts = np.zeros(self.k) if self.counts is None else self.counts
        self.total = np.zeros(self.k) if self.total is None else self.total
        self.outer = np.zeros((self.k, self.k)) if self.outer is None else self.outer
        self.sample = np.zeros((0, self.k)) if self.sample is None else self.sample
        self.keys = np.zeros(0) if self.keys is None else self.keys
        self._rng = np.random.default_rng(self.seed)

    def add(self, probs: np.ndarray) -> "GroupStats":
        probs = np.asarray(probs, dtype=float).reshape(-1, self.k)
        if not len(probs):
            return self
        self.n += len(probs)
        self.counts += np.bincount(probs.argmax(1), minlength=self.k)
        self.total += probs.sum(0)
        self.outer += probs.T @ probs
        return self._keep(probs, self._rng.random(len(probs)))

    def merge(self, other: "GroupStats") -> "GroupStats":
        self.n += other.n
        self.counts += other.counts
        self.total += other.total
        self.outer += other.outer
        return self._keep(other.sample, other.keys)

    def _keep(self, rows: np.ndarray, keys: np.ndarray) -> "GroupStats":
        """Reservoir by random priority: the RESERVOIR highest keys are a uniform sample without replacement."""
        sample, keys = np.concatenate([self.sample, rows]), np.concatenate([self.keys, keys])
        if len(keys) > RESERVOIR:
            top = np.argpartition(-keys, RESERVOIR)[:RESERVOIR]
            sample, keys = sample[top], keys[top]
        self.sample, self.keys = sample, keys
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.n, 1)

    @property
    def cov(self) -> np.ndarray:
        """Covariance of the probability vectors (population form)."""
        m = self.mean
        return self.outer / max(self.n, 1) - np.outer(m, m)


@dataclass
class Estimate:
    estimator: str
    shares: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int
    notes: List[str] = field(default_factory=list)

    def to_dict(self, labels: Sequence[str]) -> Dict:
        return {"estimator": self.estimator, "n": self.n, "notes": self.notes,
                "shares": {l: {"share": float(s), "ci95": [float(a), float(b)]}
                           for l, s, a, b in zip(labels, self.shares, self.low, self.high)}}


def estimate(stats: GroupStats, estimator: str, labelled: Optional[LabelledOutputs] = None,
             gold_in_group: Optional[LabelledOutputs] = None, n_boot: int = 200, seed: int = 0) -> Estimate:
    """The shares of one group by `estimator`, with a 95% interval.

    `labelled` (acc, pacc, emq): the model's outputs on labelled posts, for its error rates. `gold_in_group`
    (ppi): the random gold posts that fall in this group, with the model's probabilities on them.
    """
    if estimator not in ESTIMATORS:
        raise StanceError(f"unknown estimator '{estimator}'; use one of {', '.join(ESTIMATORS)}")
    k, n = stats.k, stats.n
    if n == 0:
        nan = np.full(k, np.nan)
        return Estimate(estimator, nan, nan, nan, 0, ["no posts"])
    if estimator == "cc":
        q = stats.counts / n
        low, high = _wilson(stats.counts, n)
        return Estimate("cc", q, low, high, n)
    if estimator == "pcc":
        q = stats.mean
        se = np.sqrt(np.clip(np.diag(stats.cov), 0, None) / n)
        return Estimate("pcc", q, np.clip(q - Z95 * se, 0, 1), np.clip(q + Z95 * se, 0, 1), n)
    if estimator == "ppi":
        return _ppi(stats, gold_in_group)
    if labelled is None or not len(labelled.gold):
        raise StanceError(f"the '{estimator}' estimator needs the model's outputs on labelled posts")
    rng = np.random.default_rng(seed)
    point = _adjusted(estimator, stats, labelled.gold, labelled.probs, stats.sample)
    boots = []
    m = len(labelled.gold)
    members = ([np.flatnonzero(labelled.groups == g) for g in np.unique(labelled.groups)]
               if labelled.groups is not None else None)
    for _ in range(n_boot):
        if members is None:
            pick = rng.integers(0, m, m)
        else:                        # whole writers, with replacement
            pick = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        if estimator == "acc":       # the export's predicted-label counts vary as a multinomial
            resampled = _counts_stats(rng.multinomial(n, stats.counts / n), k)
        elif estimator == "pacc":    # the export's mean probability varies as a normal (n is large)
            resampled = _mean_stats(rng.multivariate_normal(stats.mean, stats.cov / n, method="eigh", check_valid="ignore"), n, k)
        else:
            resampled = stats
        sample = stats.sample[rng.integers(0, len(stats.sample), len(stats.sample))] if estimator == "emq" else None
        boots.append(_adjusted(estimator, resampled, labelled.gold[pick], labelled.probs[pick], sample))
    boots = np.array(boots)
    low, high = np.percentile(boots, [2.5, 97.5], axis=0)
    return Estimate(estimator, point, np.minimum(low, point), np.maximum(high, point), n)


def _adjusted(estimator: str, stats: GroupStats, gold: np.ndarray, probs: np.ndarray,
              sample: Optional[np.ndarray]) -> np.ndarray:
    try:
        from quapy import functional as F
        from quapy.method.aggregative import ACC, EMQ, PACC
    except ImportError:
        raise StanceError(f"the '{estimator}' estimator needs QuaPy", hint="pip install 'stance[prevalence]'") from None

    classes = np.arange(stats.k)
    if estimator == "emq":
        prior = np.bincount(gold, minlength=stats.k) / len(gold)   # the prior the probabilities were calibrated under
        shares, _ = EMQ.EM(prior, sample)
        return np.asarray(shares)
    if estimator == "acc":
        rates, observed = ACC.getPteCondEstim(classes, gold, probs.argmax(1)), stats.counts / max(stats.n, 1)
    else:
        rates, observed = PACC.getPteCondEstim(classes, gold, probs), stats.mean
    shares = ACC.solve_adjustment(rates, observed, method="inversion", solver="exact-cc")
    return np.asarray(F.normalize_prevalence(shares, method="clip"))


def _counts_stats(counts: np.ndarray, k: int) -> GroupStats:
    s = GroupStats(k)
    s.n, s.counts = int(counts.sum()), counts.astype(float)
    return s


def _mean_stats(mean: np.ndarray, n: int, k: int) -> GroupStats:
    s = GroupStats(k)
    s.n, s.total = n, np.asarray(mean) * n
    return s


def _wilson(counts: np.ndarray, n: int):
    from scipy.stats import binomtest
    intervals = [binomtest(int(c), n).proportion_ci(confidence_level=0.95, method="wilson") for c in counts]
    return np.array([i.low for i in intervals]), np.array([i.high for i in intervals])


def _ppi(stats: GroupStats, gold: Optional[LabelledOutputs]) -> Estimate:
    """PPI++ mean with one tuning parameter per class ("element" mode), from the group's running sums.

    The same numbers as `ppi_py.ppi_mean_ci(Y, Yhat, Yhat_unlabeled, alpha=0.05, lam_optim_mode="element")`.
    """
    k, N = stats.k, stats.n
    if gold is None or len(gold.gold) < 2:
        raise StanceError("the 'ppi' estimator needs at least 2 gold posts in each group",
                          hint="pass --gold with a random sample of this export labelled by hand (joined by id)")
    Y = np.eye(k)[gold.gold]
    f = gold.probs
    n = len(Y)
    first = stats.mean + (Y - f).mean(0)                           # lam = 1
    g, gh = Y - first, f - first
    cov = ((g - g.mean(0)) * (gh - gh.mean(0))).sum(0) / n
    # Variance of the predictions over labelled and unlabelled posts together (np.cov, ddof 1).
    total, squares = f.sum(0) + stats.total, (f ** 2).sum(0) + np.diag(stats.outer)
    count = n + N
    var = (squares - total ** 2 / count) / (count - 1)
    lam = np.clip(np.divide(cov, (1 + n / N) * var, out=np.zeros(k), where=var > 0), 0, 1)
    point = lam * stats.mean + (Y - lam * f).mean(0)
    imputed_var = lam ** 2 * np.clip(np.diag(stats.cov), 0, None) / N
    rectifier_var = (Y - lam * f).var(0) / n
    half = Z95 * np.sqrt(imputed_var + rectifier_var)
    notes = [f"{n} gold posts"] + ([] if gold.random_sample else
                                   ["the gold posts are not marked as a random sample of this export (stance "
                                    "sample --strategy random marks them): the interval is valid only if they "
                                    "were drawn at random"])
    return Estimate("ppi", point, np.clip(point - half, 0, 1), np.clip(point + half, 0, 1), N, notes)
