"""Fine-tuning (or the TF-IDF baseline) from one RunConfig to one model folder.

The folder is built under a temporary name and renamed at the end, so a failed
or interrupted run never leaves a half-written model behind.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from . import __version__
from .backbones import TFIDF, resolve_backbone
from .card import write_model_card
from .config import RunConfig
from .data import LabelledData, load_labelled
from .errors import StanceError
from .engines import TfidfEngine, TransformerEngine
from .fast_paths import build_fast_path, check_bf16
from .folder import COMPANION_DIR, ModelMeta
from .hardware import pick_device
from .metrics import compute_metrics, confident, coverage_curve, fit_temperature, slice_metrics, softmax
from .prevalence import write_labelled_outputs
from .blend import Blend, OutOfWriter, fit_blend
from .crossfit import Crossfit
from .textnorm import Normalizer

log = logging.getLogger("stance.train")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: Dict
    seconds: float


def set_seed(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Same config + seed => same dev metrics on CPU.
    torch.use_deterministic_algorithms(True, warn_only=True)


def _load_splits(cfg: RunConfig) -> Dict[str, LabelledData]:
    d = cfg.data
    splits = {}
    for name in ("train", "dev", "test", "external"):
        path = getattr(d, name)
        if path:
            splits[name] = load_labelled(path, d.text_column, d.label_column, d.labels)
    for name in ("train", "dev"):
        if name in splits:
            missing = [l for l in d.labels if l not in set(splits[name].labels)]
            if missing:
                raise StanceError(f"the {name} split has no posts labelled {', '.join(missing)}",
                                  path=splits[name].path, column=d.label_column,
                                  hint="every label needs examples in train and dev")
    return splits


def train(cfg: RunConfig, progress: Optional[bool] = None) -> TrainResult:
    """Train the model `cfg` describes and write its folder to `cfg.output_dir`.

    Steps return their results; `stance.json`, `metrics.json`, `config.yaml` and the card are
    written once, at the end, into a temporary folder that then replaces the output.
    """
    t0 = time.time()
    out = Path(cfg.output_dir)
    if out.exists() and not (out / "stance.json").exists() and any(out.iterdir()):
        raise StanceError("the output folder exists and is not a stance model; refusing to replace it",
                          path=str(out))
    backbone_dir = None if cfg.model.backbone == TFIDF else resolve_backbone(cfg.model.backbone)
    splits = _load_splits(cfg)
    threads = cfg.training.threads or os.cpu_count() or 1
    import torch
    torch.set_num_threads(threads)
    set_seed(cfg.training.seed)
    labels = list(cfg.data.labels)
    label2id = {label: i for i, label in enumerate(labels)}
    crossfit = Crossfit.load(cfg.training.crossfit, labels) if cfg.training.crossfit else None
    blend_plan = _plan_blend(cfg, crossfit) if cfg.training.companion else None
    normalizer = Normalizer(urls=cfg.model.normalize_urls, mentions=cfg.model.normalize_mentions,
                            emoji_to_text=cfg.model.emoji_to_text)
    texts = {k: [normalizer(t) for t in v.texts] for k, v in splits.items()}
    ids = {k: np.array([label2id[l] for l in v.labels]) for k, v in splits.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = ModelMeta(engine="tfidf" if backbone_dir is None else "transformer", labels=labels,
                         backbone=cfg.model.backbone, max_length=cfg.model.max_length,
                         normalizer=normalizer.to_dict())
        history: List[Dict] = []
        if backbone_dir is None:
            if cfg.training.crossfit_target_weight:
                raise StanceError("training.crossfit_target_weight is for fine-tuned models; the TF-IDF "
                                  "baseline trains on labels only")
            from .tfidf import TfidfModel
            log.info("fitting TF-IDF + logistic regression on %d posts", len(texts["train"]))
            TfidfModel.fit(texts["train"], ids["train"], len(labels), C=cfg.training.tfidf_C,
                           max_features=cfg.training.tfidf_max_features,
                           class_weight="balanced" if cfg.training.class_weighting == "balanced" else None,
                           seed=cfg.training.seed).save(tmp)
            engine = TfidfEngine(tmp, meta)
        else:
            targets = (crossfit.training_targets(splits["train"], ids["train"], cfg.training.crossfit_target_weight)
                       if cfg.training.crossfit_target_weight else None)
            history = _fine_tune(cfg, backbone_dir, labels, texts, ids, targets, tmp, progress)
            engine = TransformerEngine(tmp, meta, device=cfg.training.device)
        logits = {name: engine.logits(texts[name])[0] for name in ("dev", "test", "external") if name in splits}
        calibration = _calibrate(logits.get("dev"), ids.get("dev"), crossfit, cfg)
        meta = replace(meta, temperature=calibration.get("temperature", 1.0),
                       min_confidence=calibration.get("min_confidence", 0.0))
        metrics: Dict = {"calibration": calibration} if calibration else {}
        if meta.engine == "transformer":
            meta, logits, metrics["pipeline"] = _pipeline_ready(tmp, meta, normalizer, logits,
                                                                  splits["train"].texts)
        probs = {name: softmax(lg, meta.scoring_temperature) for name, lg in logits.items()}
        if blend_plan:
            meta, probs, metrics["blend"] = _blend_with_companion(blend_plan, tmp, meta, splits, probs)
        metrics.update(_evaluate(splits, probs, meta))
        # The model's error rates on labelled posts, for the share estimators of `stance report` (acc, pacc, emq).
        # A blended model: the blend's out-of-writer predictions. Otherwise dev and test: a lone transformer's
        # out-of-writer predictions come from fold models that err more than it does, and made shares worse
        # on the external set, where the blend's made them better (docs/prevalence.md).
        held = blend_plan.held if blend_plan else None
        write_labelled_outputs(tmp, labels, {"out-of-writer": (held.gold, held.probs, held.ids)} if held else
                               {name: (ids[name], probs[name], splits[name].columns.get("id"))
                                for name in ("dev", "test") if name in probs})
        if meta.engine == "transformer" and cfg.model.fast_path:
            checks = {"fast_path": lambda: build_fast_path(tmp, meta, texts, splits, logits),
                      "bf16": lambda: check_bf16(tmp, meta, texts, splits, logits)}
            for key, step in checks.items():
                try:
                    metrics[key] = step()
                except Exception as exc:   # an optional speed-up must never cost the trained model
                    log.warning("could not build or check the %s scoring path (%s); scoring will not use it",
                                key, exc)
                    metrics[key] = {"enabled": False, "reason": f"failed: {exc}"}
            meta = replace(meta, fast_path=metrics["fast_path"], bf16=metrics["bf16"])
        metrics.update({"backbone": cfg.model.backbone, "train_examples": len(texts["train"]),
                        "train_seconds": round(time.time() - t0, 1), "history": history,
                        "stance_version": __version__})
        meta.write(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        cfg.save(tmp / "config.yaml")
        write_model_card(tmp, cfg, metrics)
        ModelMeta.read(tmp)          # the folder as written must load
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainResult(out, metrics, time.time() - t0)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _pipeline_ready(folder: Path, meta: ModelMeta, normalizer, logits: Dict[str, np.ndarray],
                    raw_texts: List[str]) -> Tuple[ModelMeta, Dict[str, np.ndarray], str]:
    """Fold the temperature into the weights and the normalisation into the tokenizer, so that plain
    `transformers.pipeline` gives `stance score`'s labels and probabilities (see hf_compat.py)."""
    from .hf_compat import embed_normalizer, fold_temperature
    if meta.temperature != 1.0:
        fold_temperature(folder, meta.temperature)
        logits = {name: lg / meta.temperature for name, lg in logits.items()}
    meta = replace(meta, temperature_in_weights=True)
    why_not = embed_normalizer(folder, normalizer, meta.max_length, raw_texts)
    return meta, logits, ("same labels and probabilities as stance score" if why_not is None else
                          f"same as stance score on posts without emoji ({why_not})")


def _length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> List[np.ndarray]:
    """Shuffle, sort within mega-batches by length, shuffle the batches: little padding, still random."""
    order = rng.permutation(len(lengths))
    mega = batch_size * 50
    batches = []
    for s in range(0, len(order), mega):
        block = order[s:s + mega]
        block = block[np.argsort(-lengths[block], kind="stable")]
        batches.extend(block[i:i + batch_size] for i in range(0, len(block), batch_size))
    rng.shuffle(batches)
    return batches


def soft_cross_entropy(logits, targets, weights):
    """Cross-entropy against target distributions, each post weighted (by its label's class weight) and
    normalised as torch's class-weighted `CrossEntropyLoss` is, which it equals for one-hot targets."""
    import torch
    per_post = -(targets * torch.log_softmax(logits, dim=-1)).sum(-1)
    return (weights * per_post).sum() / weights.sum()


def _fine_tune(cfg: RunConfig, backbone_dir: Path, labels, texts, ids, targets: Optional[np.ndarray], tmp: Path,
               progress) -> List[Dict]:
    """Fine-tune with class-weighted cross-entropy (against `targets`, one distribution per training post,
    when given), length-grouped batches, linear warm-up and early stopping on dev macro-F1 (the best epoch's
    weights are kept); returns one row per epoch.

    Not `transformers.Trainer`: it requires `accelerate`, one more dependency, and its `group_by_length`,
    `EarlyStoppingCallback` and a class-weighted `compute_loss` subclass would restate this loop rather than
    remove it. Switching waits for a same-seed comparison of dev metrics and time, which has not been run.
    """
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              get_linear_schedule_with_warmup)
    from transformers.utils import logging as hf_logging

    import datasets

    hf_logging.set_verbosity_error()   # the "newly initialized classifier" warning is expected here
    hf_logging.disable_progress_bar()  # our own bar and epoch lines report progress
    datasets.disable_progress_bars()
    t = cfg.training
    device = pick_device(t.device)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(backbone_dir), num_labels=len(labels), local_files_only=True,
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    if cfg.model.freeze_embeddings:
        for p in model.base_model.embeddings.parameters():
            p.requires_grad = False
    model.to(device)

    train_ds = Dataset.from_dict({"text": texts["train"], "label": ids["train"].tolist()}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=cfg.model.max_length),
        batched=True, remove_columns=["text"])
    collate = DataCollatorWithPadding(tokenizer)
    lengths = np.array([len(x) for x in train_ds["input_ids"]])
    rng = np.random.default_rng(t.seed)
    steps_per_epoch = -(-len(train_ds) // t.batch_size)
    total_steps = steps_per_epoch * t.epochs

    counts = np.bincount(ids["train"], minlength=len(labels))
    weights = (len(ids["train"]) / (len(labels) * counts)) if t.class_weighting == "balanced" else np.ones(len(labels))
    class_weight = torch.tensor(weights, dtype=torch.float32, device=device)
    hard_loss = torch.nn.CrossEntropyLoss(weight=class_weight)
    soft_targets = None if targets is None else torch.tensor(targets, dtype=torch.float32)

    def loss_fn(logits, gold, idx):
        if soft_targets is None:
            return hard_loss(logits, gold)
        return soft_cross_entropy(logits, soft_targets[idx].to(device), class_weight[gold])
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(k in n for k in ("bias", "LayerNorm", "norm"))]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in ("bias", "LayerNorm", "norm"))]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=t.learning_rate)
    sched = get_linear_schedule_with_warmup(optim, int(t.warmup_ratio * total_steps), total_steps)
    engine = TransformerEngine.from_objects(model, tokenizer, cfg.model.max_length, device)

    show_bar = sys.stderr.isatty() if progress is None else progress
    best, best_state, stale, history = -1.0, None, 0, []
    for epoch in range(1, t.epochs + 1):
        model.train()
        e0, total_loss = time.time(), 0.0
        batches = _length_grouped_batches(lengths, t.batch_size, rng)
        bar = None
        if show_bar:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{t.epochs}", unit="batch", file=sys.stderr,
                       leave=False, dynamic_ncols=True)
        for idx in batches:
            batch = collate([train_ds[int(i)] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            gold = batch.pop("labels")
            loss = loss_fn(model(**batch).logits, gold, torch.as_tensor(idx))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            total_loss += loss.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
        model.eval()
        row = {"epoch": epoch, "train_loss": round(total_loss / len(batches), 4),
               "seconds": round(time.time() - e0, 1)}
        if "dev" in texts:
            logits, _ = engine.logits(texts["dev"], batch_size=t.eval_batch_size)
            dev_f1 = compute_metrics([labels[i] for i in ids["dev"]], [labels[i] for i in logits.argmax(1)],
                                     labels)["macro_f1"]
            row["dev_macro_f1"] = round(dev_f1, 4)
            improved = dev_f1 > best + 1e-6
            if improved:
                best, stale = dev_f1, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(row)
        log.info("epoch %d/%d  loss %.4f  dev macro-F1 %s  %.0fs%s", epoch, t.epochs, row["train_loss"],
                 row.get("dev_macro_f1", "n/a"), row["seconds"],
                 "  (best)" if row.get("dev_macro_f1") == round(best, 4) and stale == 0 else "")
        if "dev" in texts and stale >= t.early_stopping_patience:
            log.info("early stopping: no better dev macro-F1 for %d epochs", stale)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    return history


def _calibrate(dev_logits: Optional[np.ndarray], dev_ids: Optional[np.ndarray], crossfit: Optional[Crossfit],
               cfg: RunConfig) -> Dict:
    """Temperature and default confidence threshold (empty without a dev split).

    The temperature is fitted on dev; with a cross-fit result it is then multiplied by the factor that
    calibrates out-of-writer predictions, and the threshold is chosen on those (new writers) instead of dev."""
    if dev_logits is None:
        return {}
    temperature = round(fit_temperature(dev_logits, dev_ids), 4)
    if crossfit is None:
        curve = coverage_curve(softmax(dev_logits, temperature), dev_ids)
        return {"temperature": temperature, "min_confidence": curve["threshold"] or 0.0,
                "dev_coverage_at_min_confidence": curve["coverage_at_threshold"], "fitted_on": "dev"}
    return crossfit.calibration(temperature, cfg)


class BlendPlan(NamedTuple):
    companion_cfg: RunConfig    # training.companion's config, its data this run's
    blend: Blend                # chosen on both configs' out-of-writer predictions
    held: Optional[OutOfWriter]  # the blend's out-of-writer predictions, as error rates for `stance report`,
                                 # when both cross-fit files were made on this run's data and recipes
    report: Dict                # for metrics.json and the card


def _plan_blend(cfg: RunConfig, crossfit: Crossfit) -> BlendPlan:
    """Everything the blend needs but the companion's training, checked before any training starts."""
    from .config import load_config
    source = cfg.training.companion
    companion_cfg = load_config(source)
    if companion_cfg.model.backbone != TFIDF or companion_cfg.training.companion:
        raise StanceError("training.companion must name a TF-IDF config without a companion of its own",
                          path=source, column="model.backbone")
    companion_cfg = replace(companion_cfg, data=replace(cfg.data, train=cfg.training.companion_train or cfg.data.train),
                            output_dir=COMPANION_DIR)
    theirs = Crossfit.load(cfg.training.companion_crossfit, cfg.data.labels)
    stale = theirs.stale_for(companion_cfg)
    if stale:
        log.warning("%s may not fit the companion: %s; rerun `stance crossfit --config %s`",
                    cfg.training.companion_crossfit, stale, source)
    blend, report, held = fit_blend(crossfit, theirs)
    if stale or crossfit.stale_for(cfg):     # e.g. `stance adapt`: other posts, other recipe
        held = None
    log.info("blend with %s: weight %.2f on this model, temperature %.3f; out-of-writer macro-F1 %.3f "
             "(this model alone %.3f)", source, blend.weight, blend.temperature,
             report["out_of_writer"]["blend"]["macro_f1"], report["out_of_writer"]["model"]["macro_f1"])
    return BlendPlan(companion_cfg, blend, held, {"companion": source,
                                                  "companion_crossfit": cfg.training.companion_crossfit,
                                                  **blend.to_dict(), **report})


def _blend_with_companion(plan: BlendPlan, folder: Path, meta: ModelMeta, splits: Dict[str, LabelledData],
                          probs: Dict[str, np.ndarray]):
    """Train the companion into the folder and blend the labelled splits' probabilities as `stance` will."""
    from .model import StanceClassifier
    train(replace(plan.companion_cfg, output_dir=str(folder / COMPANION_DIR)), progress=False)
    companion = StanceClassifier.load(folder / COMPANION_DIR)
    blended = {name: plan.blend.apply(p, companion.predict_proba(splits[name].texts)) for name, p in probs.items()}
    return (replace(meta, blend=plan.blend.to_dict(), min_confidence=plan.report["min_confidence"]), blended,
            plan.report)


def _evaluate(splits: Dict[str, LabelledData], all_probs: Dict[str, np.ndarray], meta: ModelMeta) -> Dict:
    """Dev, test (and external) metrics of the scoring probabilities, by language and platform where the data says."""
    metrics = {}
    for name, probs in all_probs.items():
        data = splits[name]
        pred = [meta.labels[i] for i in probs.argmax(1)]
        m = compute_metrics(data.labels, pred, meta.labels, probs)
        if "lang" in data.columns:
            m["by_lang"] = slice_metrics(np.array(data.labels), np.array(pred), data.columns["lang"], meta.labels)
        if "platform" in data.columns and name == "external":
            m["by_platform"] = slice_metrics(np.array(data.labels), np.array(pred), data.columns["platform"],
                                             meta.labels)
        if name == "external":        # is a confident label right as often as it claims, on new writers?
            m["confident"] = confident(probs, np.array([meta.labels.index(l) for l in data.labels]))
        metrics[name] = m
    return metrics
