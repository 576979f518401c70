"""Procedural facial-expression images: the package's built-in default dataset.

Every image is a cartoon face whose expression is the combination of three *regional*
attributes (brows, eyes, mouth). The table is built so that no single region decides the
class -- every attribute value is shared by at least two classes -- and so that every region
is needed: each pair of classes differs in at least one region, and for each region there is
a pair that differs *only* there (Surprise/Fear: mouth, Fear/Sadness: eyes, Anger/Neutral:
brows). Dropping any one region makes two classes indistinguishable, so a classifier has to
read the fine detail of all three local regions -- which is what LNLAttenNet's local attention
is for. Canonical label order (RAF-DB's)::

    label  class       brows     eyes      mouth
    0      Surprise    raised    wide      open      jaw drop
    1      Fear        raised    wide      frown     open-eyed dismay
    2      Disgust     lowered   narrowed  frown     nose-wrinkle squint, lip-corner depressor
    3      Happiness   neutral   narrowed  open      laughing: smiling (narrowed) eyes, open mouth
    4      Sadness     raised    normal    frown     inner brows up, corners down
    5      Anger       lowered   normal    line      frown-line brows, pressed lips
    6      Neutral     neutral   normal    line

    brows: raised {Surprise, Fear, Sadness}  lowered {Disgust, Anger}  neutral {Happiness, Neutral}
    eyes:  wide {Surprise, Fear}  narrowed {Disgust, Happiness}  normal {Sadness, Anger, Neutral}
    mouth: open {Surprise, Happiness}  frown {Fear, Disgust, Sadness}  line {Anger, Neutral}

With 7 classes and every value used at least twice a region can have at most 3 values, so
realism gives a little: Happiness laughs with an open mouth instead of a closed smile, and
Sadness's inner-raised brows are drawn as raised brows. The rest follows FACS roughly: AU1+2
raised brows, AU4 lowered, AU5 wide eyes, AU6/AU9 narrowed eyes, AU26 open jaw, AU15
lip-corner depressor, AU23/24 pressed lips. A mouth-only classifier can get at most 3/7 right.

Variation that carries no label information: pose (shift of +-8 % of the size, scale
0.85-1.15, in-plane rotation +-12 degrees), face shape (ellipse aspect), skin tone, hair colour
and hairline, lighting gradient and brightness, background colour / gradient / texture, small
jitter of every attribute's geometry (how wide the mouth, how high the brows, gaze ...),
accessories (glasses frames, earrings, hat with a brim; placed so that they never cover the
cues), uniform pixel noise, and -- with probability ``occlusion_prob`` -- a grey or coloured
rectangle over one random part of the face.

Determinism: image ``i`` of ``generate(..., seed=s)`` is drawn from its own generator
``np.random.default_rng([s, 1, i])`` and labels come from a seeded permutation of the 7
classes per block of 7 consecutive indices (``default_rng([s, 2, i // 7])``): the same
``(seed, index)`` therefore gives the same label and bytes however many images are generated,
in which batches and from which ``start``. Images ``7k .. 7k + 6`` hold each class exactly
once, so ``N`` images from a ``start`` that is a multiple of 7 hold every class ``N // 7`` or
``N // 7 + 1`` times, and from any ``start`` within 2 of ``N / 7`` (:func:`label_of`). Batched
rendering only uses operations that are exact per element (``+ - * / sqrt abs min max clip
floor rint``); transcendental functions are evaluated per image in Python, so batching cannot
change a single bit.

Rendering is vectorised numpy over a batch of images: pixel centres are mapped back to face
coordinates (the face's half-width is one unit, y points down), every shape is an implicit
function (ellipses, thick parabolic curves, boxes) turned into an approximate signed distance
and anti-aliased with a linear ramp one pixel wide, and layers are alpha-composited.

Ground truth per image: ``regions`` (uint8, ``0`` other, ``1`` eyes, ``2`` brows, ``3`` mouth;
:data:`REGION_CODES`) marks each cue's shape grown by a small margin (0.06 face units plus half
a pixel, so it holds every pixel the cue's ink touches), after the pose transform and before
occlusion; where two grown shapes meet, mouth beats eyes beats brows, so a region's mask never
depends on another region's attribute. ``occluder`` (bool) marks the occluding rectangle
(accessories are not in it: they are part of the face, and never cover a whole cue).

    from lnlatten_fast.data.synthetic import generate, CLASS_NAMES
    data = generate(6000, size=64, seed=0)   # images (N,64,64,3) uint8, labels (N,) int64, ...
"""

from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .labels import CLASS_NAMES

__all__ = [
    "CLASS_ATTRIBUTES",
    "CLASS_NAMES",
    "VERSION",
    "REGION_CODES",
    "SyntheticFace",
    "generate",
    "label_of",
    "render_face",
]

# Bump when the drawing changes: cached synthetic images are keyed by it.
VERSION = 1


CLASS_ATTRIBUTES: dict[int, dict[str, str]] = {
    0: {"brows": "raised", "eyes": "wide", "mouth": "open"},  # Surprise
    1: {"brows": "raised", "eyes": "wide", "mouth": "frown"},  # Fear
    2: {"brows": "lowered", "eyes": "narrowed", "mouth": "frown"},  # Disgust
    3: {"brows": "neutral", "eyes": "narrowed", "mouth": "open"},  # Happiness
    4: {"brows": "raised", "eyes": "normal", "mouth": "frown"},  # Sadness
    5: {"brows": "lowered", "eyes": "normal", "mouth": "line"},  # Anger
    6: {"brows": "neutral", "eyes": "normal", "mouth": "line"},  # Neutral
}

REGION_CODES: dict[str, int] = {"other": 0, "eyes": 1, "brows": 2, "mouth": 3}

MIN_SIZE = 32
_NUM_CLASSES = len(CLASS_NAMES)
_IMAGE_STREAM, _LABEL_STREAM = 1, 2  # domain-separate the per-image and per-block generators

# Region masks are the cue's shape grown by this margin (face units; the face half-width is 1)
# plus half a pixel, so that they hold every pixel the cue's anti-aliased ink touches (coverage
# is > 0 up to half a pixel outside a shape; the eyelid line adds 0.018) at any size.
_REGION_MARGIN = 0.06

# Canonical attribute geometry in face units (y down). Each value is jittered per image.
# brows: centre height, arch (parabola curvature, >0 = middle higher), slope (<0 = inner end
# lower, i.e. drawn down and together), thickness.
_BROWS = {
    "neutral": {"y": -0.50, "arch": 0.55, "slope": 0.00, "thick": 0.085},
    "raised": {"y": -0.66, "arch": 1.30, "slope": 0.10, "thick": 0.080},
    "lowered": {"y": -0.42, "arch": 0.10, "slope": -0.42, "thick": 0.100},
}
# eyes: semi-axes of the eye opening (the iris is clipped by it, so narrowed eyes hide most
# of it and wide eyes show white all around).
_EYES = {
    "normal": {"rx": 0.185, "ry": 0.095},
    "wide": {"rx": 0.200, "ry": 0.150},
    "narrowed": {"rx": 0.175, "ry": 0.040},
}
# mouth: "open" is an ellipse (dark inside a lip rim); "line" and "frown" a thick parabola
# whose corners sit `drop` below its middle.
_MOUTHS = {
    "line": {"open": 0.0, "w": 0.30, "drop": 0.00, "thick": 0.075},
    "frown": {"open": 0.0, "w": 0.27, "drop": 0.14, "thick": 0.080},
    "open": {"open": 1.0, "w": 0.17, "drop": 0.15, "thick": 0.055},  # w, drop: semi-axes; thick: lips
}

# Palettes (RGB, plain lists: per-image sampling is scalar Python, numpy scalars would be slower).
_SKIN = [[250, 220, 200], [236, 192, 160], [210, 160, 120], [170, 120, 85], [125, 85, 60], [90, 60, 42]]
_HAIR = [
    [25, 20, 18],
    [60, 40, 25],
    [110, 70, 40],
    [200, 165, 95],
    [160, 70, 35],
    [170, 170, 170],
    [60, 60, 180],
    [190, 70, 150],
    [40, 140, 90],  # dyed
]
_HAIR_CDF = [0.22, 0.42, 0.57, 0.69, 0.77, 0.85, 0.90, 0.95, 1.0]
_IRIS = [[70, 45, 25], [40, 25, 15], [60, 100, 150], [70, 110, 70], [110, 90, 50]]

# Occluders are centred on one of these parts of the face (face units; x is mirrored at random).
_OCCLUDER_TARGETS = ((0.40, -0.15), (0.40, -0.52), (0.0, 0.58), (0.0, 0.15), (0.55, 0.30), (0.0, -0.85))


@dataclass(frozen=True)
class SyntheticFace:
    """One rendered face: RGB ``image`` (size, size, 3) uint8, its ``label``, the crucial-region
    mask ``regions`` (size, size) uint8 (:data:`REGION_CODES`) and the ``occluder`` mask
    (size, size) bool."""

    image: np.ndarray
    label: int
    regions: np.ndarray
    occluder: np.ndarray


# ----------------------------------------------------------------------------- validation


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_prob(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} ({value!r})")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


# ----------------------------------------------------------------------------- parameters


class _Uniforms:
    """Hands out the values of one ``rng.random(n)`` call: one generator call per image is much
    cheaper than dozens of scalar draws, and the order of the draws below fixes the stream."""

    def __init__(self, rng: np.random.Generator, n: int = 96):
        self._u = rng.random(n).tolist()
        self._i = 0

    def __call__(self, lo: float = 0.0, hi: float = 1.0) -> float:
        u = self._u[self._i]
        self._i += 1
        return lo + (hi - lo) * u

    def chance(self, p: float) -> bool:
        return self() < p

    def pick(self, n: int, cdf=None) -> int:
        u = self()
        if cdf is None:
            return min(int(u * n), n - 1)
        return min(bisect.bisect_right(cdf, u), n - 1)


def _colour(base, u: _Uniforms, spread: float) -> list[float]:
    return [min(255.0, max(0.0, c + u(-spread, spread))) for c in base]


def _sample_params(label: int, size: int, rng: np.random.Generator, occlusion_prob: float) -> dict:
    """Draw everything random about one image: scalars (pose, geometry, colours, flags) and
    the two per-pixel fields (background texture, pixel noise)."""
    u = _Uniforms(rng)
    attrs = CLASS_ATTRIBUTES[label]
    p: dict = {}

    # Pose: face centre in pixels, pixels per face unit, rotation (cos/sin in Python so that
    # batched rendering needs no transcendental functions).
    p["cx"] = size * (0.5 + u(-0.08, 0.08))
    p["cy"] = size * (0.52 + u(-0.08, 0.08))
    p["ppu"] = size * 0.30 * u(0.85, 1.15)
    angle = math.radians(u(-12.0, 12.0))
    p["cos"], p["sin"] = math.cos(angle), math.sin(angle)
    p["aspect"] = u(1.18, 1.42)

    # Colours.
    t = u(0.0, len(_SKIN) - 1.0)
    i = min(int(t), len(_SKIN) - 2)
    skin = [a + (t - i) * (b - a) for a, b in zip(_SKIN[i], _SKIN[i + 1])]
    p["skin"] = _colour(skin, u, 12.0)
    p["hair"] = _colour(_HAIR[u.pick(len(_HAIR), _HAIR_CDF)], u, 20.0)
    darkness = u(0.25, 0.45)  # brows are darker than skin whatever the hair colour
    p["brow_col"] = [darkness * (0.6 * s + 0.4 * h) for s, h in zip(p["skin"], p["hair"])]
    p["iris_col"] = _colour(_IRIS[u.pick(len(_IRIS))], u, 15.0)
    p["lip_col"] = [0.55 * p["skin"][0] + 80, 0.45 * p["skin"][1] + 10, 0.45 * p["skin"][2] + 15]
    p["lip_col"] = _colour(p["lip_col"], u, 10.0)
    p["bg1"] = [u(20, 235) for _ in range(3)]
    p["bg2"] = _colour(p["bg1"], u, 70.0)
    bg_angle = u(0.0, 2 * math.pi)
    p["bg_gx"], p["bg_gy"] = math.cos(bg_angle), math.sin(bg_angle)
    p["shirt"] = [u(20, 235) for _ in range(3)]

    # Hair: a cap above a hairline y = h0 + curl * max(|x| - 0.55, 0)^2 (kept above the brows),
    # sometimes long hair behind the head.
    p["hair_h0"] = u(-1.12, -0.80)
    p["hair_curl"] = u(0.5, 3.0)
    p["long_hair"] = float(u.chance(0.35))

    # Brows.
    b = _BROWS[attrs["brows"]]
    p["brow_y"] = b["y"] + u(-0.035, 0.035)
    p["brow_x"] = 0.40 + u(-0.03, 0.03)
    p["brow_w"] = 0.21 * u(0.85, 1.15)
    p["brow_arch"] = b["arch"] * u(0.7, 1.3)
    p["brow_slope"] = b["slope"] * u(0.75, 1.25) + u(-0.04, 0.04)
    p["brow_t"] = b["thick"] * u(0.8, 1.2)

    # Eyes.
    e = _EYES[attrs["eyes"]]
    p["eye_x"] = 0.40 + u(-0.03, 0.03)
    p["eye_y"] = -0.16 + u(-0.03, 0.03)
    p["eye_rx"] = e["rx"] * u(0.9, 1.1)
    p["eye_ry"] = e["ry"] * u(0.85, 1.15)
    p["iris_r"] = u(0.075, 0.095)
    p["gaze_x"] = u(-0.04, 0.04)
    p["gaze_y"] = u(-0.015, 0.015)

    # Mouth.
    m = _MOUTHS[attrs["mouth"]]
    p["mouth_open"] = m["open"]
    p["mouth_y"] = 0.58 + u(-0.04, 0.04)
    p["mouth_w"] = m["w"] * u(0.85, 1.15)
    p["mouth_drop"] = m["drop"] * u(0.75, 1.25) + u(-0.02, 0.02)
    p["mouth_t"] = m["thick"] * u(0.85, 1.15)

    # Accessories (distractors that never hide a whole cue).
    p["glasses"] = float(u.chance(0.25))
    p["glasses_col"] = [u(0, 120)] * 3 if u.chance(0.6) else [u(0, 255) for _ in range(3)]
    p["glasses_rx"] = u(0.26, 0.31)
    p["glasses_ry"] = u(0.20, 0.24)
    p["earrings"] = float(u.chance(0.25))
    p["earring_col"] = _colour([230, 190, 60] if u.chance(0.5) else [200, 200, 210], u, 25.0)
    p["earring_r"] = u(0.045, 0.075)
    p["hat"] = float(u.chance(0.2))
    p["hat_col"] = [u(10, 245) for _ in range(3)]
    p["hat_brim"] = u(-1.02, -0.92)

    # Lighting: brightness times a linear gradient across the image.
    p["light"] = u(0.82, 1.12)
    p["light_gx"] = u(-0.22, 0.22)
    p["light_gy"] = u(-0.22, 0.22)
    p["noise_sigma"] = u(3.0, 14.0)  # standard deviation, grey levels

    # Occluder: a rectangle (in face coordinates, so it turns with the face) over one part.
    # (Always draw, so that the rest of the image does not depend on occlusion_prob.)
    p["occluded"] = float(u.chance(occlusion_prob))
    tx, ty = _OCCLUDER_TARGETS[u.pick(len(_OCCLUDER_TARGETS))]
    p["occ_x"] = tx * (1.0 if u.chance(0.5) else -1.0) + u(-0.1, 0.1)
    p["occ_y"] = ty + u(-0.08, 0.08)
    p["occ_hw"] = u(0.18, 0.40)
    p["occ_hh"] = u(0.14, 0.30)
    p["occ_col"] = [u(40, 215)] * 3 if u.chance(0.5) else [u(0, 255) for _ in range(3)]

    # Background texture: smooth blotches (a 5x5 grid upsampled) or stripes (a triangle wave).
    blotchy = u.chance(0.5)
    amp = u(0.0, 35.0)
    p["blotch_amp"], p["stripe_amp"] = (amp, 0.0) if blotchy else (0.0, amp)
    stripe_angle = u(0.0, math.pi)
    period = size * u(0.08, 0.3)
    p["stripe_fx"], p["stripe_fy"] = math.cos(stripe_angle) / period, math.sin(stripe_angle) / period
    p["stripe_phase"] = u()

    # Per-pixel random fields: the 5x5 blotch grid and uniform pixel noise (uniform bytes are an
    # order of magnitude cheaper to draw than Gaussians; the eye cannot tell at these levels).
    p["blotch"] = _upsample(rng.random((5, 5)) * 2.0 - 1.0, size).astype(np.float32).reshape(-1)
    p["noise"] = rng.integers(0, 256, (3, size * size), dtype=np.uint8)
    return p


_TAPS_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a 5x5 grid to size x size pixel centres, written out elementwise
    (a BLAS matmul may round differently with the machine's thread count)."""
    if size not in _TAPS_CACHE:
        pos = (np.arange(size) + 0.5) / size * 4.0
        lo = np.minimum(np.floor(pos).astype(np.intp), 3)
        _TAPS_CACHE[size] = lo, (pos - lo)[:, None]
    lo, frac = _TAPS_CACHE[size]
    rows = grid[lo] * (1.0 - frac) + grid[lo + 1] * frac  # (size, 5)
    return rows[:, lo] * (1.0 - frac.T) + rows[:, lo + 1] * frac.T


# ----------------------------------------------------------------------------- rendering
# All shape functions take face coordinates x, y (B, S*S) and per-image parameters (B, 1)
# and return an approximate signed distance in face units (negative inside).


def _ellipse(x, y, cx, cy, rx, ry):
    # First-order distance to the ellipse: f / |grad f| with f = (dx/rx)^2 + (dy/ry)^2 - 1.
    # Accurate near the outline (where anti-aliasing happens), monotone elsewhere.
    dx = (x - cx) / rx
    dy = (y - cy) / ry
    f = dx * dx + dy * dy - 1.0
    grad = 2.0 * np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) + 1e-6
    return f / grad


def _curve(x, y, cx, cy, half_width, curvature, slope, thick):
    # Thick parabolic segment y = cy + curvature * dx^2 + slope * dx for |dx| <= half_width,
    # with square ends: vertical offset / sqrt(1 + y'^2) is the distance to a gently bent curve.
    dx = x - cx
    dy = y - cy - (curvature * dx + slope) * dx
    tangent = 2.0 * curvature * dx + slope
    d = np.abs(dy) / np.sqrt(1.0 + tangent * tangent) - 0.5 * thick
    return np.maximum(d, np.abs(dx) - half_width)


def _box(x, y, cx, cy, hw, hh):
    return np.maximum(np.abs(x - cx) - hw, np.abs(y - cy) - hh)


def _render_batch(params: list[dict], size: int):
    """Render a batch of parameter sets; returns images uint8 (B,S,S,3), regions, occluders.

    Layout: every per-pixel array is (B, S*S) and the image is planar (3, B, S*S), per-image
    parameters are (B, 1): the innermost numpy loop then runs over a whole image, not over 3
    channels or one row, which is what makes batching pay."""
    batch, npix = len(params), size * size

    def col(key):  # (B, 1) float32 per-image scalar
        return np.array([q[key] for q in params], dtype=np.float32)[:, None]

    def rgb(key):  # (3, B, 1) float32 per-image colour
        return np.array([q[key] for q in params], dtype=np.float32).T[:, :, None]

    ppu = col("ppu")

    def cover(d):  # anti-aliased coverage: a linear ramp one pixel wide across the outline
        return np.clip(0.5 - d * ppu, 0.0, 1.0)

    tmp = np.empty((3, batch, npix), dtype=np.float32)

    def paint(alpha, colour):  # img <- img + alpha * (colour - img), without temporaries
        np.subtract(colour, img, out=tmp)
        np.multiply(tmp, alpha, out=tmp)
        np.add(img, tmp, out=img)

    # Pixel centres (flattened) -> face coordinates (inverse of: rotate, scale, translate).
    grid = np.arange(size, dtype=np.float32) + 0.5
    px = np.tile(grid, size)[None, :]
    py = np.repeat(grid, size)[None, :]
    ux = (px - col("cx")) / ppu
    uy = (py - col("cy")) / ppu
    c, s = col("cos"), col("sin")
    x = c * ux + s * uy
    y = c * uy - s * ux
    ax = np.abs(x)  # the face is symmetric: eyes, brows, ears ... are evaluated once for both sides
    aspect = col("aspect")
    del ux, uy

    # Background: two-colour gradient plus blotches or stripes.
    ramp = np.clip(col("bg_gx") * (px / size - 0.5) + col("bg_gy") * (py / size - 0.5) + 0.5, 0.0, 1.0)
    bg1 = rgb("bg1")
    img = bg1 + ramp * (rgb("bg2") - bg1)
    phase = col("stripe_fx") * px + col("stripe_fy") * py + col("stripe_phase")
    stripes = 4.0 * np.abs(phase - np.floor(phase) - 0.5) - 1.0
    img += col("blotch_amp") * np.stack([q["blotch"] for q in params]) + col("stripe_amp") * stripes

    skin = rgb("skin")
    hair = rgb("hair")
    # Long hair behind the head, shirt and neck.
    long_hair = np.maximum(_ellipse(x, y, 0.0, 0.05, 1.32, aspect * 1.12), y - 0.9)
    paint(cover(long_hair) * col("long_hair"), hair)
    paint(cover(np.maximum(aspect + 0.25 - y, ax - 1.6)), rgb("shirt"))
    paint(cover(np.maximum(ax - 0.42, 0.5 - y)), skin * 0.85)
    # Ears (behind the face), face, hair cap above the hairline.
    paint(cover(_ellipse(ax, y, 0.97, -0.1, 0.13, 0.24)), skin * 0.93)
    paint(cover(_ellipse(x, y, 0.0, 0.0, 1.0, aspect)), skin)
    hairline = col("hair_h0") + col("hair_curl") * np.maximum(ax - 0.55, 0.0) ** 2
    cap = np.maximum(_ellipse(x, y, 0.0, -0.04, 1.07, aspect * 1.06), y - hairline)
    paint(cover(cap), hair)
    # Nose: a short shaded curve (not a labelled region).
    paint(cover(_curve(x, y, 0.0, 0.24, 0.09, -3.0, 0.0, 0.05)), skin * 0.72)

    # Brows (inner end towards the centre: ax < brow_x).
    brows = _curve(
        ax, y, col("brow_x"), col("brow_y"), col("brow_w"), col("brow_arch"), col("brow_slope"), col("brow_t")
    )
    paint(cover(brows), rgb("brow_col"))

    # Eyes: white opening, iris and pupil clipped by it, a dark lid line around it.
    ex, ey = col("eye_x"), col("eye_y")
    eye = _ellipse(ax, y, ex, ey, col("eye_rx"), col("eye_ry"))
    paint(cover(np.abs(eye) - 0.018), np.float32(35.0))
    paint(cover(eye), np.float32(245.0))
    # Gaze: both irises move the same way, so the offset is mirrored on the left side.
    gaze = col("gaze_x") * np.sign(x)
    iris_r = col("iris_r")
    iris = np.maximum(_ellipse(ax, y, ex + gaze, ey + col("gaze_y"), iris_r, iris_r), eye)
    paint(cover(iris), rgb("iris_col"))
    paint(cover(np.maximum(iris + 0.5 * iris_r, eye)), np.float32(10.0))

    # Mouth: either an open ellipse (lip rim, dark inside, a band of teeth) or a thick curve.
    my, mw, mdrop, mt = col("mouth_y"), col("mouth_w"), col("mouth_drop"), col("mouth_t")
    is_open = col("mouth_open")
    opening = _ellipse(x, y, 0.0, my, mw, mdrop)
    # Corners `drop` lower than the middle: curvature = drop / w^2, centre raised by drop / 3.
    curve = _curve(x, y, 0.0, my - mdrop / 3.0, mw, mdrop / (mw * mw), 0.0, mt)
    mouth = is_open * (opening - mt) + (1.0 - is_open) * curve
    paint(cover(mouth), rgb("lip_col"))
    inner = cover(opening) * is_open
    paint(inner, np.float32(45.0))
    paint(inner * cover(y - (my - 0.45 * mdrop)), np.float32(235.0))

    # Accessories: never a whole cue hidden -- glasses frames circle the eyes (a rim may cross a
    # lowered brow), earrings hang below the ears, the hat brim stays above raised brows.
    gl_rx, gl_ry = col("glasses_rx"), col("glasses_ry")
    rims = np.abs(_ellipse(ax, y, ex, ey, gl_rx, gl_ry)) - 0.02
    bridge = _curve(ax, y, 0.0, ey - 0.04, ex - gl_rx + 0.03, 0.0, 0.0, 0.035)
    arms = _curve(ax, y, 0.5 * (ex + gl_rx + 1.0), ey - 0.02, 0.5 * (1.0 - ex - gl_rx), 0.0, 0.0, 0.035)
    paint(cover(np.minimum(np.minimum(rims, bridge), arms)) * col("glasses"), rgb("glasses_col"))
    earring_r = col("earring_r")
    paint(cover(_ellipse(ax, y, 1.02, 0.16, earring_r, earring_r)) * col("earrings"), rgb("earring_col"))
    brim_y = col("hat_brim") * aspect / 1.3
    crown = np.maximum(_ellipse(x, y, 0.0, -0.1, 1.02, aspect * 1.08), y - brim_y)
    brim = _box(x, y, 0.0, brim_y, 1.35, 0.045)
    paint(cover(np.minimum(crown, brim)) * col("hat"), rgb("hat_col"))

    # Lighting: brightness times a linear gradient across the image.
    img *= col("light") * (1.0 + 2.0 * col("light_gx") * (px / size - 0.5) + 2.0 * col("light_gy") * (py / size - 0.5))

    # Occluder (after the lighting: an object in front of the face, lit differently).
    occ_alpha = cover(_box(x, y, col("occ_x"), col("occ_y"), col("occ_hw"), col("occ_hh"))) * col("occluded")
    paint(occ_alpha, rgb("occ_col"))
    occluder = occ_alpha > 0.5

    # Uniform noise of standard deviation sigma: bytes are uniform on [0, 255], std 73.9.
    noise = np.stack([q["noise"] for q in params], axis=1).astype(np.float32)
    img += (noise - 127.5) * (col("noise_sigma") / np.float32(73.9))
    np.clip(img, 0.0, 255.0, out=img)
    images = np.rint(img).astype(np.uint8).transpose(1, 2, 0).reshape(batch, size, size, 3)

    # Region masks: each cue's shape grown by a margin. Where grown shapes meet (lowered brows
    # come close to the eyes; at 32 px the margins reach far) a fixed priority decides,
    # mouth > eyes > brows, so the mouth mask never depends on the eyes or brows, nor the eyes
    # mask on the brows: a region's mask carries no information about another region's value.
    grow = _REGION_MARGIN + 0.5 / ppu
    regions = np.zeros((batch, npix), dtype=np.uint8)
    regions[brows < grow] = REGION_CODES["brows"]
    regions[eye < grow] = REGION_CODES["eyes"]
    regions[mouth < grow] = REGION_CODES["mouth"]
    return images, regions.reshape(batch, size, size), occluder.reshape(batch, size, size)


# ----------------------------------------------------------------------------- public API


def label_of(index: int, seed: int = 0) -> int:
    """The label of global image ``index`` under ``seed`` (a seeded permutation of the 7 classes
    per block of 7 consecutive indices, so labels are balanced without a periodic pattern)."""
    index = _check_int("index", index, 0)
    seed = _check_int("seed", seed, 0)
    return int(_block_permutation(seed, index // _NUM_CLASSES)[index % _NUM_CLASSES])


def _block_permutation(seed: int, block: int) -> np.ndarray:
    return np.random.default_rng([seed, _LABEL_STREAM, block]).permutation(_NUM_CLASSES)


def render_face(label: int, size: int, rng: np.random.Generator, occlusion_prob: float = 0.0) -> SyntheticFace:
    """Render one face of class ``label`` at ``size`` x ``size`` pixels, drawing every random
    choice from ``rng``. ``occlusion_prob`` is the chance of an occluding rectangle."""
    label = _check_int("label", label, 0, _NUM_CLASSES - 1)
    size = _check_int("size", size, MIN_SIZE)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    occlusion_prob = _check_prob("occlusion_prob", occlusion_prob)
    images, regions, occluders = _render_batch([_sample_params(label, size, rng, occlusion_prob)], size)
    return SyntheticFace(image=images[0], label=label, regions=regions[0], occluder=occluders[0])


def _chunk_size(size: int) -> int:
    # About 2**15 pixels per chunk: enough to amortise numpy's per-call overhead, small enough
    # that the (B, S*S) float32 temporaries stay in cache and are recycled by malloc instead of
    # being fresh (page-faulting) mappings -- measured 3-4x faster than 2**18.
    return max(1, (1 << 15) // (size * size))


def generate(num_images: int, size: int = 64, seed: int = 0, occlusion_prob: float = 0.0, start: int = 0) -> dict:
    """Images ``start .. start + num_images - 1`` of the synthetic dataset under ``seed``.

    Returns a dict of numpy arrays: ``images`` uint8 (N, size, size, 3) RGB, ``labels`` int64
    (N,), ``regions`` uint8 (N, size, size) (:data:`REGION_CODES`), ``occluders`` bool
    (N, size, size). Image ``i`` depends only on ``(seed, i, size, occlusion_prob)``.
    """
    num_images = _check_int("num_images", num_images, 0)
    size = _check_int("size", size, MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    occlusion_prob = _check_prob("occlusion_prob", occlusion_prob)
    start = _check_int("start", start, 0)

    stop = start + num_images
    first_block, last_block = start // _NUM_CLASSES, (stop - 1) // _NUM_CLASSES
    perms = [_block_permutation(seed, b) for b in range(first_block, last_block + 1)]
    labels = np.concatenate(perms or [np.zeros(0)]).astype(np.int64)
    labels = labels[start - first_block * _NUM_CLASSES :][:num_images]

    out = {
        "images": np.empty((num_images, size, size, 3), dtype=np.uint8),
        "labels": labels,
        "regions": np.empty((num_images, size, size), dtype=np.uint8),
        "occluders": np.empty((num_images, size, size), dtype=bool),
    }
    step = _chunk_size(size)
    for lo in range(0, num_images, step):
        hi = min(num_images, lo + step)
        params = []
        for j in range(lo, hi):
            rng = np.random.default_rng([seed, _IMAGE_STREAM, start + j])
            params.append(_sample_params(int(labels[j]), size, rng, occlusion_prob))
        out["images"][lo:hi], out["regions"][lo:hi], out["occluders"][lo:hi] = _render_batch(params, size)
    return out
