"""docs/scaling.md's table from ``yolojax plan ... json=NAME.json`` files.

    python tools/scaling_table.py plans/*.json

One row per plan: model, target, dtype, rules, sync_bn, batch per chip, peak memory and
whether it fits, FLOPs, bytes accessed, collectives (count and MiB by op and dtype), the
roofline step time, images/s per chip, the estimated MFU and the compile time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def collectives_text(collectives: list[dict]) -> str:
    return ", ".join(f"{c['count']} {c['op']} {c['dtype']} ({c['bytes'] / 2**20:.1f} MiB)" for c in collectives
                     if c["bytes"] >= 1024 or c["count"] > 1) or "none"


def row(name: str, plan: dict) -> str:
    roof = plan.get("roofline") or {}
    step = plan["step_seconds_estimate"]
    mfu = f"{roof['compute_seconds'] / step:.1%}" if step else "n/a"
    fits = {True: "yes", False: "**no**", None: "n/a"}[plan["fits"]]
    return (f"| {name} | {plan['target']} ({plan['devices']}) | {plan['dtype']} | {plan['rules']}"
            f"{'' if plan['sync_bn'] else ', sync_bn=False'} | {plan['per_device_batch']} | "
            f"{plan['peak_bytes_per_device'] / 2**30:.2f} GiB, {fits} | {plan['flops_per_device']:.3g} | "
            f"{plan['bytes_accessed_per_device']:.3g} | {collectives_text(plan['collectives'])} | "
            f"{step * 1e3:.0f} ms ({roof.get('bound', '?')}) | {plan['images_per_second_per_chip']:.0f} | {mfu} | "
            f"{plan['compile_seconds'] / 60:.1f} min |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", nargs="+", type=Path)
    args = parser.parse_args()
    print("| plan | target (chips) | dtype | rules | images/chip | peak memory, fits | FLOPs/chip | bytes accessed/chip "
          "| collectives per step | step estimate | images/s/chip | MFU est. | compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.plans:
        print(row(path.stem, json.loads(path.read_text())))


if __name__ == "__main__":
    main()
