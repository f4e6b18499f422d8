"""TF-IDF (word and character n-grams) + logistic regression baseline, saved without pickle.

Vocabularies go to JSON and arrays to safetensors, so loading a folder a user
hands us never executes code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

_VECTORIZERS = {
    # Word uni/bigrams carry the argument; character n-grams within word boundaries
    # cope with Spanish morphology, typos and hashtags (the pilot's best Spanish model).
    "word": dict(analyzer="word", ngram_range=(1, 2), lowercase=True, sublinear_tf=True, min_df=1,
                 token_pattern=r"(?u)\b\w+\b|[?!]"),
    "char": dict(analyzer="char_wb", ngram_range=(2, 5), lowercase=True, sublinear_tf=True, min_df=2),
}


class TfidfModel:
    def __init__(self, vectorizers: dict, coef: np.ndarray, intercept: np.ndarray):
        self.vectorizers = vectorizers
        # C order: safetensors writes raw memory, so a Fortran-ordered array would load scrambled.
        self.coef = np.ascontiguousarray(coef, dtype=np.float32)
        self.intercept = np.ascontiguousarray(intercept, dtype=np.float32)

    @classmethod
    def fit(cls, texts: Sequence[str], label_ids: Sequence[int], n_labels: int, C: float = 4.0,
            max_features: int = 200000, class_weight: str | None = "balanced", seed: int = 0) -> "TfidfModel":
        vecs = {name: TfidfVectorizer(max_features=max_features, dtype=np.float32, **params)
                for name, params in _VECTORIZERS.items()}
        X = sp.hstack([v.fit_transform(texts) for v in vecs.values()]).tocsr()
        clf = LogisticRegression(C=C, max_iter=3000, class_weight=class_weight, random_state=seed)
        clf.fit(X, np.asarray(label_ids))
        if list(clf.classes_) != list(range(n_labels)):
            raise ValueError("every label must occur in the training data")
        return cls(vecs, clf.coef_, clf.intercept_)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        X = sp.hstack([v.transform(texts) for v in self.vectorizers.values()]).tocsr()
        return np.asarray(X @ self.coef.T) + self.intercept

    def save(self, folder: Path) -> None:
        meta, arrays = {}, {"coef": self.coef, "intercept": self.intercept}
        for name, vec in self.vectorizers.items():
            vocab = sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])
            meta[name] = {"params": _VECTORIZERS[name] | {"ngram_range": list(_VECTORIZERS[name]["ngram_range"])},
                          "vocabulary": [term for term, _ in vocab]}
            arrays[f"idf_{name}"] = vec.idf_.astype(np.float32)
        (folder / "tfidf.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        save_file(arrays, str(folder / "tfidf.safetensors"))

    @classmethod
    def load(cls, folder: Path) -> "TfidfModel":
        meta = json.loads((folder / "tfidf.json").read_text(encoding="utf-8"))
        arrays = load_file(str(folder / "tfidf.safetensors"))
        vecs = {}
        for name, spec in meta.items():
            params = dict(spec["params"], ngram_range=tuple(spec["params"]["ngram_range"]))
            vec = TfidfVectorizer(dtype=np.float32, **params)
            vec.vocabulary_ = {term: i for i, term in enumerate(spec["vocabulary"])}
            vec.idf_ = arrays[f"idf_{name}"]
            vecs[name] = vec
        return cls(vecs, arrays["coef"], arrays["intercept"])
