"""The analytic pre-pass: prove, without simulating, that a configuration cannot meet the SLO at a rate.

The planner simulates only configurations this module cannot rule out. Every
rule below is a *proof* that the simulation would report ``slo_met = False``
for the exact request stream it would simulate (same seed, same rate, same
warm-up), so pruning never discards a configuration the simulation finds
feasible. Three rules, cheapest first:

1. **Memory** -- :func:`~simulator.system.build_system` raises
   :class:`~capsim.errors.DoesNotFitError`: the weights and reserves leave no
   room for the KV cache (status ``does-not-fit``).
2. **Latency floors** -- a request served alone on an idle replica is as fast
   as it can ever be. For each measured request ``j`` with prompt ``P`` and
   output ``O``: ``TTFT >= t_prefill(P)``, every decode step (hence TPOT and
   the largest TBT gap) ``>= t_decode(1 sequence, context P + 1)``, and
   ``E2E >= t_prefill(P) + (O - 1) t_decode``. If fewer requests than the
   attainment goal requires can meet the targets even at these floors, the
   SLO cannot be met at any rate (status ``latency-floor``).
3. **Work** -- the replicas cannot do more than ``R x T`` replica-seconds of
   work in ``T`` seconds. A request that meets the SLO has finished by its
   deadline: ``arrival + e2e_s``, or ``arrival + ttft_s + (O - 1) x tpot_s``
   (likewise with ``tbt_s``). So the requests that meet it -- at least ``k =
   ceil(attainment x n)`` of them -- need all their work done between the first
   arrival and the last deadline. If even the ``k`` cheapest requests need
   more replica-seconds than that window holds, attainment is below the goal
   (status ``too-slow``). With only a TTFT target the same argument is made
   for prefill work alone.

Why the work bound is a lower bound on time (so that rule 3 never prunes a
feasible configuration). The engine prices an iteration with feature vector
``x`` as ``sum_op max(c_op . x, m_op . x) + launches + comm . x`` (compute and
memory roofline per operator, :mod:`simulator.costmodel.iteration`), with
non-negative coefficients. Hence (a) time is monotone in ``x`` and dropping
the launch overheads only lowers it; (b) over any set of iterations,
``sum_i max(a_i, b_i) >= max(sum_i a_i, sum_i b_i)``, so the total time is at
least ``sum_op max(c_op . X, m_op . X) + comm . X`` where ``X`` lower-bounds the
summed features; (c) ``X`` is a sum over requests of per-request minima:
``P`` prefill tokens (chunking, padding and recompute only add), ``P^2 / 2``
causal attention pairs (exact for any chunking), ``O`` sequences producing
logits, ``O - 1`` decode tokens with contexts ``P + 1 ... P + O - 1``, and an
iteration count no smaller than ``O / S`` (a batch holds at most ``S`` =
min(scheduler ``max_batch_seqs``, KV blocks) sequences) or than the summed
decode context over ``C + S`` (a batch's contexts fit the ``C``-token KV
cache); distinct MoE experts per iteration ``>= k`` (one token hits ``k``).
(d) For the *cheapest* ``k`` requests, ``sum_op max(.)`` is bounded below by
any fixed convex mix ``theta_op c_op + (1 - theta_op) m_op``, which is additive
over requests, so the ``k`` smallest per-request values give a valid bound;
we take the best of a few mixes. Floors use the cost model's own price of a
one-request batch, and every batch containing the request has features at
least as large (a chunked prefill costs at least the whole one: per operator
``max`` is subadditive and the expert count is concave).

Engine profiles. The serving-engine profile's terms (``deployment.engine``; ``vllm`` by default) are left out of
every bound. That is valid because their sum is never negative for an iteration: the graph-captured profiles carry
a negative per-collective term (their all-reduce beats the NCCL floor the kernels are priced with), but their
per-layer term outweighs it at every TP degree (checked for every profile by ``tests/test_planner_bounds.py``).

Calibration. With a calibrated device profile the engine may price an operator by a fitted curve instead
of the constant-efficiency roofline; the bound then uses the hardware peaks (efficiency 1), drops
communication, and computes floors from the same roofline bound, which stays valid as long as no fitted
curve is faster than the hardware's peak FLOP/s and bandwidth.

Assumptions, each true of today's engine and checked by
``tests/test_planner_bounds.py``: one iteration in flight per replica (no
micro-batch pipelining across PP stages); every prompt token is prefilled at
least once (no prefix cache); schedulers keep at most ``max_batch_seqs()``
sequences in a batch; techniques change costs only through the operator table
the engine prices. A technique that breaks one of these (speculative decoding
emits several tokens per step, a prefix cache skips prefill) must extend
:class:`CostBounds` accordingly.

The long-run *throughput bound* ``R n / LB(all requests)`` is reported too (it
bounds the measured ``throughput_rps`` of any run of the stream), but pruning
uses the deadline form above, which is what a finite simulation can be held to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from simulator.admission import enforce, unservable_mask
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.metrics.slo import SLOConfig
from simulator.system import System
from traces.build import build_requests
from traces.stream import RequestStream

#: Relative slack in every comparison, so float rounding can only make a rule *less* eager to prune.
SLACK = 1e-9

FEASIBLE = "possible"
LATENCY_FLOOR = "latency-floor"
TOO_SLOW = "too-slow"
NOTHING_MEASURED = "nothing-measured"
TECHNIQUE = "technique"  # not checked: a technique voids the bounds' assumptions
POOLS = "pools"  # not checked: the bounds are for one pool of identical replicas


@dataclass(frozen=True)
class Verdict:
    """What the analytic rules say about one configuration at one rate.

    ``possible`` is False only when a rule *proves* the SLO is missed; then
    ``reason`` names the rule and ``detail`` gives the numbers.
    """

    possible: bool
    reason: str
    detail: str
    measured: int  # requests the statistics would count
    needed: int  # requests that must meet the SLO for the goal
    attainment_bound: float  # fraction of measured requests whose latency floors meet every target
    throughput_bound_rps: float  # long-run: no run of this stream finishes requests faster than this
    work_needed_s: float  # replica-seconds the cheapest `needed` requests require (lower bound)
    work_available_s: float  # replica-seconds between the first arrival and the last deadline

    def as_dict(self) -> dict:
        return asdict(self)


def needed_count(attainment: float, n: int) -> int:
    """Smallest ``m`` with ``m / n >= attainment`` in the float arithmetic the summary uses."""
    if n <= 0:
        return 1
    m = max(math.ceil(attainment * n) - 1, 0)
    while m / n < attainment:
        m += 1
    return m


class CostBounds:
    """Lower bounds on the time of work, from one system's operator table and device.

    Rows are the table's operators (layer operators scaled by the number of
    layers); ``compute``/``memory`` hold each row's seconds per unit of each
    batch feature, ``comm`` the communication seconds per feature.
    """

    def __init__(self, system: System):
        table, dev = system.table, system.roofline
        # With a calibration profile the engine prices fitted operators by their own curves, which need not
        # follow the constant-efficiency roofline; the bound then falls back to the hardware peaks (no curve
        # can beat them) and leaves out communication, which keeps it a lower bound.
        self.calibrated = getattr(dev, "profile", None) is not None
        flops_rate = dev.peak_flops if self.calibrated else dev.effective_flops
        byte_rate = dev.memory_bandwidth if self.calibrated else dev.effective_bandwidth
        L = float(table.num_layers)
        layer_c = [L * op.flops / flops_rate for op in table.layer_ops]
        layer_m = [L * op.bytes / byte_rate for op in table.layer_ops]
        iter_c = [op.flops / flops_rate for op in table.iteration_ops]
        iter_m = [op.bytes / byte_rate for op in table.iteration_ops]
        self.compute = np.array(layer_c + iter_c).reshape(-1, F.NUM_FEATURES)
        self.memory = np.array(layer_m + iter_m).reshape(-1, F.NUM_FEATURES)
        comm = np.zeros(F.NUM_FEATURES)
        if not self.calibrated:
            for c in table.layer_comms:
                comm += L * c.time
            for c in table.iteration_comms:
                comm += c.time
        self.comm = comm
        self.cost = None if self.calibrated else system.cost_model()
        self.replicas = system.deployment.num_replicas
        mem = system.memory
        self.max_seqs = max(1, min(system.scheduler_params.max_batch_seqs(), mem.kv_blocks))
        self.kv_tokens = mem.kv_capacity_tokens
        self.experts_per_iteration = float(F.expected_experts_hit(1, table.num_experts, table.experts_per_token))

    # ------------------------------------------------------------ per-request work
    def work_features(self, prompt: np.ndarray, output: np.ndarray, *, prefill_only: bool = False) -> list[np.ndarray]:
        """Per-request minimal summed features (n x NUM_FEATURES), one matrix per iteration-count argument."""
        P = prompt.astype(np.float64)
        Q = output.astype(np.float64)  # output tokens
        X = np.zeros((len(P), F.NUM_FEATURES))
        X[:, F.PREFILL_TOKENS] = P
        X[:, F.PREFILL_ATTN_WORK] = P * P / 2.0
        X[:, F.PREFILL_KV_READ] = P
        if prefill_only:
            X[:, F.LOGIT_SEQS] = 1.0
            shares = [np.full(len(P), 1.0 / self.max_seqs)]
        else:
            context = (Q - 1.0) * P + (Q - 1.0) * Q / 2.0  # contexts P+1 ... P+O-1
            X[:, F.DECODE_SEQS] = Q - 1.0
            X[:, F.LOGIT_SEQS] = Q
            X[:, F.DECODE_CONTEXT] = context
            shares = [Q / self.max_seqs, context / (self.kv_tokens + self.max_seqs)]
        out = []
        for share in shares:
            Y = X.copy()
            Y[:, F.ONE] = share
            Y[:, F.EXPERTS_HIT] = share * self.experts_per_iteration
            out.append(Y)
        return out

    def total_time(self, X: np.ndarray) -> float:
        """Lower bound on the replica-seconds to process summed features ``X`` (rule (b))."""
        return float(np.maximum(self.compute @ X, self.memory @ X).sum() + self.comm @ X)

    def cheapest_k_time(self, Xs: list[np.ndarray], k: int) -> float:
        """Lower bound on the replica-seconds of *any* ``k`` of the requests (rule (d))."""
        if k <= 0:
            return 0.0
        best = 0.0
        for X in Xs:
            C = X @ self.compute.T  # requests x rows: compute seconds
            M = X @ self.memory.T
            comm = X @ self.comm
            mixes = (np.ones(C.shape[1]), np.zeros(C.shape[1]), (C.sum(0) >= M.sum(0)).astype(float))
            for theta in mixes:
                per = C @ theta + M @ (1.0 - theta) + comm
                smallest = np.partition(per, k - 1)[:k] if k < len(per) else per
                best = max(best, float(smallest.sum()))
        return best

    def all_time(self, Xs: list[np.ndarray]) -> float:
        return max(self.total_time(X.sum(axis=0)) for X in Xs)

    # -------------------------------------------------------------------- floors
    def floors(self, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prefill time, decode-step time) of each request served alone: its latency floors.

        The engine's own price of a one-request batch; with a calibration profile (whose curves need not be
        monotone in the batch), the roofline bound of that batch at the hardware peaks instead.
        """
        uniq, inverse = np.unique(prompt, return_inverse=True)
        pre = np.empty(len(uniq))
        dec = np.empty(len(uniq))
        for i, p in enumerate(uniq.tolist()):
            prefill = BatchShape(prefill_chunks=((p, 0, True),))
            step = BatchShape(decode_seqs=1, decode_context=p + 1)
            if self.calibrated:
                pre[i] = self.total_time(self._lone(prefill))
                dec[i] = self.total_time(self._lone(step))
            else:
                pre[i] = self.cost.iteration(prefill).time_s
                dec[i] = self.cost.iteration(step).time_s
        return pre[inverse], dec[inverse]

    def _lone(self, shape: BatchShape) -> np.ndarray:
        x = shape.features()
        x[F.EXPERTS_HIT] = self.experts_per_iteration  # at least the experts of one token
        return x


def servable_stream(scenario: Scenario, system: System) -> RequestStream:
    """The requests the engine would simulate: the same stream and the same admission check."""
    sim = scenario.simulation
    stream = build_requests(scenario.workload, seed=scenario.seed, num_requests=sim.num_requests,
                            duration_s=sim.duration_s)
    mask, reasons = unservable_mask(
        stream.prompt_tokens, stream.output_tokens,
        max_context=system.model.max_context,
        kv_capacity_tokens=system.memory.kv_capacity_tokens,
        max_prefill_tokens=system.scheduler_cls(system.scheduler_params, None).max_prefill_tokens(),
    )
    enforce(mask, reasons, stream.prompt_tokens, stream.output_tokens, sim.oversized)
    if not mask.any():
        return stream
    keep = ~mask
    return RequestStream(stream.arrival_s[keep], stream.prompt_tokens[keep], stream.output_tokens[keep],
                         stream.source, stream.closed_loop)


def _deadlines(slo: SLOConfig, output: np.ndarray) -> np.ndarray | None:
    """Latest completion, relative to arrival, of a request that meets the SLO (None: unbounded)."""
    options = []
    if slo.e2e_s is not None:
        options.append(np.full(len(output), slo.e2e_s))
    if slo.ttft_s is not None:
        for pace in (slo.tpot_s, slo.tbt_s):
            if pace is not None:
                options.append(slo.ttft_s + (output - 1.0) * pace)
    return np.minimum.reduce(options) if options else None


def _floor_ok(slo: SLOConfig, pre: np.ndarray, dec: np.ndarray, output: np.ndarray) -> np.ndarray:
    ok = np.ones(len(pre), dtype=bool)
    loose = 1.0 + SLACK
    multi = output > 1  # one-token requests have no decode phase: TPOT and TBT cannot be missed
    if slo.ttft_s is not None:
        ok &= pre <= slo.ttft_s * loose
    if slo.tpot_s is not None:
        ok &= ~multi | (dec <= slo.tpot_s * loose)
    if slo.tbt_s is not None:
        ok &= ~multi | (dec <= slo.tbt_s * loose)
    if slo.e2e_s is not None:
        ok &= pre + (output - 1.0) * dec <= slo.e2e_s * loose
    return ok


def unbounded_pools() -> Verdict:
    """The verdict for a multi-pool candidate: the rules assume one pool where every replica runs both phases,
    so nothing is pruned and the candidate is simulated."""
    return Verdict(True, POOLS, "not bounded analytically: several pools (the bounds assume one)",
                   0, 0, math.nan, math.nan, math.nan, math.nan)


def check(scenario: Scenario, system: System, bounds: CostBounds | None = None) -> Verdict:
    """Apply rules 2 and 3 to ``scenario`` (rule 1 is building ``system``)."""
    if not system.techniques.keeps_planner_bounds():
        # The bounds assume one token per decode step at the plain operator table's cost; a technique
        # that yields more tokens per step (speculation) or cheapens a step could make them exceed the
        # truth, so nothing is pruned: the configuration is simulated.
        names = ", ".join(t.name for t in system.techniques.techniques if not t.keeps_planner_bounds())
        return Verdict(True, TECHNIQUE, f"not bounded analytically: {names} changes the cost of a decode step",
                       0, 0, math.nan, math.nan, math.nan, math.nan)
    if system.kv_policy is not None:
        # A sliding-window model keeps and reads less KV than the bounds' full-context decode step assumes.
        return Verdict(True, TECHNIQUE, "not bounded analytically: the model's KV is capped (sliding window)",
                       0, 0, math.nan, math.nan, math.nan, math.nan)
    bounds = bounds or CostBounds(system)
    slo = scenario.slo
    stream = servable_stream(scenario, system)
    measured = stream.arrival_s >= scenario.simulation.warmup_s
    if scenario.simulation.max_time_s is not None:  # arrivals after the stop are not measured (engine.simulate)
        measured &= stream.arrival_s < scenario.simulation.max_time_s
    arrival = stream.arrival_s[measured]
    prompt = stream.prompt_tokens[measured]
    output = stream.output_tokens[measured].astype(np.float64)
    n = len(arrival)
    k = needed_count(slo.attainment, n)
    if n == 0:
        return Verdict(False, NOTHING_MEASURED, "every request arrives during simulation.warmup_s", 0, k, 0.0,
                       math.nan, math.nan, math.nan)
    R = bounds.replicas
    full = bounds.work_features(prompt, output)
    throughput = R * n / max(bounds.all_time(full), 1e-300)
    pre, dec = bounds.floors(prompt)
    ok = _floor_ok(slo, pre, dec, output)
    attainable = int(ok.sum())
    common = dict(measured=n, needed=k, attainment_bound=attainable / n, throughput_bound_rps=throughput)
    if attainable < k:
        return Verdict(
            False, LATENCY_FLOOR,
            f"{attainable} of {n} requests can meet the targets even alone on an idle replica "
            f"(TTFT >= {float(np.median(pre)):.3g} s, decode step >= {float(np.median(dec)):.3g} s at the median "
            f"prompt); the goal needs {k}", work_needed_s=math.nan, work_available_s=math.nan, **common)
    t0 = float(arrival[ok].min())
    horizon = scenario.simulation.max_time_s
    worst_needed, worst_available, why = 0.0, math.inf, ""
    checks = []
    deadlines = _deadlines(slo, output)
    if deadlines is not None:
        checks.append(("all their work", bounds.work_features(prompt[ok], output[ok]), arrival[ok] + deadlines[ok]))
    if slo.ttft_s is not None:
        checks.append(("their prefills", bounds.work_features(prompt[ok], output[ok], prefill_only=True),
                       arrival[ok] + slo.ttft_s))
    for what, Xs, due in checks:
        end = float(due.max())
        if horizon is not None:
            end = min(end, horizon)
        available = R * max(end - t0, 0.0)
        needed = bounds.cheapest_k_time(Xs, k)
        if needed > available * (1.0 + SLACK):
            return Verdict(
                False, TOO_SLOW,
                f"the {k} requests that must meet the SLO need >= {needed:.3g} replica-s for {what}; "
                f"{R} replica(s) x {end - t0:.3g} s until their deadlines give {available:.3g}", work_needed_s=needed, work_available_s=available, **common)
        if worst_available == math.inf or needed / max(available, 1e-300) > worst_needed / max(worst_available, 1e-300):
            worst_needed, worst_available, why = needed, available, what
    detail = f"not ruled out ({why} need {worst_needed:.3g} of {worst_available:.3g} replica-seconds)" if why else (
        "not ruled out (the SLO sets no deadline, so the work rule does not apply)")
    return Verdict(True, FEASIBLE, detail, work_needed_s=worst_needed,
                   work_available_s=worst_available if why else math.nan, **common)
