"""InceptionV3 exactly as pytorch-fid computes FID: the 2048-d pool features of the TF 2015-12-05 graph.

pytorch-fid's network is torchvision's Inception3 with four blocks changed to match the TensorFlow
graph the FID paper used (average pools that do not count padding, a max pool in the last block),
bilinear resizing to 299 without antialiasing, and inputs mapped from [0, 1] to [-1, 1]. Any of
these done the torchvision way moves FID by whole points, so each is reproduced here. Weights come
from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (`InceptionV3.from_checkpoint`). Every
product runs at float32 ("highest") precision on every backend: a metric must not depend on it.
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.nn.loading import load_state_dict, variable_paths
from cdiff_jax.nn.resize import resize
from cdiff_jax.weights.state_dict_io import read_state_dict

FID_SIZE = 299
FEATURES = 2048
BN_EPS = 1e-3
PRECISION = "highest"


class BasicConv(nnx.Module):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU: Inception's only layer kind."""

    def __init__(self, in_ch: int, out_ch: int, kernel, *, stride: int = 1, padding=(0, 0), rngs: nnx.Rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(
            in_ch,
            out_ch,
            kernel,
            strides=stride,
            padding=tuple((p, p) for p in padding),
            use_bias=False,
            precision=PRECISION,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_ch, use_running_average=True, epsilon=BN_EPS, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3_valid_count(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, dividing by the number of real pixels (count_include_pad=False)."""
    window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    count = jax.lax.reduce_window(
        jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None], 0.0, jax.lax.add, window, strides, pad
    )
    return total / count


def _max_pool_3x3(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


class InceptionA(nnx.Module):
    def __init__(self, in_ch: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(in_ch, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv(in_ch, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_ch, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv(in_ch, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_3x3_valid_count(x)),
            ],
            axis=-1,
        )


class InceptionB(nnx.Module):
    def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv(in_ch, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_ch, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                _max_pool_3x3(x, 2),
            ],
            axis=-1,
        )


class InceptionC(nnx.Module):
    def __init__(self, in_ch: int, c7: int, *, rngs: nnx.Rngs):
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv(in_ch, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv(in_ch, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv(c7, c7, **row, rngs=rngs)
        self.branch7x7_3 = BasicConv(c7, 192, **col, rngs=rngs)
        self.branch7x7dbl_1 = BasicConv(in_ch, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv(c7, c7, **col, rngs=rngs)
        self.branch7x7dbl_3 = BasicConv(c7, c7, **row, rngs=rngs)
        self.branch7x7dbl_4 = BasicConv(c7, c7, **col, rngs=rngs)
        self.branch7x7dbl_5 = BasicConv(c7, 192, **row, rngs=rngs)
        self.branch_pool = BasicConv(in_ch, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        double = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            double = layer(double)
        return jnp.concatenate(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                double,
                self.branch_pool(_avg_pool_3x3_valid_count(x)),
            ],
            axis=-1,
        )


class InceptionD(nnx.Module):
    def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv(in_ch, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv(in_ch, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        seven = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            seven = layer(seven)
        return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), seven, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """The last two blocks; the TF graph pools Mixed_7b by average (no padding counted), Mixed_7c by max."""

    def __init__(self, in_ch: int, *, max_pool: bool, rngs: nnx.Rngs):
        self.max_pool = max_pool
        self.branch1x1 = BasicConv(in_ch, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv(in_ch, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_ch, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv(in_ch, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _max_pool_3x3(x, 1, padding=1) if self.max_pool else _avg_pool_3x3_valid_count(x)
        return jnp.concatenate(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            axis=-1,
        )


def resize_for_fid(images: jax.Array) -> jax.Array:
    """NHWC images -> 299x299 as pytorch-fid's F.interpolate(bilinear, align_corners=False) does."""
    return resize(images, FID_SIZE, FID_SIZE, precision=PRECISION)


class InceptionV3(nnx.Module):
    """`pool3(images)`: [N, 2048] FID features of NHWC RGB images in [0, 1], any size."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)

    def blocks(self, images: jax.Array) -> dict[str, jax.Array]:
        """Every named block's output (NHWC) for images in [0, 1]; the last is `pool3`."""
        x = resize_for_fid(images) * 2 - 1
        outputs = {}
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max_pool_3x3(x, 2)))
        x = _max_pool_3x3(x, 2)
        for name in (
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
            "Mixed_7c",
        ):
            x = outputs[name] = getattr(self, name)(x)
        outputs["pool3"] = x.mean(axis=(1, 2))
        return outputs

    def pool3(self, images: jax.Array) -> jax.Array:
        return self.blocks(images)["pool3"]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> InceptionV3:
        """pytorch-fid's weight file (`pt_inception-2015-12-05-*.pth`); its unused 1008-way `fc` is ignored."""
        model = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0)))
        return load_state_dict(
            model,
            read_state_dict(path).tensors,
            inception_key_map(model),
            source=str(path),
            network="pytorch-fid InceptionV3",
            ignored=lambda key: key.startswith("fc.") or key.endswith("num_batches_tracked"),
        )


_BATCHNORM_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def inception_key_map(model: InceptionV3) -> dict[str, str]:
    """Our variable paths -> pytorch-fid's keys: the same module names; kernel/scale/mean/var renamed."""
    mapping = {}
    for path in variable_paths(model):
        *module, leaf = path.split(".")
        theirs = "weight" if leaf == "kernel" else _BATCHNORM_NAMES[leaf]
        mapping[path] = ".".join([*module, theirs])
    return mapping


@partial(jax.jit, static_argnums=0)
def pool3_features(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array) -> jax.Array:
    """The jitted FID features: a pure function of the network's (graphdef, state)."""
    return nnx.merge(graphdef, state).pool3(images)
