"""`stance annotate`: labels saved at once, per annotator, surviving a killed server; export with kappa."""
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stance.annotate import SKIP, LabelStore, cohen_kappa, export_labels

ROOT = Path(__file__).resolve().parents[1]
POSTS = [("p1", "Sink every boat. About time."), ("p2", "No war with Mexico."), ("p3", "Is this even legal?"),
         ("p4", "<img src=x onerror=\"document.body.dataset.pwned=1\"> BREAKING: carrier group moves south"),
         ("p5", "Hands off Venezuela")]


@pytest.fixture
def to_label(tmp_path):
    path = tmp_path / "to_label.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t, "stance": "support", "sample_strategy": "random"}) + "\n"
                            for i, t in POSTS), encoding="utf-8")
    return path


def test_store_labels_skip_undo_and_two_annotators(to_label, tmp_path):
    db = str(tmp_path / "labels.sqlite")
    store = LabelStore(db)
    assert store.load_posts(str(to_label)) == 5 and store.load_posts(str(to_label)) == 0   # loaded once
    assert store.next_post("ana")["id"] == "p1"
    store.label("ana", "p1", "support")
    store.label("ana", "p2", SKIP)
    assert store.next_post("ana")["id"] == "p3" and store.progress("ana") == {"done": 2, "total": 5}
    assert store.undo("ana") == "p2" and store.next_post("ana")["id"] == "p2"
    store.label("ana", "p2", "oppose")
    store.label("ana", "p3", "question")
    for pid, label in (("p1", "support"), ("p2", "oppose"), ("p3", "neutral")):
        store.label("ben", pid, label)
    assert store.next_post("ben")["id"] == "p4"                       # each annotator has their own place
    reopened = LabelStore(db)                                         # a new process sees every label
    assert reopened.labels()["p3"] == {"ana": "question", "ben": "neutral"}
    result = export_labels(db, str(tmp_path / "gold.jsonl"))
    gold = [json.loads(l) for l in open(tmp_path / "gold.jsonl")]
    assert [g["id"] for g in gold] == ["p1", "p2"] and gold[0]["label_ana"] == gold[0]["label_ben"] == "support"
    assert gold[0]["sample_strategy"] == "random"                      # the sample's provenance travels on
    assert result["both"] == 3 and [d["id"] for d in result["disagreements"]] == ["p3"]
    assert result["kappa"] == pytest.approx(cohen_kappa(["support", "oppose", "question"],
                                                        ["support", "oppose", "neutral"]))
    from sklearn.metrics import cohen_kappa_score
    assert cohen_kappa(list("aabbc"), list("abbcc")) == pytest.approx(cohen_kappa_score(list("aabbc"), list("abbcc")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(to_label, db, port):
    proc = subprocess.Popen([sys.executable, "-m", "stance.cli", "annotate", str(to_label), "--db", str(db),
                             "--annotator", "ana", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("the annotate server did not start")


def test_label_with_the_keyboard_in_chromium_kill_the_server_and_continue(to_label, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    db, port = tmp_path / "labels.sqlite", _free_port()
    server = _start(to_label, db, port)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            # The page's CSP forbids eval, which Playwright's waits use; bypassing it here also means the XSS
            # check below rests on the page's own escaping, not on the CSP.
            page = browser.new_context(bypass_csp=True).new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.body.dataset.post === 'p1'")
            assert page.locator("#suggest").inner_text() == ""            # suggestion hidden by default
            for key, done in (("1", 1), ("2", 2), ("3", 3)):
                page.keyboard.press(key)
                page.wait_for_function(f"document.body.dataset.done === '{done}'")
            assert page.locator("#text").inner_text().startswith("<img src=x")   # shown as text, not run
            assert page.evaluate("document.body.dataset.pwned") is None
            assert page.locator("#text img").count() == 0
            page.keyboard.press("g")
            assert page.locator("#guide").is_visible()
            server.send_signal(signal.SIGKILL)                           # kill the server mid-session
            server.wait()
            server = _start(to_label, db, port)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.body.dataset.post === 'p4'")   # continues where it stopped
            assert "3 of 5 labelled" in page.locator("#bar").inner_text()
            page.keyboard.press("u")
            page.wait_for_function("document.body.dataset.post === 'p3'")
            browser.close()
    finally:
        server.kill()
        server.wait()
    assert LabelStore(str(db)).labels() == {"p1": {"ana": "support"}, "p2": {"ana": "oppose"}}
