"""Shared fixtures: small labelled files, a tiny randomly initialised BERT, trained tiny models."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

# Posts written for the tests (not from the corpus), a few per label.
POSTS = [
    ("About time. Cartels are terrorists, treat them like ISIS.", "support"),
    ("Bomb the fentanyl labs and finish the job.", "support"),
    ("Sink every narco boat, no apologies.", "support"),
    ("Que bueno, ya era hora de que alguien les pegue a los carteles.", "support"),
    ("Send the SEALs, I'm done with cartel excuses.", "support"),
    ("Best decision this year, hit them hard.", "support"),
    ("No war with Mexico. This is how Iraq started.", "oppose"),
    ("Bombing a sovereign country without consent is an act of war.", "oppose"),
    ("Hands off Venezuela, this is a pretext for oil.", "oppose"),
    ("No a la invasión. México no es colonia de nadie.", "oppose"),
    ("Support our troops: bring them home instead of this stunt.", "oppose"),
    ("Illegal strikes on fishermen are not a drug policy.", "oppose"),
    ("Is this even legal without Congress?", "question"),
    ("What happens if a drone strike kills civilians in Sinaloa?", "question"),
    ("Can someone explain who decides which boats get hit?", "question"),
    ("¿Alguien sabe si esto necesita permiso del Senado?", "question"),
    ("Does the navy warn the boats first or just fire?", "question"),
    ("How would raids inside Mexico even work legally?", "question"),
    ("BREAKING: Pentagon asked to draft options against cartels, officials say", "neutral"),
    ("Anyone else's feed all politics today? Going to bed.", "neutral"),
    ("Cartels extort lime growers in Michoacán, report says.", "neutral"),
    ("Follow me for crypto signals 🚀🚀", "neutral"),
    ("Sheinbaum holds morning press conference on security.", "neutral"),
    ("Great recipe for tacos al pastor, link in bio", "neutral"),
]


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def labelled_files(tmp_path_factory):
    """train/dev/test JSONL files built from POSTS (dev and test reuse posts: these test mechanics only)."""
    d = tmp_path_factory.mktemp("labelled")
    rows = [{"id": f"t{i}", "text": t, "label": l, "lang": "es" if any(c in t for c in "¿áéíóñ") else "en",
             "platform": "x" if i % 2 else "reddit"} for i, (t, l) in enumerate(POSTS)]
    return {name: write_jsonl(d / f"{name}.jsonl", rows) for name in ("train", "dev", "test")}


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a WordPiece vocabulary trained on the test posts."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    wp = BertWordPieceTokenizer(lowercase=True)
    corpus = [t for t, _ in POSTS] * 3
    wp.train_from_iterator(corpus, vocab_size=400, min_frequency=1)
    from tokenizers.processors import BertProcessing       # set by the class only when given a vocabulary
    wp._tokenizer.post_processor = BertProcessing(("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]")))
    # Wrapped as it is: `BertTokenizerFast(vocab_file=...)` no longer reads the file in transformers 5
    # (every token became [UNK]).
    tok = PreTrainedTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    assert tok.convert_ids_to_tokens(tok("war")["input_ids"]) == ["[CLS]", "war", "[SEP]"]
    tok.save_pretrained(str(d))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    import torch
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(str(d), safe_serialization=True)
    return d


def train_model(backbone, files, out: Path, **overrides):
    from stance.config import load_config
    from stance.train import train
    sets = [f"data.train={files['train']}", f"data.dev={files['dev']}", f"data.test={files['test']}",
            f"model.backbone={backbone}", "training.epochs=2", "training.batch_size=8", "model.max_length=32",
            "training.threads=1", f"output_dir={out}", "training.learning_rate=0.001", "model.fast_path=false"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return train(load_config(None, sets), progress=False)


@pytest.fixture(scope="session")
def tiny_model(tiny_backbone, labelled_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    train_model(tiny_backbone, labelled_files, out)
    return out


@pytest.fixture(scope="session")
def tfidf_model(labelled_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tfidf"
    train_model("tfidf", labelled_files, out)
    return out
