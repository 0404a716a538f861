"""OpenAI CLIP's byte-level BPE tokenizer (`clip.tokenize`), for the CLIP score of the evaluations.

CLIP reads captions as `<|startoftext|> BPE ids <|endoftext|>` padded with 0 to 77 ids; the text tower takes
its features at the end token. The ids come from the merges of the vocabulary shipped in `vocab/`
(`bpe_simple_vocab_16e6.txt.gz`, copied from openai/CLIP, MIT licence), so no download is needed.

Deviation from the original: CLIP cleans every caption with `ftfy.fix_text` first, and ftfy is not a dependency.
Its deterministic fixes are done here (Latin ligatures and full/half-width forms to plain letters, curly
quotes to straight ones, NFC normalisation); its heuristic parts are not: repairing mojibake (`cafÃ©` stays
as it is instead of becoming `café`), removing control characters and terminal escapes, and its own HTML
unescaping (the original unescapes up to three times, here twice). Captions of ordinary text tokenize
identically.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import pathlib
import unicodedata
from collections.abc import Sequence

import numpy as np
import regex

CONTEXT_LENGTH = 77
VOCAB_PATH = pathlib.Path(__file__).resolve().parent / "vocab" / "bpe_simple_vocab_16e6.txt.gz"
START, END = "<|startoftext|>", "<|endoftext|>"
MERGES = 49152 - 256 - 2  # the vocabulary's size minus the byte symbols and the two special tokens
END_OF_WORD = "</w>"

# Special tokens whole, English contractions, runs of letters, single digits, runs of other non-space symbols;
# matched case-insensitively on the lower-cased caption.
_PIECES = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", regex.IGNORECASE
)
_WHITESPACE = regex.compile(r"\s+")
# ftfy's deterministic fixes (see the module docstring).
_LIGATURES = {ord(c): unicodedata.normalize("NFKC", c) for c in "ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬆ"} | {ord("ﬅ"): "ſt"}
_WIDTHS = {i: unicodedata.normalize("NFKC", chr(i)) for i in range(0xFF01, 0xFFF0)} | {0x3000: " "}
_QUOTES = {**{i: "'" for i in (0x02BC, *range(0x2018, 0x201C))}, **{i: '"' for i in range(0x201C, 0x2020)}}


def byte_symbols() -> list[str]:
    """One printable character per byte value: bytes that are printable Latin-1 stand for themselves, the rest
    (controls, space, soft hyphen, ...) for the characters from U+0100 on, in byte order. BPE works on these."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = dict(zip(printable, map(chr, printable))) | {b: chr(256 + i) for i, b in enumerate(others)}
    return [table[b] for b in range(256)]


def clean(text: str) -> str:
    """The caption as CLIP's tokenizer sees it: fixed (ftfy's deterministic part), HTML-unescaped twice, runs of
    whitespace to one space, stripped, lower-cased."""
    text = unicodedata.normalize("NFC", text.translate(_LIGATURES).translate(_WIDTHS).translate(_QUOTES))
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class CLIPTokenizer:
    """`encode(text)`: CLIP's BPE ids of one caption (without start / end tokens); `tokenize(texts)`: the padded
    [N, context_length] int32 rows the text tower takes."""

    def __init__(self, vocab_path: str | os.PathLike = VOCAB_PATH):
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : MERGES + 1]  # the first line is a version header
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_path}: not CLIP's BPE vocabulary (need {MERGES} merge lines of two symbols)")
        self.byte_symbol = byte_symbols()
        symbols = sorted(self.byte_symbol)  # ids in code point order: the printable bytes, then U+0100 on
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.start_id, self.end_id = self.ids[START], self.ids[END]
        self._words: dict[str, tuple[str, ...]] = {}  # captions repeat words; merging is the slow part

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Merge the word's symbols, lowest-ranked adjacent pair first (every occurrence, left to right)."""
        if word in self._words:
            return self._words[word]
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, MERGES))
            if pair not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._words[word] = tuple(parts)
        return self._words[word]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _PIECES.findall(clean(text)):
            if piece in (START, END):
                ids.append(self.ids[piece])
                continue
            word = "".join(self.byte_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.ids[part] for part in self._bpe(word))
        return ids

    def tokenize(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True
    ) -> np.ndarray:
        """`clip.tokenize`: [N, context_length] int32; a longer caption is cut, its last kept id set to the end
        token (truncate=True), or refused (ValueError)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = np.zeros((len(texts), context_length), np.int32)
        for i, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(
                        f"caption {i} has {len(ids)} tokens, more than the context length "
                        f"{context_length}; shorten it or pass truncate=True"
                    )
                ids = ids[: context_length - 1] + [self.end_id]
            rows[i, : len(ids)] = ids
        return rows


@functools.cache
def clip_tokenizer() -> CLIPTokenizer:
    """The process-wide tokenizer on the shipped vocabulary (reading it takes a fraction of a second)."""
    return CLIPTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True) -> np.ndarray:
    """`clip.tokenize(texts, context_length, truncate)` as int32 rows (truncating by default, as the evaluation
    calls it)."""
    return clip_tokenizer().tokenize(texts, context_length, truncate)
