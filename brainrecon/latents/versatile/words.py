"""Word-level tokenizer of the project's small CLIP text encoder.

The published CLIP uses a byte-pair tokenizer with a 49,408-entry vocabulary; the small
text encoder trained on the simulator's captions (``scripts/train_clip_small.py``) needs
only the few hundred words those captions are made of, so it reads whole words instead.

Rules (stored in ``vocab.json`` beside the weights so that training and use agree):

* text is lower-cased and split into runs of ``[a-z0-9]`` characters; punctuation and
  quotes are dropped (they carry no content in the captions);
* a sequence is ``<bos> w1 ... wk <eos> <pad> ... <pad>`` of exactly ``context_length``
  ids; longer texts are truncated to ``context_length - 2`` words so that ``<eos>`` is
  always present (the text model pools its output at the ``<eos>`` position);
* words that are not in the vocabulary map to ``<unk>``.

Ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, words from 4. The end-of-text id
must not be 2: transformers' ``CLIPTextModel`` treats ``eos_token_id == 2`` as a legacy
configuration and then pools at the largest input id instead of at the first ``<eos>``
(see ``CLIPTextTransformer``/``CLIPTextModel.forward``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError

FORMAT = "brainrecon-word-tokenizer"
VERSION = 1
PATTERN = r"[a-z0-9]+"
SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

_WORD_RE = re.compile(PATTERN)


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (runs of ``[a-z0-9]``), punctuation dropped."""
    return _WORD_RE.findall(text.lower())


class WordTokenizer:
    """Maps texts to fixed-length id sequences ``<bos> words <eos> <pad>...``.

    Parameters
    ----------
    words : sequence of str
        Vocabulary words (lower-case, no specials), in id order starting at 4.
    context_length : int
        Length of every id sequence (the text model's ``max_position_embeddings``).
    """

    pad_token_id = PAD_ID
    unk_token_id = UNK_ID
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID

    def __init__(self, words: Sequence[str], context_length: int) -> None:
        if context_length < 3:
            raise ConfigError(f"word tokenizer context_length: expected >= 3 (<bos>, a word, <eos>), got {context_length}")
        words = list(words)
        bad = [w for w in words if w in SPECIALS or _WORD_RE.fullmatch(w) is None]
        if bad:
            raise ConfigError(f"word tokenizer vocabulary: entries must be lower-case [a-z0-9]+ words, got {bad[:5]}")
        if len(set(words)) != len(words):
            raise ConfigError("word tokenizer vocabulary: duplicate words")
        self.words = words
        self.context_length = int(context_length)
        self.vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
        self.vocab.update({w: i + len(SPECIALS) for i, w in enumerate(words)})

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (the text model's ``vocab_size``)."""
        return len(self.vocab)

    # ------------------------------------------------------------------ build / io
    @classmethod
    def build(cls, texts: Iterable[str], context_length: int, min_count: int = 1) -> WordTokenizer:
        """Vocabulary of the words occurring at least ``min_count`` times in ``texts``.

        Words are ordered by decreasing count, then alphabetically, so the same texts
        always give the same ids.
        """
        counts = Counter(w for t in texts for w in split_words(t))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept, context_length)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "lowercase": True,
            "pattern": PATTERN,
            "context_length": self.context_length,
            "special_tokens": {"pad": SPECIALS[PAD_ID], "unk": SPECIALS[UNK_ID], "bos": SPECIALS[BOS_ID],
                               "eos": SPECIALS[EOS_ID]},
            "vocab": self.vocab,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``vocab.json`` (``path`` is the file or its folder)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "vocab.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        """Read ``vocab.json`` written by :meth:`save` (``path`` is the file or its folder)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "vocab.json"
        if not path.is_file():
            raise MissingWeightsError(path, "word tokenizer of the small CLIP (vocab.json)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: not valid JSON ({e})") from e
        if not is_word_vocab(d):
            raise DataFormatError(f"{path}: expected a {FORMAT!r} vocabulary, got format {d.get('format')!r}")
        if d.get("version") != VERSION or d.get("pattern") != PATTERN:
            raise DataFormatError(
                f"{path}: word tokenizer version {d.get('version')} / pattern {d.get('pattern')!r}; "
                f"this brainrecon reads version {VERSION} with pattern {PATTERN!r}"
            )
        vocab: dict[str, int] = d["vocab"]
        for i, s in enumerate(SPECIALS):
            if vocab.get(s) != i:
                raise DataFormatError(f"{path}: special token {s} must have id {i}, got {vocab.get(s)}")
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise DataFormatError(f"{path}: vocabulary ids must be 0..{len(by_id) - 1} without gaps")
        return cls([w for w, _ in by_id[len(SPECIALS):]], int(d["context_length"]))

    # ------------------------------------------------------------------ encode
    def encode(self, text: str) -> list[int]:
        """Ids of one text, ``<bos> ... <eos>`` padded with ``<pad>`` to ``context_length``."""
        ids = [self.vocab.get(w, UNK_ID) for w in split_words(text)][: self.context_length - 2]
        ids = [BOS_ID, *ids, EOS_ID]
        return ids + [PAD_ID] * (self.context_length - len(ids))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, context_length)`` int64 ids of ``texts``."""
        if isinstance(texts, str):
            raise ConfigError("word tokenizer: expected a sequence of texts, got a single string")
        out = np.full((len(texts), self.context_length), PAD_ID, dtype=np.int64)
        for i, t in enumerate(texts):
            out[i] = self.encode(str(t))
        return out

    def unknown_fraction(self, texts: Iterable[str]) -> float:
        """Fraction of the words of ``texts`` that map to ``<unk>`` (diagnostics)."""
        words = [w for t in texts for w in split_words(t)]
        return float(np.mean([w not in self.vocab for w in words])) if words else 0.0


def is_word_vocab(d: object) -> bool:
    """Whether a parsed ``vocab.json`` is ours (the published CLIP's is a plain token->id map)."""
    return isinstance(d, dict) and d.get("format") == FORMAT
