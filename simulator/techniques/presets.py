"""Named speculative-decoding methods with the settings and acceptance their papers report.

Why presets: users ask "what would EAGLE or Medusa give on my hardware?", and the answer needs the
method's structure (who drafts, how many tokens, chain or tree) and its measured acceptance. The
acceptance is an *input* taken from the paper; the speed-up is what capsim derives from it and prints
beside the paper's (``python -m simulator.techniques.presets`` or ``docs/techniques/speculative-decoding.md``).

Where a paper reports per-position acceptance, the preset uses it as given. Where it reports only the
mean tokens per target pass (tau), the per-token rate is *solved* so the preset's chain or tree yields that
tau under i.i.d. acceptance -- said in ``derivation``; nothing is fitted to a speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    params: dict[str, Any]
    source: str
    reported: str  # what the paper reports under which conditions (acceptance and speed-up)
    derivation: str = "acceptance as reported"
    conditions: dict[str, Any] = field(default_factory=dict)  # target model, device, batch of the report
    tau: float | None = None  # the reported mean tokens per round the acceptance was solved from, if it was


def _tau(widths: tuple[int, ...], a: float) -> float:
    total, reach = 1.0, 1.0
    for w in widths:
        reach *= 1.0 - (1.0 - a) ** w
        total += reach
    return total


def solve_acceptance(widths: tuple[int, ...], tau: float) -> float:
    """The i.i.d. per-token acceptance at which a round of ``widths`` yields ``tau`` tokens on average."""
    if not 1.0 < tau <= 1.0 + len(widths):
        raise ValueError(f"tau={tau} is outside what a depth-{len(widths)} round can yield (1, {1 + len(widths)}]")
    if tau == 1.0 + len(widths):
        return 1.0
    from scipy.optimize import brentq  # only when solving (the shipped presets store their solved rates)

    return round(float(brentq(lambda a: _tau(widths, a) - tau, 1e-9, 1.0)), 4)


_MEDUSA_TREE = (4, 2, 2, 2)  # 60 nodes, depth 4: a uniform stand-in for Medusa's 64-node sparse tree of depth 4

PRESETS: dict[str, Preset] = {
    "eagle-vicuna-7b": Preset(
        {"drafter": "eagle", "head_layers": 1, "k": 5, "acceptance_by_position": [0.79, 0.74, 0.72, 0.73, 0.67]},
        "Li et al., EAGLE (arXiv 2401.15077), Table 2: n-alpha for Vicuna 7B, MT-bench, T=0, chain drafts",
        "chain tau 3.20 (Table 5); with its tree tau 3.94 and 2.90x at batch 1 (Table 7)",
        "0-alpha..4-alpha used as the acceptance of drafted positions 1..5",
        {"model": "llama-2-7b", "batch": 1},
    ),
    "eagle-llama2-chat-70b": Preset(
        {"drafter": "eagle", "head_layers": 1, "k": 5, "acceptance_by_position": [0.75, 0.69, 0.65, 0.64, 0.64]},
        "Li et al., EAGLE (arXiv 2401.15077), Table 2: n-alpha for LLaMA2-Chat 70B, MT-bench, T=0, chain drafts",
        "chain tau 3.12 (Table 5); with its tree tau 3.81 and 3.01x at batch 1 (Table 7), on 4 A100-40G",
        "0-alpha..4-alpha used as the acceptance of drafted positions 1..5",
        {"model": "llama-2-70b", "batch": 1},
    ),
    "specinfer-llama-68m": Preset(
        {"drafter": "model", "draft_model": "llama-68m", "k": 8, "acceptance": 0.6703},
        "Miao et al., SpecInfer (arXiv 2305.09781), Table 2: LLaMA-7B with LLaMA-68M, speculation length 8, "
        "tree width 1 (sequence), greedy, Alpaca",
        "2.95 tokens verified per step",
        "acceptance solved from tau = 2.95 for a chain of 8",
        {"model": "llama-2-7b", "batch": 1}, tau=2.95,
    ),
    "medusa-1-vicuna-7b": Preset(
        {"drafter": "medusa", "k": 4, "tree": list(_MEDUSA_TREE), "acceptance": 0.3132},
        "Li et al., EAGLE-2 (arXiv 2406.16858), Table 1: Medusa-1 official weights, Vicuna 7B, MT-bench, T=0; "
        "tree of depth 4 from Cai et al., Medusa (arXiv 2401.10774), section 8",
        "tau 2.52 and 1.91x (EAGLE-2 Table 1, same devices for all methods); Medusa's own paper: 2.18x",
        "acceptance solved from tau = 2.52 for a uniform tree [4, 2, 2, 2] (60 nodes)",
        {"model": "llama-2-7b", "batch": 1}, tau=2.52,
    ),
    "prompt-lookup": Preset(
        {"drafter": "ngram", "k": 10, "acceptance": 0.4048},
        "Li et al., EAGLE-2 (arXiv 2406.16858), Table 1: prompt lookup decoding (PLD), Vicuna 7B, MT-bench, T=0",
        "tau 1.68 and 1.61x",
        "acceptance solved from tau = 1.68 for a chain of 10 (PLD's default of 10 lookup tokens)",
        {"model": "llama-2-7b", "batch": 1}, tau=1.68,
    ),
}


if __name__ == "__main__":  # print the presets with their derived acceptance
    for name, preset in PRESETS.items():
        print(f"{name}: {preset.params}\n  source: {preset.source}\n  reported: {preset.reported}\n"
              f"  derivation: {preset.derivation}")
