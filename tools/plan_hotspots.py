"""Where a compiled step's memory traffic goes, by model layer, from ``yolojax plan hlo=PATH``.

    python tools/plan_hotspots.py n_bf16_2x2.hlo.txt [--top 15]

For every fusion, convolution and copy of the entry computation's schedule it adds the bytes of
its operands and result twice: as their shapes hold them, and as the target lays them out
(TPU tiles such as ``T(8,128)`` pad the two most-minor dimensions: a 16-channel bfloat16
activation in lanes of 128 occupies 8x its bytes). It groups them by the layer in the
instruction's ``op_name`` (``model_0``, ``model_22/cv2_1``, the loss, the optimiser, ...)
and prints the layers with the most padded bytes, their share, and how much of it is padding.
An estimate of traffic (each instruction's inputs and outputs once), not a profile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolojax.parallel.compiled import memory_traffic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hlo", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    spots = memory_traffic(args.hlo.read_text())
    total_laid = sum(v[1] for v in spots.values())
    total_plain = sum(v[0] for v in spots.values())
    print(f"{args.hlo.name}: {total_laid / 1e9:.2f} GB laid out ({total_plain / 1e9:.2f} GB as shaped, "
          f"{total_laid / max(total_plain, 1):.2f}x) over {sum(int(v[2]) for v in spots.values())} instructions")
    print(f"{'layer':28} {'GB laid out':>11} {'share':>6} {'padding x':>9} {'instr':>6}")
    for layer, (plain, laid, count) in sorted(spots.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"{layer:28} {laid / 1e9:>11.3f} {laid / total_laid:>6.1%} {laid / max(plain, 1):>9.2f} {int(count):>6}")


if __name__ == "__main__":
    main()
