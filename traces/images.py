"""Images in requests (multimodal serving): how many image tokens each prompt carries.

Why tokens: a LLaVA-style model turns each image into a fixed number of embeddings with a vision encoder
(576 for CLIP ViT-L/14 at 336 px, one per 14 x 14 patch: LLaVA-1.5, Liu et al. 2023) and feeds them to the
language model as prompt tokens. So an image costs twice: the encoder's forward pass over its patches, and the
language model's prefill of its tokens (and their KV). capsim adds the image tokens to each request's prompt
(they are prefilled and cached like text) and keeps the count per request, so the encoder can be priced where
it runs -- on the prefill replica, or on an encoder pool of its own (``serving: {name: epd}``).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from capsim.types import Count


class ImagesConfig(BaseModel):
    """Images per request (``workload.images``)."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(
        1.0, ge=0, le=1, allow_inf_nan=False, description="Share of requests that carry images (seeded draw)."
    )
    per_request: Count = Field(1, ge=1, description="Images in a request that carries any.")
    tokens_per_image: Count = Field(
        576, ge=1, description="Embeddings the vision encoder makes of one image (576: CLIP ViT-L/14 at 336 px)."
    )
    encoder: str = Field(
        "clip-vit-l-14-336", description="Catalog model of the vision encoder (`capsim list models`)."
    )

    def describe(self) -> str:
        share = "" if self.fraction == 1 else f"{self.fraction:g} of requests with "
        return f"{share}{self.per_request} image(s) of {self.tokens_per_image} tokens"


def image_tokens(cfg: ImagesConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Image tokens of each of ``n`` requests (0 for a text-only request)."""
    carries = rng.random(n) < cfg.fraction if cfg.fraction < 1 else np.ones(n, dtype=bool)
    return np.where(carries, cfg.per_request * cfg.tokens_per_image, 0).astype(np.int64)
