"""The vision encoder of multimodal requests: what encoding a batch of images costs, and where it is charged.

An image becomes ``tokens_per_image`` embeddings through a transformer encoder (CLIP ViT-L/14 for LLaVA-1.5):
a forward pass over its patches with bidirectional attention, no KV cache, no logits. capsim prices it with the
same cost model as the language model -- the encoder's own operator table (``workload.images.encoder``, a
catalog model) on the replica's device and TP -- as one prefill of ``images x tokens`` tokens whose attention
covers all ``tokens^2`` pairs of each image. The projector that maps the encoder's outputs into the language
model's hidden size (two small GEMMs in LLaVA) is not priced.

Where the pass runs: on the prefill replica, before the iteration that starts prefilling the request
(:class:`EncodeOnPrefill`, colocated and prefill/decode-disaggregated serving), or on an encoder pool of its own
(``serving: {name: epd}``, :mod:`simulator.pools.encode`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from simulator.costmodel.features import prefill_attention_work
from simulator.system import System, cost_model_for, resolve_model
from traces.images import ImagesConfig


class ImageEncoder:
    """Seconds to encode ``n`` images on one replica of ``system`` (memoised by ``n``)."""

    def __init__(self, cfg: ImagesConfig, system: System):
        try:
            model = resolve_model(cfg.encoder)
        except Exception as exc:  # an unknown name is reported against the workload field
            from capsim.errors import CapsimError

            raise CapsimError(str(getattr(exc, "problem", exc)), where="workload.images.encoder",
                              fix=getattr(exc, "fix", None)) from None
        dep = system.deployment
        tp = dep.tp if model.num_heads % dep.tp == 0 else 1
        self.tokens = cfg.tokens_per_image
        self.cost = cost_model_for(model, system.device, dep, tp=tp)
        self.time = lru_cache(maxsize=None)(self._time)

    def _time(self, images: int) -> float:
        if images <= 0:
            return 0.0
        t = self.tokens
        pairs = 2.0 * prefill_attention_work(t, 0)  # bidirectional: every patch attends to every patch
        return self.cost.iteration_from_totals(images * t, 0, images * pairs, images * t, 0, 0).time_s


class EncodeOnPrefill:
    """A replica's ``encode`` hook: the encoder time of the images of requests whose prefill starts now (each
    request's images are encoded once, at its first chunk)."""

    def __init__(self, encoder: ImageEncoder, images_per_request: np.ndarray, encoded: np.ndarray):
        self.encoder = encoder
        self.images = images_per_request.tolist()
        self.encoded = encoded  # shared by every replica of the run (a request is encoded once)

    def __call__(self, prefill) -> float:
        images, encoded = self.images, self.encoded
        n = 0
        for c in prefill:
            rid = c.rid
            if images[rid] and not encoded[rid]:
                encoded[rid] = True
                n += images[rid]
        return self.encoder.time(n) if n else 0.0


def attach(replicas, cfg: ImagesConfig | None, system: System, image_tokens: np.ndarray | None,
           encoded: np.ndarray | None = None) -> np.ndarray | None:
    """Give every replica of ``system`` the encoder hook when the workload has images; returns the run's
    "already encoded" flags (shared with other pools that encode), or None for a text-only run."""
    if cfg is None or image_tokens is None:
        return encoded
    if encoded is None:
        encoded = np.zeros(len(image_tokens), dtype=bool)
    hook = EncodeOnPrefill(ImageEncoder(cfg, system), image_tokens // cfg.tokens_per_image, encoded)
    for replica in replicas:
        replica.encode = hook
    return encoded
