"""The papers' image metrics, each computed by the network its authors used, on batches of uint8 faces.

* FID: pytorch-fid's InceptionV3 features (`frechet` for the distance);
* CLIP score: 100 * max(cosine(image, caption), 0) with OpenAI's CLIP (torchmetrics' definition);
* mask accuracy and mIoU: the CelebAMask-HQ BiSeNet parser's map of the image against the input
  mask, both at the mask's resolution (the parser's map is reduced with the same nearest rule that
  made the conditioning mask, `resize_label_map`); mIoU pools every class's pixels over all images;
* LPIPS, SSIM and identity (ArcFace IR-SE50 cosine, pSp's IDLoss crop) against the ground truth.

Every network is optional: a metric whose weights were not given is left out of the table.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from cdiff_jax.data.masks import NUM_CLASSES, resize_label_map
from cdiff_jax.evaluation.judges import from_uint8
from cdiff_jax.evaluation.ssim import ssim
from cdiff_jax.nn.arcface import IDLOSS_IMAGE_SIZE, ArcFace, identity_similarity
from cdiff_jax.nn.clip import CLIP, clip_outputs
from cdiff_jax.nn.clip import preprocess as clip_preprocess
from cdiff_jax.nn.face_parser import FaceParser
from cdiff_jax.nn.inception import InceptionV3, pool3_features
from cdiff_jax.nn.lpips import LPIPS
from cdiff_jax.text.clip_tokenizer import tokenize

METRIC_FILES = ("inception", "parser", "clip", "arcface", "lpips")


@dataclasses.dataclass
class MetricNetworks:
    inception: InceptionV3 | None = None
    parser: FaceParser | None = None
    clip: CLIP | None = None
    arcface: ArcFace | None = None
    lpips: LPIPS | None = None


def load_metric_networks(paths: dict[str, str | None]) -> MetricNetworks:
    """Each network from its users' weight file (`METRIC_FILES` names the keys); None leaves it out."""
    loaders = {"inception": InceptionV3, "parser": FaceParser, "clip": CLIP, "arcface": ArcFace, "lpips": LPIPS}
    return MetricNetworks(
        **{name: loaders[name].from_checkpoint(path) for name, path in paths.items() if path is not None}
    )


def inception_features(networks: MetricNetworks, images: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(networks.inception)
    return np.asarray(pool3_features(graphdef, state, np.asarray(images, np.float32) / 255))


def mean_iou(parsed: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in either map set of |parsed & label| / |parsed | label|, each class's
    pixels pooled over all images (so a class that is rare in every face still counts once)."""
    ious = []
    for c in range(NUM_CLASSES):
        p, t = parsed == c, labels == c
        union = np.count_nonzero(p | t)
        if union:
            ious.append(np.count_nonzero(p & t) / union)
    return float(np.mean(ious))


def parsed_masks(networks: MetricNetworks, images: np.ndarray, size: int) -> np.ndarray:
    """The parser's label maps (our class order) of uint8 faces, reduced to size x size."""
    return np.stack([resize_label_map(labels.astype(np.uint8), size) for labels in networks.parser.parse(images)])


def resize_faces(images: jax.Array, size: int) -> jax.Array:
    """[N, H, W, 3] -> [N, size, size, 3], antialiased bilinear (identity at the size)."""
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, 3), "linear")


def per_example_scores(networks: MetricNetworks, images: np.ndarray, examples: dict) -> dict[str, np.ndarray]:
    """Every per-image metric the networks allow, [N] each; `parsed` and `parsed_target` (the parser's maps and
    the input masks, for the pooled mIoU) and `features` (Inception's, for FID). `examples` holds the batch's
    ground-truth `image`s, conditioning `mask`s and `caption`s."""
    scores = {}
    if networks.inception is not None:
        scores["features"] = inception_features(networks, images)
    if networks.clip is not None:
        cfg = networks.clip.cfg
        tokens = tokenize([str(c) for c in examples["caption"]], cfg.context_length)
        pixels = clip_preprocess(images, cfg.image_resolution)
        scores["clip_score"] = np.asarray(clip_outputs(*nnx.split(networks.clip), pixels, tokens)["clip_score"])
    if networks.parser is not None:
        masks = np.asarray(examples["mask"])
        parsed = parsed_masks(networks, images, masks.shape[-1])
        scores["mask_accuracy"] = np.mean(parsed == masks, axis=(1, 2))
        scores["parsed"], scores["parsed_target"] = parsed, masks
    truth, generated = from_uint8(examples["image"]), from_uint8(images)
    if networks.lpips is not None:
        scores["lpips"] = np.asarray(networks.lpips(generated, truth))
    scores["ssim"] = np.asarray(ssim(generated, truth))
    if networks.arcface is not None:
        a, b = resize_faces(generated, IDLOSS_IMAGE_SIZE), resize_faces(truth, IDLOSS_IMAGE_SIZE)
        scores["identity"] = np.asarray(identity_similarity(networks.arcface, a, b))
    return scores
