"""The README's commands work as written: every `stance` line in its bash blocks parses against the real
CLI, and every one whose input files exist in a checkout (with the test's small models standing in for
the trained ones) runs and exits 0."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from stance.cli import app

ROOT = Path(__file__).resolve().parents[1]
INPUT_OPTIONS = {"--model", "-m", "--gold", "--config"}
NOT_RUN_HERE = {"annotate": "serves a page until stopped", "adapt": "fine-tunes for minutes",
                "crossfit": "fine-tunes one model per fold"}


def readme_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if "stance " not in line:
                continue
            line = line[line.index("stance "):].split(" > ")[0]      # `cat x | stance ...`, `... > out`
            commands.append(shlex.split(line)[1:])
    return commands


COMMANDS = readme_commands()


def parse(args):
    """Click's own parsing, down to the leaf command: unknown options and bad values raise."""
    command = typer.main.get_command(app)
    ctx = command.make_context("stance", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):        # a group (typer vendors its own click: no isinstance)
        protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
        name, command, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return command, ctx


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 15 and {a[0] for a in COMMANDS} >= {"score", "evaluate", "report", "sample", "annotate"}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_readme_command_parses(args):
    command, _ = parse(args)
    assert command.name == args[0] or command.name == args[1], command.name     # reached the leaf command


def inputs_of(args):
    """The files a command reads: positional arguments and the values of input options."""
    command, ctx = parse(args)
    found = []
    for param in command.params:
        value = ctx.params.get(param.name)
        reads = param.param_type_name == "argument" or any(o in INPUT_OPTIONS for o in param.opts)
        if reads and value is not None:
            found += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return found


def test_readme_commands_on_repo_files_run(tmp_path, tiny_model, tfidf_model):
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "default").symlink_to(tiny_model)
    (tmp_path / "models" / "tfidf").symlink_to(tfidf_model)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stance = lambda args: subprocess.run([sys.executable, "-m", "stance.cli", *args], cwd=tmp_path, env=env,
                                         capture_output=True, text=True, timeout=600)
    # What `make demo` leaves behind, which the README's report examples read.
    (tmp_path / "out").mkdir()
    assert stance(["score", "data/examples/export.csv", "-o", "out/example_scored.csv", "-q"]).returncode == 0
    ran = []
    for args in COMMANDS:
        if args[0] in NOT_RUN_HERE or "--engine" in args or "-" in args:
            continue                       # servers, training, Ray (tests/test_ray.py), stdin pipes
        if all(p == "-" or (tmp_path / p).exists() for p in inputs_of(args)):
            run = stance(args)
            assert run.returncode == 0, (args, run.stderr[-2000:])
            ran.append(args[0])
    assert {"evaluate", "report"} <= set(ran)
