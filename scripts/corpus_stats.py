"""Print the datasheet tables (data/README.md) from data/{train,dev,test}.jsonl."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

DATA = Path(__file__).resolve().parents[1] / "data"
LABELS = ["support", "oppose", "question", "neutral"]
SPLITS = ["train", "dev", "test"]


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print()


def main():
    data = {s: [json.loads(l) for l in open(DATA / f"{s}.jsonl", encoding="utf-8")] for s in SPLITS}
    every = [r for s in SPLITS for r in data[s]]
    n = len(every)
    print(f"{n} posts\n\n### Label by split\n")
    table(["split", *LABELS, "total"], [[s, *[sum(r["label"] == l for r in data[s]) for l in LABELS], len(data[s])]
                                         for s in SPLITS] + [["all", *[f"{sum(r['label'] == l for r in every)} ({100 * sum(r['label'] == l for r in every) / n:.0f}%)" for l in LABELS], n]])
    langs = ["en", "es", "mixed"]
    print("### Language by split\n")
    table(["split", *langs], [[s, *[sum(r["lang"] == g for r in data[s]) for g in langs]] for s in SPLITS]
          + [["all", *[f"{sum(r['lang'] == g for r in every)} ({100 * sum(r['lang'] == g for r in every) / n:.0f}%)" for g in langs]]])
    print("### Label by language (all splits)\n")
    table(["lang", *LABELS], [[g, *[sum(r["lang"] == g and r["label"] == l for r in every) for l in LABELS]] for g in langs])
    plats = [p for p, _ in Counter(r["platform"] for r in every).most_common()]
    print("### Platform by split\n")
    table(["split", *plats], [[s, *[sum(r["platform"] == p for r in data[s]) for p in plats]] for s in SPLITS])
    print("### Hard cases\n")
    rules = Counter(r["hard_rule"] for r in every if r["hard"])
    print(f"{sum(r['hard'] for r in every)} hard posts ({100 * sum(r['hard'] for r in every) / n:.0f}%).\n")
    table(["rule", "posts"], rules.most_common())
    lens = np.array([len(r["text"]) for r in every])
    print("### Length (characters)\n")
    table(["min", "p10", "median", "p90", "max"], [[lens.min(), int(np.percentile(lens, 10)), int(np.median(lens)),
                                                    int(np.percentile(lens, 90)), lens.max()]])
    months = Counter(r["created_at"][:7] for r in every)
    print("### Month\n")
    table(["month", "posts"], sorted(months.items()))
    ann = [r for s in ("dev", "test") for r in data[s]]
    a, b = [r["label_writer"] for r in ann], [r["label_annotator"] for r in ann]
    print("### Agreement (dev + test)\n")
    print(f"{len(ann)} posts, observed agreement {np.mean(np.array(a) == np.array(b)):.3f}, "
          f"Cohen's kappa {cohen_kappa_score(a, b):.3f}.\n")
    cm = confusion_matrix(a, b, labels=LABELS)
    table(["writer \\ annotator", *LABELS], [[l, *cm[i]] for i, l in enumerate(LABELS)])


if __name__ == "__main__":
    main()
