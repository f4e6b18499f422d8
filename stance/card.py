"""The model card (README.md) written into every trained model folder.

The body is written here; the YAML header with Hugging Face Hub metadata (base model,
languages, licence, results as `model-index`) comes from `huggingface_hub.ModelCardData`,
so the folder reads as a normal model card on the Hub and in `huggingface_hub.ModelCard.load`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from .backbones import HUB_IDS
from .metrics import pct


def write_model_card(folder: Path, cfg, metrics: Dict) -> None:
    labels = cfg.data.labels
    lines = [
        f"# stance model: `{cfg.model.backbone}` fine-tuned for stance toward US military action against cartels",
        "",
        "Labels each post **" + "**, **".join(labels) + "** toward US military action against Latin American",
        "drug cartels, following the project's labelling guide (docs/labelling.md, after the shared codebook).",
        "",
        "```python",
        "from stance import StanceClassifier",
        f"clf = StanceClassifier.load(\"{folder.name if folder.name[:1] != '.' else cfg.output_dir}\")",
        "clf.predict([\"Treat them like ISIS. About time.\"])",
        "```",
        "",
        "## Training",
        "",
        f"- backbone: `{cfg.model.backbone}`, max_length {cfg.model.max_length}",
        f"- data: train `{cfg.data.train}` ({metrics.get('train_examples')} posts), dev `{cfg.data.dev}`, test `{cfg.data.test}`",
        f"- epochs {cfg.training.epochs} (early stopping on dev macro-F1, patience {cfg.training.early_stopping_patience}),"
        f" learning rate {cfg.training.learning_rate}, batch {cfg.training.batch_size}, seed {cfg.training.seed},"
        f" class weighting {cfg.training.class_weighting}",
        f"- training time: {metrics.get('train_seconds')} s",
        "- the full resolved configuration is `config.yaml` in this folder: `stance train --config config.yaml`"
        " reproduces the model",
        "",
    ]
    cal = metrics.get("calibration")
    blend = metrics.get("blend")
    if cal and blend:     # the blend chooses the default threshold (below)
        cal = {**cal, "min_confidence": blend["min_confidence"],
               "crossfit_coverage_at_min_confidence": blend["crossfit_coverage_at_min_confidence"]}
    if cal:
        xf = cal.get("crossfit")
        if xf:
            lines += ["## Calibration", "",
                      f"Probabilities are temperature-scaled for writers the model never saw: T = {cal['temperature']}, "
                      f"the dev-fitted {cal['dev_temperature']} times {xf['temperature_factor']}, the factor that "
                      f"calibrates out-of-writer predictions (`{xf['file']}`: {xf['folds']} models of this config, "
                      f"each trained without a group of the {xf['writers']} writers, scored the {xf['posts']:,} "
                      f"labelled posts of the writers it did not see; ECE there {xf['ece_at_dev_temperature']:.3f} "
                      f"at the dev temperature, {xf['ece_after_factor']:.3f} after). "
                      f"**Leave-writers-out macro-F1: {xf['macro_f1']:.3f}** (by fold: "
                      f"{', '.join(f'{f:.3f}' for f in xf['macro_f1_by_fold'])}). "
                      f"Default `--min-confidence` {cal['min_confidence']}: the lowest threshold at which the "
                      f"out-of-writer accuracy of the kept {'blended ' if blend else ''}posts reaches 0.90 (keeps "
                      f"{pct(cal['crossfit_coverage_at_min_confidence'])}% of them).", ""]
        else:
            lines += ["## Calibration", "",
                      f"Probabilities are temperature-scaled (T = {cal['temperature']}, fitted on dev). "
                      f"Default `--min-confidence` {cal['min_confidence']}: the lowest threshold at which dev "
                      f"accuracy of the kept posts reaches 0.90 (keeps {pct(cal['dev_coverage_at_min_confidence'])}% "
                      "of dev).", ""]
    if blend:
        oow = blend["out_of_writer"]
        row = lambda name, m: (f"| {name} | {m['macro_f1']:.3f} | {m['ece']:.3f} | {pct(m['share_at_0.9'])}% | "
                               f"{'-' if m['accuracy_at_0.9'] is None else pct(m['accuracy_at_0.9'])}% |")
        lines += ["## Blend with a TF-IDF companion", "",
                  f"`companion/` holds a TF-IDF model trained by `{blend['companion']}` on the same posts. Every "
                  "probability `stance` gives is the two models' product: softmax((w log p_model + (1 - w) log "
                  f"p_companion) / T), with w = {blend['weight']}, T = {blend['temperature']} (the companion's "
                  f"probabilities softened by its cross-fit factor {blend['companion_factor']}). w and T were chosen "
                  f"on the out-of-writer predictions of both configs (`{blend['companion_crossfit']}`), "
                  f"{blend['posts']:,} posts each scored by models that never saw its writer:", "",
                  "| out of writer | macro-F1 | ECE | confidence >= 0.9 | right there |", "|---|---:|---:|---:|---:|",
                  row("this model alone", oow["model"]), row("TF-IDF companion alone", oow["companion"]),
                  row("**blend**", oow["blend"]), ""]
    if metrics.get("pipeline"):
        lines += ["## Plain `transformers`", "",
                  "The temperature is folded into the classifier's weights and the text normalisation into the "
                  "tokenizer, so `transformers.pipeline(\"text-classification\", model=FOLDER, top_k=None, "
                  + (f"truncation=True)` gives the transformer alone, without the blend ({metrics['pipeline']}, "
                     "less the blend)." if blend else f"truncation=True)` gives {metrics['pipeline']}."), ""]
    fast = metrics.get("fast_path")
    if fast and "label_agreement" in fast:
        lines += ["## Fast CPU path (int8 ONNX)", "",
                  f"`{fast['file']}` is this model exported to ONNX with int8 matrix products (int8 weights, "
                  f"activations quantised per token after SmoothQuant with strength {fast.get('smoothquant_alpha')}, "
                  "so a post's label does not depend on the posts batched with it). "
                  f"On the {fast['n']} dev and test posts it gives the same label as the fp32 model on "
                  f"{pct(fast['label_agreement'])}% of posts, macro-F1 {100 * fast['macro_f1_delta']:+.2f} points. "
                  + ("It passed the check (>= 99% agreement, <= 0.5 points lower) and `stance score` uses it on CPU "
                     "by default; `--runtime torch` forces fp32. Int8 products run in the form that is exact on the "
                     "CPU at hand (uint8 x int8 with VNNI or on ARM, uint8 x uint8 on x86 without VNNI). The check ran "
                     f"on {fast.get('cpu_name', 'the training CPU')}; on a CPU with other kernels, `stance score` "
                     "first re-runs the check posts kept in `onnx/check.json` and falls back to PyTorch if fewer "
                     "than 99% of labels still match fp32."
                     if fast["enabled"] else
                     "It failed the check (>= 99% agreement, <= 0.5 points lower) and was removed; scoring uses PyTorch."),
                  ""]
    bf16 = metrics.get("bf16")
    if bf16:
        lines += ["## bfloat16 CPU scoring", ""]
        if "label_agreement" in bf16:
            lines += [f"With its weights cast to bfloat16 (on CPUs with native bf16: AVX-512 BF16 or AMX), this model "
                      f"gives the same label as fp32 on {pct(bf16['label_agreement'])}% of the {bf16['n']} dev and "
                      f"test posts, macro-F1 {100 * bf16['macro_f1_delta']:+.2f} points. "
                      + ("It passed the same check as the int8 path; `stance score` uses it on such CPUs when "
                         "the int8 path is not available." if bf16["enabled"] else
                         "It failed that check, so it is not used by default."), ""]
        else:
            lines += [f"Not checked: {bf16.get('reason', 'unknown')}. Scoring uses the other paths.", ""]
    titles = {"dev": "Dev results", "test": "Test results",
              "external": "Expected on new posts: the external set (writers never seen in training)"}
    for split, title in titles.items():
        m = metrics.get(split)
        if not m:
            continue
        lines += [f"## {title} (n = {m['n']})", ""]
        if split == "external":
            lines += [f"`{cfg.data.external}` was written by other people than the training, dev and test posts and "
                      "was used for nothing but this measurement: this is the score to expect on new posts. "
                      "Dev and test share writers with the training posts and overstate it.", ""]
        lines += [
                  f"macro-F1 **{pct(m['macro_f1'])}**, F_avg (support/oppose) {pct(m['f_avg'])}, "
                  f"accuracy {pct(m['accuracy'])}, ECE {m.get('ece', 0):.3f}", "",
                  "| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        if m.get("confident"):
            lines += [f"Posts with confidence >= 0.9: {pct(m['confident']['share_at_0.9'])}% of posts, "
                      f"{pct(m['confident']['accuracy_at_0.9'])}% of them right.", ""]
        for lab, pc in m["per_class"].items():
            lines.append(f"| {lab} | {pct(pc['precision'])} | {pct(pc['recall'])} | {pct(pc['f1'])} | {pc['support']} |")
        if m.get("by_lang"):
            lines += ["", "| language | n | macro-F1 | accuracy |", "|---|---:|---:|---:|"]
            for lang, lm in m["by_lang"].items():
                lines.append(f"| {lang} | {lm['n']} | {pct(lm['macro_f1'])} | {pct(lm['accuracy'])} |")
        lines.append("")
    lines += [
        "## Intended use and limits", "",
        "- For aggregate analysis of public reactions (shares of stances over time, by language or platform);",
        "  not for judging individual people.",
        "- Trained on posts written to the codebook by the project, not collected from platforms: real posts",
        "  may use slang, events and sarcasm it has not seen. Check a sample by hand before publishing figures.",
        "- English, Spanish and Spanglish only. Sarcasm and rhetorical questions remain the main error source;",
        "  posts below the confidence threshold are marked `uncertain` by `stance score`.",
        "",
    ]
    from huggingface_hub import ModelCard
    ModelCard(_hub_header(cfg, metrics) + "\n".join(lines)).save(str(folder / "README.md"))


def _hub_header(cfg, metrics: Dict) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    results: List = [EvalResult(task_type="text-classification", dataset_type="stance-us-military-action-cartels",
                                dataset_name=f"stance corpus ({split})", dataset_split=split, metric_type="f1",
                                metric_name="macro-F1", metric_value=round(metrics[split]["macro_f1"], 4))
                     for split in ("dev", "test", "external") if split in metrics]
    data = ModelCardData(language=["en", "es"], license="mit", library_name="transformers",
                         pipeline_tag="text-classification", tags=["stance-detection", "stance"],
                         base_model=HUB_IDS.get(cfg.model.backbone), model_name=f"stance-{cfg.model.backbone}",
                         eval_results=results or None)
    return f"---\n{data.to_yaml()}\n---\n"
