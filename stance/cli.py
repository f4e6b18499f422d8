"""The `stance` command line: a thin layer over the Python API."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import StanceError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Label posts as support / oppose / question / neutral toward US military action "
                       "against Latin American drug cartels: train, score, evaluate, report.")
data_app = typer.Typer(no_args_is_help=True, help="Check labelled data files.")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from . import __version__
        typer.echo(f"stance {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Label posts as support / oppose / question / neutral toward US military action against Latin American
    drug cartels: train, score, evaluate, report."""


def _setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (see models/default.yaml)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. --set training.epochs=3."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output model folder (overrides output_dir)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and the final line."),
):
    """Fine-tune a classifier (or the TF-IDF baseline) as one config file describes."""
    _setup_logging(quiet)
    from .config import load_config
    from .train import train as run_train
    cfg = load_config(str(config) if config else None, [*set_, *([f"output_dir={output}"] if output else [])])
    result = run_train(cfg)
    m = result.metrics
    line = f"saved {result.output_dir} in {result.seconds:.0f}s"
    for split in ("dev", "test", "external"):
        if split in m:
            line += f"; {split} macro-F1 {m[split]['macro_f1']:.3f}"
    typer.echo(line)


@app.command()
def score(
    inputs: List[str] = typer.Argument(..., help="CSV, TSV, JSONL or Parquet files (.gz accepted); - for stdin. "
                                       "With --engine ray also folders and glob patterns."),
    output: str = typer.Option(..., "--output", "-o", help="Output file; - for stdout. With --engine ray: a folder "
                               "of Parquet parts, _manifest.json and _SUCCESS (written last)."),
    model: Path = typer.Option(Path("models/default"), "--model", "-m", help="Trained model folder."),
    text_column: List[str] = typer.Option(["text"], "--text-column",
                                          help="Column holding the post text; repeat to join several with a blank "
                                               "line (e.g. --text-column title --text-column selftext for Reddit)."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Column holding post ids (checked to exist)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Posts per model call."),
    chunk_size: int = typer.Option(4096, "--chunk-size", min=1, help="Rows read, scored and checkpointed at a time (with --engine ray: rows per part, about)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Output format: csv, tsv, jsonl or parquet (default: from the name)."),
    input_format: Optional[str] = typer.Option(None, "--input-format", help="Input format when the name does not tell (stdin: csv)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", min=0.0, max=1.0,
                                                   help="Mark rows below this top probability 'uncertain' (default: the model's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last finished chunk."),
    excel_safe: bool = typer.Option(False, "--excel-safe", help="CSV/TSV output: escape text cells (header included) starting with = + - @ so spreadsheets do not run them; numbers stay numbers."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Input text encoding."),
    on_bad_lines: str = typer.Option("error", "--on-bad-lines", help="error (stop) or skip (count and report) malformed rows."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the model (default: all cores; with --engine ray: per worker, default 1)."),
    runtime: str = typer.Option("auto", "--runtime",
                                help="auto (on CPU: the model's int8 ONNX file where it passed its check and int8 products are exact on this CPU, re-checked when the check ran on another kind of CPU; else bf16 where the CPU has it natively and the model passed its bf16 check; else fp32 PyTorch; a GPU through PyTorch), torch (fp32), onnx (int8) or bf16. The choice and its reason are printed."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data actors on this "
                               "machine, or on a cluster with --address; needs `pip install 'stance\\[ray]'`)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: join this Ray cluster "
                                          "(e.g. 10.0.0.5:6379, or auto) instead of starting a local one."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="With --engine ray: actors that each load "
                                          "the model once (default: as many as the CPUs, or GPUs, allow)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, help="With --engine ray: GPUs per actor "
                                          "(fractions share a GPU); 0 scores on CPUs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, only the summary."),
):
    """Score posts from exports; adds stance, confidence, p_<label> and stance_note columns."""
    _setup_logging(quiet)
    from .model import StanceClassifier
    from .scoring import ScoreOptions, score_files
    opts = ScoreOptions(text_column=text_column[0] if len(text_column) == 1 else text_column, id_column=id_column, batch_size=batch_size, chunk_size=chunk_size,
                        input_format=input_format, output_format=fmt, min_confidence=min_confidence,
                        resume=resume, excel_safe=excel_safe, encoding=encoding, on_bad_lines=on_bad_lines,
                        progress=False if quiet else None)
    if engine == "ray":
        if fmt not in (None, "parquet"):
            raise StanceError("--engine ray writes Parquet parts; drop --format or use --format parquet")
        from .ray_scoring import score_with_ray
        summary = score_with_ray(inputs, output, str(model), opts, address=address, workers=workers,
                                 gpus_per_worker=gpus_per_worker, threads=threads, runtime=runtime)
    elif engine != "local":
        raise StanceError(f"unknown engine '{engine}'; use local or ray")
    elif address or workers or gpus_per_worker:
        raise StanceError("--address, --workers and --gpus-per-worker need --engine ray")
    else:
        clf = StanceClassifier.load(model, threads=threads, runtime=runtime)
        logging.getLogger("stance.score").info("model %s, runtime %s: %s", model, clf.runtime, clf.runtime_reason)
        summary = score_files(inputs, output, clf, opts)
    typer.echo(summary.to_text(), err=True)


@app.command()
def evaluate(
    data: List[str] = typer.Argument(..., help="Labelled files (CSV, TSV, JSONL, Parquet)."),
    model: List[Path] = typer.Option([Path("models/default")], "--model", "-m",
                                     help="Model folder; repeat to compare models side by side."),
    output: Path = typer.Option(..., "--output", "-o", help="Report folder (metrics.json, report.md, report.html, PNGs)."),
    text_column: str = typer.Option("text", "--text-column"),
    label_column: str = typer.Option("label", "--label-column"),
    label_map: Optional[str] = typer.Option(None, "--label-map", help="JSON/YAML map of gold labels, e.g. {FAVOR: support}."),
    runtime: str = typer.Option("auto", "--runtime", help="auto, torch, onnx or bf16 (as for `stance score`)."),
):
    """Evaluate one or more models on labelled posts; writes a readable and a machine-readable report."""
    _setup_logging()
    from .evaluation import evaluate_models
    from .reporting import write_evaluation_report
    result = evaluate_models([str(m) for m in model], data, text_column, label_column, label_map, runtime=runtime)
    write_evaluation_report(result, output)
    for name, m in result["models"].items():
        if m.get("absent_labels"):
            typer.echo(f"warning: no gold posts labelled {', '.join(m['absent_labels'])}: macro-F1 counts them as "
                       f"F1 = 0; over the labels present it is {m['macro_f1_present_labels']:.3f}", err=True)
        typer.echo(f"{name}: macro-F1 {m['macro_f1']:.3f} [{m['ci']['macro_f1'][0]:.3f}, {m['ci']['macro_f1'][1]:.3f}]"
                   f", F_avg {m['f_avg']:.3f}, accuracy {m['accuracy']:.3f} (n={m['n']})")
    typer.echo(f"report: {output / 'report.html'}")


@app.command()
def report(
    scored: str = typer.Argument(..., help="A file written by `stance score`."),
    output: Path = typer.Option(..., "--output", "-o", help="Report folder."),
    estimator: Optional[str] = typer.Option(
        None, "--estimator", "-e",
        help="How shares are estimated: cc (count predicted labels), pcc (mean probabilities), acc / pacc "
             "(adjusted for the model's confusion on labelled posts), emq (EM prior adjustment), ppi (a random "
             "hand-labelled sample of this export, --gold, corrects the model; valid intervals without trusting "
             "it). Default: acc (the lowest error over both measured pools, and intervals that cover on posts by unseen "
             "writers when the model is blended: docs/prevalence.md), falling back to pcc when no labelled outputs "
             "are known."),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="The model folder that scored the file (default: the one recorded "
                                              "in SCORED.meta.json), for its outputs on labelled posts."),
    gold: Optional[str] = typer.Option(None, "--gold", help="Hand-labelled posts of this export (columns id and "
                                       "label), joined by --id-column: used by ppi, and by acc/pacc/emq instead "
                                       "of the model's own labelled posts. Draw them at random "
                                       "for valid intervals."),
    by: List[str] = typer.Option([], "--by", help="Also estimate shares per value of this column (repeatable); "
                                 "lang, platform and source are always used when present."),
    id_column: str = typer.Option("id", "--id-column", help="Column joining --gold to the scored file."),
    date_column: Optional[str] = typer.Option(None, "--date-column", help="Date column (default: created_at or date if present)."),
):
    """Estimate stance shares in a scored export, with 95% intervals: overall, over time, by language and platform."""
    _setup_logging()
    from .share_report import write_scored_report
    summary = write_scored_report(scored, output, estimator=estimator, model=str(model) if model else None,
                                  gold=gold, by=by, id_column=id_column, date_column=date_column)
    typer.echo(summary)


@app.command()
def sample(
    scored: str = typer.Argument(..., help="A file written by `stance score` (or any export, for random/diverse)."),
    n: int = typer.Option(..., "-n", min=1, help="How many posts to pick."),
    output: str = typer.Option(..., "--output", "-o", help="CSV, TSV or JSONL to label by hand."),
    strategy: str = typer.Option("random", "--strategy",
                                 help="random (the only one valid for unbiased accuracy figures and for "
                                      "`stance report --estimator ppi`), uncertainty (smallest margin between the "
                                      "two most likely labels), stratified (equal numbers per predicted label and "
                                      "language), diverse (one post per cluster of similar posts)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed picks the same posts."),
    text_column: str = typer.Option("text", "--text-column"),
):
    """Pick posts from a scored export for a person to label; keeps every column, never empty or repeated texts."""
    from .sampling import output_columns, sample_scored, write_sample
    result = sample_scored(scored, n, strategy, seed, text_column)
    write_sample(result, output, output_columns(scored))
    typer.echo(f"picked {len(result.rows):,} of {result.eligible:,} posts by {strategy} -> {output} "
               f"({result.skipped_empty:,} empty and {result.skipped_repeats:,} repeated texts never picked)")


@app.command()
def annotate(
    target: str = typer.Argument(..., help="The posts to label (CSV/JSONL, e.g. from `stance sample`), or the word "
                                 "`export` followed by a label database."),
    db: Optional[str] = typer.Argument(None, help="With `export`: the label database (.sqlite)."),
    database: Optional[str] = typer.Option(None, "--db", help="Label database (default: FILE.labels.sqlite)."),
    annotator: str = typer.Option("annotator", "--annotator", help="Your name: each annotator keeps their own labels."),
    port: int = typer.Option(8765, "--port"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    show_suggestion: bool = typer.Option(False, "--show-suggestion",
                                         help="Show the model's label (hidden by default: it anchors judgement)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="With `export`: the gold JSONL to write."),
    text_column: str = typer.Option("text", "--text-column"),
    id_column: str = typer.Option("id", "--id-column"),
):
    """Label posts in the browser (keys 1-4, s skip, u undo, g guide); `stance annotate export DB -o gold.jsonl`
    writes the labels, both annotators' columns and Cohen's kappa."""
    from .annotate import export_labels, serve
    if target == "export":
        if not db or not output:
            raise StanceError("usage: stance annotate export DB -o gold.jsonl")
        result = export_labels(db, output)
        kappa = "n/a (one annotator)" if result["kappa"] is None else f"{result['kappa']:.3f} on {result['both']} posts"
        typer.echo(f"{result['labelled']} labelled posts ({result['agreed']} agreed) -> {output}; annotators "
                   f"{', '.join(result['annotators'])}; Cohen's kappa {kappa}")
        for d in result["disagreements"][:20]:
            typer.echo(f"  disagreement {d['id']}: " + ", ".join(f"{k[6:]}={v}" for k, v in d.items()
                                                                 if k.startswith("label_")) + f" | {d['text'][:80]}")
        return
    serve(target, database, annotator, port, host, show_suggestion, text_column, id_column)


@app.command()
def adapt(
    model: Path = typer.Option(..., "--model", "-m", help="The trained model folder to start from."),
    gold: str = typer.Option(..., "--gold", help="Your labelled posts (columns text and label), e.g. from "
                             "`stance annotate export`."),
    output: str = typer.Option(..., "--output", "-o", help="The new model folder."),
    holdout: float = typer.Option(0.3, "--holdout", min=0.1, max=0.6, help="Share of the gold posts held out "
                                  "for the before/after comparison (never trained on)."),
    replay: int = typer.Option(1000, "--replay", min=0, help="Original training posts mixed in, so the model "
                               "keeps what it knew."),
    epochs: int = typer.Option(3, "--epochs", min=1),
):
    """Fine-tune a model further on your own labelled posts; compares before and after on held-out gold posts."""
    _setup_logging()
    from .adapt import AdaptOptions, adapt as run_adapt
    from .evaluation import evaluate_models
    info = run_adapt(str(model), gold, output, AdaptOptions(holdout=holdout, replay=replay, epochs=epochs))
    holdout_file = str(Path(output) / info["holdout_file"])
    result = evaluate_models([output, str(model)], [holdout_file], n_boot=1000)
    after, before = result["models"].values()          # in the order given: adapted first
    c = result["comparison"][0]
    typer.echo(f"adapted on {info['trained_on_gold']} gold + {info['replay_train']} replayed posts in "
               f"{info['train_seconds']:.0f}s -> {output}")
    typer.echo(f"held-out gold ({info['held_out']} posts): macro-F1 {before['macro_f1']:.3f} before, "
               f"{after['macro_f1']:.3f} after ({100 * c['difference']:+.1f} points, 95% CI "
               f"{100 * c['ci_low']:+.1f} to {100 * c['ci_high']:+.1f}, p = {c['p_value']:.3f})")


@app.command()
def crossfit(
    config: Path = typer.Option(..., "--config", "-c", help="YAML run config to cross-fit (see models/default.yaml)."),
    output: str = typer.Option(..., "--output", "-o", help="The JSON file to write, e.g. models/default.crossfit.json; "
                               "name it in the config as training.crossfit (or, for a TF-IDF config a model is "
                               "blended with, in that model's config as training.companion_crossfit)."),
    folds: int = typer.Option(3, "--folds", min=2, help="Groups of writers: one model is trained without each."),
    group_column: Optional[str] = typer.Option(None, "--group-column", help="Column naming each post's writer or "
                                               "source (default: the writer in ids like b3-0012)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. --set training.epochs=3."),
):
    """Score every labelled post with a model that never saw its writer: leave-writers-out macro-F1, and the
    temperature and confidence threshold for new writers (for training.crossfit), and the blend with a TF-IDF
    companion (training.companion).

    Trains --folds models of the config, each as long as one training; finished folds are kept, a rerun continues."""
    _setup_logging()
    from .config import load_config
    from .crossfit_train import run_crossfit
    result = run_crossfit(load_config(str(config), set_), output, folds=folds, group_column=group_column)
    s = result.summary()
    typer.echo(f"wrote {output}: leave-writers-out macro-F1 {s['macro_f1']:.3f} (folds "
               f"{', '.join(f'{f:.3f}' for f in s['macro_f1_by_fold'])}; {s['writers']} writers, {s['posts']:,} "
               f"posts); temperature factor {s['temperature_factor']} (ECE {s['ece_at_dev_temperature']:.3f} -> "
               f"{s['ece_after_factor']:.3f})")


@data_app.command("check")
def data_check(
    paths: List[str] = typer.Argument(..., help="Labelled files; give all splits together to check leakage."),
    text_column: str = typer.Option("text", "--text-column"),
    label_column: str = typer.Option("label", "--label-column"),
):
    """Validate labelled files. Exit 0 clean, 1 problems found, 2 unreadable input."""
    from .check import check_files, summary_table
    rep = check_files(paths, text_column, label_column)
    typer.echo(summary_table(rep))
    if rep.problems:
        typer.echo(f"\n{len(rep.problems)} problem(s):", err=True)
        for p in rep.problems[:200]:
            typer.echo(f"  {p}", err=True)
        if len(rep.problems) > 200:
            typer.echo(f"  ... and {len(rep.problems) - 200} more", err=True)
    else:
        typer.echo("\nno problems found")
    raise typer.Exit(rep.exit_code)


def main() -> None:
    try:
        app()
    except StanceError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
