"""Fine-tune and score with the real packaged backbone (all-MiniLM-L6-v2 from its PyPI package)."""
import json
from pathlib import Path

import pytest

from stance import StanceClassifier
from stance.backbones import resolve_backbone
from stance.config import load_config
from stance.train import train

ROOT = Path(__file__).resolve().parents[1]


def _sample(split, per_label):
    rows = [json.loads(l) for l in open(ROOT / f"data/{split}.jsonl", encoding="utf-8")]
    out, seen = [], {}
    for r in rows:
        if seen.get(r["label"], 0) < per_label:
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            out.append(r)
    return out


@pytest.mark.slow
def test_finetune_minilm_offline_and_score(tmp_path):
    assert (resolve_backbone("minilm") / "model.safetensors").exists()
    for split, n in (("train", 60), ("dev", 20)):
        with open(tmp_path / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in _sample(split, n))
    cfg = load_config(None, [f"data.train={tmp_path / 'train.jsonl'}", f"data.dev={tmp_path / 'dev.jsonl'}",
                             "data.test=", "model.backbone=minilm", "training.epochs=3", "model.max_length=64",
                             "training.learning_rate=1e-4", f"output_dir={tmp_path / 'model'}"])
    result = train(cfg, progress=False)
    # 240 posts, 3 epochs: well above the 0.25 of chance, far below a full run.
    assert result.metrics["dev"]["macro_f1"] > 0.4
    clf = StanceClassifier.load(tmp_path / "model")
    preds = clf.predict(["Is this even legal without a vote in Congress?",
                         "BREAKING: Navy confirms another strike in the Caribbean, officials say"])
    assert len(preds) == 2 and set(preds) <= set(clf.labels)
