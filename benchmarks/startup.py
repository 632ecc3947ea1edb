"""Start-up benchmark of one-shot commands (not a timed test).

Runs each command in a fresh interpreter several times and prints the least wall time and the least CPU time
(user + system) of each; with several checkouts it alternates between them, so a busy machine slows all of them
alike. CPU time moves less than wall time on a shared machine, but neither is a quiet machine's figure.

    PYTHONPATH=. python benchmarks/startup.py                      # this checkout, 7 runs of each command
    PYTHONPATH=. python benchmarks/startup.py ../before . --runs 9  # two checkouts side by side
    PYTHONPATH=. python benchmarks/startup.py --no-bytecode-cache   # compile every module at every start

By default the bytecode cache is written (to a temporary folder, not into the checkouts) on a first run and read
afterwards, as after an ordinary install; ``--no-bytecode-cache`` sets ``PYTHONDONTWRITEBYTECODE=1`` instead, as
some CI images and containers do, so every project module is compiled at every start. The commands run as
``python -m simulator.cli`` (a console-script wrapper such as a pyenv shim adds its own start-up on top).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYNTHETIC = (
    "name: synthetic\nmodel: llama-3.1-8b\ndeployment: {device: h100-sxm}\n"
    "workload: {arrival: poisson, qps: 4, prompt: {dist: fixed, value: 512}, output: {dist: fixed, value: 64}}\n"
    "simulation: {num_requests: 50}\n"
)


def commands(synthetic: Path) -> dict[str, list[str]]:
    """The measured commands by label (``capsim`` arguments)."""
    return {
        "estimate": ["estimate", "--model", "llama-3.1-8b", "--device", "h100-sxm"],
        "validate quickstart": ["validate", "scenarios/quickstart.yaml"],
        "validate azure replay": ["validate", "scenarios/azure_conv_replay.yaml"],
        "validate synthetic": ["validate", str(synthetic)],
        "--help": ["--help"],
    }


def environment(cache: Path | None) -> dict[str, str]:
    """The child environment: bytecode cached under ``cache``, or never written when ``cache`` is None."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # each checkout runs its own code (the child's working folder comes first)
    if cache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def run_once(checkout: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``python -m simulator.cli ARGS`` in ``checkout``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "simulator.cli", *args], cwd=checkout, env=env, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: capsim {' '.join(args)} failed:\n{done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[Path(".")], help="capsim checkouts to compare")
    parser.add_argument("--runs", type=int, default=7, help="runs of each command per checkout (least is kept)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile every module at every start")
    opts = parser.parse_args()
    checkouts = [c.resolve() for c in opts.checkouts]
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "synthetic.yaml"
        synthetic.write_text(SYNTHETIC)
        cmds = commands(synthetic)
        envs = [environment(None if opts.no_bytecode_cache else Path(tmp) / f"pycache-{i}") for i in range(len(checkouts))]
        for checkout, env in zip(checkouts, envs, strict=True):
            for args in cmds.values():  # warm the file cache (and write the bytecode cache)
                run_once(checkout, args, env)
        best: dict[tuple[int, str], tuple[float, float]] = {}
        for _ in range(opts.runs):
            for label, args in cmds.items():
                for i, (checkout, env) in enumerate(zip(checkouts, envs, strict=True)):
                    wall, cpu = run_once(checkout, args, env)
                    old = best.get((i, label), (float("inf"), float("inf")))
                    best[(i, label)] = (min(old[0], wall), min(old[1], cpu))
    mode = "no bytecode cache" if opts.no_bytecode_cache else "bytecode cached"
    print(f"least of {opts.runs} runs, {mode}, load average {os.getloadavg()[0]:.1f} at the end; wall s / CPU s")
    print(f"{'command':22s}" + "".join(f"  {c.name or str(c):>20s}" for c in checkouts))
    for label in cmds:
        print(f"{label:22s}" + "".join(f"  {best[(i, label)][0]:9.3f} / {best[(i, label)][1]:6.3f}"
                                       for i in range(len(checkouts))))


if __name__ == "__main__":
    main()
