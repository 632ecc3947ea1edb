"""Synthetic prefix-sharing patterns: which prompt blocks of a synthetic workload are identical.

Why identities and not token text: a prefix cache only needs to know that block ``j`` of two prompts holds the
same tokens *and* everything before it is the same (vLLM hashes each full block together with its parent's hash;
SGLang's radix tree walks from the root). So every request gets one id per ``block_tokens`` tokens of its prompt,
equal ids meaning "same block, same prefix" -- the form of the Mooncake trace's ``hash_ids`` -- and the simulator's
prefix cache (``techniques: [{name: prefix-caching}]``) does the rest.

Patterns and their hit structure (``B`` = ``block_tokens``, ``S`` = ``shared_tokens``; a cache hit is counted in
whole blocks, and only blocks that lie wholly inside the prompt can hit):

* ``system-prompt``: every prompt starts with the same ``S``-token system prompt, prepended to its sampled length.
  Once the first request has prefilled, each request can reuse ``floor(S / B)`` blocks -- all requests share one
  prefix, so with enough KV memory the token hit rate tends to ``B floor(S/B) / (S + mean sampled prompt)``.
* ``few-shot``: ``templates`` different ``S``-token templates, one drawn uniformly (seeded) per request and
  prepended. After each template's first use, a request reuses ``floor(S / B)`` blocks; at most ``templates``
  requests miss for want of a first use.
* ``multi-turn``: conversations of ``turns`` turns. Requests are dealt to conversations in arrival order
  (request ``i`` is turn ``i // C`` of conversation ``i mod C``, ``C = ceil(n / turns)``), so a conversation's
  turns are ``C`` requests apart in the stream. Turn ``k``'s prompt is turn ``k-1``'s prompt, its answer and the
  turn's own sampled message (prompt lengths grow with the turns), so its first ``floor((p_{k-1} + o_{k-1}) / B)``
  blocks are turn ``k-1``'s prompt-and-answer blocks (a multi-turn request's ids cover its answer's blocks too,
  the last turn's fresh). With prompt blocks cached, turn ``k`` can reuse ``floor(p_{k-1} / B)`` blocks; with
  generated blocks also cached (``prefix-caching``'s ``cache_generated``, vLLM), the whole blocks of turn
  ``k-1``'s KV at its release, ``floor((p_{k-1} + o_{k-1} - 1) / B)`` (its last token's KV is never written) --
  when they are still cached.

* ``rag``: retrieval-augmented prompts: an ``S``-token system prompt (``shared_tokens``, may be omitted), then
  ``chunks_per_prompt`` document chunks of ``chunk_tokens`` tokens drawn without replacement from a corpus of
  ``corpus_chunks`` chunks with Zipf(``zipf``) popularity (chunk ``i`` of the corpus drawn with weight
  ``1 / i^zipf``; seeded), in the order drawn, then the request's own question (its sampled length). The system
  prompt's ``floor(S / B)`` blocks are a shared prefix; a chunk's blocks are a prefix hit only when every chunk
  before it is the same, in the same order, as in an earlier prompt. Each chunk block also carries a
  position-independent *chunk-block identity* (the corpus chunk and the block within it) in its id's high bits
  (``id >> 32``, 0 for blocks that are not a chunk's), which ``prefix-caching`` with ``reuse: true`` uses to reuse
  a chunk's KV wherever it appears (CacheBlend / Cache-Craft): after a first prompt, a chunk block hits whenever
  its chunk was computed on the replica earlier and is still cached. ``S`` and ``chunk_tokens`` must be whole
  numbers of blocks, so chunks start on block boundaries.

A workload without ``sharing`` builds exactly the stream it built before this module existed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from capsim.types import Count, OptionalCount


class SharingConfig(BaseModel):
    """A synthetic prefix-sharing pattern (``workload.sharing``); see :mod:`traces.sharing` for the hit structure."""

    model_config = ConfigDict(extra="forbid")

    pattern: Literal["system-prompt", "few-shot", "multi-turn", "rag"] = Field(
        description="system-prompt: one prefix shared by all requests; few-shot: one of `templates` prefixes per "
        "request; multi-turn: turn k's prompt extends turn k-1's prompt and answer; rag: a system prompt, "
        "`chunks_per_prompt` corpus chunks (Zipf popularity) and a question"
    )
    block_tokens: Count = Field(
        512,
        gt=0,
        description="tokens per prefix block identity (the cache's sharing unit; a multiple of deployment.block_size)",
    )
    shared_tokens: OptionalCount = Field(
        None, ge=1, description="system-prompt/few-shot: tokens of the shared prefix (prepended to each prompt)"
    )
    templates: Count = Field(8, gt=0, description="few-shot: number of distinct templates, drawn uniformly")
    turns: Count = Field(4, gt=0, description="multi-turn: turns per conversation")
    chunks_per_prompt: Count = Field(4, gt=0, description="rag: document chunks per prompt (distinct)")
    corpus_chunks: Count = Field(1000, gt=0, description="rag: chunks in the corpus the prompts draw from")
    chunk_tokens: OptionalCount = Field(
        None, ge=1, description="rag: tokens per chunk, a multiple of block_tokens (null: block_tokens)"
    )
    zipf: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="rag: Zipf exponent of chunk popularity (weight 1 / rank^zipf)"
    )

    @model_validator(mode="after")
    def _needs(self) -> SharingConfig:
        if self.pattern in ("system-prompt", "few-shot") and self.shared_tokens is None:
            raise ValueError(f"sharing pattern {self.pattern!r} needs 'shared_tokens' (the shared prefix length)")
        if self.pattern == "multi-turn" and self.shared_tokens is not None:
            raise ValueError("'shared_tokens' is not used by pattern 'multi-turn' (turns share their history)")
        if self.pattern == "rag":
            if (self.shared_tokens or 0) % self.block_tokens or self.rag_chunk_tokens % self.block_tokens:
                raise ValueError("pattern 'rag' needs shared_tokens and chunk_tokens to be multiples of block_tokens")
            if self.chunks_per_prompt > self.corpus_chunks:
                raise ValueError("pattern 'rag' draws distinct chunks: chunks_per_prompt must be <= corpus_chunks")
        return self

    @property
    def rag_chunk_tokens(self) -> int:
        return int(self.chunk_tokens or self.block_tokens)

    def describe(self) -> str:
        if self.pattern == "system-prompt":
            return f"system prompt {self.shared_tokens} tokens"
        if self.pattern == "few-shot":
            return f"{self.templates} few-shot templates of {self.shared_tokens} tokens"
        if self.pattern == "rag":
            return (
                f"rag {self.chunks_per_prompt} x {self.rag_chunk_tokens}-token chunks of {self.corpus_chunks} "
                f"(zipf {self.zipf:g})"
            )
        return f"{self.turns}-turn conversations"


def apply_sharing(
    cfg: SharingConfig, prompt: np.ndarray, output: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The prompts with their shared parts added, and each prompt's block identities (one per started block; for
    ``multi-turn`` one per started block of prompt and answer).

    Ids are ints unique within the stream: shared blocks get the ids of their template or earlier turn, every
    other block a fresh id. ``rng`` is drawn from only by ``few-shot``.
    """
    b = cfg.block_tokens
    n = len(prompt)
    prompt = np.asarray(prompt, dtype=np.int64)
    fresh = [0]

    def new_ids(count: int) -> list[int]:
        start = fresh[0]
        fresh[0] += count
        return list(range(start, start + count))

    if cfg.pattern == "rag":
        return _rag(cfg, prompt, rng, new_ids)

    if cfg.pattern in ("system-prompt", "few-shot"):
        s = int(cfg.shared_tokens)
        full = s // b  # whole blocks of the template: the part that can be shared
        count = 1 if cfg.pattern == "system-prompt" else int(cfg.templates)
        templates = [new_ids(full) for _ in range(count)]
        choice = np.zeros(n, dtype=np.int64) if count == 1 else rng.integers(0, count, size=n)
        new_prompt = prompt + s
        hashes = []
        for p, k in zip(new_prompt.tolist(), choice.tolist(), strict=True):
            rest = -(-p // b) - full  # the template's partial last block and the request's own part
            hashes.append(np.asarray(templates[k] + new_ids(rest), dtype=np.int64))
        return new_prompt, tuple(hashes)

    # multi-turn: each request's ids cover its prompt and its answer (the next turn's prompt extends both)
    conversations = -(-n // int(cfg.turns))
    out = np.asarray(output, dtype=np.int64)
    new_prompt = prompt.copy()
    hashes: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    for i in range(n):
        prev = i - conversations
        own_out = int(out[i])
        if prev >= 0:
            p_prev = int(new_prompt[prev])
            new_prompt[i] = p_prev + int(out[prev]) + int(prompt[i])
            keep = (p_prev + int(out[prev])) // b  # the previous turn's whole blocks of prompt and answer
            blocks = -(-(int(new_prompt[i]) + own_out) // b)
            hashes[i] = np.concatenate([hashes[prev][:keep], np.asarray(new_ids(blocks - keep), dtype=np.int64)])
        else:
            hashes[i] = np.asarray(new_ids(-(-(int(prompt[i]) + own_out) // b)), dtype=np.int64)
    return new_prompt, tuple(hashes)


#: A rag chunk block's position-independent identity sits above this bit of its id (its prefix serial below).
CHUNK_SHIFT = 32


def chunk_block(unit_id: int) -> int:
    """The chunk-block identity packed in a prefix block id (0: not a corpus chunk's block)."""
    return unit_id >> CHUNK_SHIFT


def _rag(cfg: SharingConfig, prompt: np.ndarray, rng: np.random.Generator, new_ids) -> tuple[np.ndarray, tuple]:
    """System prompt + ``k`` Zipf-drawn chunks + the sampled question; ids as in the module docstring."""
    b, k, corpus = cfg.block_tokens, int(cfg.chunks_per_prompt), int(cfg.corpus_chunks)
    s = int(cfg.shared_tokens or 0)
    per_chunk = cfg.rag_chunk_tokens // b
    weights = 1.0 / np.arange(1, corpus + 1, dtype=np.float64) ** cfg.zipf
    weights /= weights.sum()
    system = new_ids(s // b)
    children: dict[tuple[int, int], int] = {}  # (parent prefix id, chunk-block identity) -> prefix id
    new_prompt = prompt + s + k * cfg.rag_chunk_tokens
    hashes = []
    for p in new_prompt.tolist():
        chosen = rng.choice(corpus, size=k, replace=False, p=weights).tolist()
        ids = list(system)
        parent = ids[-1] if ids else -1
        for c in chosen:
            for j in range(per_chunk):
                content = 1 + c * per_chunk + j
                serial = children.get((parent, content))
                if serial is None:
                    serial = children[(parent, content)] = new_ids(1)[0]
                ids.append((content << CHUNK_SHIFT) | serial)
                parent = serial
        ids.extend(new_ids(-(-p // b) - len(ids)))  # the question's blocks (the last one may be partial)
        hashes.append(np.asarray(ids, dtype=np.int64))
    return new_prompt, tuple(hashes)
