"""FreeU (Si et al. 2023) as the official Collaborative Diffusion FreeU scripts apply it to an expert.

At the up blocks whose backbone input h has the width of the second- or third-deepest level (576 and 384
channels in the released 512 UNets, which the official code names literally), the first half of h's
channels is scaled by b1 (b2), and the skip feature joining it is low-pass re-weighted in Fourier space
by s1 (s2): a 2x2 box around the centre of the shifted spectrum (threshold 1) is multiplied by s. The
constant-b form ("v1"); with s = 1 the filter is the identity up to FFT round-off, as there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

THRESHOLD = 1  # half the side of the low-frequency box


@dataclasses.dataclass(frozen=True)
class FreeU:
    """Backbone factors b1, b2 and skip factors s1, s2 (the official scripts' defaults)."""

    b1: float = 1.1
    b2: float = 1.2
    s1: float = 1.0
    s2: float = 1.0


def fourier_filter(x: jax.Array, scale: float, threshold: int = THRESHOLD) -> jax.Array:
    """x [B, H, W, C] with the centred 2t x 2t box of its (shifted) 2-D spectrum multiplied by `scale`."""
    spectrum = jnp.fft.fftshift(jnp.fft.fftn(x, axes=(1, 2)), axes=(1, 2))
    h, w = x.shape[1] // 2, x.shape[2] // 2
    box = jnp.ones(x.shape[1:3], x.dtype).at[h - threshold : h + threshold, w - threshold : w + threshold].set(scale)
    spectrum = spectrum * box[None, :, :, None]
    return jnp.fft.ifftn(jnp.fft.ifftshift(spectrum, axes=(1, 2)), axes=(1, 2)).real.astype(x.dtype)


def apply_freeu(h: jax.Array, skip: jax.Array, freeu: FreeU, widths: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """(h, skip) of an up block before they are concatenated. `widths` are the backbone widths that take
    (b1, s1) and (b2, s2): the second- and third-deepest levels'."""
    for width, b, s in ((widths[0], freeu.b1, freeu.s1), (widths[1], freeu.b2, freeu.s2)):
        if h.shape[-1] == width:
            half = width // 2
            h = jnp.concatenate([h[..., :half] * b, h[..., half:]], axis=-1)
            skip = fourier_filter(skip, s)
    return h, skip
