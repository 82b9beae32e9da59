"""Activation layouts: how a hooked layer's output becomes the (N, C, h, w) map Grad-CAM weighs.

A CNN layer already gives (N, C, h, w). A vision transformer block gives tokens (N, T, C): some prefix
tokens (class, distillation, register tokens) and then the patch tokens in row-major grid order; Grad-CAM
drops the prefix tokens and reshapes the patches to their grid (what pytorch-grad-cam's
`reshape_transform` does by hand). timm's Swin and other hierarchical models keep their feature maps
channels-last (N, h, w, C). The rearrangement is linear, so applying it to the activation and to its
gradient gives exactly Grad-CAM on the patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from audit_tasks.errors import ModelError

LayoutKind = Literal["nchw", "nhwc", "tokens"]

#: Message constants: tests assert them word for word.
TOKENS_NOT_A_GRID = (
    "target layer output has {tokens} tokens; after {prefix} prefix token(s) they do not form a patch grid "
    "with the input's {height}x{width} aspect ratio (name a layer inside a transformer block, or check the input size)"
)
#: The most prefix tokens (class + distillation + registers) tried when the model does not say how many.
MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class ActivationLayout:
    """How to read a layer's output as (N, C, h, w).

    kind: "nchw" (as is), "nhwc" (channels last) or "tokens" ((N, T, C), `prefix_tokens` first).
    tuple_output: the layer returns a tuple (Hugging Face stages) whose first item is the activation.
    """

    kind: LayoutKind = "nchw"
    prefix_tokens: int = 0
    tuple_output: bool = False

    @property
    def plain(self) -> bool:
        """The layer's output already is (N, C, h, w): the closed form may apply."""
        return self.kind == "nchw" and not self.tuple_output

    def to_grid(self, activation: Tensor, input_size: tuple[int, int]) -> Tensor:
        """(N, C, h, w) view of `activation` (or of its gradient) for an input of (height, width)."""
        if self.kind == "nchw":
            return activation
        if self.kind == "nhwc":
            return activation.permute(0, 3, 1, 2)
        n, tokens, channels = activation.shape
        h, w = token_grid(tokens - self.prefix_tokens, input_size)
        if h * w != tokens - self.prefix_tokens:
            raise ModelError(
                TOKENS_NOT_A_GRID.format(
                    tokens=tokens, prefix=self.prefix_tokens, height=input_size[0], width=input_size[1]
                )
            )
        return activation[:, self.prefix_tokens :, :].reshape(n, h, w, channels).permute(0, 3, 1, 2)

    def rank(self) -> int:
        """The number of dimensions the layer's output must have."""
        return 3 if self.kind == "tokens" else 4

    def describe(self) -> str:
        """A short label for logs and the bench ('tokens, 1 prefix token')."""
        if self.kind == "tokens":
            return f"tokens, {self.prefix_tokens} prefix token{'s' if self.prefix_tokens != 1 else ''}"
        return self.kind

    def unwrap(self, output: Any) -> Any:
        """The activation inside a layer's output (its first item when the layer returns a tuple)."""
        if self.tuple_output and isinstance(output, tuple) and output:
            return output[0]
        return output

    def rewrap(self, output: Any, activation: Tensor) -> Any:
        """The layer's output with its activation replaced (what a forward hook returns)."""
        if self.tuple_output and isinstance(output, tuple) and output:
            return (activation, *output[1:])
        return activation


NCHW = ActivationLayout()


def token_grid(patches: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a row-major patch grid of `patches` tokens for an input of (height, width): h/w ~ H/W."""
    height, width = input_size
    if patches < 1:
        return 0, 0
    h = max(1, round(math.sqrt(patches * height / width)))
    return h, patches // h


def infer_prefix_tokens(tokens: int, input_size: tuple[int, int]) -> int | None:
    """The fewest leading tokens whose removal leaves a grid with the input's aspect ratio; None if none does."""
    height, width = input_size
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
        h, w = token_grid(tokens - prefix, input_size)
        if h * w == tokens - prefix and h * width == w * height:
            return prefix
    return None
