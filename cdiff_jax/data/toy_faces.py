"""Procedural "toy faces": a small multi-modal face dataset we make ourselves, for CPU training and tests.

Each example is a 64x64 RGB image, a 64x64 CelebAMask-HQ label map, a caption and a 64x64 scribble
(the line drawing of the label map's class boundaries, DDGI's second visual input), and -- as in the
real CelebA multi-modal data -- the caption complements the layout:

* the label map fixes the layout: face shape, head position and turn, hair style, eyes, brows, nose,
  mouth open or closed, optional hat, eyeglasses, earrings and necklace, neck and cloth;
* the caption fixes what a parsing map cannot show: beard length and age decade. The beard is painted
  on the skin of the lower face (and, when long, down over the neck and cloth) in the image only; in
  the label map that area stays skin / neck / cloth, just as real face parsing has no beard class.
  Age shows in the image as greying hair, brows and beard and as wrinkles on forehead, eyes and cheeks.

Gender is fixed to "man" (the captions always read "This man ... He ..."), so that every beard length
is plausible for every example.

The image is rendered from the label map plus the attributes (colours per class, shading, texture), so a
segmentation network can learn the map from the image. Every example is a pure function of its seed;
the seed is split into independent streams (layout, caption attributes, colours, texture noise), so
overriding the beard or age changes only the beard or age, never the layout or the other colours.

``python -m cdiff_jax.data.toy_faces OUT_DIR --count N --seed S [--preview grid.png]`` writes the
authors' layout (image/, mask/, text/, plus scribble/) that ``cdiff_jax.data.celeba_multimodal`` builds
into TFDS.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pathlib
import re
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cdiff_jax.data.celeba_multimodal import CAPTION_KEY, CAPTIONS_JSON
from cdiff_jax.data.masks import CLASS_NAMES, colorize, save_label_png
from cdiff_jax.data.scribbles import scribble_from_labels
from cdiff_jax.progress import bar, configure_logging, log

IMAGE_SIZE = 64
BEARD_LENGTHS = ("none", "short", "medium", "long")
AGE_DECADES = ("twenties", "thirties", "forties", "fifties", "sixties", "seventies")
HAIR_STYLES = ("none", "short", "long", "fringe")
ATTRIBUTES_JSON = "attributes.json"

# Class ids, in CLASS_NAMES order.
(
    BACKGROUND,
    SKIN,
    NOSE,
    EYE_G,
    L_EYE,
    R_EYE,
    L_BROW,
    R_BROW,
    L_EAR,
    R_EAR,
    MOUTH,
    U_LIP,
    L_LIP,
    HAIR,
    HAT,
    EAR_R,
    NECK_L,
    NECK,
    CLOTH,
) = range(len(CLASS_NAMES))

# Pixel-centre coordinates, shared by every shape below.
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5

# Age: how far hair, brows and beard move toward white, and how many forehead lines show, per decade.
# Evenly spaced and solid, so each decade changes the whole hair area by the same step: hair is a large
# region, and a cue this size survives the 4x-downsampling autoencoder (the first demo world greyed in
# small steps for the young decades and its autoencoder's reconstructions lost most of the age).
_GREYNESS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_FOREHEAD_LINES = (0, 0, 1, 2, 3, 3)
_WHITE_HAIR = np.array([228, 226, 220], np.float32)

# Beard: opacity and how far (pixels) it hangs below the chin. Each length also covers more of the face
# (_beard_region), and the beard is painted solid with strand shading, not stippled: one-pixel stipple
# was lost by the autoencoder (reconstructions kept the beard length of 0.65 of the faces).
_BEARD_OPACITY = (0.0, 0.8, 0.9, 0.95)
_BEARD_DROP = (0.0, 0.0, 4.0, 13.0)

_HAIR_COLOURS = np.array(
    [[28, 24, 22], [62, 40, 28], [105, 70, 42], [128, 62, 34], [185, 150, 95]], np.float32
)  # black, dark brown, brown, auburn, blond
_LIGHT_SKIN = np.array([240, 208, 182], np.float32)
_DARK_SKIN = np.array([118, 78, 56], np.float32)


# ----------------------------------------------------------------------------------------------
# Sampling: layout (what the mask shows), look (colours), caption attributes, texture noise.


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Geometry in pixels; everything the label map shows comes from here."""

    cx: float  # face centre
    cy: float
    rx: float  # face half-width (upper half) and half-height
    ry: float
    jaw_rx: float  # half-width of the lower half: narrower for a tapered jaw
    turn: float  # -1..1 head turn; features move by 3 * turn pixels
    eye_y: float
    eye_dx: float  # eye centre distance from the face midline
    eye_rx: float
    eye_ry: float
    brow_gap: float
    nose_w: float
    nose_bottom: float
    mouth_y: float
    mouth_w: float
    mouth_gap: float  # height of the opening between the lips; 0 when closed
    hair_style: str
    hairline: float  # y of the hairline at the face midline
    hat: bool
    hat_brim: bool
    hat_y: float  # lower edge of the hat
    glasses: bool
    earrings: bool
    necklace: bool
    neck_w: float
    cloth_top: float
    cloth_rx: float
    v_neck: bool

    @property
    def fx(self) -> float:
        """Midline of the features: the head turn moves eyes, nose and mouth sideways."""
        return self.cx + 3.0 * self.turn

    @property
    def nose_x(self) -> float:
        """The nose tip sticks out furthest, so it moves most when the head turns."""
        return self.cx + 4.0 * self.turn

    @property
    def neck_x(self) -> float:
        """The neck sits further back than the face, so it follows the turn only a little."""
        return self.cx + self.turn

    @property
    def chin_y(self) -> float:
        return self.cy + self.ry

    @property
    def brow_y(self) -> float:
        return self.eye_y - self.brow_gap

    @property
    def eye_xs(self) -> tuple[float, float]:
        """Image-left eye (l_eye, as in the project's example mask) then image-right eye (r_eye)."""
        return self.fx - self.eye_dx, self.fx + self.eye_dx


def _sample_layout(rng: np.random.Generator) -> _Layout:
    cx = 32 + rng.uniform(-3, 3)
    cy = 29 + rng.uniform(-1.5, 1.5)
    rx, ry = rng.uniform(11, 14), rng.uniform(14.5, 16.5)
    eye_y = cy + ry * rng.uniform(-0.06, 0.06)
    nose_bottom = eye_y + ry * rng.uniform(0.4, 0.5)
    mouth_open = rng.random() < 0.4
    # Mouth centre on a pixel centre, so an opening of >= 1.6 px always shows at least one mouth row.
    mouth_y = np.floor(nose_bottom + rng.uniform(3.2, 4.2)) + 0.5
    hair_style = str(rng.choice(HAIR_STYLES, p=(0.15, 0.35, 0.25, 0.25)))
    brow_gap = rng.uniform(3.2, 4.2)
    fringe_line = eye_y - brow_gap - rng.uniform(1.0, 2.0)
    return _Layout(
        cx=cx,
        cy=cy,
        rx=rx,
        ry=ry,
        jaw_rx=rx * rng.uniform(0.8, 0.95),
        turn=rng.uniform(-1, 1),
        eye_y=eye_y,
        eye_dx=rx * rng.uniform(0.38, 0.46),
        eye_rx=rng.uniform(2.2, 3.2),
        eye_ry=rng.uniform(1.1, 1.7),
        brow_gap=brow_gap,
        nose_w=rng.uniform(1.8, 2.8),
        nose_bottom=nose_bottom,
        mouth_y=mouth_y,
        mouth_w=rng.uniform(3.5, 5.5),
        mouth_gap=rng.uniform(1.6, 3.2) if mouth_open else 0.0,
        hair_style=hair_style,
        hairline=fringe_line if hair_style == "fringe" else cy - ry * rng.uniform(0.6, 0.72),
        hat=rng.random() < 0.2,
        hat_brim=rng.random() < 0.5,
        hat_y=cy - ry * rng.uniform(0.55, 0.68),
        glasses=rng.random() < 0.25,
        earrings=rng.random() < 0.2,
        necklace=rng.random() < 0.2,
        neck_w=rx * rng.uniform(0.5, 0.62),
        cloth_top=rng.uniform(53, 57),
        cloth_rx=rng.uniform(25, 31),
        v_neck=rng.random() < 0.5,
    )


@dataclasses.dataclass(frozen=True)
class _Look:
    """Colours (float RGB) that the image adds on top of the label map."""

    skin: np.ndarray
    hair: np.ndarray  # before greying with age
    iris: np.ndarray
    cloth: np.ndarray
    hat: np.ndarray
    metal: np.ndarray
    bg_top: np.ndarray
    bg_bottom: np.ndarray


def _sample_look(rng: np.random.Generator) -> _Look:
    # The power favours lighter tones a little while still covering the whole range.
    skin = _LIGHT_SKIN + (_DARK_SKIN - _LIGHT_SKIN) * rng.uniform(0, 1) ** 1.5 + rng.uniform(-8, 8, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.uniform(-10, 10, 3)
    iris = np.array([[50, 35, 25], [60, 90, 120], [70, 90, 55]], np.float32)[rng.integers(3)]
    metal = np.array([[222, 180, 60], [205, 205, 215]], np.float32)[rng.integers(2)]
    return _Look(
        skin=skin.astype(np.float32),
        hair=np.clip(hair, 0, 255).astype(np.float32),
        iris=iris,
        cloth=rng.uniform(25, 230, 3).astype(np.float32),
        hat=rng.uniform(20, 235, 3).astype(np.float32),
        metal=metal,
        bg_top=rng.uniform(60, 235, 3).astype(np.float32),
        bg_bottom=rng.uniform(60, 235, 3).astype(np.float32),
    )


@dataclasses.dataclass(frozen=True)
class _Texture:
    """Per-pixel noise, drawn with fixed shapes so it never depends on the attributes."""

    grain: np.ndarray  # [H, W, 3] standard normal: sensor-like noise everywhere
    strands: np.ndarray  # [H, W] in 0..1, correlated along y: hair and beard strands


def _sample_texture(rng: np.random.Generator) -> _Texture:
    shape = (IMAGE_SIZE, IMAGE_SIZE)
    raw = rng.uniform(0, 1, shape).astype(np.float32)
    strands = sum(np.roll(raw, k, axis=0) for k in range(4)) / 4  # hair runs downward
    strands = (strands - strands.min()) / (strands.max() - strands.min())
    return _Texture(
        grain=rng.standard_normal(shape + (3,)).astype(np.float32),
        strands=strands,
    )


# ----------------------------------------------------------------------------------------------
# Captions.

_BEARD_PHRASES = (
    ("no beard", "no beard at all"),
    ("a short beard", "beard of short length"),
    ("a beard of medium length", "beard of medium length"),
    ("a long beard", "a very long beard"),
)
_CAPTION_TEMPLATES = (
    "This man has {beard}. He is in his {age}.",
    "This man is in his {age}. He has {beard}.",
    "The man has {beard}, and he is in his {age}.",
    "This man in his {age} has {beard}.",
)
_BEARD_PATTERNS = (r"\bno beard\b", r"\bshort\b", r"\bmedium\b", r"\blong\b")


def _sample_caption_choices(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Beard length, age decade, sentence template and beard phrasing; always all four, so overriding
    beard or age leaves the phrasing unchanged."""
    return (
        int(rng.integers(len(BEARD_LENGTHS))),
        int(rng.integers(len(AGE_DECADES))),
        int(rng.integers(len(_CAPTION_TEMPLATES))),
        int(rng.integers(len(_BEARD_PHRASES[0]))),
    )


def _caption(beard: int, age: int, template: int, phrase: int) -> str:
    return _CAPTION_TEMPLATES[template].format(beard=_BEARD_PHRASES[beard][phrase], age=AGE_DECADES[age])


def parse_caption(caption: str) -> tuple[int, int]:
    """``(beard, age)`` indices named by a toy-face caption, for scoring generated faces against prompts.

    Exactly one beard length and one decade must be named; anything else is an error, never a guess.
    """
    text = caption.lower()
    beards = [i for i, pattern in enumerate(_BEARD_PATTERNS) if re.search(pattern, text)]
    ages = [i for i, decade in enumerate(AGE_DECADES) if re.search(rf"\b{decade}\b", text)]
    if len(beards) != 1 or len(ages) != 1:
        raise ValueError(
            f"caption {caption!r} names {len(beards)} beard lengths and {len(ages)} age decades; "
            f"expected one of each ({', '.join(BEARD_LENGTHS)}; {', '.join(AGE_DECADES)})"
        )
    return beards[0], ages[0]


# ----------------------------------------------------------------------------------------------
# Label map: shapes painted back to front.


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1.0


def _polygon(points) -> np.ndarray:
    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in points], fill=1)
    return np.asarray(img, bool)


def _lines(segments) -> np.ndarray:
    """Union of 1-pixel polylines (each a list of (x, y) points)."""
    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(img)
    for points in segments:
        draw.line([(float(x), float(y)) for x, y in points], fill=1, width=1)
    return np.asarray(img, bool)


def _face(lay: _Layout) -> np.ndarray:
    """An egg shape: the lower half (the jaw) may be narrower than the upper half."""
    rx = np.where(_YY < lay.cy, lay.rx, lay.jaw_rx)
    return ((_XX - lay.cx) / rx) ** 2 + ((_YY - lay.cy) / lay.ry) ** 2 <= 1.0


def _ears(lay: _Layout) -> list[tuple[int, np.ndarray]]:
    """The ear on the side the head turns away from shows wider."""
    y = lay.eye_y + 3.0
    widths = (2.5 * (1 + 0.35 * lay.turn), 2.5 * (1 - 0.35 * lay.turn))
    return [
        (L_EAR, _ellipse(lay.cx - lay.rx, y, widths[0], 4.0)),
        (R_EAR, _ellipse(lay.cx + lay.rx, y, widths[1], 4.0)),
    ]


def _earrings(lay: _Layout) -> np.ndarray:
    y = lay.eye_y + 7.5
    return _ellipse(lay.cx - lay.rx - 0.8, y, 1.3, 1.3) | _ellipse(lay.cx + lay.rx + 0.8, y, 1.3, 1.3)


def _neck_column(lay: _Layout) -> np.ndarray:
    return (np.abs(_XX - lay.neck_x) <= lay.neck_w) & (_YY >= lay.cy)


def _cloth(lay: _Layout) -> np.ndarray:
    shoulders = _ellipse(lay.cx, lay.cloth_top + 13, lay.cloth_rx, 13)
    return shoulders & (_YY >= lay.cloth_top)


def _neckline(lay: _Layout) -> np.ndarray:
    """The skin visible below the collar: a V or a round opening into the cloth."""
    ncx, top = lay.neck_x, lay.cloth_top
    if lay.v_neck:
        return _polygon([(ncx - lay.neck_w, top - 1), (ncx + lay.neck_w, top - 1), (ncx, top + 6)])
    return _ellipse(ncx, top, lay.neck_w, 3.5)


def _necklace(lay: _Layout) -> np.ndarray:
    ncx, top = lay.neck_x, lay.cloth_top
    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    ImageDraw.Draw(img).arc(
        [ncx - lay.neck_w - 0.5, top - 7, ncx + lay.neck_w + 0.5, top + 1.5], 10, 170, fill=1, width=1
    )
    return np.asarray(img, bool)


def _hair_back(lay: _Layout) -> np.ndarray:
    """Long hair behind the head, falling to the shoulders."""
    top = _ellipse(lay.cx, lay.cy - 2, lay.rx + 3.5, lay.ry + 2.5)
    fall = (np.abs(_XX - lay.cx) <= lay.rx + 4.5) & (_YY >= lay.cy - 2) & (_YY <= lay.chin_y + 10)
    return top | fall


def _hair_front(lay: _Layout) -> np.ndarray:
    """Hair over the head top down to the hairline, which drops to eye level at the temples (sideburns)."""
    volume = 2.5 if lay.hair_style == "long" else 1.8
    head = _ellipse(lay.cx, lay.cy - 1.5, lay.rx + volume, lay.ry + volume)
    side = np.clip(np.abs(_XX - lay.cx) / lay.rx, 0, 1)
    power = 6.0 if lay.hair_style == "fringe" else 2.5  # a fringe stays low across the whole forehead
    hairline = lay.hairline + (lay.eye_y + 1 - lay.hairline) * side**power
    return head & (_YY < hairline)


def _hat(lay: _Layout) -> np.ndarray:
    """A dome over the head top, with or without a brim."""
    crown = _ellipse(lay.cx, lay.hat_y, lay.rx + 1.8, lay.ry * 0.85) & (_YY < lay.hat_y)
    if lay.hat_brim:
        crown |= _ellipse(lay.cx + lay.turn, lay.hat_y - 0.5, lay.rx + 6, 1.8)
    return crown


def _lenses(lay: _Layout) -> list[np.ndarray]:
    return [_ellipse(x, lay.eye_y, lay.eye_rx + 2.0, lay.eye_ry + 1.8) for x in lay.eye_xs]


def _glasses(lay: _Layout) -> np.ndarray:
    """Both lenses, the bridge, and the temples running out to the ears."""
    left, right = lay.eye_xs
    outer = lay.eye_rx + 2.0
    y = lay.eye_y - 0.5
    frame = _lines(
        [
            [(left + outer - 0.5, y), (right - outer + 0.5, y)],
            [(left - outer, y), (lay.cx - lay.rx - 1, y)],
            [(right + outer, y), (lay.cx + lay.rx + 1, y)],
        ]
    )
    return frame | np.logical_or.reduce(_lenses(lay))


def _eyes(lay: _Layout) -> list[tuple[int, np.ndarray]]:
    return [(cls, _ellipse(x, lay.eye_y, lay.eye_rx, lay.eye_ry)) for cls, x in zip((L_EYE, R_EYE), lay.eye_xs)]


def _brows(lay: _Layout) -> list[tuple[int, np.ndarray]]:
    return [(cls, _ellipse(x, lay.brow_y, lay.eye_rx + 1.3, 1.0)) for cls, x in zip((L_BROW, R_BROW), lay.eye_xs)]


def _nose(lay: _Layout) -> np.ndarray:
    nx = lay.nose_x
    return _polygon([(lay.fx, lay.eye_y + 1), (nx - lay.nose_w, lay.nose_bottom), (nx + lay.nose_w, lay.nose_bottom)])


def _mouth_parts(lay: _Layout) -> list[tuple[int, np.ndarray]]:
    """Upper and lower lip around an opening; the opening (mouth class) exists only when open."""
    half = lay.mouth_gap / 2
    upper = _ellipse(lay.fx, lay.mouth_y, lay.mouth_w, half + 1.8) & (_YY < lay.mouth_y)
    lower = _ellipse(lay.fx, lay.mouth_y, lay.mouth_w * 0.9, half + 2.2) & (_YY >= lay.mouth_y)
    parts = [(U_LIP, upper), (L_LIP, lower)]
    if lay.mouth_gap:
        parts.append((MOUTH, _ellipse(lay.fx, lay.mouth_y, lay.mouth_w * 0.8, half)))
    return parts


def _label_layers(lay: _Layout) -> list[tuple[int, np.ndarray]]:
    """(class, region) from back to front, in the CelebAMask-HQ spirit: later layers cover earlier ones."""
    neck = _neck_column(lay)
    layers = [(NECK, neck), (CLOTH, _cloth(lay)), (NECK, _neckline(lay))]
    if lay.hair_style == "long":
        layers.append((HAIR, _hair_back(lay) & ~neck))
    if lay.necklace:
        layers.append((NECK_L, _necklace(lay)))
    layers += _ears(lay)
    layers.append((SKIN, _face(lay)))
    if lay.earrings:
        layers.append((EAR_R, _earrings(lay)))
    layers.append((NOSE, _nose(lay)))
    if lay.glasses:
        layers.append((EYE_G, _glasses(lay)))
    layers += _eyes(lay) + _brows(lay) + _mouth_parts(lay)
    if lay.hair_style != "none":
        layers.append((HAIR, _hair_front(lay)))
    if lay.hat:
        layers.append((HAT, _hat(lay)))
    return layers


def _draw_labels(lay: _Layout) -> np.ndarray:
    labels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for cls, region in _label_layers(lay):
        labels[region] = cls
    return labels


# ----------------------------------------------------------------------------------------------
# Image: colours per class from the label map, then details, wrinkles (age) and beard.


def _grey_with_age(colour: np.ndarray, age: int, amount: float = 1.0) -> np.ndarray:
    return colour + (_WHITE_HAIR - colour) * _GREYNESS[age] * amount


def _skin_layer(lay: _Layout, look: _Look) -> np.ndarray:
    """Skin colour everywhere, brightest at the face centre, so the face reads as round."""
    r2 = ((_XX - lay.fx) / lay.rx) ** 2 + ((_YY - lay.cy) / lay.ry) ** 2
    shade = 1.06 - 0.2 * np.clip(r2, 0, 1.3)
    return look.skin * shade[..., None]


def _background(look: _Look) -> np.ndarray:
    t = (_YY / IMAGE_SIZE)[..., None]
    return look.bg_top * (1 - t) + look.bg_bottom * t


def _base_colours(labels: np.ndarray, lay: _Layout, look: _Look, age: int, tex: _Texture) -> np.ndarray:
    """One colour model per class, so each class is recognisable from the image alone."""
    skin = _skin_layer(lay, look)
    hair = _grey_with_age(look.hair, age)[None, None] * (0.7 + 0.55 * tex.strands)[..., None]
    brow = _grey_with_age(look.hair * 0.6, age, 0.7)
    lip = look.skin * 0.55 + np.array([180, 60, 60], np.float32) * 0.45
    neck_shade = 0.72 + 0.15 * np.clip((_YY - lay.chin_y) / 6, 0, 1)
    cloth_shade = 0.85 + 0.3 * tex.strands
    colours = {
        BACKGROUND: _background(look),
        SKIN: skin,
        NOSE: skin * 0.9,
        EYE_G: np.array([25, 25, 30], np.float32),  # the frame; lens interiors are redrawn below
        L_EYE: np.array([236, 232, 226], np.float32),
        R_EYE: np.array([236, 232, 226], np.float32),
        L_BROW: brow,
        R_BROW: brow,
        L_EAR: look.skin * 0.9,
        R_EAR: look.skin * 0.9,
        MOUTH: np.array([70, 22, 30], np.float32),
        U_LIP: lip * 0.9,
        L_LIP: lip * 1.05,
        HAIR: hair,
        HAT: look.hat,
        EAR_R: look.metal,
        NECK_L: look.metal,
        NECK: look.skin * neck_shade[..., None],
        CLOTH: look.cloth * cloth_shade[..., None],
    }
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    for cls, colour in colours.items():
        region = labels == cls
        image[region] = np.broadcast_to(colour, image.shape)[region]
    return image


def _add_details(image: np.ndarray, labels: np.ndarray, lay: _Layout, look: _Look) -> None:
    """Irises, nostrils, teeth, lens tint and hat band: drawn only inside their own classes."""
    eyes = (labels == L_EYE) | (labels == R_EYE)
    iris = np.zeros_like(eyes)
    for x in lay.eye_xs:
        iris |= np.abs(_XX - (x + 0.8 * lay.turn)) <= max(lay.eye_rx * 0.45, 1.0)
    image[eyes & iris] = look.iris

    nx = lay.nose_x
    nostrils = _ellipse(nx - lay.nose_w * 0.5, lay.nose_bottom - 0.5, 0.8, 0.8) | _ellipse(
        nx + lay.nose_w * 0.5, lay.nose_bottom - 0.5, 0.8, 0.8
    )
    image[nostrils & (labels == NOSE)] *= 0.6

    teeth = (labels == MOUTH) & (_YY < lay.mouth_y) & (lay.mouth_gap >= 2.2)
    image[teeth] = (228, 222, 205)

    if lay.glasses:
        inner = np.logical_or.reduce([_ellipse(x, lay.eye_y, lay.eye_rx + 1.0, lay.eye_ry + 0.8) for x in lay.eye_xs])
        lens = inner & (labels == EYE_G)
        tinted = _skin_layer(lay, look) * 0.75 + np.array([175, 200, 225], np.float32) * 0.25
        image[lens] = tinted[lens]

    band = (labels == HAT) & (_YY >= lay.hat_y - 2.5)
    image[band] *= 0.6


def _wrinkles(lay: _Layout, age: int) -> np.ndarray:
    """Thin lines that accumulate with age: cheek folds (40s+), crow's feet (50s+), eye bags (60s+), forehead."""
    segments = []
    width = lay.rx * 0.45
    for k in range(_FOREHEAD_LINES[age]):
        y = lay.brow_y - 2.5 - 2 * k
        segments.append([(lay.fx - width, y + 0.5), (lay.fx, y - 0.4), (lay.fx + width, y + 0.5)])
    nx = lay.nose_x
    if age >= 2:
        for side in (-1, 1):
            segments.append(
                [
                    (nx + side * (lay.nose_w + 1.5), lay.nose_bottom - 1),
                    (lay.fx + side * (lay.mouth_w + 1.0), lay.mouth_y + 2),
                ]
            )
    if age >= 3:
        for side, x in zip((-1, 1), lay.eye_xs):
            corner = x + side * (lay.eye_rx + 1.0)
            segments.append([(corner, lay.eye_y), (corner + side * 2, lay.eye_y - 1)])
            segments.append([(corner, lay.eye_y + 1), (corner + side * 2, lay.eye_y + 2)])
    if age >= 4:
        for x in lay.eye_xs:
            y = lay.eye_y + lay.eye_ry + 1.5
            segments.append([(x - lay.eye_rx * 0.8, y), (x, y + 0.6), (x + lay.eye_rx * 0.8, y)])
    return _lines(segments)


def _apply_wrinkles(image: np.ndarray, labels: np.ndarray, lay: _Layout, age: int) -> None:
    lines = _wrinkles(lay, age) & ((labels == SKIN) | (labels == NOSE))
    image[lines] *= 0.78 - 0.04 * age


def _beard_region(labels: np.ndarray, lay: _Layout, beard: int) -> np.ndarray:
    """Where the beard grows, larger for each length: a short beard covers chin and jaw line, a medium one
    the whole face below the nose and the cheeks, a long one also hangs over neck and cloth.

    Only the image uses this; the label map keeps skin / neck / cloth there.
    """
    skin = labels == SKIN
    r2 = ((_XX - lay.cx) / lay.rx) ** 2 + ((_YY - lay.cy) / lay.ry) ** 2
    if beard == 1:
        region = skin & ((_YY > lay.mouth_y - 1.5) | ((_YY > lay.eye_y + 3.5) & (r2 > 0.5)))
    else:
        region = skin & ((_YY > lay.nose_bottom + 0.5) | ((_YY > lay.eye_y + 2.5) & (r2 > 0.35)))
    drop = _BEARD_DROP[beard]
    if drop:
        hang = _ellipse(lay.fx, lay.chin_y - 3, lay.jaw_rx * 0.9, 3 + drop) & (_YY > lay.chin_y - 3)
        region |= hang & np.isin(labels, (SKIN, NECK, NECK_L, CLOTH, HAIR))
    return region


def _apply_beard(
    image: np.ndarray, labels: np.ndarray, lay: _Layout, look: _Look, beard: int, age: int, tex: _Texture
) -> None:
    """A solid beard with strand shading over its region: young, darker than both hair and skin; greying with age.

    It greys less than the hair (60% of the way to white), and a grey that comes out as bright as the skin
    is darkened, so an old man's beard stands out on every skin tone as a young man's does.
    """
    if not beard:
        return
    region = _beard_region(labels, lay, beard)
    dark = np.minimum(look.hair, look.skin) * 0.45  # a blond beard on dark skin is still darker than the skin
    grey = _grey_with_age(dark, age, 0.6)
    if abs(grey.mean() - look.skin.mean()) < 0.3 * look.skin.mean():  # greyed to the skin's brightness
        grey = grey * (0.6 * look.skin.mean() / grey.mean())
    colour = grey[None, None] * (0.75 + 0.4 * tex.strands)[..., None]
    alpha = _BEARD_OPACITY[beard]
    image[region] = image[region] * (1 - alpha) + colour[region] * alpha


def _render_image(labels: np.ndarray, lay: _Layout, look: _Look, beard: int, age: int, tex: _Texture) -> np.ndarray:
    image = _base_colours(labels, lay, look, age, tex)
    _add_details(image, labels, lay, look)
    _apply_wrinkles(image, labels, lay, age)
    _apply_beard(image, labels, lay, look, beard, age, tex)
    image += 3.0 * tex.grain
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Public API.


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for layout, caption attributes, colours and texture (in that order)."""
    return np.random.default_rng(seed).spawn(4)


def _check_choice(name: str, value, names: tuple[str, ...]) -> int:
    if type(value) is not int or not 0 <= value < len(names):
        raise ValueError(f"{name} must be an int in 0..{len(names) - 1} ({', '.join(names)}), got {value!r}")
    return value


def make_example(seed: int, beard: int | None = None, age: int | None = None) -> dict:
    """One toy face: ``{"image", "labels", "caption", "scribble", "attributes"}``, a pure function of the arguments.

    ``beard`` / ``age`` override the sampled values; the label map and all other colours stay the same,
    which is how the tests prove that beard and age live only in the image and the caption.
    """
    layout_rng, caption_rng, look_rng, texture_rng = _streams(seed)
    lay = _sample_layout(layout_rng)
    sampled_beard, sampled_age, template, phrase = _sample_caption_choices(caption_rng)
    beard = sampled_beard if beard is None else _check_choice("beard", beard, BEARD_LENGTHS)
    age = sampled_age if age is None else _check_choice("age", age, AGE_DECADES)
    look, tex = _sample_look(look_rng), _sample_texture(texture_rng)

    labels = _draw_labels(lay)
    return {
        "image": _render_image(labels, lay, look, beard, age, tex),
        "labels": labels,
        "caption": _caption(beard, age, template, phrase),
        "scribble": scribble_from_labels(labels),
        "attributes": {
            "seed": int(seed),
            "beard": beard,
            "age": age,
            "mouth_open": bool(lay.mouth_gap),
            "hat": lay.hat,
            "glasses": lay.glasses,
            "earrings": lay.earrings,
            "necklace": lay.necklace,
            "hair_style": lay.hair_style,
            "turn": round(float(lay.turn), 4),
        },
    }


def example_seed(seed: int, index: int) -> int:
    """The seed of example ``index`` of the dataset written with ``seed``.

    Hashing (seed, index) rather than adding them keeps datasets of nearby seeds from sharing examples.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class FreshToyFaces:
    """An endless grain data source of toy-face images rendered on demand: record i is example i of the
    dataset with `seed`, so a GAN's discriminator never sees a face twice and cannot memorise a finite set.
    Read it unshuffled (`make_loader(..., shuffle=False)`): the records are already independent draws."""

    def __init__(self, seed: int):
        self.seed = seed

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int) -> dict:
        return {"image": make_example(example_seed(self.seed, int(index)))["image"]}

    def __repr__(self) -> str:  # grain compares it with the one saved in an iterator state
        return f"FreshToyFaces(seed={self.seed})"


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Temp file in the same folder + rename, so a crash never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_json(path: pathlib.Path, obj) -> None:
    _write_atomic(path, json.dumps(obj, indent=1).encode())


def write_dataset(root, count: int, seed: int = 0) -> pathlib.Path:
    """Write ``count`` toy faces in the authors' CelebA multi-modal layout under ``root``.

    ``image/<i>.png``, ``mask/<i>.png`` (palette label PNGs), ``scribble/<i>.png`` (white lines on black),
    ``text/<captions json>`` in index order
    (the builder's test split is its last keys) and ``attributes.json`` for evaluation. The caption JSON
    is written last: the builder reads the example list from it, so a crashed run is never mistaken for
    a complete dataset. A progress bar on stderr counts the examples.
    """
    if type(count) is not int or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    root = pathlib.Path(root)
    captions, attributes = {}, {}
    start = time.monotonic()
    for i in bar(range(count), "toy faces", unit="face"):
        example = make_example(example_seed(seed, i))
        name = f"{i}.png"
        _write_atomic(root / "image" / name, _png_bytes(Image.fromarray(example["image"])))
        save_label_png(root / "mask" / name, example["labels"])
        _write_atomic(root / "scribble" / name, _png_bytes(Image.fromarray(example["scribble"])))
        captions[name] = {CAPTION_KEY: example["caption"]}
        attributes[name] = example["attributes"]
    _write_json(root / ATTRIBUTES_JSON, attributes)
    _write_json(root / "text" / CAPTIONS_JSON, captions)
    log.info("wrote %d toy faces to %s in %.1fs", count, root, time.monotonic() - start)
    return root


def _short_label(attributes: dict) -> str:
    """E.g. "medium beard, 30s": what the caption says, short enough to fit under a preview cell."""
    return f"{BEARD_LENGTHS[attributes['beard']]} beard, {20 + 10 * attributes['age']}s"


def preview_grid(examples: list[dict], columns: int = 4, scale: int = 2) -> Image.Image:
    """Image | colourised mask pairs in a grid, each captioned with its beard length and decade."""
    cell_w, cell_h, text_h = 2 * IMAGE_SIZE * scale, IMAGE_SIZE * scale, 14
    rows = -(-len(examples) // columns)
    pad = 4
    grid = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    size = (IMAGE_SIZE * scale, IMAGE_SIZE * scale)
    for k, example in enumerate(examples):
        x = pad + (k % columns) * (cell_w + pad)
        y = pad + (k // columns) * (cell_h + text_h + pad)
        grid.paste(Image.fromarray(example["image"]).resize(size, Image.NEAREST), (x, y))
        grid.paste(Image.fromarray(colorize(example["labels"])).resize(size, Image.NEAREST), (x + size[0], y))
        draw.text((x + 2, y + cell_h + 1), _short_label(example["attributes"]), fill=(0, 0, 0), font=font)
    return grid


def main(argv=None) -> int:
    """``python -m cdiff_jax.data.toy_faces OUT_DIR --count N --seed S [--preview PATH]``."""
    p = argparse.ArgumentParser(description="Write a procedural toy-face dataset (image, mask, caption, scribble).")
    p.add_argument("out_dir", help="dataset root; gets image/, mask/, scribble/, text/ and attributes.json")
    p.add_argument("--count", type=int, default=1000, help="number of examples")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; example i uses example_seed(seed, i)")
    p.add_argument("--preview", help="also write a PNG grid of the first 32 examples with their masks")
    args = p.parse_args(argv)
    configure_logging()
    if args.count < 1:
        p.error("--count must be at least 1")
    root = write_dataset(args.out_dir, args.count, args.seed)
    if args.preview:
        examples = [make_example(example_seed(args.seed, i)) for i in range(min(args.count, 32))]
        preview = pathlib.Path(args.preview)
        _write_atomic(preview, _png_bytes(preview_grid(examples)))
        print(f"preview: {preview}", file=sys.stderr)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
