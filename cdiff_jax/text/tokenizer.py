"""Caption tokenizer matching the reference ``BertTokenizerFast("bert-base-uncased")``.

The reference text encoder consumes ``tokenizer(captions, truncation=True, max_length=77,
padding="max_length")``. We reproduce it bit-for-bit with transformers, but load the
bert-base-uncased vocabulary shipped inside this package (``vocab/``) so that tokenizing never
needs the Hugging Face hub or a network connection.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np

MAX_TOKENS = 77
VOCAB_SIZE = 30522
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0

VOCAB_DIR = pathlib.Path(__file__).resolve().parent / "vocab"


@dataclasses.dataclass(frozen=True)
class TokenizedCaptions:
    """Token ids ``[B, max_length]`` int32 and per-caption truncation flags ``[B]`` bool.

    ``truncated`` lets a CLI tell the user that the end of a long caption was dropped, which
    the model would otherwise do silently.
    """

    ids: np.ndarray
    truncated: np.ndarray


def _is_missing_torch_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("PyTorch was not found")


def _load_bert(vocab_dir: pathlib.Path):
    """Load the packaged tokenizer strictly from disk.

    ``BertTokenizer(vocab_file=...)`` silently builds an empty vocabulary in transformers 5, so
    we go through ``from_pretrained`` on the local directory and check the vocabulary size.
    ``local_files_only`` keeps the hub client off the network for this one call; the process's
    environment (``HF_HUB_OFFLINE`` and friends) is the user's and stays untouched, so their own
    downloads keep working. Transformers' import-time notice that PyTorch is missing is dropped:
    a tokenizer needs no PyTorch.
    """
    if not (vocab_dir / "vocab.txt").is_file():
        raise FileNotFoundError(f"tokenizer vocabulary missing: {vocab_dir / 'vocab.txt'} (reinstall cdiff_jax)")
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addFilter(_is_missing_torch_notice)
    try:
        from transformers import BertTokenizerFast
    finally:
        transformers_logger.removeFilter(_is_missing_torch_notice)

    tok = BertTokenizerFast.from_pretrained(str(vocab_dir), local_files_only=True)
    if len(tok) != VOCAB_SIZE:
        raise RuntimeError(
            f"tokenizer loaded from {vocab_dir} has {len(tok)} tokens, expected {VOCAB_SIZE} "
            "(bert-base-uncased); the packaged vocab.txt or tokenizer_config.json is damaged"
        )
    return tok


class CaptionTokenizer:
    """Turns captions into the fixed-length id rows the reference text encoder expects."""

    def __init__(self, max_length: int = MAX_TOKENS, vocab_dir: str | os.PathLike | None = None):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        self.max_length = int(max_length)
        self.bert = _load_bert(pathlib.Path(vocab_dir) if vocab_dir is not None else VOCAB_DIR)

    @property
    def vocab_size(self) -> int:
        return len(self.bert)

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return list(self.bert.convert_tokens_to_ids(list(tokens)))

    def token_counts(self, captions: Sequence[str]) -> np.ndarray:
        """Untruncated token counts including [CLS]/[SEP] (a huge max_length avoids the long-input warning)."""
        rows = self.bert(list(captions), truncation=True, max_length=1 << 30)["input_ids"]
        return np.array([len(r) for r in rows], np.int64)

    def encode(self, captions: Sequence[str]) -> TokenizedCaptions:
        """Tokenize exactly like the reference (lower-case, truncate, pad to ``max_length``).

        Empty captions are rejected because the reference would silently condition on
        ``[CLS] [SEP]`` alone, which is almost never what a user meant.
        """
        if isinstance(captions, str):
            raise TypeError("captions must be a sequence of strings, not a single string; wrap it in a list")
        captions = list(captions)
        if not captions:
            raise ValueError("no captions given; captions must be non-empty strings")
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise TypeError(f"caption {i} is {type(c).__name__}, expected str")
            if not c.strip():
                raise ValueError(f"caption {i} is empty; captions must be non-empty")
        out = self.bert(captions, truncation=True, max_length=self.max_length, padding="max_length")
        ids = np.asarray(out["input_ids"], np.int32)
        truncated = self.token_counts(captions) > self.max_length
        return TokenizedCaptions(ids=ids, truncated=truncated)

    __call__ = encode


@functools.cache
def caption_tokenizer(max_length: int = MAX_TOKENS) -> CaptionTokenizer:
    """Process-wide cached tokenizer: loading the vocabulary takes a noticeable fraction of a second."""
    return CaptionTokenizer(max_length=max_length)
