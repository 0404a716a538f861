"""ArcFace IR-SE50, the face-recognition network behind the identity metric of GAN-inversion work.

pixel2style2pixel / e4e score identity with TreB1eN's InsightFace IR-SE50 (`model_ir_se50.pth`), and
DDGI's table reports its "ID" column the same way: the cosine of the 512-d embeddings of two faces after
pSp's IDLoss preprocessing (`identity_similarity`). The network is ported layer for layer so that the
official weight file loads as it is (`ArcFace.from_checkpoint`) and gives the official embeddings; every
product runs at float32 ("highest") precision, since a metric must not depend on the backend's default.
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.nn.loading import load_state_dict, variable_paths
from cdiff_jax.weights.state_dict_io import read_state_dict

FACE_SIZE = 112
EMBEDDING = 512
IR_SE50_UNITS = (3, 4, 14, 3)  # units per stage of the 50-layer network
STAGE_DEPTHS = (64, 128, 256, 512)
SE_REDUCTION = 16
BN_EPS = 1e-5
PRECISION = "highest"
# pSp's IDLoss: the face region of a 256x256 FFHQ-aligned image, rows then columns, pooled to 112x112.
IDLOSS_IMAGE_SIZE = 256
IDLOSS_CROP = ((35, 223), (32, 220))


class PReLU(nnx.Module):
    """torch's PReLU with one learned slope per channel (Flax's has a single scalar slope)."""

    def __init__(self, channels: int):
        self.slope = nnx.Param(jnp.full((channels,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.slope[...] * x)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = kernel // 2
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        precision=PRECISION,
        rngs=rngs,
    )


def _batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, use_running_average=True, epsilon=BN_EPS, rngs=rngs)


class BottleneckIRSE(nnx.Module):
    """bottleneck_IR_SE: BN, 3x3 conv, PReLU, 3x3 conv (strided), BN, squeeze-excitation; plus the shortcut.

    The shortcut is a plain subsampling (torch's MaxPool2d(1, stride)) when the width is kept, else a
    strided 1x1 conv and BN.
    """

    def __init__(self, in_ch: int, depth: int, stride: int, *, rngs: nnx.Rngs):
        self.stride = stride
        projected = in_ch != depth
        self.shortcut_conv = _conv(in_ch, depth, 1, stride, rngs) if projected else None
        self.shortcut_bn = _batch_norm(depth, rngs) if projected else None
        self.bn_in = _batch_norm(in_ch, rngs)
        self.conv1 = _conv(in_ch, depth, 3, 1, rngs)
        self.prelu = PReLU(depth)
        self.conv2 = _conv(depth, depth, 3, stride, rngs)
        self.bn_out = _batch_norm(depth, rngs)
        self.se_reduce = _conv(depth, depth // SE_REDUCTION, 1, 1, rngs)
        self.se_expand = _conv(depth // SE_REDUCTION, depth, 1, 1, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x))
        else:
            shortcut = x[:, :: self.stride, :: self.stride]
        res = self.bn_out(self.conv2(self.prelu(self.conv1(self.bn_in(x)))))
        gate = jax.nn.sigmoid(self.se_expand(jax.nn.relu(self.se_reduce(res.mean(axis=(1, 2), keepdims=True)))))
        return res * gate + shortcut


class ArcFace(nnx.Module):
    """pSp's `Backbone(112, 50, mode='ir_se')`: L2-normalised [N, 512] embeddings of NHWC faces in [-1, 1].

    `units` are the units per stage (IR-SE50 by default; pSp's 100/152-layer variants differ only there);
    `face_size` is the input side, 112 as IDLoss feeds it (the original also allows 224).
    """

    def __init__(self, units: tuple[int, ...] = IR_SE50_UNITS, face_size: int = FACE_SIZE, *, rngs: nnx.Rngs):
        self.input_conv = _conv(3, STAGE_DEPTHS[0], 3, 1, rngs)
        self.input_bn = _batch_norm(STAGE_DEPTHS[0], rngs)
        self.input_prelu = PReLU(STAGE_DEPTHS[0])
        body, in_ch = [], STAGE_DEPTHS[0]
        for count, depth in zip(units, STAGE_DEPTHS, strict=True):
            body += [
                BottleneckIRSE(in_ch if i == 0 else depth, depth, 2 if i == 0 else 1, rngs=rngs) for i in range(count)
            ]
            in_ch = depth
        self.body = nnx.List(body)
        self.stage_ends = tuple(np.cumsum(units).tolist())
        grid = face_size // 2 ** len(units)
        self.output_bn = _batch_norm(STAGE_DEPTHS[-1], rngs)
        self.linear = nnx.Linear(STAGE_DEPTHS[-1] * grid * grid, EMBEDDING, precision=PRECISION, rngs=rngs)
        self.embedding_bn = _batch_norm(EMBEDDING, rngs)

    def stages(self, faces: jax.Array) -> dict[str, jax.Array]:
        """`stage1`..`stage4` (NHWC outputs of each stage's last unit), `unnormalized` and `embedding`."""
        x = self.input_prelu(self.input_bn(self.input_conv(jnp.asarray(faces, jnp.float32))))
        outputs = {}
        for i, unit in enumerate(self.body, 1):
            x = unit(x)
            if i in self.stage_ends:
                outputs[f"stage{self.stage_ends.index(i) + 1}"] = x
        # Dropout is the identity in eval mode. torch flattens in (C, H, W) order, which the Linear's
        # weight columns follow, so the NHWC features are transposed before flattening.
        x = jnp.transpose(self.output_bn(x), (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = outputs["unnormalized"] = self.embedding_bn(self.linear(x))
        outputs["embedding"] = x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # no epsilon, as pSp's l2_norm
        return outputs

    def __call__(self, faces: jax.Array) -> jax.Array:
        return self.stages(faces)["embedding"]

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, units: tuple[int, ...] = IR_SE50_UNITS, face_size: int = FACE_SIZE
    ) -> ArcFace:
        """pSp's `model_ir_se50.pth` (a plain Backbone state dict); `num_batches_tracked` may be absent."""
        model = nnx.eval_shape(lambda: cls(units, face_size, rngs=nnx.Rngs(0)))
        return load_state_dict(
            model,
            read_state_dict(path).tensors,
            arcface_key_map(model),
            source=str(path),
            network="ArcFace IR-SE",
            ignored=lambda key: key.endswith(".num_batches_tracked"),
        )


# Our module names -> the official Sequential indices; leaves: our variable names -> torch's.
_MODULES = {
    "input_conv": "input_layer.0",
    "input_bn": "input_layer.1",
    "input_prelu": "input_layer.2",
    "output_bn": "output_layer.0",
    "linear": "output_layer.3",
    "embedding_bn": "output_layer.4",
    "shortcut_conv": "shortcut_layer.0",
    "shortcut_bn": "shortcut_layer.1",
    "bn_in": "res_layer.0",
    "conv1": "res_layer.1",
    "prelu": "res_layer.2",
    "conv2": "res_layer.3",
    "bn_out": "res_layer.4",
    "se_reduce": "res_layer.5.fc1",
    "se_expand": "res_layer.5.fc2",
}
_LEAVES = {
    "kernel": "weight",
    "slope": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def arcface_key_map(model: ArcFace) -> dict[str, str]:
    """Our variable paths (`body.3.conv1.kernel`) -> the official keys (`body.3.res_layer.1.weight`)."""
    mapping = {}
    for path in variable_paths(model):
        *modules, leaf = path.split(".")
        mapping[path] = ".".join([_MODULES.get(name, name) for name in modules] + [_LEAVES[leaf]])
    return mapping


def adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """torch's AdaptiveAvgPool as a [size_out, size_in] 0/1 window matrix (windows overlap when the sizes
    do not divide: 188 -> 112 in IDLoss); divide by the window sizes (its row sums) after summing."""
    starts = np.arange(size_out) * size_in // size_out
    ends = -(-(np.arange(size_out) + 1) * size_in // size_out)
    columns = np.arange(size_in)
    return ((columns >= starts[:, None]) & (columns < ends[:, None])).astype(np.float32)


def idloss_faces(images: jax.Array) -> jax.Array:
    """pSp IDLoss's input to the network: the face crop of 256x256 images, average-pooled to 112x112."""
    if images.ndim != 4 or images.shape[1:] != (IDLOSS_IMAGE_SIZE, IDLOSS_IMAGE_SIZE, 3):
        raise ValueError(
            f"images must be [N, {IDLOSS_IMAGE_SIZE}, {IDLOSS_IMAGE_SIZE}, 3] (FFHQ-aligned, in "
            f"[-1, 1]), got shape {images.shape}"
        )
    (top, bottom), (left, right) = IDLOSS_CROP
    rows = adaptive_pool_matrix(bottom - top, FACE_SIZE)
    cols = adaptive_pool_matrix(right - left, FACE_SIZE)
    crop = jnp.asarray(images, jnp.float32)[:, top:bottom, left:right]
    summed = jnp.einsum("ph,qw,nhwc->npqc", rows, cols, crop, precision=PRECISION)
    return summed / np.outer(rows.sum(1), cols.sum(1))[None, :, :, None]


@partial(jax.jit, static_argnums=0)
def arcface_stages(graphdef: nnx.GraphDef, state: nnx.State, faces: jax.Array) -> dict[str, jax.Array]:
    """The jitted `ArcFace.stages`: a pure function of the network's (graphdef, state)."""
    return nnx.merge(graphdef, state).stages(faces)


def identity_features(model: ArcFace, images: jax.Array) -> jax.Array:
    """IDLoss.extract_feats: [N, 512] unit embeddings of 256x256 NHWC images in [-1, 1]."""
    return arcface_stages(*nnx.split(model), idloss_faces(images))["embedding"]


def identity_similarity(model: ArcFace, images_a: jax.Array, images_b: jax.Array) -> jax.Array:
    """[N] cosine of the identity embeddings of pairs of 256x256 faces: DDGI's "ID" (pSp's IDLoss is its
    mean's complement, 1 - mean). Both sets go through the network as one batch."""
    if np.shape(images_a) != np.shape(images_b):
        raise ValueError(f"pairs need equal shapes, got {np.shape(images_a)} and {np.shape(images_b)}")
    features = identity_features(model, jnp.concatenate([images_a, images_b]))
    count = len(images_a)
    return jnp.sum(features[:count] * features[count:], axis=-1)
