"""The resize / crop plan that turns an image into the model's input, and region boxes mapped through it.

Two kinds of plan:

* **squash** (`model.preprocess: squash`, the default for torchvision and python models): the whole image
  resized to `input_size` x `input_size`, no crop; boxes map linearly (today's behaviour, untouched).
* **the model's own** (`model.preprocess: model`, the default for timm and huggingface): read from timm's
  data config (`resolve_model_data_config`: resize the shorter side to `floor(size / crop_pct)`, centre
  crop `size`, the model's mean/std and interpolation, as `timm.data.create_transform` does for eval) or
  from a Hugging Face folder's `preprocessor_config.json` (`size` as `shortest_edge` or `height`/`width`,
  `do_center_crop` + `crop_size`, ConvNeXt's `crop_pct`, `image_mean`/`image_std`, `resample`).

The plan is pure data: `resize_crop` applies it to a decoded uint8 tensor (torch ops, any device), and
`map_boxes` maps region boxes through exactly the same geometry. A box cut by the crop keeps its visible
part; a box cut away entirely is reported not visible, so callers drop it instead of scoring it as an
area with no saliency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audit_tasks.errors import ModelError
from audit_tasks.model_sources import optional_import

Interpolation = Literal["bilinear", "bicubic"]

#: Message constants: tests assert them word for word.
NO_PROCESSOR_CONFIG = (
    "model.preprocess is 'model' but {folder} has no preprocessor_config.json; save the image processor "
    "with processor.save_pretrained(folder), or set model.preprocess: squash"
)
NO_MODEL_PREPROCESSING = (
    "model.preprocess is 'model' but the {source} model carries no preprocessing of its own; "
    "set model.preprocess: squash"
)
# PIL resample codes used by Hugging Face processor configs -> torch interpolation modes.
_PIL_RESAMPLE: dict[int, Interpolation] = {2: "bilinear", 3: "bicubic"}
_HF_CONVNEXT_FULL_CROP = 384  # transformers' ConvNeXt processor warps (no crop) at this size and above


@dataclass(frozen=True)
class PreprocessPlan:
    """How an image of any size becomes the model's (3, H, W) input.

    `resize`: "squash" resizes to `resize_to` (height, width) exactly; "shorter" resizes the shorter side
    to `resize_to[0]` keeping the aspect ratio (the longer side truncated, as torchvision and
    transformers compute it). `crop` (height, width) is then cut from the centre; `crop_rounding` says
    how an odd margin is split ("round": timm/torchvision's `round((h - ch) / 2)`, "floor": transformers').
    """

    kind: Literal["squash", "model"]
    resize: Literal["squash", "shorter"]
    resize_to: tuple[int, int]
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"
    crop_rounding: Literal["round", "floor"] = "round"

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return self.crop if self.crop is not None else self.resize_to

    def resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after the resize, for an image of `original_size` (width, height)."""
        width, height = original_size
        if self.resize == "squash":
            return self.resize_to[1], self.resize_to[0]
        short = self.resize_to[0]
        if width <= height:
            return short, int(short * height / width)
        return int(short * width / height), short

    def crop_window(self, original_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the crop in resized pixels (the whole resized image without a crop)."""
        width, height = self.resized_size(original_size)
        if self.crop is None:
            return 0, 0, width, height
        crop_h, crop_w = self.crop
        split = _round_half if self.crop_rounding == "round" else (lambda margin: margin // 2)
        top, left = split(height - crop_h), split(width - crop_w)
        return left, top, left + crop_w, top + crop_h


def _round_half(margin: int) -> int:
    return int(round(margin / 2.0))


def squash_plan(input_size: int, mean: Sequence[float], std: Sequence[float]) -> PreprocessPlan:
    """Today's behaviour: the whole image to input_size x input_size, bilinear, no crop."""
    return PreprocessPlan(
        kind="squash",
        resize="squash",
        resize_to=(input_size, input_size),
        crop=None,
        mean=_rgb(mean),
        std=_rgb(std),
    )


def map_boxes(
    boxes: Sequence[Sequence[float]] | np.ndarray, original_size: tuple[int, int], plan: PreprocessPlan
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [x0, y0, x1, y1] in original pixels -> boxes in model-input pixels, and which stay visible.

    A box cut by the crop is clipped to its visible part; a box cut away entirely (or empty) is not
    visible (`visible_mask` False; its returned box is empty and meaningless).
    """
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width, height = original_size
    resized_w, resized_h = plan.resized_size(original_size)
    left, top, right, bottom = plan.crop_window(original_size)
    scale = np.array([resized_w / width, resized_h / height] * 2)
    offset = np.array([left, top, left, top], dtype=np.float64)
    limit = np.array([right - left, bottom - top] * 2, dtype=np.float64)
    mapped = np.clip(array * scale - offset, 0.0, limit)
    visible = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return mapped, visible


@dataclass(frozen=True)
class VisibleRegions:
    """An image's regions as the model sees them, in original-pixel units relative to the visible window.

    `size` is the window's (width, height) and `origin` its top-left corner, both in original pixels: the
    region metrics work on it as on a whole image (pointing tolerances stay in original pixels).
    """

    regions: list[dict[str, Any]]
    size: tuple[float, float]
    origin: tuple[float, float]


def visible_regions(
    regions: Sequence[Mapping[str, Any]], original_size: tuple[int, int], plan: PreprocessPlan
) -> VisibleRegions:
    """Map an image's regions through `plan`: clipped to the crop, those cut away entirely dropped."""
    width, height = original_size
    resized_w, resized_h = plan.resized_size(original_size)
    sx, sy = resized_w / width, resized_h / height
    left, top, right, bottom = plan.crop_window(original_size)
    size = ((right - left) / sx, (bottom - top) / sy)
    origin = (left / sx, top / sy)
    if not regions:
        return VisibleRegions([], size, origin)
    mapped, visible = map_boxes([r["box"] for r in regions], original_size, plan)
    kept = [
        {**region, "box": [box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy]}
        for region, box, shown in zip(regions, mapped.tolist(), visible.tolist(), strict=True)
        if shown
    ]
    return VisibleRegions(kept, size, origin)


def resize_crop(image: Tensor, plan: PreprocessPlan, original_size: tuple[int, int] | None = None) -> Tensor:
    """A (3, h, w) uint8 image -> (3, H, W) uint8 model input by `plan` (antialiased resize, then centre crop).

    `original_size` (width, height) is the size the plan's geometry is computed from when the decoder
    already scaled the image down (JPEG draft mode); default: the tensor's own size.
    """
    size = original_size or (int(image.shape[-1]), int(image.shape[-2]))
    resized_w, resized_h = plan.resized_size(size)
    resized = F.interpolate(
        image[None].float(), size=(resized_h, resized_w), mode=plan.interpolation, align_corners=False, antialias=True
    )[0]
    left, top, right, bottom = plan.crop_window(size)
    return resized[:, top:bottom, left:right].round_().clamp_(0, 255).to(torch.uint8).contiguous()


# ---------------------------------------------------------------------------------------------
# Plans read from the model
# ---------------------------------------------------------------------------------------------


def timm_plan(model: nn.Module, input_size: int | None = None) -> PreprocessPlan:
    """timm's eval transform for `model`: resize the shorter side to floor(size / crop_pct), centre crop.

    `input_size` overrides the data config's size (for a model built at another img_size); a ViT built
    with a fixed `patch_embed.img_size` uses that size.
    """
    data = optional_import("timm.data", "model.preprocess 'model' with timm").resolve_model_data_config(model)
    _, height, width = data["input_size"]
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if input_size is not None:
        height = width = input_size
    elif isinstance(fixed, (tuple, list)) and len(fixed) == 2:
        height, width = int(fixed[0]), int(fixed[1])
    crop_pct = float(data.get("crop_pct") or 1.0)
    interpolation: Interpolation = "bicubic" if data.get("interpolation") == "bicubic" else "bilinear"
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if data.get("crop_mode", "center") != "center" or scale[0] != scale[1]:
        resize: Literal["squash", "shorter"] = "squash"  # timm resizes to a (h, w) pair then crops
        resize_to = scale
    else:
        resize, resize_to = "shorter", (scale[0], scale[0])
    return PreprocessPlan(
        kind="model",
        resize=resize,
        resize_to=resize_to,
        crop=(height, width),
        mean=_rgb(data["mean"]),
        std=_rgb(data["std"]),
        interpolation=interpolation,
        crop_rounding="round",
    )


def huggingface_plan(folder: str | Path) -> PreprocessPlan:
    """The image processor config saved beside a Hugging Face model, as a plan (no processor is built)."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        raise ModelError(NO_PROCESSOR_CONFIG.format(folder=folder))
    return processor_plan(json.loads(path.read_text(encoding="utf-8")))


def processor_plan(config: Mapping[str, Any]) -> PreprocessPlan:
    """A transformers image processor config (its `to_dict()`) as a plan."""
    size = dict(config.get("size") or {})
    mean = _rgb(config.get("image_mean") or (0.5, 0.5, 0.5)) if config.get("do_normalize", True) else (0.0,) * 3
    std = _rgb(config.get("image_std") or (0.5, 0.5, 0.5)) if config.get("do_normalize", True) else (1.0,) * 3
    interpolation = _PIL_RESAMPLE.get(int(config.get("resample", 2)), "bilinear")
    crop_pct = config.get("crop_pct")
    resize: Literal["squash", "shorter"]
    crop: tuple[int, int] | None = None
    if "shortest_edge" in size and crop_pct is not None and "crop_size" not in config:
        # transformers' ConvNeXt processor: below 384 resize to shortest_edge / crop_pct, crop shortest_edge
        edge = int(size["shortest_edge"])
        if edge < _HF_CONVNEXT_FULL_CROP:
            resize, resize_to, crop = "shorter", (int(edge / float(crop_pct)),) * 2, (edge, edge)
        else:
            resize, resize_to = "squash", (edge, edge)
    elif "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        resize, resize_to = "shorter", (edge, edge)
    elif "height" in size and "width" in size:
        resize, resize_to = "squash", (int(size["height"]), int(size["width"]))
    else:
        raise ModelError(f"unsupported image processor size {size!r}: expected shortest_edge or height and width")
    if config.get("do_center_crop") and config.get("crop_size"):
        crop_size = config["crop_size"]
        crop = (
            (int(crop_size["height"]), int(crop_size["width"]))
            if isinstance(crop_size, Mapping)
            else (int(crop_size), int(crop_size))
        )
    return PreprocessPlan(
        kind="model",
        resize=resize,
        resize_to=(int(resize_to[0]), int(resize_to[1])),
        crop=crop,
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_rounding="floor",
    )


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
