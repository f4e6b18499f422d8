"""A trained folder that plain `transformers.pipeline("text-classification")` scores as `stance score` does.

Two things would otherwise differ: the temperature fitted on dev (which `stance` divides the logits by)
and `stance`'s text normalisation (links, handles, spaces). Both move into the saved files: the
classifier's last layer is divided by the temperature, and the tokenizer carries the normalisation
as `tokenizers` normalizers. `stance` then scores with temperature 1 (stance.json says the fitted
value is in the weights) and its own normalisation is a no-op the second time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .textnorm import Normalizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MARK = "stance_normalizer"      # in tokenizer_config.json: the normalisation the tokenizer already applies


def fold_temperature(folder: Path, temperature: float) -> None:
    """Divide the classifier's output layer by ``temperature``: logits / T become the model's own."""
    import torch
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True,
                                                               use_safetensors=True)
    n = model.config.num_labels
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n]
    if not heads:
        raise ValueError(f"no linear layer with {n} outputs in {type(model).__name__}")
    head = heads[-1]        # the last such layer produces the logits in every *ForSequenceClassification
    with torch.no_grad():
        head.weight /= temperature
        if head.bias is not None:
            head.bias /= temperature
    model.save_pretrained(str(folder), safe_serialization=True)


def embed_normalizer(folder: Path, normalizer: Normalizer, max_length: int, raw_texts: Sequence[str]) -> Optional[str]:
    """Put ``normalizer`` into the folder's tokenizer and cut inputs at ``max_length`` tokens.

    The tokenizer is saved as a generic fast tokenizer, because transformers 5 rebuilds a named
    class's normalizer (BertTokenizer, XLMRobertaTokenizer) from its settings and would drop ours.
    Kept only if, on ``raw_texts``, the new tokenizer gives on raw text the ids the old one gives on
    normalised text, and on normalised text the same ids as before (so `stance score` is unchanged).
    Returns why the normalisation is not embedded, or None when it is.
    """
    from tokenizers import normalizers
    from transformers import AutoTokenizer
    old = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config_path = folder / "tokenizer_config.json"
    if json.loads(config_path.read_text(encoding="utf-8")).get(MARK) == normalizer.to_dict():
        return None              # a folder made from a stance folder (`stance adapt`): already inside
    steps = normalizer.tokenizer_steps()
    if steps is None:
        why_not = "emoji are turned into words by the emoji package, which a tokenizer cannot do"
    elif not getattr(old, "is_fast", False):
        why_not = "the tokenizer is not a fast (Rust) tokenizer"
    else:
        why_not = None
    backup = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).exists()}
    new = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    new.model_max_length = max_length        # pipeline(..., truncation=True) then cuts where stance does
    if why_not is None:
        own = new.backend_tokenizer.normalizer
        new.backend_tokenizer.normalizer = normalizers.Sequence(steps + ([own] if own is not None else []))
    new.save_pretrained(str(folder))
    if why_not is None:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config[MARK] = normalizer.to_dict()
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        reloaded = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        clean = [normalizer(t) for t in raw_texts]
        ids = lambda tok, texts: tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
        if ids(reloaded, raw_texts) != ids(old, clean) or ids(reloaded, clean) != ids(old, clean):
            for name in TOKENIZER_FILES:               # keep the tokenizer stance was trained with
                if name in backup:
                    (folder / name).write_bytes(backup[name])
                elif (folder / name).exists():
                    (folder / name).unlink()
            why_not = "the tokenizer with the normalisation inside gave other tokens on training posts"
    return why_not
