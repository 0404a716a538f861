"""Every kind of condition modality in one table: what each part of the code needs to know about it.

A modality of a system has a name (its key in `SystemConfig.modalities`) and a kind (text, mask,
scribble); code that depends on what a condition *is* looks its kind up here, never at the name.
Adding a kind means: its encoder config in `cdiff_jax.config.ENCODER_CONFIGS`, its encoder module
under `cdiff_jax.nn`, and one row below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cdiff_jax.config import MaskEncoderConfig, ScribbleEncoderConfig, TextEncoderConfig
from cdiff_jax.data.masks import masks_to_onehot
from cdiff_jax.data.scribbles import scribbles_to_tokens
from cdiff_jax.nn.mask_encoder import MaskEncoder
from cdiff_jax.nn.scribble_encoder import ScribbleEncoder
from cdiff_jax.nn.text_encoder import TextEncoder
from cdiff_jax.text.tokenizer import CLS_ID, PAD_ID, SEP_ID, TokenizedCaptions, caption_tokenizer


@dataclasses.dataclass(frozen=True)
class ModalityKind:
    config: type  # its encoder config, as in cdiff_jax.config.ENCODER_CONFIGS
    encoder: type  # the nnx module built from that config
    example_field: str  # the field of a dataset example holding the raw condition (cdiff_jax.data)
    batch_key: str  # the field of a training batch holding the parsed condition (cdiff_jax.data.pipeline)
    parse: Callable[[Sequence, Any], np.ndarray]  # (user inputs, encoder config) -> a batch of conditions
    null: Callable[[Any], np.ndarray]  # encoder config -> the batch-of-one condition that says nothing
    official_name: str | None  # its name in the official collaborative checkpoint's keys; None: there is none
    spatial: bool  # a layout condition: the released re-weighting decays its weight with the timestep
    content: Callable[[Any], Any]  # a batch of conditions -> [B, tokens] bool: the tokens that carry content


def tokenize_captions(captions: Sequence[str | bytes], cfg: TextEncoderConfig) -> TokenizedCaptions:
    """Lower-cased (as the reference's dataset does) WordPiece ids, with truncation flags."""
    texts = [c.decode("utf-8") if isinstance(c, bytes) else c for c in captions]
    return caption_tokenizer(cfg.max_len).encode([t.lower() for t in texts])


def _null_tokens(cfg: TextEncoderConfig) -> np.ndarray:
    """The empty caption: [CLS] [SEP], then padding."""
    ids = np.zeros((1, cfg.max_len), np.int32)
    ids[0, :2] = CLS_ID, SEP_ID
    return ids


KINDS: dict[str, ModalityKind] = {
    "text": ModalityKind(
        config=TextEncoderConfig,
        encoder=TextEncoder,
        example_field="caption",
        batch_key="tokens",
        parse=lambda captions, cfg: tokenize_captions(captions, cfg).ids.astype(np.int32),
        null=_null_tokens,
        official_name="text",
        spatial=False,
        content=lambda ids: (ids != PAD_ID) & (ids != CLS_ID) & (ids != SEP_ID),  # words, not markers or padding
    ),
    "mask": ModalityKind(
        config=MaskEncoderConfig,
        encoder=MaskEncoder,
        example_field="mask",
        batch_key="mask",
        parse=lambda sources, cfg: masks_to_onehot(sources, size=cfg.mask_size),
        null=lambda cfg: np.zeros((1, cfg.num_classes, cfg.mask_size**2), np.float32),  # no class anywhere
        official_name="seg_mask",
        spatial=True,
        content=lambda one_hot: one_hot.sum(axis=-1) > 0,  # the classes the mask shows
    ),
    "scribble": ModalityKind(
        config=ScribbleEncoderConfig,
        encoder=ScribbleEncoder,
        example_field="scribble",
        batch_key="scribble",
        parse=lambda sources, cfg: scribbles_to_tokens(sources, cfg.scribble_size, cfg.stroke_widths),
        null=lambda cfg: np.zeros((1, len(cfg.stroke_widths), cfg.scribble_size**2), np.float32),  # no stroke
        official_name=None,
        spatial=True,
        content=lambda strokes: strokes.sum(axis=-1) > 0,  # stroke widths with something drawn
    ),
}


def kind_entry(kind: str) -> ModalityKind:
    """The row of a kind; an unknown kind is a one-line error listing the kinds."""
    if kind not in KINDS:
        raise ValueError(f"unknown modality kind {kind!r}; expected one of: {', '.join(KINDS)}")
    return KINDS[kind]


def spatial_names(modalities: Mapping[str, str] | Sequence[str]) -> tuple[str, ...]:
    """The names of the spatial modalities among `modalities` ({name: kind}, in order).

    A plain sequence of names is read as names that equal their kinds (as in every shipped config);
    a name that is no kind is not spatial.
    """
    if not isinstance(modalities, Mapping):
        modalities = {name: name for name in modalities}
    return tuple(name for name, kind in modalities.items() if kind in KINDS and KINDS[kind].spatial)
