"""Links between devices and the collectives that run over them.

A link is priced with the alpha-beta model: ``time = alpha + bytes / beta``
(latency plus bytes over bandwidth). Collectives are built from link transfers
with the textbook ring algorithm (docs/cost-model.md, "Operators": the TP all-reduce row):

* ring all-reduce over ``t`` ranks moves ``2 (t-1)/t * bytes`` per rank in
  ``2 (t-1)`` latency-bound steps;
* a pipeline send moves ``bytes`` once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """A point-to-point link: per-direction bandwidth (B/s) and per-message latency (s).

    ``kind`` (``hwmodels.device.LINK_KINDS``: "pcie", "c2c", ...) picks the pricer of transfer rows placed on
    the link when no pricer is registered for its name; empty for links priced by name alone.
    """

    name: str
    bandwidth: float
    latency_s: float
    kind: str = ""


def ring_allreduce_coefficients(link: Link, ranks: int) -> tuple[float, float]:
    """(fixed seconds, seconds per byte) of a ring all-reduce over ``ranks``.

    Returned as coefficients so a caller can price any message size with one
    multiply-add; zero for a single rank.
    """
    if ranks <= 1:
        return 0.0, 0.0
    steps = 2 * (ranks - 1)
    return steps * link.latency_s, (2.0 * (ranks - 1) / ranks) / link.bandwidth
