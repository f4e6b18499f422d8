"""Text normalisation applied identically at training and scoring time.

The settings are saved in each model folder, so a model always sees text the
way it was trained on it.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

import emoji

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w{1,30}")
_SPACE = re.compile(r"\s+")
_EMOJI_NAME = re.compile("\ue000([^\ue001]*)\ue001")
# Every emoji contains one of these non-ASCII characters; posts without any skip demojize's slow scan
# (same output). Also routed through it: U+FE0E, which demojize deletes even outside an emoji, and our
# private-use delimiter, which the emoji-name clean-up below rewrites.
_EMOJI_CHARS = frozenset(c for e in emoji.EMOJI_DATA for c in e if ord(c) > 127) | {"\ufe0e", "\ue000"}
_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n\r")
# Bounds the work on absurdly long cells before tokenisation truncates them anyway.
MAX_CHARS = 5000


@dataclass(frozen=True)
class Normalizer:
    """How raw posts are cleaned. Defaults follow TweetEval-style preprocessing."""

    urls: bool = True          # every link -> "http": link targets carry no stance, only noise
    mentions: bool = True      # "@someone" -> "@user": handles are sparse and leak identities
    emoji_to_text: bool = True  # "🇲🇽" -> " mexico " so uncased WordPiece vocabularies can see emoji
    lowercase: bool = False

    def __call__(self, text: str) -> str:
        if len(text) > MAX_CHARS:
            text = text[:MAX_CHARS]
        text = unicodedata.normalize("NFC", text).translate(_CONTROL)
        if self.urls:
            text = _URL.sub("http", text)
        if self.mentions:
            text = _MENTION.sub("@user", text)
        if self.emoji_to_text and not _EMOJI_CHARS.isdisjoint(text):
            # Private-use delimiters so ordinary colons in the post are left alone.
            text = emoji.demojize(text, delimiters=(" \ue000", "\ue001 "), language="alias")
            text = _EMOJI_NAME.sub(lambda m: m.group(1).replace("_", " "), text)
        if self.lowercase:
            text = text.lower()
        return _SPACE.sub(" ", text).strip()

    def tokenizer_steps(self):
        """The same cleaning as Hugging Face `tokenizers` normalizers, so a saved tokenizer applies it
        itself and a plain `transformers.pipeline` sees posts as `stance` does; None where it cannot
        (emoji to words needs the emoji package's table). Idempotent on text this class already cleaned."""
        if self.emoji_to_text:
            return None
        from tokenizers import Regex, normalizers
        steps = [normalizers.NFC(), normalizers.Replace(Regex("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]"), "")]
        if self.urls:
            steps.append(normalizers.Replace(Regex("(?i)" + _URL.pattern), "http"))
        if self.mentions:
            steps.append(normalizers.Replace(Regex(_MENTION.pattern), "@user"))
        if self.lowercase:
            steps.append(normalizers.Lowercase())
        return steps + [normalizers.Replace(Regex(_SPACE.pattern), " "), normalizers.Strip()]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Normalizer":
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})
