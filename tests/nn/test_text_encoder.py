"""Text encoder parity: our tokenizer's ids through our encoder equal the reference embeddings."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, reference_system

from cdiff_jax.text.tokenizer import caption_tokenizer


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_captions_to_embeddings(fixtures_root, fmt):
    io = np.load(fixtures_root / "text_encoder/io.npz")
    encoder = reference_system(fixtures_root, "text", fmt).modalities["text"].encoder
    tokens = caption_tokenizer().encode([str(c).lower() for c in io["captions"]])
    np.testing.assert_array_equal(tokens.ids, io["token_ids"])
    assert tokens.truncated.any(), "the fixture includes an overlong caption"
    emb, inter = encoder.forward_with_intermediates(jnp.asarray(tokens.ids))
    assert_close_rel(emb, io["embeddings"], name="embeddings")
    names = [n for n in io.files if n.startswith("inter_")]
    assert names
    for name in names:
        assert_close_rel(inter[name.removeprefix("inter_")], io[name], name=name)


def test_padding_is_attended(fixtures_root):
    """No padding mask: changing a pad position's embedding changes real tokens' outputs."""
    encoder = reference_system(fixtures_root, "text").modalities["text"].encoder
    ids = caption_tokenizer().encode(["a man"]).ids
    base = encoder(jnp.asarray(ids))
    altered = ids.copy()
    altered[0, -1] = 1996
    assert not np.allclose(encoder(jnp.asarray(altered))[0, :3], base[0, :3])
