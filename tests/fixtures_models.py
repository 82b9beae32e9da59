"""Tiny seeded models of every source, for the model-source tests (and `build`, a `python:` builder)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

CLASSES = ("a", "b", "c")


class _DictNet(nn.Module):
    """A small CNN that returns a dict with `logits` (the adapter's case): conv features -> GAP -> Linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.fc(self.pool(self.features(x)).flatten(1))}


def build(num_classes: int) -> nn.Module:
    """The `python` source's builder: `model.arch: "fixtures_models:build"`."""
    return _DictNet(num_classes)


def timm_model(name: str, **kwargs: object) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=len(CLASSES), **kwargs).eval()


def hf_vit(folder: Path | None = None) -> nn.Module:
    """A 2-layer ViT on 32 px (8 px patches, 4x4 grid, one CLS token), saved with its processor if `folder`."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(CLASSES),
    )
    model = ViTForImageClassification(config).eval()
    if folder is not None:
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def hf_convnext(folder: Path | None = None) -> nn.Module:
    """A 2-stage ConvNeXt (8, 16 channels), saved with a 64 px shortest-edge processor (crop_pct 0.875)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    torch.manual_seed(0)
    config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=len(CLASSES))
    model = ConvNextForImageClassification(config).eval()
    if folder is not None:
        model.save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": 64}).save_pretrained(folder)
    return model
