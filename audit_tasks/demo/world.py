"""A generated image world with planted biases whose truth is known, so an audit can be judged against it.

Every image shows one animal (`wolf` or `husky`, told apart by ear, snout and tail shape) on a forest
floor, plus optional small objects. Three problems are planted, each with a knob in `SplitSpec`:

1. **Spurious cue**: a small snow patch (about 4% of the image) that appears with wolves far more often
   than with huskies in biased data (`p_snow_wolf`, `p_snow_husky`). Its box is the `spurious` region.
2. **Co-occurring tags**: `laptop` almost never appears without `mouse` (`p_mouse_with_laptop`), and
   `lantern` almost only at night (`p_lantern_night` vs `p_lantern_day`, a tag -> attribute pair);
   `ball` and `bowl` are independent decoys.
3. **Underrepresented subgroup**: dark-furred animals (`fur_tone=dark`, share `p_dark`) have low contrast
   against the background, hardest at night (`lighting=night`); together they give intersections.

Sampling (`sample_split`) is pure and seeded; rendering (`render`) is a pure function of one `Sample`, so a
counterfactual (the same image without the snow, or with it moved to the other class) is
`render(dataclasses.replace(sample, snow=None))`. Writing files happens only in `write_split`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: Output index -> class name, the order the demo models are trained with.
CLASSES: tuple[str, str] = ("husky", "wolf")
#: The subgroup attributes every sample carries (manifest columns).
ATTRIBUTES: tuple[str, str] = ("fur_tone", "lighting")
#: Tags that are drawn as small objects (besides `snow`, which marks the spurious patch).
OBJECT_TAGS: tuple[str, ...] = ("laptop", "mouse", "lantern", "ball", "bowl")
SNOW = "snow"

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True)
class SplitSpec:
    """How one split of the world is sampled: its size and the strength of every planted problem."""

    name: str
    n_images: int
    p_snow_wolf: float = 0.5
    p_snow_husky: float = 0.5
    p_dark: float = 0.5
    p_night: float = 0.5
    p_laptop: float = 0.35
    p_mouse_with_laptop: float = 0.35
    p_mouse_without_laptop: float = 0.35
    p_lantern_night: float = 0.3
    p_lantern_day: float = 0.3
    p_decoy: float = 0.3
    p_wolf: float = 0.5

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"split {self.name!r}: n_images must be at least 1, got {self.n_images}")
        for f in dataclasses.fields(self):
            if f.name.startswith("p_"):
                value = getattr(self, f.name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"split {self.name!r}: {f.name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class WorldSpec:
    """Image geometry shared by every split (part of the demo's cache fingerprint)."""

    size: int = 96
    snow_area: float = 0.04  # the snow patch's share of the image area
    animal_scale: tuple[float, float] = (0.36, 0.46)  # body width as a fraction of the image side
    light_fur: tuple[int, int, int] = (200, 194, 182)
    dark_fur: tuple[int, int, int] = (58, 64, 52)
    night_gain: float = 0.5
    distinct_tails: bool = True  # tails tell the classes apart too (without them shape is too subtle to learn fast)


@dataclass(frozen=True)
class Snow:
    box: Box


@dataclass(frozen=True)
class Obj:
    tag: str
    box: Box


@dataclass(frozen=True)
class Sample:
    """Everything needed to render one image and to write its manifest row (the ground truth)."""

    image_id: str
    label: str
    fur_tone: str
    lighting: str
    seed: int  # texture and jitter of this image
    facing: int  # +1 the head points right, -1 left
    body: Box
    snow: Snow | None
    objects: tuple[Obj, ...]

    @property
    def tags(self) -> list[str]:
        """Every concept present: the drawn objects, plus `snow` where the patch is drawn."""
        tags = [o.tag for o in self.objects]
        return tags + [SNOW] if self.snow is not None else tags

    @property
    def cue_aligned(self) -> bool:
        """True where the snow cue agrees with the biased world's rule (snow <=> wolf)."""
        return (self.snow is not None) == (self.label == "wolf")


# --------------------------------------------------------------------------------------------- sampling


def sample_split(spec: SplitSpec, world: WorldSpec, seed: int) -> list[Sample]:
    """Draw the samples of one split; the same (spec, world, seed) always gives the same samples."""
    root = np.random.SeedSequence([seed, _stable_hash(spec.name)])
    return [
        _sample_one(spec, world, i, np.random.default_rng(child)) for i, child in enumerate(root.spawn(spec.n_images))
    ]


def _stable_hash(text: str) -> int:
    return int.from_bytes(text.encode("utf-8")[:8].ljust(8, b"\0"), "little") % (2**31)


def _sample_one(spec: SplitSpec, world: WorldSpec, index: int, rng: np.random.Generator) -> Sample:
    size = world.size
    label = "wolf" if rng.random() < spec.p_wolf else "husky"
    fur_tone = "dark" if rng.random() < spec.p_dark else "light"
    lighting = "night" if rng.random() < spec.p_night else "day"
    has_snow = rng.random() < (spec.p_snow_wolf if label == "wolf" else spec.p_snow_husky)
    laptop = rng.random() < spec.p_laptop
    mouse = rng.random() < (spec.p_mouse_with_laptop if laptop else spec.p_mouse_without_laptop)
    lantern = rng.random() < (spec.p_lantern_night if lighting == "night" else spec.p_lantern_day)
    ball = rng.random() < spec.p_decoy
    bowl = rng.random() < spec.p_decoy

    body_w = int(round(size * rng.uniform(*world.animal_scale)))
    body_h = int(round(body_w * rng.uniform(0.45, 0.55)))
    facing = 1 if rng.random() < 0.5 else -1
    # Room for head, ears and snout on the front side, tail on the back, ears above, legs below.
    front, back, top, bottom = int(body_w * 0.62), int(body_w * 0.4), int(body_h * 1.1), int(body_h * 0.6)
    left_pad, right_pad = (back, front) if facing == 1 else (front, back)
    x0 = int(rng.integers(left_pad + 2, max(left_pad + 3, size - body_w - right_pad - 2)))
    y0 = int(rng.integers(top + 2, max(top + 3, size - body_h - bottom - 2)))
    body = (x0, y0, x0 + body_w, y0 + body_h)
    occupied = [_grow(_animal_box(label, facing, body, size, world.distinct_tails), 2)]
    snow = None
    if has_snow:
        side = int(round(math.sqrt(world.snow_area) * size))
        box = _place(rng, size, side, side, occupied)
        snow = Snow(box)
        occupied.append(_grow(box, 1))
    objects = []
    wanted = [
        ("laptop", laptop, 16, 11),
        ("mouse", mouse, 7, 6),
        ("lantern", lantern, 7, 10),
        ("ball", ball, 8, 8),
        ("bowl", bowl, 11, 6),
    ]
    for tag, present, w, h in wanted:
        if present:
            scale = size / 96
            box = _place(rng, size, max(3, int(w * scale)), max(3, int(h * scale)), occupied)
            objects.append(Obj(tag, box))
            occupied.append(_grow(box, 1))
    return Sample(
        image_id=f"img-{index:05d}",
        label=label,
        fur_tone=fur_tone,
        lighting=lighting,
        seed=int(rng.integers(0, 2**31 - 1)),
        facing=facing,
        body=body,
        snow=snow,
        objects=tuple(objects),
    )


def swap_cue(sample: Sample, world: WorldSpec) -> Sample:
    """The counterfactual image: the same scene with the snow patch removed, or added where there was none.

    The added patch avoids the animal and the objects; its place depends only on the sample's seed.
    """
    if sample.snow is not None:
        return dataclasses.replace(sample, snow=None)
    _, core = render(sample, world)
    occupied = [_grow(core, 2)] + [_grow(o.box, 1) for o in sample.objects]
    side = int(round(math.sqrt(world.snow_area) * world.size))
    rng = np.random.default_rng([sample.seed, 9])
    return dataclasses.replace(sample, snow=Snow(_place(rng, world.size, side, side, occupied)))


def _grow(box: Box, margin: int) -> Box:
    return (box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place(rng: np.random.Generator, size: int, w: int, h: int, occupied: Sequence[Box]) -> Box:
    """A random w x h box inside the image (1 px margin) that overlaps none of `occupied`.

    When no such place exists, only the first box (the animal) must be avoided; failing that too, the
    place of least overlap is taken. Every free place is equally likely.
    """
    for hard in (list(occupied), list(occupied[:1])):
        grid = np.zeros((size, size), dtype=np.int32)
        for x0, y0, x1, y1 in hard:
            grid[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 1
        integral = np.pad(grid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        # Sum over every window [y, y+h) x [x, x+w) with 1 <= x <= size-w-1.
        window = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
        window = window[1 : size - h, 1 : size - w]
        free = np.argwhere(window == 0)
        if len(free):
            y0, x0 = free[int(rng.integers(len(free)))] + 1
            return (int(x0), int(y0), int(x0) + w, int(y0) + h)
    least_y, least_x = np.unravel_index(int(np.argmin(window)), window.shape)  # no free window: the emptiest
    y0, x0 = int(least_y) + 1, int(least_x) + 1
    return (x0, y0, x0 + w, y0 + h)


def _intersection(a: Box, b: Box) -> Box:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


# --------------------------------------------------------------------------------------------- rendering


def render(sample: Sample, world: WorldSpec) -> tuple[Image.Image, Box]:
    """Draw one sample; returns the RGB image and the animal's exact bounding box (the core region)."""
    size = world.size
    # One stream per layer, so removing or adding a layer (the snow) leaves every other pixel unchanged.
    rng_bg, rng_fur, rng_snow, rng_noise = (np.random.default_rng([sample.seed, k]) for k in range(4))
    canvas = _background(rng_bg, size)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    base = np.array(world.light_fur if sample.fur_tone == "light" else world.dark_fur, dtype=float)
    fur = tuple(int(v) for v in np.clip(base + rng_fur.normal(0, 8, 3), 0, 255))
    for target, colour in ((draw, fur), (mask_draw, 255)):
        _draw_animal(target, sample.label, sample.facing, sample.body, colour, world.distinct_tails)
    if sample.snow is not None:
        _draw_snow(draw, sample.snow.box, rng_snow)
    for obj in sample.objects:
        _draw_object(draw, obj)
    pixels: np.ndarray = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng_noise.normal(0, 6, pixels.shape)  # sensor noise
    if sample.lighting == "night":
        pixels = pixels * world.night_gain + np.array([4.0, 8.0, 26.0])
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    core = mask.getbbox()
    if core is None:  # pragma: no cover - the animal is always drawn inside the canvas
        raise ValueError(f"sample {sample.image_id}: the animal fell outside the image")
    return out, (int(core[0]), int(core[1]), int(core[2]), int(core[3]))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A forest floor: low-frequency mottling of greens and browns."""
    coarse = rng.normal(0, 1, (size // 12 + 2, size // 12 + 2, 3))
    mottled = (
        np.asarray(
            Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-9) * 255).astype(np.uint8), "RGB").resize(
                (size, size), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        / 255.0
        - 0.5
    )
    base = np.array([92.0, 118.0, 70.0]) + rng.normal(0, 6, 3)
    return np.clip(base + mottled * np.array([50.0, 56.0, 36.0]), 0, 255).astype(np.uint8)


def _animal_box(label: str, facing: int, body: Box, size: int, distinct_tails: bool) -> Box:
    """The exact bounding box of the animal drawn with this geometry."""
    mask = Image.new("L", (size, size), 0)
    _draw_animal(ImageDraw.Draw(mask), label, facing, body, 255, distinct_tails)
    x0, y0, x1, y1 = mask.getbbox() or (0, 0, size, size)
    return (int(x0), int(y0), int(x1), int(y1))


def _draw_animal(draw: ImageDraw.ImageDraw, label: str, facing: int, body: Box, colour, distinct_tails: bool) -> None:
    """Body, legs, head, ears, snout and tail; wolves and huskies differ in ears and snout (and tail)."""
    x0, y0, x1, y1 = body
    w, h = x1 - x0, y1 - y0
    f = facing
    front_x = x1 if f == 1 else x0
    back_x = x0 if f == 1 else x1
    draw.ellipse((x0, y0, x1, y1), fill=colour)
    leg_w = max(2, w // 10)
    for lx in (x0 + w * 0.18, x0 + w * 0.38, x0 + w * 0.62, x0 + w * 0.82):
        draw.rectangle((lx - leg_w / 2, y0 + h * 0.6, lx + leg_w / 2, y1 + h * 0.55), fill=colour)
    r = h * 0.48
    hx, hy = front_x + f * w * 0.12, y0 - h * 0.15
    draw.ellipse((hx - r, hy - r, hx + r, hy + r), fill=colour)
    if label == "wolf":
        # Tall pointed ears, a long narrow snout.
        for ex in (hx - f * r * 0.55, hx + f * r * 0.25):
            draw.polygon(
                [(ex - r * 0.32, hy - r * 0.6), (ex + r * 0.32, hy - r * 0.6), (ex, hy - r * 1.75)], fill=colour
            )
        draw.polygon(
            [(hx + f * r * 0.6, hy - r * 0.3), (hx + f * r * 0.6, hy + r * 0.35), (hx + f * r * 1.9, hy + r * 0.1)],
            fill=colour,
        )
    else:
        # Short round ears, a short blunt snout.
        for ex in (hx - f * r * 0.5, hx + f * r * 0.3):
            er = r * 0.38
            draw.ellipse((ex - er, hy - r * 0.75 - er, ex + er, hy - r * 0.75 + er), fill=colour)
        sx0, sx1 = sorted((hx + f * r * 0.4, hx + f * r * 1.3))
        draw.ellipse((sx0, hy - r * 0.2, sx1, hy + r * 0.5), fill=colour)
    if label == "husky" and distinct_tails:
        # A tail curled up over the back.
        tr = h * 0.45
        tx = back_x - f * tr * 0.6
        draw.arc((tx - tr, y0 - tr * 1.3, tx + tr, y0 + tr * 0.7), start=0, end=300, fill=colour, width=max(2, w // 10))
    else:
        # A straight tail hanging down.
        draw.line([(back_x, y0 + h * 0.3), (back_x - f * w * 0.2, y1 + h * 0.35)], fill=colour, width=max(2, w // 9))


def _draw_snow(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    draw.rounded_rectangle(
        (box[0], box[1], box[2] - 1, box[3] - 1), radius=max(1, (box[2] - box[0]) // 5), fill=(236, 240, 248)
    )
    for _ in range(6):
        x = rng.integers(box[0] + 2, max(box[0] + 3, box[2] - 2))
        y = rng.integers(box[1] + 2, max(box[1] + 3, box[3] - 2))
        draw.point((int(x), int(y)), fill=(205, 215, 232))


def _draw_object(draw: ImageDraw.ImageDraw, obj: Obj) -> None:
    x0, y0, x1, y1 = obj.box
    if obj.tag == "laptop":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(150, 150, 158))
        draw.rectangle((x0 + 2, y0 + 2, x1 - 3, y1 - 4), fill=(30, 40, 70))
    elif obj.tag == "mouse":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=(175, 175, 180))
        draw.line([((x0 + x1) // 2, y0), ((x0 + x1) // 2, (y0 + y1) // 2)], fill=(60, 60, 60))
    elif obj.tag == "lantern":
        draw.rectangle((x0 + 1, y0 + 2, x1 - 2, y1 - 1), fill=(250, 210, 60))
        draw.rectangle((x0, y0, x1 - 1, y0 + 2), fill=(120, 70, 30))
    elif obj.tag == "ball":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=(210, 40, 40))
    elif obj.tag == "bowl":
        draw.chord((x0, y0 - (y1 - y0), x1 - 1, y1 - 1), start=0, end=180, fill=(40, 80, 200))
    else:  # pragma: no cover - tags come from OBJECT_TAGS
        raise ValueError(f"unknown object tag {obj.tag!r}")


def regions_of(sample: Sample, core: Box) -> list[dict]:
    """The contract's `regions` list: the animal as the core region, the snow patch as spurious."""
    regions = [{"kind": "core", "name": sample.label, "box": list(core)}]
    if sample.snow is not None:
        regions.append({"kind": "spurious", "name": SNOW, "box": list(sample.snow.box)})
    return regions


# --------------------------------------------------------------------------------------------- arrays and files


def render_array(samples: Iterable[Sample], world: WorldSpec) -> np.ndarray:
    """Render samples to one uint8 array (N, size, size, 3), for training without touching disk."""
    images = [np.asarray(render(s, world)[0]) for s in samples]
    if not images:
        return np.zeros((0, world.size, world.size, 3), dtype=np.uint8)
    return np.stack(images)


def manifest_row(sample: Sample, core: Box, image_uri: str) -> dict:
    """One manifest row in the contract's columns (tags `|`-separated, regions as JSON)."""
    return {
        "image_id": sample.image_id,
        "image_uri": image_uri,
        "label": sample.label,
        "tags": "|".join(sample.tags),
        "regions": json.dumps(regions_of(sample, core)),
        "fur_tone": sample.fur_tone,
        "lighting": sample.lighting,
    }


def write_split(samples: Sequence[Sample], world: WorldSpec, image_root: Path, subdir: str) -> list[dict]:
    """Write each sample as a PNG under `image_root/subdir`; return the manifest rows (URIs relative to the root)."""
    folder = image_root / subdir
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample in samples:
        image, core = render(sample, world)
        uri = f"{subdir}/{sample.image_id}.png"
        image.save(image_root / uri, format="PNG", optimize=False, compress_level=1)
        rows.append(manifest_row(sample, core, uri))
    return rows
