"""The model catalog: shipped numbers reproduce published parameter counts, and lookups and
inline models fail with clear errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from capsim.catalog import registry_of
from capsim.errors import CapsimError, UnknownNameError
from simulator.models import MODELS, get_model, load_model_catalog, model_from_dict

CATALOG = load_model_catalog()

REQUIRED_IDS = {
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3-8b",
    "llama-3-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "mistral-7b",
    "mixtral-8x7b",
    "qwen2.5-7b",
    "qwen2.5-72b",
    "phi-3-mini",
    "falcon-7b",
    "falcon-40b",
    "falcon-180b",
    "opt-6.7b",
    "opt-13b",
    "opt-30b",
    "opt-66b",
    "bloom-176b",
    # issue 19: models that published experiments and current deployments use
    "yi-34b",
    "opt-175b",
    "mistral-7b-v0.2",
    "qwen3-8b",
    "qwen3-32b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
}

TINY = {
    "name": "tiny",
    "num_layers": 2,
    "hidden_size": 64,
    "num_heads": 4,
    "num_kv_heads": 2,
    "ffn_size": 128,
    "vocab_size": 100,
    "mlp": "gated",
    "max_context": 512,
    "norm": "rmsnorm",
}


def test_catalog_holds_every_required_model_with_a_source():
    assert REQUIRED_IDS <= set(CATALOG)
    assert set(MODELS.names()) == set(CATALOG)
    for name, spec in CATALOG.items():
        assert spec.name == name
        assert spec.source.startswith("https://"), name


@pytest.mark.parametrize("name", sorted(n for n, s in CATALOG.items() if s.published_params_b is not None))
def test_total_params_match_the_published_count_within_2_percent(name):
    spec = CATALOG[name]
    computed_b = spec.total_params() / 1e9
    assert computed_b == pytest.approx(spec.published_params_b, rel=0.02)


def test_every_required_model_is_checked_against_a_published_count():
    assert all(CATALOG[name].published_params_b for name in REQUIRED_IDS)


@pytest.mark.parametrize(
    ("name", "active_b"),
    [("qwen3-30b-a3b", 3.3), ("qwen3-235b-a22b", 22.0)],  # the model cards' activated counts
)
def test_qwen3_moe_active_parameters_match_the_model_cards(name, active_b):
    spec = get_model(name)
    assert spec.is_moe and (spec.num_experts, spec.experts_per_token) == (128, 8)
    assert spec.active_params_per_token() / 1e9 == pytest.approx(active_b, rel=0.02)


def test_qwen3_head_dim_is_explicit_not_hidden_over_heads():
    # Qwen3-32B: 64 heads of 128 = 8192 query width on a 5120 residual stream.
    spec = get_model("Qwen/Qwen3-32B")
    assert spec.head_dim == 128 and spec.q_dim == 8192 != spec.hidden_size
    assert spec.kv_bytes_per_token(2) == 2 * 64 * 8 * 128 * 2


def test_mistral_v0_2_has_v0_1_shapes_and_is_a_separate_entry():
    v1, v2 = get_model("mistral-7b"), get_model("mistralai/Mistral-7B-Instruct-v0.2")
    assert v2.name == "mistral-7b-v0.2" != v1.name
    assert v2.total_params() == v1.total_params()
    assert v2.kv_bytes_per_token(2) == v1.kv_bytes_per_token(2)


def test_opt_175b_has_the_paper_dimensions():
    opt = get_model("facebook/opt-175b")
    assert (opt.num_layers, opt.num_heads, opt.hidden_size, opt.ffn_size) == (96, 96, 12288, 4 * 12288)
    assert opt.kv_bytes_per_token(2) == 2 * 96 * 12288 * 2  # 4.5 MiB per token in fp16


def test_llama2_7b_parameter_count_is_exact():
    # 6,738,415,616 is the count of the released checkpoint (embeddings, 32 blocks, final norm).
    assert get_model("llama-2-7b").total_params() == 6_738_415_616


def test_kv_bytes_per_token_by_hand():
    # 2 (K and V) * L * h_kv * d_h * bytes
    assert get_model("llama-2-7b").kv_bytes_per_token(2) == 2 * 32 * 32 * 128 * 2 == 524_288
    assert get_model("llama-3-8b").kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert get_model("llama-3-8b").kv_bytes_per_token(1) == 65_536


def test_mixtral_active_parameters_are_about_12_9_billion():
    mixtral = get_model("mixtral")
    assert mixtral.is_moe
    assert mixtral.active_params_per_token() / 1e9 == pytest.approx(12.9, rel=0.03)
    assert mixtral.total_params() / 1e9 == pytest.approx(46.7, rel=0.01)
    expert = 3 * 4096 * 14336
    assert mixtral.mlp_params_per_expert == expert
    assert mixtral.mlp_params_per_layer == 8 * expert + 4096 * 8
    assert mixtral.active_mlp_params_per_layer == 2 * expert + 4096 * 8


def test_dense_models_use_all_their_parameters_per_token():
    spec = get_model("llama-3-8b")
    assert not spec.is_moe
    assert spec.active_params_per_token() == spec.total_params()


def test_untied_embeddings_count_the_lm_head_and_learned_positions_count_too():
    llama = get_model("llama-2-7b")
    assert llama.embedding_params == 2 * 32000 * 4096
    opt = get_model("opt-6.7b")
    assert opt.embedding_params == 50272 * 4096 + 2050 * 4096
    no_positions = opt.model_copy(update={"learned_positions": 0})
    assert opt.total_params() - no_positions.total_params() == 2050 * 4096


def test_qwen_has_qkv_bias_but_no_output_bias():
    qwen = get_model("qwen2.5-7b")
    d, q, kv = 3584, 28 * 128, 4 * 128
    assert qwen.attn_params_per_layer == d * (q + 2 * kv) + q * d + (q + 2 * kv)


def test_weight_bytes_scale_with_bytes_per_weight():
    spec = get_model("llama-2-7b")
    assert spec.weight_bytes(2) == 2 * spec.total_params()
    assert spec.weight_bytes(0.5) == pytest.approx(spec.total_params() / 2)


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("llama2-7b", "llama-2-7b"),
        ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
        ("LLAMA_2_7B", "llama-2-7b"),
        ("meta-llama/Meta-Llama-3-8B", "llama-3-8b"),
        ("llama-3-8b-instruct", "llama-3-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("mixtral", "mixtral-8x7b"),
        ("phi3-mini", "phi-3-mini"),
        ("bigscience/bloom", "bloom-176b"),
        ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"),
    ],
)
def test_aliases_resolve_to_the_catalog_entry(alias, canonical):
    assert get_model(alias).name == canonical


def test_llama3_and_llama31_are_separate_entries_differing_in_context():
    l3, l31 = get_model("llama-3-8b"), get_model("llama-3.1-8b")
    assert (l3.max_context, l31.max_context) == (8192, 131072)
    assert l3.model_dump(exclude={"name", "aliases", "source", "max_context"}) == l31.model_dump(
        exclude={"name", "aliases", "source", "max_context"}
    )


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(UnknownNameError) as info:
        get_model("llama-2-7")
    assert "llama-2-7b" in str(info.value)


def test_inline_model_gets_default_head_dim():
    spec = model_from_dict(TINY)
    assert spec.head_dim == 16
    assert spec.q_dim == 64 and spec.kv_dim == 32
    assert spec.kv_bytes_per_token(2) == 2 * 2 * 32 * 2


def test_inline_model_with_same_numbers_equals_the_catalog_entry():
    entry = get_model("llama-3-8b").model_dump()
    assert model_from_dict(entry) == get_model("llama-3-8b")


def test_inline_model_with_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(CapsimError) as info:
        model_from_dict({**TINY, "num_kv_head": 2}, where="scenario.model")
    message = str(info.value)
    assert "num_kv_head" in message and "num_kv_heads" in message
    assert message.startswith("scenario.model")


def test_inline_model_with_heads_not_divisible_by_kv_heads_is_rejected():
    with pytest.raises(CapsimError) as info:
        model_from_dict({**TINY, "num_kv_heads": 3})
    assert "num_kv_heads" in str(info.value)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"num_experts": 2, "experts_per_token": 3}, "experts_per_token"),
        ({"hidden_size": -64}, "hidden_size"),
        ({"hidden_size": 66}, "head_dim"),
        ({"mlp": "swiglu"}, "mlp"),
        ({"name": "Bad Name!"}, "name"),
    ],
)
def test_inline_model_with_inconsistent_numbers_is_rejected(change, words):
    with pytest.raises(CapsimError) as info:
        model_from_dict({**TINY, **change})
    assert words in str(info.value)


def test_inline_model_must_be_a_mapping():
    with pytest.raises(CapsimError):
        model_from_dict(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_model_specs_are_immutable():
    spec = get_model("llama-2-7b")
    with pytest.raises(ValidationError, match="frozen"):
        spec.num_layers = 1  # type: ignore[misc]


def test_an_alias_claimed_by_two_models_is_refused():
    a = model_from_dict({**TINY, "name": "a", "aliases": ["shared"]})
    b = model_from_dict({**TINY, "name": "b", "aliases": ["shared"]})
    with pytest.raises(CapsimError, match="shared"):
        registry_of("model", {"a": a, "b": b}, where="test")
