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
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolojax.parallel.compiled import _INSTRUCTION, DTYPE_BYTES  # noqa: E402

_ARRAY_LAYOUT = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([0-9,]*)\](\{[^}]*\})?")
_TILE = re.compile(r"T\((\d+)(?:,(\d+))?\)")
_LAYER = re.compile(r"(model_\d+(?:/[a-z]+[0-9_]*)?)")
HEAVY = ("fusion", "convolution", "copy", "transpose", "reduce", "reduce-window", "select-and-scatter", "custom-call")


def array_bytes(dtype: str, dims: str, layout: str | None) -> tuple[float, float]:
    """(bytes as shaped, bytes as laid out with the layout's first tile padding)."""
    shape = [int(d) for d in dims.split(",") if d]
    size = DTYPE_BYTES[dtype]
    plain = size
    for d in shape:
        plain *= d
    if not shape or not layout:
        return plain, plain
    order = [int(i) for i in layout.strip("{}").split(":")[0].split(",") if i.strip().isdigit()]
    tile = _TILE.search(layout)
    if not tile or len(order) != len(shape):
        return plain, plain
    padded = list(shape)
    tiles = [int(tile.group(1))] + ([int(tile.group(2))] if tile.group(2) else [])
    for tile_dim, axis in zip(reversed(tiles), order):  # the minor-most dims take the last tile sizes
        padded[axis] = -(-padded[axis] // tile_dim) * tile_dim
    laid = size
    for d in padded:
        laid *= d
    return plain, laid


def type_bytes(type_text: str) -> tuple[float, float]:
    plain = laid = 0.0
    for dtype, dims, layout in _ARRAY_LAYOUT.findall(type_text):
        p, l_ = array_bytes(dtype, dims, layout)
        plain, laid = plain + p, laid + l_
    return plain, laid


def layer_of(line: str) -> str:
    m = re.search(r'op_name="([^"]*)"', line)
    if not m:
        return "(no op_name)"
    name = m.group(1)
    layer = _LAYER.search(name)
    if layer:
        return layer.group(1)
    for part in ("loss", "assigner", "optax", "ema", "sgd", "adam"):
        if part in name.lower():
            return part
    return "other: " + name.split("/")[-1][:40]


def hotspots(hlo_text: str) -> dict[str, list[float]]:
    """{layer: [plain bytes, laid-out bytes, instructions]} over the heavy instructions."""
    types: dict[str, str] = {}
    lines = hlo_text.splitlines()
    for line in lines:
        m = _INSTRUCTION.match(line)
        if m:
            types[m.group(1)] = m.group(2)
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    in_entry = False
    for line in lines:
        if line.startswith("ENTRY"):
            in_entry = True
            continue
        if in_entry and line.startswith("}"):
            break
        m = _INSTRUCTION.match(line) if in_entry else None
        if not m or m.group(3) not in HEAVY:
            continue
        plain, laid = type_bytes(m.group(2))
        for operand in re.findall(r"%([\w.\-]+)", m.group(4).split(")", 1)[0]):
            p, l_ = type_bytes(types.get(operand, ""))
            plain, laid = plain + p, laid + l_
        entry = out[layer_of(line)]
        entry[0] += plain
        entry[1] += laid
        entry[2] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hlo", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    spots = hotspots(args.hlo.read_text())
    total_laid = sum(v[1] for v in spots.values())
    total_plain = sum(v[0] for v in spots.values())
    print(f"{args.hlo.name}: {total_laid / 1e9:.2f} GB laid out ({total_plain / 1e9:.2f} GB as shaped, "
          f"{total_laid / max(total_plain, 1):.2f}x) over {sum(int(v[2]) for v in spots.values())} instructions")
    print(f"{'layer':28} {'GB laid out':>11} {'share':>6} {'padding x':>9} {'instr':>6}")
    for layer, (plain, laid, count) in sorted(spots.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"{layer:28} {laid / 1e9:>11.3f} {laid / total_laid:>6.1%} {laid / max(plain, 1):>9.2f} {int(count):>6}")


if __name__ == "__main__":
    main()
