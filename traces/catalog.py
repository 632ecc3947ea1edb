"""Traces shipped with capsim, by id.

Why ship them: a fresh clone must replay real traffic with no download, and a
scenario should say ``trace: {name: azure-conv-2023}`` rather than a path into
someone's home directory. Origins, licences and citations are in
``traces/data/README.md`` next to the files and their licence texts.

>>> shipped_trace("azure-conv-2023").rows
19366
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capsim.registry import Registry

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class ShippedTrace:
    """One shipped trace file and what a user needs to know before using it."""

    id: str
    file: str
    format: str
    rows: int
    has_arrivals: bool
    description: str
    licence: str
    citation: str

    @property
    def path(self) -> Path:
        """Absolute path of the file inside the installed package."""
        return DATA_DIR / self.file


SHIPPED_TRACES: Registry[ShippedTrace] = Registry("trace")

_SPLITWISE = (
    "Patel et al., Splitwise: Efficient Generative LLM Inference Using Phase Splitting, ISCA 2024; "
    "https://github.com/Azure/AzurePublicDataset"
)

for _trace in (
    ShippedTrace(
        id="azure-conv-2023",
        file="azure_conv_2023.csv",
        format="azure",
        rows=19_366,
        has_arrivals=True,
        description="Azure conversational LLM service, 2023-11-16, 58.4 min, 5.5 req/s; "
        "prompt mean 1155, output mean 211 tokens",
        licence="CC-BY-4.0",
        citation=_SPLITWISE,
    ),
    ShippedTrace(
        id="azure-code-2023",
        file="azure_code_2023.csv",
        format="azure",
        rows=8_819,
        has_arrivals=True,
        description="Azure coding-assistant LLM service, 2023-11-16, 57.3 min, 2.6 req/s; "
        "prompt mean 2048, output mean 28 tokens",
        licence="CC-BY-4.0",
        citation=_SPLITWISE,
    ),
    ShippedTrace(
        id="mooncake-conversation",
        file="mooncake_conversation_trace.jsonl",
        format="mooncake",
        rows=12_031,
        has_arrivals=True,
        description="Kimi (Moonshot AI) chat service, 59 min, 3.4 req/s; long prompts (mean 12k tokens), "
        "output mean 343; 512-token prefix block hashes for cache-hit modelling",
        licence="Apache-2.0",
        citation="Qin et al., Mooncake: Trading More Storage for Less Computation, USENIX FAST 2025; "
        "https://github.com/kvcache-ai/Mooncake",
    ),
    ShippedTrace(
        id="sharegpt-lengths",
        file="sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        format="vidur",
        rows=30_731,
        has_arrivals=False,
        description="ShareGPT conversations (<= 8k tokens, Llama-2 tokenizer), lengths only; "
        "prompt mean 2340, output mean 439 tokens",
        licence="MIT",
        citation="Agrawal et al., Vidur: A Large-Scale Simulation Framework for LLM Inference, MLSys 2024; "
        "vidur 0.0.26 sdist",
    ),
):
    SHIPPED_TRACES.add(_trace.id, _trace)


def shipped_trace(name: str) -> ShippedTrace:
    """The shipped trace called ``name``; an unknown name raises UnknownNameError with the closest ids."""
    return SHIPPED_TRACES.get(name)


def list_traces() -> list[ShippedTrace]:
    """All shipped traces, sorted by id (what ``capsim list traces`` prints)."""
    return [SHIPPED_TRACES.get(name) for name in SHIPPED_TRACES.names()]
