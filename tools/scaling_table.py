"""docs/scaling.md's table from ``yolojax plan ... json=NAME.json`` files.

    python tools/scaling_table.py plans/*.json

One row per plan: model, target, dtype, rules, sync_bn, batch per chip, peak memory and
whether it fits, FLOPs, bytes accessed, collectives (count and MiB by op and dtype), the
roofline step time from XLA's bytes accessed and its lower bound from the kernels' laid-out
input/output, images/s per chip for both, the estimated MFU and the compile time. A plan
written before ``io_bytes_per_device`` existed gets it from ``NAME.hlo.txt`` beside its JSON
(``yolojax plan hlo=``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolojax.parallel.chips import CHIPS, roofline  # noqa: E402
from yolojax.parallel.compiled import Collective, memory_traffic  # noqa: E402


def collectives_text(collectives: list[dict]) -> str:
    return ", ".join(f"{c['count']} {c['op']} {c['dtype']} ({c['bytes'] / 2**20:.1f} MiB)" for c in collectives
                     if c["bytes"] >= 1024 or c["count"] > 1) or "none"


def with_lower_bound(path: Path, plan: dict) -> dict:
    """``plan`` with ``step_seconds_estimate_low`` (from its HLO file when the JSON lacks it)."""
    hlo = path.with_name(path.stem + ".hlo.txt")
    if plan.get("step_seconds_estimate_low") is None and hlo.is_file() and plan.get("chip"):
        io = sum(v[1] for v in memory_traffic(hlo.read_text()).values())
        collectives = [Collective(**c) for c in plan["collectives"]]
        low = roofline(plan["flops_per_device"], io, collectives, CHIPS[plan["chip"]],
                       float32=plan["dtype"] == "float32")
        plan = {**plan, "io_bytes_per_device": io, "step_seconds_estimate_low": low.step_seconds}
    return plan


def row(name: str, plan: dict) -> str:
    roof = plan.get("roofline") or {}
    step, low = plan["step_seconds_estimate"], plan.get("step_seconds_estimate_low")
    mfu = f"{roof['compute_seconds'] / step:.1%}" if step else "n/a"
    if low:
        mfu += f" - {roof['compute_seconds'] / low:.0%}"
    rate = f"{plan['per_device_batch'] / step:.0f}" + (f" - {plan['per_device_batch'] / low:.0f}" if low else "")
    bound = f"{step * 1e3:.0f} ms ({roof.get('bound', '?')})" + (f", lower bound {low * 1e3:.0f} ms" if low else "")
    fits = {True: "yes", False: "**no**", None: "n/a"}[plan["fits"]]
    return (f"| {name} | {plan['target']} ({plan['devices']}) | {plan['dtype']} | {plan['rules']}"
            f"{'' if plan['sync_bn'] else ', sync_bn=False'} | {plan['per_device_batch']} | "
            f"{plan['peak_bytes_per_device'] / 2**30:.2f} GiB, {fits} | {plan['flops_per_device']:.3g} | "
            f"{plan['bytes_accessed_per_device']:.3g} | {collectives_text(plan['collectives'])} | "
            f"{bound} | {rate} | {mfu} | "
            f"{plan['compile_seconds'] / 60:.1f} min |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", nargs="+", type=Path)
    args = parser.parse_args()
    print("| plan | target (chips) | dtype | rules | images/chip | peak memory, fits | FLOPs/chip | bytes accessed/chip "
          "| collectives per step | step estimate | images/s/chip | MFU est. | compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.plans:
        print(row(path.stem, with_lower_bound(path, json.loads(path.read_text()))))


if __name__ == "__main__":
    main()
