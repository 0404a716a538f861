"""How convolutions, upsampling and attention are computed, chosen per backend in one place.

XLA:CPU is slow on some shapes that GPU and TPU compilers handle well, so on CPU we compute the
same maths in other forms (a convolution as one matmul or as Winograd, an upsampling folded into
its convolution, attention with heads first and a late normalisation). Elsewhere the plain forms
win: XLA's own convolution and `jax.nn.dot_product_attention`, which can reach cuDNN's fused
attention on GPU. Every form computes the same sums of products; only the rounding differs.

The forms are decided when a module is constructed and stored on it as static attributes, so
they live in the module's graphdef, which every jitted entry point keys on: a form can never be
swapped under a compiled program. `forced_kernel_forms` overrides the choice while modules are
built (parity tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

CONV_FORMS = ("by_size", "lax", "matmul", "winograd")
UPSAMPLE_FORMS = ("phases", "plain")
ATTENTION_FORMS = ("heads_first", "library")
PRECISIONS = (None, "default", "high", "highest")


@dataclasses.dataclass(frozen=True)
class KernelForms:
    """conv: "by_size" (XLA:CPU's rule below: matmul, Winograd or lax by shape), "lax"
    (`lax.conv_general_dilated`), or "matmul" / "winograd" wherever the form applies.
    upsample: "phases" (nearest x2 folded into four 2x2 convolutions) or "plain" (upsample, then
    convolve). attention: "heads_first" (`multi_head_attention`) or "library"
    (`jax.nn.dot_product_attention`). precision: of every matmul and convolution, None for the
    backend's default (TPU's is bfloat16 passes; "highest" gives float32 for parity work)."""

    conv: str = "by_size"
    upsample: str = "phases"
    attention: str = "heads_first"
    precision: str | None = None

    def __post_init__(self):
        for field, allowed in (
            ("conv", CONV_FORMS),
            ("upsample", UPSAMPLE_FORMS),
            ("attention", ATTENTION_FORMS),
            ("precision", PRECISIONS),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(f"KernelForms: {field}={getattr(self, field)!r}; choose one of {allowed}")


CPU_FORMS = KernelForms()
PLAIN_FORMS = KernelForms(conv="lax", upsample="plain", attention="library")

_FORCED: contextvars.ContextVar[KernelForms | None] = contextvars.ContextVar("forced_kernel_forms", default=None)


def kernel_forms(backend: str | None = None) -> KernelForms:
    """The forms for `backend` ("cpu", "gpu", "tpu"; default `jax.default_backend()`): the CPU
    forms on CPU, the plain forms elsewhere, unless `forced_kernel_forms` is active."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    return CPU_FORMS if (backend or jax.default_backend()) == "cpu" else PLAIN_FORMS


@contextlib.contextmanager
def forced_kernel_forms(forms: KernelForms) -> Iterator[KernelForms]:
    """Modules constructed inside use `forms` whatever the backend."""
    token = _FORCED.set(forms)
    try:
        yield forms
    finally:
        _FORCED.reset(token)


# --- convolution --------------------------------------------------------------------------------

# XLA:CPU's convolution runs at under half its matmul speed where a layer has few output
# positions and many input features (the experts' 8x8 and 16x16 levels at 512: bench/conv.py).
# There the convolution is computed as one matmul over the kernel's shifted copies of the input.
MATMUL_CONV_MAX_POSITIONS = 512
MATMUL_CONV_MIN_FEATURES = 2048
# On large images with many channels a 3x3 convolution is cheaper as Winograd F(2x2, 3x3): 16
# products per 2x2 output tile instead of 36 (the decoder's 64-256 levels at 512: 1.2-1.6x,
# bench/conv.py). Below these sizes its transforms, which only move memory, cost about as much
# as the products saved, or more.
WINOGRAD_MIN_POSITIONS = 4096  # H * W of one image
WINOGRAD_MIN_CHANNELS = 256  # of input and output
NHWC = ("NHWC", "HWIO", "NHWC")  # dimension numbers: image, kernel, output


def conv_function(forms: KernelForms):
    """The `conv_general_dilated` an `nnx.Conv` stores (statically, so it is part of the graphdef)."""
    return jax.lax.conv_general_dilated if forms.conv == "lax" else Convolution(forms.conv)


@dataclasses.dataclass(frozen=True)
class Convolution:
    """`lax.conv_general_dilated` for nnx.Conv, as a matmul (im2col) or as Winograd where `rule`
    says so (see `conv_form`); a value, so equal rules give equal graphdefs.

    Only NHWC, stride 1, undilated, ungrouped 2-D convolutions qualify; each output is the same
    sum of products, accumulated in a different order (Winograd also rounds its transforms:
    about 1e-6 of the largest output). `dimension_numbers` may be given in any form lax accepts.
    """

    rule: str

    def __call__(
        self,
        lhs,
        rhs,
        window_strides,
        padding,
        *,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        precision=None,
        **kwargs,
    ):
        simple = (
            lhs.ndim == 4
            and tuple(window_strides) == (1, 1)
            and feature_group_count == 1
            and kwargs.get("out_sharding") is None
            and kwargs.get("preferred_element_type") is None
            and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
            and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
        )
        if simple:
            if isinstance(padding, str):
                padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
            padding = tuple(tuple(p) for p in padding)
            form = conv_form(lhs.shape, rhs.shape, padding, self.rule)
            if form == "matmul":
                return _matmul_conv(lhs, rhs, padding, precision)
            if form == "winograd":
                return winograd_conv3x3(lhs, rhs, precision)
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )


def conv_form(image_shape, kernel_shape, padding, rule: str = "by_size") -> str:
    """How a qualifying convolution (NHWC image, HWIO kernel, padding as pairs) is computed under
    `rule` (a `KernelForms.conv`): "matmul", "winograd" or "lax"."""
    b, h, w, _ = image_shape
    kh, kw, cin, cout = kernel_shape
    winograd_applies = (kh, kw) == (3, 3) and padding == ((1, 1), (1, 1)) and h % 2 == 0 and w % 2 == 0
    if rule == "matmul":
        return "matmul"
    if rule == "winograd":
        return "winograd" if winograd_applies else "lax"
    if rule != "by_size":
        return "lax"
    if b * h * w <= MATMUL_CONV_MAX_POSITIONS and kh * kw * cin >= MATMUL_CONV_MIN_FEATURES:
        return "matmul"
    if winograd_applies and h * w >= WINOGRAD_MIN_POSITIONS and min(cin, cout) >= WINOGRAD_MIN_CHANNELS:
        return "winograd"
    return "lax"


def _matmul_conv(x, kernel, padding, precision):
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    (top, bottom), (left, right) = padding
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh, ow = h + top + bottom - kh + 1, w + left + right - kw + 1
    patches = jnp.concatenate([padded[:, i : i + oh, j : j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)
    out = jnp.dot(patches.reshape(b * oh * ow, kh * kw * cin), kernel.reshape(kh * kw * cin, cout), precision=precision)
    return out.reshape(b, oh, ow, cout)


# Winograd F(2, 3) along one axis: a 3-tap filter g over 4 inputs d gives the 2 outputs
# A^T [(G g) * (B^T d)]. Applied along both axes, one 2x2 output tile of a 3x3 convolution
# costs 16 channel matmuls (one per transformed tap) instead of 36.
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)


def _winograd_input_transform(even: jax.Array, odd: jax.Array, axis: int) -> list[jax.Array]:
    """B^T along `axis` for tiles whose four inputs are (even[i], odd[i], even[i+1], odd[i+1])."""
    n = even.shape[axis] - 1
    e0, e1 = (jax.lax.slice_in_dim(even, k, k + n, axis=axis) for k in (0, 1))
    o0, o1 = (jax.lax.slice_in_dim(odd, k, k + n, axis=axis) for k in (0, 1))
    return [e0 - e1, o0 + e1, e1 - o0, o0 - o1]


def _winograd_output_transform(m: list[jax.Array]) -> list[jax.Array]:
    """A^T over four transformed taps: the tile's two outputs."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """3x3 convolution with padding 1 of an NHWC image with even sides, as Winograd F(2x2, 3x3).

    Tiles are 4x4 windows at even offsets of the padded image; seen as pairs of rows and
    columns, a tile's inputs are an even and an odd row of one pair and of the next, so the input
    transform needs only reshapes and contiguous slices. The 16 products stay separate matmuls:
    stacking them would copy the transformed input once more.
    """
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    g = jnp.asarray(_WINOGRAD_G, kernel.dtype)
    taps = jnp.einsum("ai,bj,ijco->abco", g, g, kernel, precision=precision)  # [4, 4, cin, cout]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, h // 2 + 1, 2, w // 2 + 1, 2, cin)
    rows = _winograd_input_transform(padded[:, :, 0], padded[:, :, 1], axis=1)
    products = [
        [
            jnp.dot(tile.reshape(-1, cin), taps[i, j], precision=precision)
            for j, tile in enumerate(_winograd_input_transform(r[:, :, :, 0], r[:, :, :, 1], axis=2))
        ]
        for i, r in enumerate(rows)
    ]
    columns = [_winograd_output_transform([products[i][j] for i in range(4)]) for j in range(4)]
    out_rows = [_winograd_output_transform([columns[j][r] for j in range(4)]) for r in range(2)]
    out = jnp.stack([jnp.stack(pair, axis=-2) for pair in out_rows], axis=-3)  # [..., 2, 2, cout]
    return out.reshape(b, h // 2, w // 2, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, cout)


# --- upsampling ---------------------------------------------------------------------------------


def upsample_nearest(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def upsample_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array, forms: KernelForms) -> jax.Array:
    """Nearest-neighbour x2 upsampling, then a 3x3 convolution with padding 1 (bias added).

    The "phases" form never builds the upsampled image. Along each axis, an even output reads
    input offsets (-1, 0) with kernel taps (k0, k1 + k2) and an odd output reads (0, +1) with
    (k0 + k1, k2), because the taps it sums read the same input pixel. So each of the four
    output phases is a 2x2 convolution of the input: 4/9 of the products, and half the time at
    the autoencoder's 512x512 level on XLA:CPU (bench/upsample.py). Under the "by_size" conv rule,
    where the upsampled image is small enough for the matmul form, that is faster still and is
    used instead.
    """
    convolve = conv_function(forms)
    b, h, w, _ = x.shape
    if forms.upsample == "plain" or (forms.conv == "by_size" and b * 4 * h * w <= MATMUL_CONV_MAX_POSITIONS):
        return (
            convolve(
                upsample_nearest(x), kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, precision=forms.precision
            )
            + bias
        )

    def fold(k, axis, odd):
        k0, k1, k2 = jnp.split(k, 3, axis=axis)
        return jnp.concatenate([k0 + k1, k2] if odd else [k0, k1 + k2], axis=axis)

    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for row in (0, 1):
        phases = [
            convolve(
                padded[:, row : row + h + 1, col : col + w + 1],
                fold(fold(kernel, 0, row), 1, col),
                (1, 1),
                "VALID",
                dimension_numbers=NHWC,
                precision=forms.precision,
            )
            for col in (0, 1)
        ]
        rows.append(jnp.stack(phases, axis=3))
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, -1) + bias


# --- attention ----------------------------------------------------------------------------------


def attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, forms: KernelForms) -> jax.Array:
    """Softmax attention over [B, N, heads*D] projections; channels split as (heads, D); the score
    scale is D**-0.5 and softmax runs over keys, as in the reference."""
    if forms.attention == "heads_first":
        return multi_head_attention(q, k, v, heads, forms.precision)
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (x.reshape(b, x.shape[1], heads, d) for x in (q, k, v))
    # dot_product_attention takes no precision argument; the context sets it for its products.
    with jax.default_matmul_precision(forms.precision):
        out = jax.nn.dot_product_attention(q, k, v, scale=d**-0.5)
    return out.reshape(b, n, inner)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, precision=None) -> jax.Array:
    """The CPU form of `attention`.

    Heads go first and keys are transposed once to [D, M], so both products are plain batched
    matmuls (3-7x `jax.nn.dot_product_attention` on XLA:CPU for the UNets' narrow heads:
    bench/attention.py). Two things keep the [heads, N, M] score tensor to one pass: the scale is
    applied to q, not to the scores (XLA:CPU otherwise materialises the scale as a full-size
    tensor and reads it in every layer), and the softmax is normalised after the value product,
    with the row sums coming out of that product as a column of ones appended to v. Both change
    only rounding.
    """
    b, n, inner = q.shape
    d = inner // heads
    q = (q * d**-0.5).reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    keys_t = k.reshape(b, k.shape[1], heads, d).transpose(0, 2, 3, 1)
    v = v.reshape(b, v.shape[1], heads, d).transpose(0, 2, 1, 3)
    v_and_ones = jnp.concatenate([v, jnp.ones((*v.shape[:-1], 1), v.dtype)], axis=-1)
    scores = jnp.matmul(q, keys_t, precision=precision)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    summed = jnp.matmul(weights, v_and_ones, precision=precision)
    out = summed[..., :d] / summed[..., d:]
    return out.transpose(0, 2, 1, 3).reshape(b, n, inner)


def attention_probabilities(q: jax.Array, k: jax.Array, heads: int, precision=None) -> jax.Array:
    """softmax(q k^T D**-0.5) over keys, averaged over heads: [B, N, M] for [B, N|M, heads*D]
    projections. Formed only where asked for (`attention` never builds probabilities)."""
    b, n, inner = q.shape
    d = inner // heads
    q = (q * d**-0.5).reshape(b, n, heads, d)
    scores = jnp.einsum("bnhd,bmhd->bhnm", q, k.reshape(b, k.shape[1], heads, d), precision=precision)
    return jax.nn.softmax(scores, axis=-1).mean(axis=1)
