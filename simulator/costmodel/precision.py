"""Numeric formats: bytes per element and which tensor-core peak a format runs at.

Why a table: weight, KV-cache and activation formats are chosen independently
(W4A16 keeps bf16 arithmetic; FP8 W8A8 doubles the tensor-core peak on Hopper),
and the cost model needs both the bytes moved and the peak that applies.
"""

from __future__ import annotations

from capsim.errors import CapsimError

BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    # OCP Microscaling MXFP4 (OCP MX Formats Specification v1.0, 2023): 4-bit E2M1 elements in blocks of 32
    # sharing one 8-bit E8M0 scale, 4.25 bits per element.
    "mxfp4": 4.25 / 8,
}

# Arithmetic format used by the GEMMs when weights are stored in a format.
# Weight-only int4 (AWQ/GPTQ style) dequantises to 16-bit before the MMA.
COMPUTE_FORMAT_FOR_WEIGHTS: dict[str, str] = {
    "fp32": "fp32",
    "tf32": "tf32",
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8": "fp8",
    "int8": "int8",
    "int4": "bf16",
    "mxfp4": "bf16",  # Hopper has no FP4 tensor cores: the weights are dequantised to bf16 (Blackwell runs FP4)
}


def bytes_per_element(fmt: str, *, field: str) -> float:
    """Bytes of one element in ``fmt``; a clear error names the scenario field otherwise."""
    try:
        return BYTES_PER_ELEMENT[fmt]
    except KeyError:
        raise CapsimError(
            f"unknown numeric format {fmt!r}",
            where=field,
            fix=f"use one of {', '.join(BYTES_PER_ELEMENT)}",
        ) from None
