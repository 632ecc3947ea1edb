"""Architecture of a decoder-only transformer, and the sizes that follow from it.

Why a dedicated type: every cost the simulator charges -- weight bytes, KV bytes
per token, FLOPs per operator -- is a closed-form function of a dozen
architecture numbers (docs/cost-model.md, "Symbols"). Keeping those numbers in one
validated, immutable object means a typo in a catalog entry or an inline model
fails at load time with a clear message instead of producing a plausible but
wrong simulation.

>>> m = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
...               ffn_size=128, vocab_size=100, mlp="gated", max_context=512, norm="rmsnorm")
>>> m.head_dim, m.kv_bytes_per_token(2)
(16, 256)
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capsim.registry import normalise_name
from capsim.types import Count, Flag, OptionalCount

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ModelSpec(BaseModel):
    """Architecture numbers of one model, as its Hugging Face ``config.json`` states them.

    Parameter counts follow docs/cost-model.md ("Operators"): QKV ``d*(h + 2*h_kv)*d_h``, output
    projection ``h*d_h*d``, MLP ``3*d*f`` (gated) or ``2*d*f`` (plain) per expert,
    a router of ``d*E`` for MoE, two norms per layer plus a final one, and
    ``V*d`` for the input embedding plus another ``V*d`` for the LM head when
    they are not tied.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Catalog id, lower-case and hyphenated, e.g. 'llama-3.1-8b'.")
    aliases: tuple[str, ...] = Field(
        default=(),
        description="Other names that resolve to this model (HF ids, short names).",
    )
    source: str = Field(
        default="",
        description="URL of the config.json (or paper) the numbers were copied from.",
    )
    num_layers: Count = Field(gt=0, description="L: transformer blocks (num_hidden_layers).")
    hidden_size: Count = Field(gt=0, description="d: residual stream width.")
    num_heads: Count = Field(gt=0, description="h: query heads (num_attention_heads).")
    num_kv_heads: Count = Field(
        gt=0,
        description="h_kv: key/value heads; = h for MHA, 1 for MQA, in between for GQA.",
    )
    head_dim: Count = Field(gt=0, description="d_h: width of one head; defaults to hidden_size / num_heads.")
    ffn_size: Count = Field(gt=0, description="f: MLP intermediate size; for MoE the size of ONE expert.")
    vocab_size: Count = Field(gt=0, description="V: rows of the embedding and LM-head matrices.")
    mlp: Literal["gated", "plain"] = Field(
        description="'gated' (SwiGLU/GeGLU: up, gate, down = 3 matrices) or 'plain' (GELU/ReLU: up, down = 2 matrices)."
    )
    num_experts: Count = Field(default=1, gt=0, description="E: MLP experts per layer (1 = dense).")
    experts_per_token: Count = Field(default=1, gt=0, description="k: experts each token is routed to.")
    tied_embeddings: Flag = Field(
        default=False,
        description="True when the LM head shares the input embedding matrix.",
    )
    learned_positions: Count = Field(
        default=0,
        ge=0,
        description="Rows of a learned absolute position table (OPT: 2048 + 2); "
        "0 for RoPE/ALiBi models. Counted in the parameters only.",
    )
    rotary: Flag = Field(
        default=True,
        description="Rotary position embedding (RoPE) applied to q and k in every layer; false for ALiBi "
        "models (BLOOM). Models with learned_positions > 0 have no RoPE whatever this says. "
        "Only the cost model's rope operator reads it (no parameters).",
    )
    max_context: Count = Field(gt=0, description="Longest sequence the model supports (tokens).")
    norm: Literal["rmsnorm", "layernorm"] = Field(
        description="Normalisation: rmsnorm has a weight vector, layernorm weight and bias."
    )
    attn_bias: Flag = Field(
        default=False,
        description="Bias vectors on the Q, K and V projections (Qwen2, OPT, BLOOM). "
        "Tiny; kept only so parameter counts match the model card.",
    )
    dense_bias: Flag = Field(
        default=False,
        description="Bias vectors on the attention output projection and every MLP matrix "
        "(OPT, BLOOM: 'bias everywhere'). Qwen2 has attn_bias but not this.",
    )
    parallel_attention: Flag = Field(
        default=False,
        description="Attention and MLP read the same normalised input (GPT-J/Falcon). "
        "Same GEMM FLOPs and bytes as the sequential block; the cost model charges one "
        "three-input residual add per layer instead of two two-input ones.",
    )
    # -- multi-head latent attention (DeepSeek-V2/V3) ---------------------------------------
    kv_lora_rank: Count = Field(
        default=0,
        ge=0,
        description="MLA (DeepSeek-V2/V3): width of the compressed KV latent c_KV that the cache stores per "
        "token and layer, beside the shared rotary key; 0 = ordinary multi-head/grouped-query attention. "
        "With MLA, head_dim is qk_nope_head_dim (= v_head_dim in DeepSeek's configs).",
    )
    q_lora_rank: Count = Field(
        default=0,
        ge=0,
        description="MLA: width of the query latent (q_a_proj then q_b_proj); 0 = queries projected "
        "directly from the residual stream (DeepSeek-V2-Lite).",
    )
    qk_rope_head_dim: Count = Field(
        default=0,
        ge=0,
        description="MLA: width of the decoupled rotary part of each query head; the rotary key of that "
        "width is shared by all heads and cached beside the latent.",
    )
    # -- mixture-of-experts layout beyond routed experts ----------------------------------------
    num_shared_experts: Count = Field(
        default=0,
        ge=0,
        description="Experts of ffn_size every token passes through in each MoE layer, beside its routed "
        "experts_per_token (DeepSeek n_shared_experts).",
    )
    dense_layers: Count = Field(
        default=0,
        ge=0,
        description="Leading layers whose MLP is one dense MLP of dense_ffn_size instead of the experts "
        "(DeepSeek first_k_dense_replace); the other num_layers - dense_layers layers are MoE.",
    )
    dense_ffn_size: OptionalCount = Field(
        default=None,
        gt=0,
        description="Intermediate size of the dense_layers' MLP (DeepSeek intermediate_size); required "
        "when dense_layers > 0.",
    )
    # -- sliding-window attention (Mistral-7B-v0.1, gpt-oss) ----------------------------------------
    sliding_window: OptionalCount = Field(
        default=None,
        gt=0,
        description="Tokens a windowed layer attends to (and keeps KV for): the newest sliding_window tokens; "
        "None = full attention everywhere.",
    )
    sliding_window_layers: OptionalCount = Field(
        default=None,
        ge=0,
        description="How many layers use the window (gpt-oss alternates windowed and full layers: half); "
        "None = every layer, when sliding_window is set.",
    )
    # -- per-component weight formats (gpt-oss: MXFP4 experts, bf16 elsewhere) ------------------------
    expert_weight_dtype: str | None = Field(
        default=None,
        description="Weight format the MoE experts are released in when it differs from the rest (gpt-oss: "
        "mxfp4, with attention, router, embeddings and LM head in deployment.weight_dtype); None = the "
        "deployment's weight_dtype for every weight.",
    )
    published_params_b: float | None = Field(
        default=None,
        gt=0,
        description="Parameter count the model card (or HF Hub) states, in billions; "
        "used only to check total_params().",
    )

    # -- validation -------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _default_head_dim(cls, data: Any) -> Any:
        """Fill ``head_dim`` with ``hidden_size / num_heads`` when it is not given."""
        if not isinstance(data, dict) or data.get("head_dim") is not None:
            return data
        hidden, heads = data.get("hidden_size"), data.get("num_heads")
        if isinstance(hidden, int) and isinstance(heads, int) and hidden > 0 and heads > 0:
            if hidden % heads:
                raise ValueError(
                    f"hidden_size {hidden} is not divisible by num_heads {heads}; give head_dim explicitly"
                )
            data = {**data, "head_dim": hidden // heads}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        key = normalise_name(value)
        if not _NAME_PATTERN.match(key):
            raise ValueError(
                f"model name {value!r} must be letters, digits, '.', '-' or '_' "
                "(it is used as an id, e.g. 'my-llama-7b')"
            )
        return key

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads}): each KV head serves a whole group of query heads"
            )
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) cannot exceed num_experts ({self.num_experts})"
            )
        if self.kv_lora_rank == 0 and (self.q_lora_rank or self.qk_rope_head_dim):
            raise ValueError(
                "q_lora_rank and qk_rope_head_dim describe multi-head latent attention: give kv_lora_rank "
                "too (DeepSeek: 512), or leave all three out for ordinary attention"
            )
        if self.kv_lora_rank and not self.qk_rope_head_dim:
            raise ValueError(
                "multi-head latent attention (kv_lora_rank > 0) needs qk_rope_head_dim, the width of the "
                "decoupled rotary key cached beside the latent (DeepSeek: 64)"
            )
        if self.kv_lora_rank and self.num_kv_heads != self.num_heads:
            raise ValueError(
                f"with multi-head latent attention every query head has its own expanded key and value: "
                f"num_kv_heads ({self.num_kv_heads}) must equal num_heads ({self.num_heads})"
            )
        if (self.num_shared_experts or self.dense_layers) and not self.is_moe:
            raise ValueError("num_shared_experts and dense_layers describe a mixture-of-experts model: "
                             "set num_experts > 1, or leave them out")
        if self.dense_layers >= self.num_layers:
            raise ValueError(f"dense_layers ({self.dense_layers}) must be fewer than num_layers ({self.num_layers})")
        if self.dense_layers and self.dense_ffn_size is None:
            raise ValueError("dense_layers > 0 needs dense_ffn_size, the intermediate size of those layers' MLP")
        if self.sliding_window_layers is not None:
            if self.sliding_window is None:
                raise ValueError("sliding_window_layers needs sliding_window, the window in tokens")
            if self.sliding_window_layers > self.num_layers:
                raise ValueError(f"sliding_window_layers ({self.sliding_window_layers}) exceeds num_layers "
                                 f"({self.num_layers})")
        if self.sliding_window is not None and self.kv_lora_rank:
            raise ValueError("sliding windows with multi-head latent attention are not modelled")
        if self.expert_weight_dtype is not None:
            from simulator.costmodel.precision import BYTES_PER_ELEMENT

            if not self.is_moe:
                raise ValueError("expert_weight_dtype describes a mixture-of-experts model: set num_experts > 1, "
                                 "or leave it out")
            if self.expert_weight_dtype not in BYTES_PER_ELEMENT:
                raise ValueError(f"expert_weight_dtype {self.expert_weight_dtype!r} is not a known format (one of "
                                 f"{', '.join(BYTES_PER_ELEMENT)})")
        return self

    @property
    def windowed_layer_fraction(self) -> float:
        """Share of the layers that attend to a sliding window (0 without one)."""
        if self.sliding_window is None:
            return 0.0
        n = self.num_layers if self.sliding_window_layers is None else self.sliding_window_layers
        return n / self.num_layers

    # -- derived sizes ----------------------------------------------------------------

    @property
    def has_rope(self) -> bool:
        """True when every layer rotates q and k (RoPE), i.e. neither learned absolute positions nor ALiBi."""
        return self.rotary and self.learned_positions == 0

    @property
    def is_moe(self) -> bool:
        """True for mixture-of-experts models (more than one expert per layer)."""
        return self.num_experts > 1

    @property
    def is_mla(self) -> bool:
        """True for multi-head latent attention (DeepSeek-V2/V3): the cache holds a latent, not keys and values."""
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is the experts (all of them for a dense model's single "expert")."""
        return self.num_layers - self.dense_layers

    @property
    def kv_elements_per_token_layer(self) -> int:
        """KV-cache elements one token stores in one layer (whole model, before any tensor parallelism).

        ``2*h_kv*d_h`` (a key and a value per KV head) for ordinary attention; ``kv_lora_rank +
        qk_rope_head_dim`` for MLA, which caches the compressed latent and the shared rotary key
        (DeepSeek-V2, arXiv:2405.04434, section 2.1: 576 elements against 2*128*128 for MHA).
        """
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_dim

    @property
    def mla_replicated_params_per_layer(self) -> int:
        """MLA weights every tensor-parallel rank holds whole: the down-projections to the query latent and
        to the KV latent plus rotary key (q_a_proj, kv_a_proj_with_mqa) and their norms. vLLM keeps these
        replicated (their outputs are small and every head needs them); 0 without MLA."""
        if not self.is_mla:
            return 0
        d, rq, rkv, dr = self.hidden_size, self.q_lora_rank, self.kv_lora_rank, self.qk_rope_head_dim
        return d * (rq + rkv + dr) + rq + rkv

    @property
    def q_dim(self) -> int:
        """Width of all query heads together: h * d_h."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or all value) heads together: h_kv * d_h."""
        return self.num_kv_heads * self.head_dim

    @property
    def attn_params_per_layer(self) -> int:
        """QKV ``d*(h + 2*h_kv)*d_h`` plus output projection ``h*d_h*d`` (plus biases).

        MLA (``d_r`` = qk_rope_head_dim, ``r_q``/``r_kv`` the latent ranks): ``d*r_q + r_q*h*(d_h + d_r)``
        for the queries (``d*h*(d_h + d_r)`` without a query latent), ``d*(r_kv + d_r) + r_kv*h*2*d_h``
        for the KV latent, rotary key and their up-projection to keys and values, ``h*d_h*d`` out, and
        the two latent norms.
        """
        if self.is_mla:
            d, h, dh = self.hidden_size, self.num_heads, self.head_dim
            rq, rkv, dr = self.q_lora_rank, self.kv_lora_rank, self.qk_rope_head_dim
            q = (d * rq + rq * h * (dh + dr)) if rq else d * h * (dh + dr)
            return q + d * (rkv + dr) + rkv * h * 2 * dh + h * dh * d + rq + rkv
        d, qkv_out = self.hidden_size, self.q_dim + 2 * self.kv_dim
        params = d * qkv_out + self.q_dim * d
        if self.attn_bias:
            params += qkv_out
        if self.dense_bias:
            params += d
        return params

    @property
    def mlp_params_per_expert(self) -> int:
        """One MLP: ``3*d*f`` gated (up, gate, down) or ``2*d*f`` plain (up, down), plus biases."""
        return self._mlp_params(self.ffn_size)

    def _mlp_params(self, f: int) -> int:
        d = self.hidden_size
        n_up = 2 if self.mlp == "gated" else 1  # matrices d -> f
        params = (n_up + 1) * d * f
        if self.dense_bias:
            params += n_up * f + d
        return params

    @property
    def router_params_per_layer(self) -> int:
        """MoE gate ``d*E`` (its FLOPs are ``2*d*E`` per token); 0 for dense models."""
        return self.hidden_size * self.num_experts if self.is_moe else 0

    @property
    def mlp_params_per_layer(self) -> int:
        """All experts (routed and shared) plus the router of one MoE layer: ``(E + s) * expert + d*E``."""
        experts = self.num_experts + self.num_shared_experts
        return experts * self.mlp_params_per_expert + self.router_params_per_layer

    @property
    def active_mlp_params_per_layer(self) -> int:
        """What one token touches in an MoE layer: ``(k + s) * expert + d*E`` (the router sees every token)."""
        experts = self.experts_per_token + self.num_shared_experts
        return experts * self.mlp_params_per_expert + self.router_params_per_layer

    @property
    def dense_mlp_params(self) -> int:
        """The MLP of one of the leading dense layers (``dense_ffn_size`` wide); 0 when there are none."""
        return self._mlp_params(self.dense_ffn_size) if self.dense_layers and self.dense_ffn_size else 0

    @property
    def norm_params_per_layer(self) -> int:
        """Two norms per block: ``d`` each for RMSNorm, ``2*d`` (weight and bias) for LayerNorm.

        Falcon-7B shares one norm between its parallel branches; counting two
        overstates it by ``d`` per layer (0.002 %), which we accept for a simpler schema.
        """
        return 2 * self._norm_params

    @property
    def layer_params(self) -> int:
        """Parameters of one transformer block with the experts (all counted): the largest block."""
        return self.attn_params_per_layer + self.mlp_params_per_layer + self.norm_params_per_layer

    @property
    def body_params(self) -> int:
        """All L blocks: the ``dense_layers`` leading dense blocks and the MoE (or ordinary) rest."""
        dense = self.attn_params_per_layer + self.dense_mlp_params + self.norm_params_per_layer
        return self.dense_layers * dense + self.moe_layers * self.layer_params

    @property
    def lm_head_params(self) -> int:
        """The ``V*d`` LM-head matrix read for every sampled position, tied or not."""
        return self.vocab_size * self.hidden_size

    @property
    def embedding_params(self) -> int:
        """``V*d`` input embedding, ``x2`` when the LM head is untied, plus learned positions."""
        copies = 1 if self.tied_embeddings else 2
        return copies * self.vocab_size * self.hidden_size + self.learned_positions * self.hidden_size

    def total_params(self) -> int:
        """All parameters: embeddings + L blocks + the final norm."""
        return self.embedding_params + self.body_params + self._norm_params

    def active_params_per_token(self) -> int:
        """Parameters one token uses: the total minus the ``E - k`` experts it skips per layer.

        This is the figure MoE model cards quote (Mixtral-8x7B: 12.9B of 46.7B).
        """
        skipped = (self.num_experts - self.experts_per_token) * self.mlp_params_per_expert
        return self.total_params() - self.moe_layers * skipped

    def kv_bytes_per_token(self, bytes_per_elem: float = 2) -> float:
        """KV-cache bytes one token occupies across all layers: ``2*L*h_kv*d_h*b``.

        The 2 is one key plus one value vector per layer; MLA stores ``L*(kv_lora_rank +
        qk_rope_head_dim)*b`` instead (see :attr:`kv_elements_per_token_layer`).
        """
        return self.num_layers * self.kv_elements_per_token_layer * bytes_per_elem

    def weight_bytes(self, bytes_per_weight: float = 2) -> float:
        """Bytes of all weights at ``bytes_per_weight`` (2 for bf16, 0.5 for int4)."""
        return self.total_params() * bytes_per_weight

    @property
    def _norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)
