"""Multimodal requests: image tokens in the prompt, the vision encoder priced where it runs, and EPD
disaggregation (an encoder pool) with its conservation and causality."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.config.schema import Scenario
from simulator.encoder import ImageEncoder
from simulator.engine import simulate
from simulator.system import build_system
from traces.images import ImagesConfig

IMAGES = {"per_request": 2, "fraction": 0.7, "tokens_per_image": 576}


def single(images=IMAGES, n=60, qps=0.5):
    return Scenario.model_validate({
        "seed": 4, "model": "llama-2-7b", "deployment": {"device": "h100-sxm"},
        "workload": {"qps": qps, "prompt": {"dist": "fixed", "value": 100}, "output": {"dist": "fixed", "value": 20},
                     **({"images": images} if images else {})},
        "simulation": {"num_requests": n},
    })


def epd(n=150, qps=6.0, link="nvlink"):
    pool = {"device": "h100-sxm", "num_replicas": 1}
    return Scenario.model_validate({
        "seed": 4, "model": "llama-2-7b", "scheduler": {"name": "vllm"},
        "serving": {"name": "epd", "link": {"kind": link}, "max_images": 8},
        "pools": [{"name": "encode", "role": "encode", **pool}, {"name": "prefill", "role": "prefill", **pool},
                  {"name": "decode", "role": "decode", **pool}],
        "workload": {"qps": qps, "prompt": {"dist": "uniform", "low": 20, "high": 300},
                     "output": {"dist": "uniform", "low": 1, "high": 100}, "images": IMAGES},
        "simulation": {"num_requests": n},
    })


def test_image_tokens_join_the_prompt():
    text = simulate(single(images=None)).result.requests
    mm = simulate(single()).result.requests
    with_images = mm["image_tokens"] > 0
    assert set(mm["image_tokens"]) == {0, 2 * 576}
    assert 0.5 < with_images.mean() < 0.9
    assert (mm["prompt_tokens"] == 100 + mm["image_tokens"]).all()
    assert (text["prompt_tokens"] == 100).all()


def test_colocated_prefill_pays_the_encoder_once():
    """At a light load every prefill runs alone: its iteration is the language model's prefill of the prompt
    (text + image tokens) plus the encoder's pass over the request's images."""
    sc = single()
    out = simulate(sc)
    system = build_system(sc)
    enc = ImageEncoder(ImagesConfig(**IMAGES), system)
    cost = system.cost_model()
    it, req = out.result.iterations, out.result.requests
    from simulator.costmodel.features import prefill_attention_work, prefill_kv_read

    for rid in (0, 1, 2, 3):
        row = it[(it["prefill_seqs"] == 1) & (np.isclose(it["end_s"], req.loc[rid, "first_token_s"]))].iloc[0]
        p = int(req.loc[rid, "prompt_tokens"])
        llm = cost.iteration_from_totals(p, 1, prefill_attention_work(p, 0), prefill_kv_read(p, 0), 0, 0).time_s
        images = int(req.loc[rid, "image_tokens"]) // 576
        assert row["duration_first_s"] == pytest.approx(llm + enc.time(images), rel=1e-12)


def test_epd_encodes_each_image_request_once_before_its_prefill():
    out = simulate(epd())
    req, t = out.result.requests, out.table
    assert req["finish_s"].notna().all() and np.array_equal(t.generated, t.output)
    img = req["image_tokens"] > 0
    assert img.any() and (~img).any()
    m = req[img]
    assert (m["arrival_s"] <= m["encode_start_s"]).all()
    assert (m["encode_start_s"] < m["encode_end_s"]).all()
    assert (m["encode_end_s"] < m["embeddings_arrive_s"]).all()
    assert (m["embeddings_arrive_s"] <= m["schedule_s"]).all()  # prefill only once the embeddings are there
    assert req.loc[~img, "encode_start_s"].isna().all()  # text-only requests skip the encoder pool
    assert np.array_equal(m["embedding_bytes"], m["image_tokens"] * 4096 * 2.0)  # tokens x hidden x bf16
    # the prefill replica did not encode again: its iterations are the language model's alone
    enc_rows = out.result.iterations[out.result.iterations["replica"] == 0]
    assert enc_rows["prefill_tokens"].sum() == int(req["image_tokens"].sum())
    assert out.kv_blocks_used_at_end == [0] * len(out.kv_blocks_used_at_end)


def test_epd_needs_images_and_an_encoder_pool():
    from capsim.errors import CapsimError
    from simulator.pools.build import build_pools

    data = epd().model_dump(exclude_unset=True)
    data["workload"].pop("images")
    with pytest.raises(CapsimError) as err:
        build_pools(Scenario.model_validate(data))
    assert "workload.images" in str(err.value)
    data = epd().model_dump(exclude_unset=True)
    data["pools"].pop(0)
    with pytest.raises(CapsimError) as err:
        build_pools(Scenario.model_validate(data))
    assert "role 'encode'" in str(err.value)


def test_unknown_encoder_names_the_field():
    from capsim.errors import CapsimError

    with pytest.raises(CapsimError) as err:
        simulate(single(images={**IMAGES, "encoder": "no-such-vit"}))
    assert "workload.images.encoder" in str(err.value)
