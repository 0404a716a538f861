"""The CelebAMask-HQ face parser (BiSeNet, ResNet-18 context path) of zllrunning/face-parsing.PyTorch.

Mask-conditioned generation is scored by parsing the generated faces and comparing with the input
masks, so this network is what the mask-accuracy numbers of the papers are measured with. It is
ported from the official model.py / resnet.py / test.py (the `79999_iter.pth` checkpoint, loaded by
`FaceParser.from_checkpoint`); every step that changes results is kept: nearest upsampling inside
the context path, bilinear align_corners=True upsampling of the logits, PIL bilinear resizing of
the input. The parser numbers its 19 classes in the order of face-parsing.PyTorch's
prepropess_data.py, not CelebAMask-HQ's g_mask.py order that our masks use (`PARSER_TO_CELEBAMASKHQ`).
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from cdiff_jax.data.masks import CLASS_NAMES
from cdiff_jax.nn.loading import load_state_dict, variable_paths
from cdiff_jax.nn.resize import resize
from cdiff_jax.weights.state_dict_io import read_state_dict

NUM_CLASSES = 19
INPUT_SIZE = 512  # test.py resizes every image to 512x512 (the training resolution)
BN_EPS = 1e-5
PRECISION = "highest"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# The parser's class order: prepropess_data.py's `atts` enumerated from 1, 0 = background.
PARSER_CLASS_NAMES = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
# Parser label -> our label (CLASS_NAMES, CelebAMask-HQ's g_mask.py order), by class name.
PARSER_TO_CELEBAMASKHQ = np.array([CLASS_NAMES.index(name) for name in PARSER_CLASS_NAMES], np.int32)
PARSER_TO_CELEBAMASKHQ.flags.writeable = False


def to_celebamaskhq(labels) -> np.ndarray:
    """Parser labels (any shape) -> the same pixels' labels in our CLASS_NAMES order."""
    return PARSER_TO_CELEBAMASKHQ[np.asarray(labels)]


def preprocess(images, size: int | tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """uint8 RGB images [N, H, W, 3] -> the parser's input [N, h, w, 3] float32 (size = h = w, or (h, w)).

    As test.py makes it: PIL's bilinear resize (antialiased when shrinking, unlike a plain
    interpolation), then ToTensor and ImageNet Normalize in float32, in torchvision's order.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images [N, H, W, 3], got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
        raise ValueError("expected uint8 RGB values (integers 0..255)")
    height, width = (size, size) if isinstance(size, int) else size
    resized = np.stack(
        [
            np.asarray(
                Image.fromarray(image.astype(np.uint8), "RGB").resize((width, height), Image.Resampling.BILINEAR)
            )
            for image in images
        ]
    )
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    return (resized.astype(np.float32) / np.float32(255) - mean) / std


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    """Every convolution of the network: bias-free, padding kernel // 2 as the original's."""
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


def _bn(channels: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, use_running_average=True, epsilon=BN_EPS, rngs=rngs)


def _global_mean(x: jax.Array) -> jax.Array:
    """F.avg_pool2d(x, x.size()[2:]): the spatial mean, kept as a 1x1 map."""
    return x.mean(axis=(1, 2), keepdims=True)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source rows of torch's F.interpolate(mode='nearest'): floor(dst * (in / out)) in float32, clamped."""
    if size_out == size_in:
        return np.arange(size_out)
    if size_out == 2 * size_in:
        return np.arange(size_out) // 2
    scale = np.float32(size_in) / np.float32(size_out)
    return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(int), size_in - 1)


def _upsample_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
    rows, cols = nearest_indices(x.shape[1], height), nearest_indices(x.shape[2], width)
    return x[:, rows][:, :, cols]


def upsample_logits(logits: jax.Array, height: int, width: int) -> jax.Array:
    """NHWC logits -> height x width, as BiSeNet's F.interpolate(bilinear, align_corners=True)."""
    return resize(logits, height, width, align_corners=True, precision=PRECISION)


class ConvBNReLU(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, *, rngs: nnx.Rngs):
        self.conv = _conv(in_ch, out_ch, kernel, rngs=rngs)
        self.bn = _bn(out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class BasicBlock(nnx.Module):
    """ResNet's two-3x3 residual block; a 1x1 projection (`downsample`) where width or stride change."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = _conv(in_ch, out_ch, 3, stride, rngs=rngs)
        self.bn1 = _bn(out_ch, rngs=rngs)
        self.conv2 = _conv(out_ch, out_ch, 3, rngs=rngs)
        self.bn2 = _bn(out_ch, rngs=rngs)
        projects = in_ch != out_ch or stride != 1
        self.downsample = nnx.data(
            nnx.List([_conv(in_ch, out_ch, 1, stride, rngs=rngs), _bn(out_ch, rngs=rngs)]) if projects else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        residual = self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(shortcut + residual)


class ResNet18(nnx.Module):
    """The trunk: features at 1/8, 1/16 and 1/32 of the input (sizes ceil(H / 8) etc.)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = _conv(3, 64, 7, 2, rngs=rngs)
        self.bn1 = _bn(64, rngs=rngs)
        widths = ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2))
        for index, (in_ch, out_ch, stride) in enumerate(widths, 1):
            blocks = [BasicBlock(in_ch, out_ch, stride, rngs=rngs), BasicBlock(out_ch, out_ch, rngs=rngs)]
            setattr(self, f"layer{index}", nnx.List(blocks))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
            features.append(x)
        return features[1], features[2], features[3]


class AttentionRefinement(nnx.Module):
    """ConvBNReLU, then channels reweighted by a sigmoid of their global mean (1x1 conv + BN)."""

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.conv = ConvBNReLU(in_ch, out_ch, rngs=rngs)
        self.conv_atten = _conv(out_ch, out_ch, 1, rngs=rngs)
        self.bn_atten = _bn(out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        feat = self.conv(x)
        return feat * jax.nn.sigmoid(self.bn_atten(self.conv_atten(_global_mean(feat))))


class ContextPath(nnx.Module):
    """ResNet-18 with attention-refined 1/32 and 1/16 features merged top-down (nearest upsampling)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.resnet = ResNet18(rngs=rngs)
        self.arm16 = AttentionRefinement(256, 128, rngs=rngs)
        self.arm32 = AttentionRefinement(512, 128, rngs=rngs)
        self.conv_head32 = ConvBNReLU(128, 128, rngs=rngs)
        self.conv_head16 = ConvBNReLU(128, 128, rngs=rngs)
        self.conv_avg = ConvBNReLU(512, 128, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        feat8, feat16, feat32 = self.resnet(x)
        # conv_avg's 1x1 map "upsampled" to feat32's size is a broadcast.
        feat32_sum = self.arm32(feat32) + self.conv_avg(_global_mean(feat32))
        feat32_up = self.conv_head32(_upsample_nearest(feat32_sum, *feat16.shape[1:3]))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(_upsample_nearest(feat16_sum, *feat8.shape[1:3]))
        return feat8, feat16_up, feat32_up


class FeatureFusion(nnx.Module):
    """Concatenated features through ConvBNReLU, plus themselves reweighted by a squeeze-excitation."""

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.convblk = ConvBNReLU(in_ch, out_ch, 1, rngs=rngs)
        self.conv1 = _conv(out_ch, out_ch // 4, 1, rngs=rngs)
        self.conv2 = _conv(out_ch // 4, out_ch, 1, rngs=rngs)

    def __call__(self, spatial: jax.Array, context: jax.Array) -> jax.Array:
        feat = self.convblk(jnp.concatenate([spatial, context], axis=-1))
        atten = jax.nn.sigmoid(self.conv2(jax.nn.relu(self.conv1(_global_mean(feat)))))
        return feat * atten + feat


class OutputHead(nnx.Module):
    def __init__(self, in_ch: int, mid_ch: int, *, rngs: nnx.Rngs):
        self.conv = ConvBNReLU(in_ch, mid_ch, rngs=rngs)
        self.conv_out = _conv(mid_ch, NUM_CLASSES, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv_out(self.conv(x))


class FaceParser(nnx.Module):
    """BiSeNet(n_classes=19): `parser(x)` is [N, H, W, 19] logits of normalised NHWC images (`preprocess`).

    The official model has no spatial path: its 1/8 ResNet feature stands in for it. Attribute names
    follow the official modules, so the checkpoint's keys are ours with the leaves renamed.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.cp = ContextPath(rngs=rngs)
        self.ffm = FeatureFusion(256, 256, rngs=rngs)
        self.conv_out = OutputHead(256, 256, rngs=rngs)
        self.conv_out16 = OutputHead(128, 64, rngs=rngs)
        self.conv_out32 = OutputHead(128, 64, rngs=rngs)

    def heads(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The main and the two auxiliary heads' logits at their native 1/8, 1/8 and 1/16 resolution.

        Only the first is used for parsing; the auxiliary ones are training losses, kept for parity.
        """
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        main = self.conv_out(self.ffm(feat8, feat_cp8))
        return main, self.conv_out16(feat_cp8), self.conv_out32(feat_cp16)

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_logits(self.heads(x)[0], *x.shape[1:3])

    def parse(self, images, size: int | tuple[int, int] = INPUT_SIZE) -> np.ndarray:
        """uint8 RGB images [N, H, W, 3] -> labels in our CLASS_NAMES order at the parser's resolution (test.py's)."""
        graphdef, state = nnx.split(self)
        return to_celebamaskhq(parser_labels(graphdef, state, preprocess(images, size)))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> FaceParser:
        """face-parsing.PyTorch's `79999_iter.pth` (a plain state dict), strictly, as test.py loads it."""
        model = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0)))
        return load_state_dict(
            model,
            read_state_dict(path).tensors,
            face_parser_key_map(model),
            source=str(path),
            network="face-parsing BiSeNet",
            ignored=lambda key: key.endswith("num_batches_tracked"),
        )


_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def face_parser_key_map(model: FaceParser) -> dict[str, str]:
    """Our variable paths -> the official keys: same module names, the leaf renamed (kernel -> weight, ...)."""
    mapping = {}
    for path in variable_paths(model):
        *module, leaf = path.split(".")
        mapping[path] = ".".join([*module, _LEAF_NAMES[leaf]])
    return mapping


@partial(jax.jit, static_argnums=0)
def parser_labels(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    """Jitted argmax of the full-resolution logits (first maximum wins, as numpy's): parser class order."""
    return jnp.argmax(nnx.merge(graphdef, state)(x), axis=-1).astype(jnp.int32)
