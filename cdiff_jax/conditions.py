"""User inputs -> model conditions, and the null condition of each modality for classifier-free guidance.

How each kind parses its inputs (captions to token ids, label maps to one-hot masks, line drawings
to stroke tokens) and what its null condition is (the empty caption, the all-zero mask, no strokes)
is its row in `cdiff_jax.modalities`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cdiff_jax.config import MaskEncoderConfig, ModalityConfig, TextEncoderConfig
from cdiff_jax.modalities import kind_entry, tokenize_captions
from cdiff_jax.text.tokenizer import TokenizedCaptions


def encode_inputs(inputs: Sequence, cfg: ModalityConfig) -> np.ndarray:
    """A batch of conditions of one modality from user inputs (captions, or files / arrays of maps)."""
    return kind_entry(cfg.kind).parse(inputs, cfg.encoder)


def encode_captions(captions: list[str], cfg: TextEncoderConfig) -> TokenizedCaptions:
    """Token ids with the flags of truncated captions, which a command line reports."""
    return tokenize_captions(captions, cfg)


def encode_masks(sources: list, cfg: MaskEncoderConfig) -> np.ndarray:
    return kind_entry("mask").parse(sources, cfg)


def null_condition(cfg: ModalityConfig) -> np.ndarray:
    """A batch-of-one condition that carries no information about the target."""
    return kind_entry(cfg.kind).null(cfg.encoder)
