"""`stance adapt`: fine-tune a trained model further on the user's own labelled posts.

The user's gold posts are split (stratified by label, seeded) into a held-out part that is never trained on
(`adapt_holdout.jsonl` in the new folder, for `stance evaluate`), a dev part and a training part. The model
continues training from its own weights on the training part plus a replay sample of its original training
posts (so it does not forget them), with early stopping and a fresh temperature on the dev part plus some of
its original dev posts. The result is a normal model folder (int8 path, card, `config.yaml`), and the card
records what was added. Before and after are compared on the held-out part with a paired bootstrap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .config import load_config
from .data import load_labelled
from .errors import StanceError
from .folder import COMPANION_DIR, ModelMeta


@dataclass
class AdaptOptions:
    holdout: float = 0.3          # share of the gold posts kept out of training, for the before/after figure
    dev: float = 0.2              # share of the rest used for early stopping and the temperature
    replay: int = 1000            # original training posts mixed in
    replay_dev: int = 200         # original dev posts added to the dev part
    epochs: int = 3
    learning_rate: float = 2e-5
    seed: int = 13


def _split(labels: List[str], share: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified `share` of the rows (at least one per label where a label has 2+ rows)."""
    picked = []
    for label in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == label]
        rng.shuffle(idx)
        k = int(round(share * len(idx)))
        picked += idx[: max(k, 1 if len(idx) > 1 else 0)]
    return np.array(sorted(picked), dtype=int)


def _write(path: Path, rows: List[Dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def adapt(model: str, gold: str, output: str, options: Optional[AdaptOptions] = None, progress=None) -> Dict:
    """Adapt `model` to the posts in `gold` (columns text and label); returns what was done and measured."""
    from .train import train

    o = options or AdaptOptions()
    folder, out = Path(model), Path(output)
    meta = ModelMeta.read(folder)
    if meta.engine != "transformer":
        raise StanceError("only transformer models can be adapted", path=model,
                          hint="retrain the TF-IDF baseline with the gold posts added to its training file")
    if out.resolve() == folder.resolve():
        raise StanceError("write the adapted model to a new folder", path=output)
    base = load_config(str(folder / "config.yaml"))
    data = load_labelled(gold, labels=meta.labels)
    if len(data) < 20:
        raise StanceError(f"{len(data)} gold posts are too few to adapt on (20 at least)", path=gold)
    rng = np.random.default_rng(o.seed)
    rows = [{"text": t, "label": l} for t, l in zip(data.texts, data.labels)]
    held = set(_split(data.labels, o.holdout, rng).tolist())
    rest = [i for i in range(len(rows)) if i not in held]
    dev_local = set(np.array(rest)[_split([data.labels[i] for i in rest], o.dev, rng)].tolist())
    train_rows = [rows[i] for i in rest if i not in dev_local]
    original = {name: [{"text": t, "label": l} for t, l in zip(d.texts, d.labels)]
                for name, d in ((n, load_labelled(p, labels=meta.labels)) for n, p in
                                (("train", base.data.train), ("dev", base.data.dev)) if p and Path(p).exists())}
    replay = [original["train"][i] for i in rng.permutation(len(original.get("train", [])))[: o.replay]]
    replay_dev = [original["dev"][i] for i in rng.permutation(len(original.get("dev", [])))[: o.replay_dev]]
    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.adapt-data"
    work.mkdir(exist_ok=True)
    paths = {"train": _write(work / "train.jsonl", train_rows + replay),
             "dev": _write(work / "dev.jsonl", [rows[i] for i in sorted(dev_local)] + replay_dev),
             "test": _write(work / "holdout.jsonl", [rows[i] for i in sorted(held)])}
    sets = [f"data.{k}={v}" for k, v in paths.items()]
    if base.training.companion:
        # A TF-IDF companion has no weights to continue from: it is trained afresh on all the posts it was
        # trained on before and the gold ones.
        before = load_labelled(base.training.companion_train or base.data.train, labels=meta.labels)
        paths["companion_train"] = _write(work / "companion_train.jsonl", [
            {"text": t, "label": l} for t, l in zip(before.texts, before.labels)] + train_rows)
        sets.append(f"training.companion_train={paths['companion_train']}")
    cfg = load_config(str(folder / "config.yaml"),
                      sets + [f"model.backbone={folder.resolve()}", f"training.epochs={o.epochs}",
                              f"training.learning_rate={o.learning_rate}", f"training.seed={o.seed}",
                              f"output_dir={out}"])
    result = train(cfg, progress=progress)
    # The data the folder was trained on lives in it, and its config.yaml points there: reproducible from the folder.
    kept = out / "adapt_data"
    kept.mkdir()
    for name in ("train", "dev"):
        Path(paths[name]).replace(kept / f"{name}.jsonl")
        setattr(cfg.data, name, str(kept / f"{name}.jsonl"))
    if "companion_train" in paths:
        Path(paths["companion_train"]).replace(kept / "companion_train.jsonl")
        cfg.training.companion_train = str(kept / "companion_train.jsonl")
    holdout_file = out / "adapt_holdout.jsonl"
    Path(paths["test"]).replace(holdout_file)
    cfg.data.test = str(holdout_file)
    cfg.save(out / "config.yaml")
    if cfg.training.companion_train:
        companion = load_config(str(out / COMPANION_DIR / "config.yaml"))
        companion.data = replace(cfg.data, train=cfg.training.companion_train)
        companion.save(out / COMPANION_DIR / "config.yaml")
    info = {"from_model": str(folder.resolve()), "gold": str(Path(gold).resolve()), "gold_posts": len(rows),
            "trained_on_gold": len(train_rows), "dev_gold": len(dev_local), "held_out": len(held),
            "replay_train": len(replay), "replay_dev": len(replay_dev), "holdout_file": holdout_file.name}
    (out / "adapt.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    with open(out / "README.md", "a", encoding="utf-8") as fh:
        fh.write(f"\n## Adapted\n\nAdapted from `{folder}` on {len(train_rows)} posts of `{gold}` (plus "
                 f"{len(dev_local)} for early stopping and the temperature) and {len(replay)} replayed training "
                 f"posts of the original model. {len(held)} gold posts were held out and never trained on: "
                 f"`{holdout_file.name}`; compare with `stance evaluate {holdout_file.name} --model ADAPTED "
                 f"--model ORIGINAL`.\n")
    work.rmdir()
    return {**info, "train_seconds": round(result.seconds, 1)}
