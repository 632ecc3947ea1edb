"""Prefix caching (issue 16 item 1): sharing patterns, the per-replica prefix cache, hits, routing, invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.prefix_cache import ChunkReuse, PrefixIndex
from simulator.requests import RequestTable
from simulator.schedulers.base import PrefillChunk
from tests.test_engine_invariants import check_invariants, tiny_scenario
from traces.build import build_requests
from traces.config import WorkloadConfig

PC = [{"name": "prefix-caching"}]


def scenario(**over) -> Scenario:
    data = {
        "model": "llama-2-7b",
        "deployment": {"device": "a100-80gb-sxm"},
        "scheduler": {"name": "vllm"},
        "workload": {"arrival": "poisson", "qps": 0.5, "prompt": {"dist": "fixed", "value": 700},
                     "output": {"dist": "fixed", "value": 8},
                     "sharing": {"pattern": "system-prompt", "shared_tokens": 2100, "block_tokens": 512}},
        "simulation": {"num_requests": 4},
        "techniques": PC,
    }
    data.update(over)
    return Scenario.model_validate(data)


# ---------------------------------------------------------------- sharing patterns
def stream(sharing, n=9, prompt=None):
    w = WorkloadConfig.model_validate({"qps": 2, "prompt": prompt or {"dist": "uniform", "low": 10, "high": 900},
                                       "sharing": sharing})
    return build_requests(w, seed=4, num_requests=n)


def test_workload_without_sharing_is_unchanged_and_has_no_ids():
    base = build_requests(WorkloadConfig.model_validate({"qps": 2}), seed=4, num_requests=20)
    assert base.prefix_block_hashes is None and base.prefix_block_tokens is None
    plain = stream(None)
    assert plain.prefix_block_hashes is None
    shared = stream({"pattern": "system-prompt", "shared_tokens": 1100, "block_tokens": 256})
    np.testing.assert_array_equal(shared.prompt_tokens, plain.prompt_tokens + 1100)  # prepended
    np.testing.assert_array_equal(shared.arrival_s, plain.arrival_s)
    np.testing.assert_array_equal(shared.output_tokens, plain.output_tokens)


def test_system_prompt_ids_share_the_whole_blocks_of_the_prefix():
    s = stream({"pattern": "system-prompt", "shared_tokens": 1100, "block_tokens": 256})
    assert s.prefix_block_tokens == 256
    heads = {tuple(h[:4].tolist()) for h in s.prefix_block_hashes}
    assert len(heads) == 1  # floor(1100 / 256) = 4 shared blocks
    fifth = [int(h[4]) for h in s.prefix_block_hashes]
    assert len(set(fifth)) == len(fifth)  # the partial block holds request tokens: never shared
    assert all(len(h) == -(-p // 256) for h, p in zip(s.prefix_block_hashes, s.prompt_tokens, strict=True))


def test_few_shot_draws_among_the_templates():
    s = stream({"pattern": "few-shot", "shared_tokens": 600, "templates": 3, "block_tokens": 256}, n=60)
    heads = {tuple(h[:2].tolist()) for h in s.prefix_block_hashes}
    assert len(heads) == 3


def test_multi_turn_extends_the_previous_turn():
    s = stream({"pattern": "multi-turn", "turns": 3, "block_tokens": 128}, n=9)
    own = stream(None, n=9).prompt_tokens
    p, h, out = s.prompt_tokens, s.prefix_block_hashes, s.output_tokens
    conversations = 3
    for i in range(conversations, 9):
        prev = i - conversations
        assert p[i] == p[prev] + out[prev] + own[i]
        keep = int(p[prev] + out[prev]) // 128  # the previous turn's whole blocks of prompt and answer
        np.testing.assert_array_equal(h[i][:keep], h[prev][:keep])
        assert not set(h[i][keep:].tolist()) & set(np.concatenate(h[:i]).tolist())
    for i in range(9):  # ids cover each request's prompt and answer
        assert len(h[i]) == -(-int(p[i] + out[i]) // 128)


def test_sharing_refuses_a_trace_with_its_own_ids():
    w = WorkloadConfig.model_validate({"arrival": "trace", "trace": {"name": "mooncake-conversation"},
                                       "sharing": {"pattern": "multi-turn"}})
    with pytest.raises(CapsimError, match="already carries"):
        build_requests(w, seed=0, num_requests=5)


def test_sharing_config_errors():
    with pytest.raises(ValueError, match="shared_tokens"):
        WorkloadConfig.model_validate({"sharing": {"pattern": "system-prompt"}})
    with pytest.raises(ValueError, match="not used"):
        WorkloadConfig.model_validate({"sharing": {"pattern": "multi-turn", "shared_tokens": 10}})


# ---------------------------------------------------------------- hits, by hand
def test_a_known_prefix_hit_skips_its_prefill_tokens():
    """Prompts of 2100 + 700 = 2800 tokens; 2100 // 512 = 4 whole shared blocks = 2048 tokens. The first request
    computes all 2800; every later one (arriving after the first finished) only 2800 - 2048 = 752."""
    out = simulate(scenario())
    req = out.result.requests
    assert req["cached_tokens"].tolist() == [0, 2048, 2048, 2048]
    prefill = out.result.iterations.query("prefill_tokens > 0")["prefill_tokens"].tolist()
    assert prefill == [2800, 752, 752, 752]
    s = summarise(out.result)
    assert s["prefix_hit_rate_tokens"] == pytest.approx(3 * 2048 / (4 * 2800))
    assert s["prefix_hit_rate_requests"] == pytest.approx(0.75)
    check_invariants(out)


def test_hit_lowers_ttft_and_plain_run_has_no_prefix_keys():
    on = simulate(scenario())
    off = simulate(scenario(techniques=[]))
    ttft_on = (on.result.requests["first_token_s"] - on.result.requests["arrival_s"]).to_numpy()
    ttft_off = (off.result.requests["first_token_s"] - off.result.requests["arrival_s"]).to_numpy()
    assert ttft_on[0] == pytest.approx(ttft_off[0])  # the first request has nothing to reuse
    assert np.all(ttft_on[1:] < 0.5 * ttft_off[1:])  # 752 of 2800 tokens computed
    assert "prefix_hit_rate_tokens" not in summarise(off.result)
    assert "cached_tokens" not in off.result.requests.columns


def test_a_whole_prompt_hit_still_computes_its_last_block():
    # Two identical 256-token prompts of four 64-token blocks: a hit must leave a token to compute (its logits
    # are needed), and sharing is in whole blocks, so the second request reuses 3 blocks and computes 64 tokens.
    table = RequestTable(np.zeros(2), np.array([256, 256]), np.array([4, 4]))
    now = [0.0]
    index = PrefixIndex(table, [np.array([1, 2, 3, 4])] * 2, 64, lambda: now[0])
    m = index.block_manager(100, 16, table)
    assert admit(m, table, 0) == 0
    now[0] = 1.0
    assert admit(m, table, 1) == 192
    assert index.cached_tokens.tolist() == [0, 192]


def test_concurrent_prefills_do_not_hit_blocks_not_yet_computed():
    # Two requests arriving together are prefilled in one iteration: neither can reuse the other's blocks.
    sc = scenario(workload={"arrival": "closed-loop", "concurrency": 2, "prompt": {"dist": "fixed", "value": 700},
                            "output": {"dist": "fixed", "value": 4},
                            "sharing": {"pattern": "system-prompt", "shared_tokens": 2100, "block_tokens": 512}},
                  simulation={"num_requests": 3})
    out = simulate(sc)
    assert out.result.requests["cached_tokens"].tolist() == [0, 0, 2048]


# ---------------------------------------------------------------- the block manager
def manager(total_blocks=40, block_size=16, unit=64, n=6):
    ids = [np.array([1, 2, 3, 4]), np.array([1, 2, 3, 5]), np.array([1, 2, 9, 9]), np.array([7, 8]),
           np.array([1, 2, 3, 4]), np.array([1, 2])][:n]
    prompts = np.array([len(h) * unit for h in ids]) + 5
    table = RequestTable(np.zeros(n), prompts, np.full(n, 50))
    now = [0.0]
    index = PrefixIndex(table, ids, unit, lambda: now[0])
    return index.block_manager(total_blocks, block_size, table), table, now


def admit(m, t, rid):
    cached = m.attach(rid)
    m.grow(rid, int(t.prompt[rid]))
    return cached


def test_cached_blocks_are_shared_counted_once_and_never_freed_while_referenced():
    m, t, now = manager()
    assert admit(m, t, 0) == 0  # 4 units of 64 tokens = 4 blocks each + 1 private block (5 tokens)
    assert m.used_blocks == 4 * 4 + 1
    now[0] = 1.0
    assert admit(m, t, 1) == 3 * 64  # units 1, 2, 3 hit; unit 5 is new
    assert m.used_blocks == 17 + 4 + 1  # the shared units count once
    assert m.references(1) == 2
    m.release(0)
    assert m.references(1) == 1 and m.references(4) == 0
    assert m.cached_free_blocks == 4  # unit 4 is free-able; units 1-3 are still in use
    assert m.used_blocks == 17 + 4 + 1 - (4 + 1)
    # Fill the cache: eviction may take only unit 4, never the referenced 1, 2, 3.
    now[0] = 2.0
    m.grow(1, int(t.prompt[1]) + 200)
    assert m.resident_blocks <= m.total_blocks
    assert all(m.references(u) == 1 for u in (1, 2, 3))
    m.release(1)
    assert m.used_blocks == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(["admit", "decode", "release"]), st.integers(0, 5),
                              st.integers(1, 40)), max_size=60),
       total=st.integers(20, 60))
def test_manager_invariants_under_random_operations(ops, total):
    """Referenced units are never evicted, KV in use (private + referenced + free-able cached) never exceeds the
    capacity, and ``used_blocks`` is exactly the private blocks plus each referenced unit once."""
    m, t, now = manager(total_blocks=total)
    running: set[int] = set()
    for step, (op, rid, k) in enumerate(ops):
        now[0] = float(step)
        if op == "admit" and rid not in running:
            need = m.blocks_to_admit(rid, int(t.prompt[rid]))
            if need > m.free_blocks:
                continue
            admit(m, t, rid)
            running.add(rid)
        elif op == "decode" and rid in running:
            if m.blocks_to_grow(rid, int(t.kv_tokens[rid]) + k) > m.free_blocks:
                continue
            ids = np.array([rid])
            m.grow_all(ids, k)
        elif op == "release" and rid in running:
            m.release(rid)
            running.discard(rid)
        referenced = {u for r in running for u in m._held.get(r, [])}
        for u in referenced:
            assert m.references(u) == sum(m._held.get(r, []).count(u) for r in running)
            assert u not in m._lru
        private = sum(-(-int(t.kv_tokens[r]) // 16) - len(m._held.get(r, [])) * m.unit_blocks for r in running)
        assert m.used_blocks == private + len(referenced) * m.unit_blocks
        assert m.resident_blocks <= m.total_blocks
        assert m.peak_resident_blocks <= m.total_blocks
    for r in list(running):
        m.release(r)
    assert m.used_blocks == 0


# ---------------------------------------------------------------- every scheduler, tight memory
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheduler=st.sampled_from(["vllm", "sarathi", "orca", "static", "vllm-swap", "sarathi-swap"]),
       pattern=st.sampled_from(["system-prompt", "few-shot", "multi-turn", "rag"]),
       seed=st.integers(0, 10_000), qps=st.floats(0.5, 40.0), n=st.integers(1, 50), replicas=st.integers(1, 3),
       router=st.sampled_from(["round-robin", "least-outstanding", "cache-aware"]), tight=st.booleans(),
       block_size=st.sampled_from([16, 12, 1]), hydragen=st.booleans(), generated=st.booleans(), reuse=st.booleans())
def test_engine_invariants_hold_with_prefix_caching(scheduler, pattern, seed, qps, n, replicas, router, tight,
                                                    block_size, hydragen, generated, reuse):
    base = tiny_scenario(scheduler, seed=seed, qps=qps, n=n, replicas=replicas, router=router,
                         kv_tokens_budget=tight, block_size=block_size)
    data = base.model_dump()
    sharing = {"pattern": pattern, "block_tokens": 48}  # a multiple of every block size drawn
    if pattern in ("system-prompt", "few-shot"):
        sharing["shared_tokens"] = 200
    if pattern == "rag":  # a small corpus, so chunks recur at other positions
        sharing.update(shared_tokens=96, chunks_per_prompt=3, corpus_chunks=12)
    data["workload"]["sharing"] = sharing
    data["simulation"]["oversized"] = "drop"
    techniques = [{"name": "prefix-caching", "shared_prefix_attention": hydragen, "cache_generated": generated,
                   "reuse": reuse}]
    out = simulate(Scenario.model_validate({**data, "techniques": techniques}))
    check_invariants(out)
    assert out.result.token_gaps.num_samples == int((out.table.output - 1).sum())
    cached = out.result.requests["cached_tokens"].to_numpy()
    assert np.all((cached >= 0) & (cached < out.table.prompt))
    assert np.all(cached % 48 == 0)


def test_tight_memory_with_prefix_caching_preempts_and_finishes():
    for scheduler in ("vllm", "sarathi"):
        base = tiny_scenario(scheduler, seed=3, qps=50.0, n=80, replicas=1, router="round-robin",
                             kv_tokens_budget=True)
        data = base.model_dump()
        data["workload"]["sharing"] = {"pattern": "system-prompt", "shared_tokens": 160, "block_tokens": 32}
        out = simulate(Scenario.model_validate({**data, "techniques": PC}))
        check_invariants(out)
        assert out.result.requests["preemptions"].sum() > 0
        assert (out.result.requests["cached_tokens"] > 0).sum() > 10


def tight_sharing(scheduler: str, sharing: dict, *, seed: int, qps: float, n: int, replicas: int = 1,
                  router: str = "round-robin", block_size: int = 16, techniques=PC):
    data = tiny_scenario(scheduler, seed=seed, qps=qps, n=n, replicas=replicas, router=router,
                         kv_tokens_budget=True, block_size=block_size).model_dump()
    data["workload"]["sharing"] = sharing
    data["simulation"]["oversized"] = "drop"
    return simulate(Scenario.model_validate({**data, "techniques": techniques}))


def test_chunked_admission_counts_the_cached_units_a_hit_takes_back():
    """Regression (found by the property test, seed 3510): sarathi admitted a request when its first chunk fitted
    beside the decodes' next blocks, then attached its hit, which moved free-able cached units back into use --
    blocks the decodes needed -- so the iteration ended one KV block over capacity. The admission now asks the
    block manager for the hit (tokens, revived blocks) first and counts both."""
    out = tight_sharing("sarathi", {"pattern": "multi-turn", "block_tokens": 48}, seed=3510, qps=12, n=5)
    check_invariants(out)
    assert (out.result.requests["cached_tokens"] > 0).any()  # the hit that used to overflow still happens


def test_swapped_in_sequences_are_not_counted_as_prefix_hits():
    """Regression: vllm's admission check counted a swapped-out sequence's cached prefix as a hit, but KV swapped
    back in holds all its blocks itself (no attach), so the check came short by the hit's blocks."""
    for seed, qps, n, block_size in ((23, 25.84, 35, 16), (30, 17.45, 12, 12)):
        out = tight_sharing("vllm-swap", {"pattern": "system-prompt", "shared_tokens": 200, "block_tokens": 48},
                            seed=seed, qps=qps, n=n, replicas=2 if seed == 30 else 1, block_size=block_size)
        check_invariants(out)
        assert out.result.requests["preemptions"].sum() > 0


def two_turns(cache_generated: bool):
    """One conversation of two turns: a 700-token message, a 300-token answer, then 700 more tokens."""
    return simulate(scenario(
        workload={"arrival": "poisson", "qps": 0.05, "prompt": {"dist": "fixed", "value": 700},
                  "output": {"dist": "fixed", "value": 300},
                  "sharing": {"pattern": "multi-turn", "turns": 2, "block_tokens": 256}},
        simulation={"num_requests": 2},
        techniques=[{"name": "prefix-caching", "cache_generated": cache_generated}]))


def test_cached_answer_blocks_extend_the_next_turns_hit():
    """Turn 1's prompt is 700 + 300 + 700 = 1700 tokens. Prompt blocks only: it reuses floor(700 / 256) = 2 units
    (512 tokens). With the answer cached: turn 0's KV at release holds 999 tokens (the last token is never
    written), floor(999 / 256) = 3 whole units (768 tokens), so the prefill computes 1700 - 768 = 932 tokens."""
    for flag, hit in ((False, 512), (True, 768)):
        out = two_turns(flag)
        req = out.result.requests
        assert req["arrival_s"][1] > req["finish_s"][0]  # the second turn comes after the first is done
        assert out.table.prompt.tolist() == [700, 1700]
        assert req["cached_tokens"].tolist() == [0, hit]
        it = out.result.iterations.query("prefill_tokens > 0")
        assert it["prefill_tokens"].tolist() == [700, 1700 - hit]
        check_invariants(out)
    off, on = (summarise(two_turns(f).result) for f in (False, True))
    assert on["prefix_hit_rate_tokens"] == pytest.approx(768 / 2400)
    assert off["prefix_hit_rate_tokens"] == pytest.approx(512 / 2400)


def test_generated_units_are_kept_free_able_and_evicted_deepest_first():
    table = RequestTable(np.array([0.0, 1.0]), np.array([130, 130]), np.array([100, 100]))
    now = [0.0]
    index = PrefixIndex(table, [np.array([1, 2]), np.array([1, 2, 3])], 64, lambda: now[0], cache_generated=True)
    assert index.ids[0] == [1, 2, -1] and index.ids[1] == [1, 2, 3]  # 229 // 64 = 3 units; a fresh id for rid 0's
    m = index.block_manager(40, 16, table)
    m.attach(0)
    m.grow(0, 130)  # prefill: units 1, 2 registered
    m.grow_all(np.array([0]), 70)  # 200 tokens of KV: the third unit (tokens 128..191) is full
    used = m.used_blocks
    assert used == 13  # ceil(200 / 16)
    now[0] = 1.0
    m.release(0)
    assert m.used_blocks == 0 and m.cached_free_blocks == 12  # 3 units of 4 blocks stay resident, 1 block freed
    assert list(m._lru) == [-1, 2, 1]  # the answer's unit first in line for eviction
    now[0] = 2.0
    assert m.match_tokens(1) == 128  # request 1: the two whole units of its 130-token prompt hit


# ---------------------------------------------------------------- non-prefix chunk reuse
def rag_id(chunk_block: int, serial: int) -> int:
    return (chunk_block << 32) | serial


def test_a_known_chunk_reuse_skips_its_kept_tokens_by_hand():
    """Request 0: system unit, chunk A, chunk B, question; request 1: system unit, chunk B, chunk A, question
    (64-token units, 266-token prompts). Request 1 hits the system unit as a prefix (64 tokens) and reuses both
    chunk units at their new positions: 128 tokens, of which ceil(0.15 x 128) = 20 are recomputed, so 108 are
    kept and its prefill computes 266 - 64 - 108 = 94 tokens. The kept tokens' KV is copied (pending for the
    iteration that runs the chunk)."""
    table = RequestTable(np.array([0.0, 1.0]), np.array([266, 266]), np.array([10, 10]))
    ids = [np.array([1, rag_id(7, 2), rag_id(9, 3), 4]), np.array([1, rag_id(9, 5), rag_id(7, 6), 8])]
    now = [0.0]
    reuse = ChunkReuse(0.15, 1e-6)
    index = PrefixIndex(table, ids, 64, lambda: now[0], reuse=reuse)
    m = index.block_manager(100, 16, table)
    m.attach(0)
    m.grow(0, 266)
    assert index.reused_tokens[0] == 0
    now[0] = 1.0
    assert m.hit(1) == (64 + 108, 7)  # 7 private blocks for the 108 kept tokens (no unit revived: 0 is running)
    used = m.used_blocks
    assert m.attach(1) == 172
    assert index.cached_tokens[1] == 64 and index.reused_tokens[1] == 128
    assert m.used_blocks - used == 7
    assert reuse([PrefillChunk(1, 94, 172, True, 94)]) == pytest.approx(108e-6)
    m.grow(1, 266)
    assert m.used_blocks == used + 17 - 4  # 17 blocks of 266 tokens less its referenced system unit
    m.release(0)
    m.release(1)
    assert m.used_blocks == 0


def rag_scenario(reuse: bool, scheduler: dict | None = None) -> Scenario:
    return scenario(
        model="llama-3.1-8b", deployment={"device": "h100-sxm"},
        scheduler=scheduler or {"name": "vllm", "max_num_batched_tokens": 16384},
        workload={"arrival": "poisson", "qps": 2, "prompt": {"dist": "uniform", "low": 20, "high": 200},
                  "output": {"dist": "uniform", "low": 10, "high": 60},
                  "sharing": {"pattern": "rag", "shared_tokens": 512, "block_tokens": 256, "chunk_tokens": 512,
                              "chunks_per_prompt": 4, "corpus_chunks": 40, "zipf": 1.0}},
        simulation={"num_requests": 120},
        techniques=[{"name": "prefix-caching", "reuse": reuse, "recompute_fraction": 0.15}])


def test_chunk_reuse_computes_only_what_is_neither_hit_nor_kept_and_lowers_ttft():
    plain, reused = simulate(rag_scenario(False)), simulate(rag_scenario(True))
    for out in (plain, reused):
        check_invariants(out)
        assert out.result.requests["preemptions"].sum() == 0
    req = reused.result.requests
    prompt, hit, got = out.table.prompt, req["cached_tokens"].to_numpy(), req["reused_tokens"].to_numpy()
    assert np.all(got % 256 == 0) and got.sum() > 0.3 * prompt.sum()  # chunks recur in a 40-chunk corpus
    kept = got - np.ceil(0.15 * got).astype(np.int64)
    assert reused.result.iterations["prefill_tokens"].sum() == int((prompt - hit - kept).sum())
    assert plain.result.iterations["prefill_tokens"].sum() == int((prompt - plain.result.requests["cached_tokens"]).sum())
    np.testing.assert_array_equal(hit, plain.result.requests["cached_tokens"])  # prefix hits unchanged here
    s_plain, s_reuse = summarise(plain.result), summarise(reused.result)
    assert s_reuse["chunk_reuse_rate_tokens"] == pytest.approx(got.sum() / prompt.sum())
    assert "chunk_reuse_rate_tokens" not in s_plain
    assert s_reuse["ttft_mean_s"] < s_plain["ttft_mean_s"]


def test_chunk_reuse_under_chunked_prefill_keeps_the_invariants_in_tight_memory():
    for scheduler in ("sarathi", "sarathi-swap", "vllm-swap"):
        out = tight_sharing(scheduler, {"pattern": "rag", "shared_tokens": 96, "block_tokens": 48,
                                        "chunks_per_prompt": 3, "corpus_chunks": 8}, seed=5, qps=30, n=40,
                           techniques=[{"name": "prefix-caching", "reuse": True, "cache_generated": True}])
        check_invariants(out)


def test_rag_pattern_refuses_chunks_off_the_block_grid():
    with pytest.raises(ValueError, match="multiples of block_tokens"):
        WorkloadConfig.model_validate({"sharing": {"pattern": "rag", "shared_tokens": 100, "block_tokens": 64}})
    with pytest.raises(ValueError, match="corpus_chunks"):
        WorkloadConfig.model_validate({"sharing": {"pattern": "rag", "chunks_per_prompt": 5, "corpus_chunks": 4}})


# ---------------------------------------------------------------- routing
def multi_turn(router, **params) -> Scenario:
    return scenario(
        deployment={"device": "a100-80gb-sxm", "num_replicas": 4},
        router={"name": router, **params},
        workload={"arrival": "poisson", "qps": 4, "prompt": {"dist": "uniform", "low": 50, "high": 400},
                  "output": {"dist": "uniform", "low": 10, "high": 100},
                  "sharing": {"pattern": "multi-turn", "turns": 6, "block_tokens": 256}},
        simulation={"num_requests": 240},
    )


def test_cache_aware_router_finds_the_cached_prefix():
    aware = summarise(simulate(multi_turn("cache-aware")).result)
    spread = summarise(simulate(multi_turn("least-outstanding")).result)
    assert aware["prefix_hit_rate_tokens"] > 1.5 * spread["prefix_hit_rate_tokens"]
    assert aware["ttft_mean_s"] < spread["ttft_mean_s"]


def test_cache_aware_guard_zero_is_least_outstanding_when_loads_differ():
    # With no imbalance allowed, a replica holding the prefix wins only when it is among the least loaded;
    # the hit rate then falls between least-outstanding's and the unguarded router's.
    strict = summarise(simulate(multi_turn("cache-aware", max_imbalance=0)).result)["prefix_hit_rate_tokens"]
    loose = summarise(simulate(multi_turn("cache-aware", max_imbalance=1000)).result)["prefix_hit_rate_tokens"]
    spread = summarise(simulate(multi_turn("least-outstanding")).result)["prefix_hit_rate_tokens"]
    assert spread <= strict <= loose


def test_router_and_technique_errors():
    with pytest.raises(CapsimError, match="needs the 'prefix-caching' technique"):
        simulate(multi_turn("cache-aware").model_copy(update={"techniques": []}))
    with pytest.raises(CapsimError, match="unknown parameter"):
        simulate(multi_turn("cache-aware", max_imbalanse=3))
    with pytest.raises(CapsimError, match="takes no parameters"):
        simulate(multi_turn("least-outstanding", max_imbalance=3))
    with pytest.raises(CapsimError, match="no prompt block identities|none"):
        simulate(scenario(workload={"qps": 1}))
    with pytest.raises(CapsimError, match="whole number"):
        simulate(scenario(deployment={"device": "a100-80gb-sxm", "block_size": 24}))
    with pytest.raises(CapsimError, match="cannot be combined"):
        simulate(scenario(techniques=[*PC, {"name": "kv-eviction", "budget_tokens": 256}]))


def test_mooncake_trace_ids_give_hits():
    sc = scenario(deployment={"device": "h100-sxm"}, model="llama-3.1-8b",
                  scheduler={"name": "sarathi", "chunk_size": 2048},
                  workload={"arrival": "trace", "trace": {"name": "mooncake-conversation"}},
                  simulation={"num_requests": 200})
    s = summarise(simulate(sc).result)
    assert 0 < s["prefix_hit_rate_tokens"] < 1
    assert s["prefix_hit_rate_requests"] > 0.9  # the trace's first block is shared by nearly every request


# ---------------------------------------------------------------- shared-prefix attention (Hydragen)
def test_shared_prefix_attention_reads_each_shared_unit_once_per_step():
    table = RequestTable(np.zeros(3), np.array([300, 300, 300]), np.array([4, 4, 4]))
    now = [0.0]
    ids = [np.array([1, 2, 3, 4, 5]), np.array([1, 2, 3, 4, 6]), np.array([1, 2, 7, 8, 9])]
    index = PrefixIndex(table, ids, 64, lambda: now[0], shared_attention=True)
    m = index.block_manager(100, 16, table)
    attention = index.attention(m)
    admit(m, table, 0)  # registers units 1-4 (300 // 64 = 4 whole units)
    now[0] = 1.0
    assert admit(m, table, 1) == 256 and admit(m, table, 2) == 128
    batch = np.array([0, 1, 2])
    # Unit 1 and 2 are used by 3 sequences (2 extra reads each), units 3 and 4 by 2 (1 extra each): 6 x 64.
    assert attention.saved(batch) == 6 * 64
    kv = table.kv_tokens[batch]
    attended, slope, _ = attention.decode_segment(batch, kv)
    assert attended == float((kv + 1).sum()) - 384
    assert slope.tolist() == [1.0, 1.0, 1.0]
    assert attention.saved(np.array([0, 2])) == 2 * 64
    assert index.attention(m) is not None and PrefixIndex(table, ids, 64, lambda: 0.0).attention(m) is None


def test_shared_prefix_attention_speeds_decode_of_a_shared_prompt():
    def run(flag):
        sc = Scenario.model_validate({
            "model": "llama-3.1-8b", "deployment": {"device": "h100-sxm"},
            "scheduler": {"name": "vllm", "max_num_batched_tokens": 16384},
            "workload": {"arrival": "closed-loop", "concurrency": 64, "prompt": {"dist": "fixed", "value": 256},
                         "output": {"dist": "fixed", "value": 64},
                         "sharing": {"pattern": "system-prompt", "shared_tokens": 8192}},
            "simulation": {"num_requests": 256},
            "techniques": [{"name": "prefix-caching", "shared_prefix_attention": flag}]})
        out = simulate(sc)
        check_invariants(out)
        return summarise(out.result)

    plain, hydragen = run(False), run(True)
    assert hydragen["prefix_hit_rate_tokens"] == plain["prefix_hit_rate_tokens"]
    assert hydragen["tpot_p50_s"] < 0.6 * plain["tpot_p50_s"]  # 64 x 8k tokens of KV read once, not 64 times
