"""Byte-identical outputs: the request and iteration tables of fixed scenarios match stored fingerprints.

Why: refactors of the pricing path and features switched off (techniques, pools, tiers) must leave every
number the simulator produces unchanged. The stored digests were made by the code before those changes;
a change that is *meant* to alter results regenerates them (``python tests/fingerprint_cases.py >
tests/data/fingerprints.json``) and says why in its commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fingerprint_cases import CASES, fingerprints

STORED = json.loads((Path(__file__).parent / "data" / "fingerprints.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_tables_match_stored_fingerprints(name):
    assert fingerprints(CASES[name], name) == STORED[name]


def test_fingerprint_changes_with_the_output():
    """The digest is sensitive: one request more changes it (so a match above is not vacuous)."""
    case = {**CASES["vllm-a100-profile"], "simulation": {"num_requests": 301}}
    assert fingerprints(case)["requests"] != STORED["vllm-a100-profile"]["requests"]


def test_default_engine_case_differs_from_kernels_alone():
    """The default-engine case really runs with an engine profile: pinning ``engine: none`` changes its tables."""
    name = "vllm-h100-tp2-default-engine"
    kernels_only = {**CASES[name], "deployment": {**CASES[name]["deployment"], "engine": "none"}}
    assert fingerprints(kernels_only)["iterations"] != STORED[name]["iterations"]
