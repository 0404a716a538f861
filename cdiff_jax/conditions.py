"""User inputs -> model conditions: captions to token ids, label maps to one-hot masks.

Also the null condition of each modality for classifier-free guidance: the empty caption
([CLS] [SEP] then padding) and the all-zero mask.
"""

from __future__ import annotations

import numpy as np

from cdiff_jax.config import MaskEncoderConfig, ModalityConfig, TextEncoderConfig
from cdiff_jax.data.masks import masks_to_onehot
from cdiff_jax.text.tokenizer import CLS_ID, SEP_ID, TokenizedCaptions, caption_tokenizer


def encode_captions(captions: list[str], cfg: TextEncoderConfig) -> TokenizedCaptions:
    return caption_tokenizer(cfg.max_len).encode([c.lower() for c in captions])


def encode_masks(sources: list, cfg: MaskEncoderConfig) -> np.ndarray:
    return masks_to_onehot(sources, size=cfg.mask_size)


def null_condition(cfg: ModalityConfig) -> np.ndarray:
    """A batch-of-one condition that carries no information about the target."""
    if cfg.kind == "text":
        ids = np.zeros((1, cfg.encoder.max_len), np.int32)
        ids[0, :2] = CLS_ID, SEP_ID
        return ids
    return np.zeros((1, cfg.encoder.num_classes, cfg.encoder.mask_size**2), np.float32)
