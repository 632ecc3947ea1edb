"""The post-hoc XQA coverage rule (decisions log, E3) marks the rows it should and leaves the fit alone."""

from __future__ import annotations

from dataclasses import replace

from hwmodels.calibration.engine_fit import load_rows, row_terms, xqa_covered


def _row(model: str, release: str):
    base = load_rows()[0]
    return replace(base, model=model, release=release)


def test_xqa_covers_eight_query_heads_per_kv_head_from_release_0_7_only():
    assert xqa_covered(_row("llama-2-70b", "0.9.0"))  # 64 query / 8 KV heads
    assert not xqa_covered(_row("llama-2-70b", "0.6.1"))  # before XQA
    assert not xqa_covered(_row("llama-2-70b", "0.5.0"))
    assert not xqa_covered(_row("mistral-7b", "0.9.0"))  # 32 / 8 = 4: no XQA kernel of that group size
    assert not xqa_covered(_row("falcon-180b", "0.9.0"))  # 232 / 8 = 29
    assert not xqa_covered(_row("llama-2-7b", "0.9.0"))  # multi-head: nothing to pack


def test_the_rule_touches_no_training_row_and_only_the_re_read_term():
    rows = load_rows()
    covered = [r for r in rows if xqa_covered(r)]
    assert covered and all(r.held_out for r in covered)  # the fit is unchanged by the rule
    terms = {"per_layer_s": 3.5e-5, "gqa_reread": 0.8}
    assert row_terms(covered[0], terms, xqa_rule=True) == {"per_layer_s": 3.5e-5, "gqa_reread": 0.0}
    assert row_terms(covered[0], terms, xqa_rule=False) == terms
    uncovered = next(r for r in rows if not xqa_covered(r))
    assert row_terms(uncovered, terms, xqa_rule=True) == terms
