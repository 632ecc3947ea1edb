"""Encoder pools (EPD disaggregation): replicas that only run the vision encoder of multimodal requests.

An encoder replica batches the images of waiting requests first come, first served -- at most ``max_images``
per iteration, at least one request -- prices the batch with :class:`~simulator.encoder.ImageEncoder` on its
own device, and hands each request's embeddings (image tokens x the language model's hidden size x activation
bytes) to a prefill replica over the scenario's link, both NICs held as for a KV hand-off. The prefill replica
then prefills the request without encoding it again.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import simpy

if TYPE_CHECKING:
    from simulator.encoder import ImageEncoder
    from simulator.pools.engine import PoolEngine
    from simulator.recorder import Recorder


class EncodeWorker:
    """One encoder replica (a SimPy process)."""

    def __init__(self, engine: PoolEngine, index: int, encoder: ImageEncoder, images_per_request: list[int],
                 max_images: int, recorder: Recorder):
        self.engine = engine
        self.env = engine.env
        self.index = index
        self.encoder = encoder
        self.images = images_per_request
        self.max_images = max_images
        self.recorder = recorder
        self.queue: deque[int] = deque()
        self.outstanding = 0  # the router's load signal: requests routed here and not yet encoded
        self._wake: simpy.Event | None = None
        self.process = self.env.process(self._loop())

    def submit(self, rid: int) -> None:
        self.queue.append(rid)
        self.outstanding += 1
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()

    def _loop(self):
        env, queue, images = self.env, self.queue, self.images
        while True:
            if not queue:
                self._wake = env.event()
                yield self._wake
                continue
            batch, n = [], 0
            while queue and (not batch or n + images[queue[0]] <= self.max_images):
                rid = queue.popleft()
                batch.append(rid)
                n += images[rid]
            start = env.now
            took = self.encoder.time(n)
            yield env.timeout(took)
            tokens = n * self.encoder.tokens
            self.recorder.iteration(self.index, start, env.now, 1, tokens, len(batch), 0, 0, took, took, 0, 0,
                                    0.0, 0.0)
            self.outstanding -= len(batch)
            for rid in batch:
                self.engine.encoded(rid, self, start)
