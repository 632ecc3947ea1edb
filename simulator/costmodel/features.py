"""The features of a batch that operator costs depend on.

Why features: every operator's FLOPs and bytes are (almost) linear in a few
aggregate quantities of the batch -- tokens processed, sequences that produce
logits, causal attention work, KV tokens read -- so an operator is a row of
coefficients, and pricing a batch (or a whole run of decode iterations, as an
array of feature vectors) is one matrix product. The only non-linear feature,
the number of distinct MoE experts a batch touches, is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Indices into a feature vector.
ONE = 0  # constant term (weights read once per iteration)
PREFILL_TOKENS = 1  # new prompt tokens in this iteration (all chunks)
DECODE_SEQS = 2  # decode sequences, one new token each
LOGIT_SEQS = 3  # sequences that produce logits (decode seqs + prefill chunks that finish a prompt)
PREFILL_ATTN_WORK = 4  # sum over chunks of q * (c + q/2): causal query-key pairs
PREFILL_KV_READ = 5  # sum over chunks of (c + q): KV tokens a chunk's attention reads
DECODE_CONTEXT = 6  # sum over decode sequences of their context length
EXPERTS_HIT = 7  # expected distinct MoE experts touched by the batch's tokens
NUM_FEATURES = 8

FEATURE_NAMES = (
    "one",
    "prefill_tokens",
    "decode_seqs",
    "logit_seqs",
    "prefill_attn_work",
    "prefill_kv_read",
    "decode_context",
    "experts_hit",
)


def prefill_attention_work(new_tokens: float, cached_tokens: float) -> float:
    """Causal query-key pairs of one prefill chunk: ``q (c + q/2)`` for ``q`` new tokens after ``c`` cached.

    Each new token attends to the cached tokens and, causally, to the new ones before it (half of
    them on average). The one definition the engine's hot loop, :class:`BatchShape` and the cost
    model's priming share (a plain function: the loop calls it once per chunk).
    """
    return new_tokens * (cached_tokens + new_tokens / 2.0)


def prefill_kv_read(new_tokens: int, cached_tokens: int) -> int:
    """KV tokens one prefill chunk's attention reads: the cached ones and its own, ``c + q``."""
    return cached_tokens + new_tokens


@dataclass(frozen=True)
class PrefillWindow:
    """Prefill attention of a model whose ``1 - full`` share of layers attends a sliding window of ``window`` tokens.

    Why here: the prefill features are per-layer averages of the causal pairs and KV tokens a chunk's attention
    covers, so a windowed model only changes how a chunk's ``(q, c)`` becomes those two numbers. A query at
    position ``p`` of a windowed layer attends ``min(p, W)`` keys (the continuous form the full-layer count
    ``q (c + q/2)`` already uses), so a chunk covers ``int_c^{c+q} min(x, W) dx`` pairs: the full count while
    ``c + q <= W``, ``q W`` once ``c >= W``. It reads the ``min(c, W)`` cached keys the rolling buffer keeps
    plus its own ``q``. Full layers keep the plain counts; the features are the layer-weighted mean, so one
    coefficient per row still prices every layer.
    """

    window: int
    full: float  # share of layers with full attention

    def pairs(self, q: float, c: float) -> float:
        """Causal query-key pairs of one chunk in a windowed layer."""
        w = self.window
        if c + q <= w:
            return prefill_attention_work(q, c)
        if c >= w:
            return q * w
        return (w * w - c * c) / 2.0 + (c + q - w) * w

    def work(self, q: float, c: float) -> float:
        """Pairs of one chunk averaged over the layers (the ``prefill_attn_work`` feature)."""
        f = self.full
        return f * prefill_attention_work(q, c) + (1.0 - f) * self.pairs(q, c)

    def kv_read(self, q: float, c: float) -> float:
        """KV tokens one chunk reads averaged over the layers (the ``prefill_kv_read`` feature)."""
        f = self.full
        return f * (c + q) + (1.0 - f) * (min(c, self.window) + q)

    def whole_prompts(self, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(work, KV read) of prefilling each prompt of ``prompt`` in one chunk with nothing cached."""
        P = np.asarray(prompt, dtype=np.float64)
        w = float(self.window)
        windowed = np.where(P <= w, P * P / 2.0, w * w / 2.0 + (P - w) * w)
        return self.full * P * P / 2.0 + (1.0 - self.full) * windowed, P


def expected_experts_hit(tokens, num_experts: int, top_k: int):
    """Expected distinct experts hit by ``tokens`` tokens with uniform top-k routing.

    E * (1 - (1 - k/E)^n) (docs/cost-model.md, "Batch features"). Dense models (E = 1) return 1: a float for a scalar count,
    without array calls (the mixed-iteration hot path asks once per new batch shape), ones for an array.
    """
    if num_experts <= 1:
        return np.ones(np.shape(tokens)) if isinstance(tokens, np.ndarray) else 1.0
    tokens = np.asarray(tokens, dtype=float)
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


@dataclass(frozen=True)
class BatchShape:
    """Aggregate shape of one iteration's batch.

    ``prefill_chunks`` holds ``(new_tokens, cached_tokens, finishes_prompt)``
    for each prefill chunk; decode sequences are summarised by their count and
    the sum of their context lengths (the attention roofline depends only on
    the sum).
    """

    prefill_chunks: tuple[tuple[int, int, bool], ...] = ()
    decode_seqs: int = 0
    decode_context: int = 0

    @property
    def prefill_tokens(self) -> int:
        return sum(q for q, _, _ in self.prefill_chunks)

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    def features(self, num_experts: int = 1, top_k: int = 1, window: PrefillWindow | None = None) -> np.ndarray:
        x = np.zeros(NUM_FEATURES)
        x[ONE] = 1.0
        x[PREFILL_TOKENS] = self.prefill_tokens
        x[DECODE_SEQS] = self.decode_seqs
        x[LOGIT_SEQS] = self.decode_seqs + sum(1 for _, _, done in self.prefill_chunks if done)
        if window is None:
            x[PREFILL_ATTN_WORK] = sum(prefill_attention_work(q, c) for q, c, _ in self.prefill_chunks)
            x[PREFILL_KV_READ] = sum(prefill_kv_read(q, c) for q, c, _ in self.prefill_chunks)
        else:
            x[PREFILL_ATTN_WORK] = sum(window.work(q, c) for q, c, _ in self.prefill_chunks)
            x[PREFILL_KV_READ] = sum(window.kv_read(q, c) for q, c, _ in self.prefill_chunks)
        x[DECODE_CONTEXT] = self.decode_context
        x[EXPERTS_HIT] = expected_experts_hit(self.tokens, num_experts, top_k)
        return x
