"""Composition of Experts on the SN40L RDU and on H100 GPUs: model-switch times and fused decode steps.

Prints, from the cost model (nothing is fitted or simulated against the paper's figures):

1. the time to switch one expert into device memory, per configuration: the SN40L copying from its DDR over its
   DDR->HBM path, an H100 reloading from host DRAM over PCIe Gen5 x16 -- for one device and for the 8-device
   node (each device copies its own shard in parallel), with the ratio;
2. how many experts each node's capacity tier holds (the catalog's DDR per socket; the GPU's host DRAM is not
   bounded by capsim);
3. a decode step of the 8-socket node with and without dataflow fusion, beside one H100 node.

    PYTHONPATH=. python benchmarks/coe_switching.py
"""

from __future__ import annotations

from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.memory_plan import GIB
from simulator.system import build_system

MODELS = ("llama-2-7b", "llama-3.1-8b")
CONFIGS = (("sn40l", "ddr"), ("h100-sxm", "host"))


def system(model: str, device: str, tier: str, tp: int, fusion: bool = False):
    techniques = [{"name": "composition-of-experts", "experts": ["a", "b"], "tier": tier}]
    if fusion:
        techniques.insert(0, {"name": "dataflow-fusion"})
    return build_system(
        Scenario.model_validate(
            {
                "model": model,
                "deployment": {"engine": "none", "device": device, "tp": tp},
                "workload": {
                    "arrival": "poisson",
                    "qps": 1,
                    "prompt": {"dist": "fixed", "value": 512},
                    "output": {"dist": "fixed", "value": 64},
                },
                "techniques": techniques,
            }
        )
    )


def decode_ms(sys_, batch: int, context: int) -> float:
    cost = IterationCostModel(sys_.table, sys_.roofline, sys_.overheads)
    return cost.iteration(BatchShape(decode_seqs=batch, decode_context=batch * context)).time_s * 1e3


def main() -> None:
    print("1. Switch time of one expert (bf16 weights; each device copies its shard over its own link)\n")
    print(f"{'model':<14}{'devices':>8}{'GB/device':>11}{'sn40l DDR->HBM':>16}{'h100 host->HBM':>16}{'ratio':>8}")
    for model in MODELS:
        for tp in (1, 8):
            times = [system(model, dev, tier, tp).gate for dev, tier in CONFIGS]
            rdu, gpu = times
            print(
                f"{model:<14}{tp:>8}{rdu.bytes_per_device / 1e9:>11.3f}{rdu.switch_s * 1e3:>13.2f} ms"
                f"{gpu.switch_s * 1e3:>13.2f} ms{gpu.switch_s / rdu.switch_s:>8.2f}"
            )
    print("\n2. Experts one 8-device node's capacity tier holds (weights per device at tp=8)\n")
    for model in MODELS:
        pool = system(model, "sn40l", "ddr", 8).gate
        ddr_gib = next(t.capacity_gib for t in system(model, "sn40l", "ddr", 8).device.tiers if t.name == "ddr")
        print(
            f"{model:<14} sn40l node: {int(ddr_gib * GIB // pool.bytes_per_device):,} experts in 8 x {ddr_gib:g} GiB "
            "of DDR; h100 node: host DRAM not bounded by capsim"
        )
    print("\n3. Decode step of the 8-device node (tp=8), llama-2-7b, 1,000-token contexts\n")
    print(f"{'batch':>6}{'sn40l unfused':>15}{'sn40l fused':>13}{'fusion gain':>13}{'h100':>10}")
    unfused, fused = system("llama-2-7b", "sn40l", "ddr", 8), system("llama-2-7b", "sn40l", "ddr", 8, fusion=True)
    gpu = system("llama-2-7b", "h100-sxm", "host", 8)
    for batch in (1, 8, 32, 64):
        a, b, g = decode_ms(unfused, batch, 1000), decode_ms(fused, batch, 1000), decode_ms(gpu, batch, 1000)
        print(f"{batch:>6}{a:>12.2f} ms{b:>10.2f} ms{a / b:>12.2f}x{g:>7.2f} ms")
    print("\n   and on one device (tp=1), where no inter-socket link enters:\n")
    unfused, fused = system("llama-2-7b", "sn40l", "ddr", 1), system("llama-2-7b", "sn40l", "ddr", 1, fusion=True)
    gpu = system("llama-2-7b", "h100-sxm", "host", 1)
    for batch in (1, 8, 32, 64):
        a, b, g = decode_ms(unfused, batch, 1000), decode_ms(fused, batch, 1000), decode_ms(gpu, batch, 1000)
        print(f"{batch:>6}{a:>12.2f} ms{b:>10.2f} ms{a / b:>12.2f}x{g:>7.2f} ms")


if __name__ == "__main__":
    main()
