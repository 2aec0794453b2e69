"""Procedural pictures of the mini world: people's portraits, their Test_Set variants, and mini-MMBench scenes.

Everything is drawn with PIL ImageDraw at SUPERSAMPLE x the target size and reduced with a box filter, so a 32 px
picture keeps smooth edges. Every function is a pure function of its arguments (parameters or a seeded RNG), so the
same seed gives the same pixels and, through `encode_png`, the same bytes.
"""
from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

SUPERSAMPLE = 4

# ---------------------------------------------------------------- portraits

SKIN = {"pale": (255, 226, 200), "light": (240, 192, 158), "tan": (214, 160, 116), "olive": (188, 146, 96),
        "brown": (141, 88, 44), "dark": (88, 56, 38)}
HAIR = {"black": (22, 20, 20), "brown": (105, 62, 26), "blond": (236, 200, 92), "red": (184, 62, 24),
        "grey": (150, 150, 150), "white": (244, 244, 240), "blue": (40, 92, 206), "pink": (242, 120, 182),
        "green": (42, 150, 72)}
EYES = {"brown": (96, 56, 20), "blue": (40, 110, 230), "green": (40, 160, 70), "grey": (120, 130, 140),
        "black": (10, 10, 10)}
HAIRSTYLES = ("short", "long", "spiky", "tied-up", "bald")
ACCESSORIES = {"none": "", "glasses": "glasses", "hat": "a hat", "bow": "a bow", "earrings": "earrings"}
MIN_PORTRAIT_DISTANCE = 0.08  # RMS pixel distance (0..1 scale) every pair of portraits keeps at least


def portrait_params(rng: random.Random) -> dict:
    """Draw one identity: colours by name (they feed appearance_detail) and geometry on a 32-unit grid."""
    rgb = lambda: [rng.randrange(256) for _ in range(3)]  # noqa: E731
    return {
        "background": rgb(), "shirt": rgb(), "accessory_colour": rgb(),
        "skin": rng.choice(sorted(SKIN)), "hair": rng.choice(sorted(HAIR)), "eyes": rng.choice(sorted(EYES)),
        "hairstyle": rng.choice(HAIRSTYLES), "accessory": rng.choice(sorted(ACCESSORIES)),
        "face_dx": rng.uniform(-2.5, 2.5), "face_dy": rng.uniform(-1.5, 1.5),
        "face_w": rng.uniform(5.5, 8.0), "face_h": rng.uniform(7.0, 9.5),
        "eye_gap": rng.uniform(2.2, 3.6), "eye_dy": rng.uniform(0.5, 3.0),
    }


def appearance_sentence(params: dict) -> str:
    """One sentence describing a portrait, e.g. "This person has long blond hair and green eyes and wears a hat."."""
    if params["hairstyle"] == "bald":
        text = f"This person is bald and has {params['eyes']} eyes"
    else:
        text = f"This person has {params['hairstyle']} {params['hair']} hair and {params['eyes']} eyes"
    wear = ACCESSORIES[params["accessory"]]
    return text + (f" and wears {wear}." if wear else ".")


def draw_portrait(p: dict, size: int) -> Image.Image:
    """Render portrait parameters as a size x size RGB image."""
    u = size * SUPERSAMPLE / 32  # one grid unit in canvas pixels
    im = Image.new("RGB", (round(32 * u),) * 2, tuple(p["background"]))
    d = ImageDraw.Draw(im)
    box = lambda x0, y0, x1, y1: [x0 * u, y0 * u, x1 * u, y1 * u]  # noqa: E731
    cx, cy, fw, fh = 16 + p["face_dx"], 15 + p["face_dy"], p["face_w"], p["face_h"]
    hair, skin, acc = HAIR[p["hair"]], SKIN[p["skin"]], tuple(p["accessory_colour"])
    d.ellipse(box(cx - 11, cy + fh - 2, cx + 11, cy + fh + 16), fill=tuple(p["shirt"]))
    style = p["hairstyle"]
    if style == "long":
        d.rectangle(box(cx - fw - 1.5, cy - fh * 0.4, cx + fw + 1.5, cy + fh + 1), fill=hair)
    d.ellipse(box(cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    if style in ("short", "long", "tied-up"):
        d.chord(box(cx - fw - 0.5, cy - fh - 1, cx + fw + 0.5, cy + fh * 0.2), 180, 360, fill=hair)
    if style == "tied-up":
        d.ellipse(box(cx - 2.5, cy - fh - 4.5, cx + 2.5, cy - fh + 0.5), fill=hair)
    if style == "spiky":
        for k in range(5):
            x = cx - fw + k * fw / 2
            d.polygon([(x * u - 1.6 * u, (cy - fh * 0.45) * u), (x * u + 1.6 * u, (cy - fh * 0.45) * u),
                       (x * u, (cy - fh - 3) * u)], fill=hair)
    ey = cy - p["eye_dy"]
    for side in (-1, 1):
        ex = cx + side * p["eye_gap"]
        d.ellipse(box(ex - 1.4, ey - 1.0, ex + 1.4, ey + 1.0), fill=(250, 250, 250))
        d.ellipse(box(ex - 0.8, ey - 0.8, ex + 0.8, ey + 0.8), fill=EYES[p["eyes"]])
    d.arc(box(cx - 2.5, cy + fh * 0.25, cx + 2.5, cy + fh * 0.6), 20, 160, fill=(120, 30, 30), width=max(1, round(u)))
    accessory = p["accessory"]
    if accessory == "glasses":
        for side in (-1, 1):
            ex = cx + side * p["eye_gap"]
            d.rectangle(box(ex - 2, ey - 1.6, ex + 2, ey + 1.6), outline=acc, width=max(1, round(0.7 * u)))
        d.line(box(cx - p["eye_gap"] + 2, ey, cx + p["eye_gap"] - 2, ey), fill=acc, width=max(1, round(0.7 * u)))
    elif accessory == "hat":
        d.rectangle(box(cx - fw - 2, cy - fh + 0.5, cx + fw + 2, cy - fh + 2), fill=acc)
        d.rectangle(box(cx - fw * 0.7, cy - fh - 5, cx + fw * 0.7, cy - fh + 1), fill=acc)
    elif accessory == "bow":
        bx, by = cx + fw * 0.6, cy - fh + 0.5
        d.polygon([(bx * u, by * u), ((bx - 3) * u, (by - 2) * u), ((bx - 3) * u, (by + 2) * u)], fill=acc)
        d.polygon([(bx * u, by * u), ((bx + 3) * u, (by - 2) * u), ((bx + 3) * u, (by + 2) * u)], fill=acc)
    elif accessory == "earrings":
        for side in (-1, 1):
            x = cx + side * (fw + 0.3)
            d.ellipse(box(x - 1.2, cy + 1, x + 1.2, cy + 3.4), fill=acc)
    return im.resize((size, size), Image.BOX)


def pixels(image: Image.Image) -> np.ndarray:
    """Float pixels in [0, 1], flattened (for distances)."""
    return np.asarray(image, dtype=np.float64).reshape(-1) / 255.0


def rms_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def distinct_portraits(keys: list[str], seed: int, size: int) -> list[tuple[dict, Image.Image]]:
    """One portrait per key, each drawn from `Random(f"{seed}:portrait:{key}:{attempt}")`; a portrait closer than
    MIN_PORTRAIT_DISTANCE to an earlier one is redrawn with the next attempt number."""
    out, accepted = [], np.empty((0, size * size * 3))
    for key in keys:
        for attempt in range(1000):
            params = portrait_params(random.Random(f"{seed}:portrait:{key}:{attempt}"))
            image = draw_portrait(params, size)
            x = pixels(image)
            if not len(accepted) or np.sqrt(((accepted - x) ** 2).mean(axis=1)).min() >= MIN_PORTRAIT_DISTANCE:
                break
        else:  # pragma: no cover - only with absurdly many people at a tiny size
            raise RuntimeError(f"no distinct portrait for {key} after 1000 attempts")
        out.append((params, image))
        accepted = np.vstack([accepted, x[None]])
    return out


def transform_portrait(image: Image.Image, rng: random.Random) -> Image.Image:
    """A Test_Set variant of a portrait: shift by 1-2 px (edges repeated), brightness and contrast jitter of up to
    15 %, Gaussian noise (sigma 5 of 255). The identity stays recognisable (nearest original = its own)."""
    while True:
        dx, dy = rng.randint(-2, 2), rng.randint(-2, 2)
        if (dx, dy) != (0, 0):
            break
    a = np.pad(np.asarray(image), ((2, 2), (2, 2), (0, 0)), mode="edge")
    h, w = image.height, image.width
    shifted = Image.fromarray(np.ascontiguousarray(a[2 - dy: 2 - dy + h, 2 - dx: 2 - dx + w]))
    shifted = ImageEnhance.Brightness(shifted).enhance(rng.uniform(0.85, 1.15))
    shifted = ImageEnhance.Contrast(shifted).enhance(rng.uniform(0.85, 1.15))
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, 5.0, size=(h, w, 3))
    noisy = np.clip(np.asarray(shifted, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8)
    return Image.fromarray(noisy)


# ---------------------------------------------------------------- mini-MMBench scenes

COLOURS = {"red": (222, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 222), "yellow": (240, 210, 30),
           "purple": (140, 50, 182), "orange": (246, 140, 20), "pink": (246, 130, 192), "brown": (120, 74, 34),
           "black": (16, 16, 16)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
BACKDROPS = ((236, 236, 236), (214, 214, 214), (240, 230, 210), (204, 214, 226), (224, 236, 220))


def draw_scene(shapes: list[tuple[str, str, float, float, float]], backdrop, size: int) -> Image.Image:
    """Draw (shape, colour name, centre x, centre y, radius) items, coordinates as fractions of the side."""
    s = size * SUPERSAMPLE
    im = Image.new("RGB", (s, s), tuple(backdrop))
    d = ImageDraw.Draw(im)
    for kind, colour, fx, fy, fr in shapes:
        x, y, r, fill = fx * s, fy * s, fr * s, COLOURS[colour]
        if kind == "circle":
            d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif kind == "square":
            d.rectangle([x - 0.85 * r, y - 0.85 * r, x + 0.85 * r, y + 0.85 * r], fill=fill)
        elif kind == "triangle":
            d.polygon([(x, y - r), (x - r, y + 0.8 * r), (x + r, y + 0.8 * r)], fill=fill)
        elif kind == "diamond":
            d.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
        elif kind == "cross":
            d.rectangle([x - r, y - 0.33 * r, x + r, y + 0.33 * r], fill=fill)
            d.rectangle([x - 0.33 * r, y - r, x + 0.33 * r, y + r], fill=fill)
        else:
            raise ValueError(f"unknown shape {kind!r}")
    return im.resize((size, size), Image.BOX)
