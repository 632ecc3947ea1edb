"""Sliding-window attention as a property of the model: the KV each sequence keeps and attends.

A windowed layer attends to the newest ``sliding_window`` tokens only, and a rolling-buffer cache keeps only
those (Mistral-7B-v0.1: every layer, 4,096 tokens; gpt-oss: every other layer, 128 tokens). Per sequence of
``n`` tokens, the KV held and read by a decode step, in full-layer equivalents, is
``r(n) = f n + (1 - f) min(n, W)`` with ``f`` the share of full-attention layers -- exactly the form of
:class:`simulator.kvcache.Retention` (cap ``W``, exempt fraction ``f``), so the block manager, the decode runs
and the attended context need nothing new. Unlike an eviction technique the cap applies from the first token.

Prefill attention on windowed layers covers ``min(p, W)`` keys per query and reads the window's KV: the cost
model's prefill features do that (:class:`simulator.costmodel.features.PrefillWindow`, on the operator table).
Not modelled: a model's learned attention sinks (gpt-oss) add no KV and a negligible amount of work.
"""

from __future__ import annotations

import numpy as np

from simulator.kvcache import Retention
from simulator.models.spec import ModelSpec
from simulator.requests import RequestTable


class SlidingWindowPolicy:
    """The model's window as a KV retention (see the module doc)."""

    def __init__(self, model: ModelSpec):
        self.window = int(model.sliding_window)
        self.full = 1.0 - model.windowed_layer_fraction

    def bind(self, table: RequestTable) -> Retention:
        n = table.n
        zeros = np.zeros(n, dtype=np.int64)
        return Retention(zeros, zeros, np.full(n, self.window, dtype=np.int64), self.full)
