"""notebooks/*.ipynb run top to bottom on CPU in their tiny setting, and are committed clean.

Each notebook is executed with nbclient in a fresh kernel whose working directory is a
temporary folder (so runs/ and datasets/ land there, never in the repository), with
YOLOJAX_NOTEBOOK_TINY=1 (a few tiny steps), YOLO_OFFLINE=1 (no download is attempted) and
JAX on the CPU. Where ../shared/data holds yolov8n.pt and COCO8 the quickstart predicts with
those weights; elsewhere it first trains a model on the synthetic shapes. Either way its
predict cell must show an annotated image with at least one box.

Measured on the 2-core machine, lightly loaded: quickstart 108 s with ../shared/data (145 s
without: it trains its own model first), multi_device 66 s, most of it compiling; about
twice that while other jobs share the cores.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("quickstart.ipynb", "multi_device.ipynb")
CELL_TIMEOUT_S = 900


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell of notebooks/<name> in a new kernel started in ``workdir``; raises
    nbclient's CellExecutionError (with the failing cell and traceback) on any error."""
    from nbclient import NotebookClient

    nb = read(name)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the multi-device notebook sets its own simulated device count
    env.update({
        "YOLOJAX_NOTEBOOK_TINY": "1",
        # The official weights offline here are yolov8n.pt (../shared/data); the quickstart's
        # default family, yolo11, would train from scratch instead.
        "YOLOJAX_NOTEBOOK_FAMILY": "yolov8",
        "YOLO_OFFLINE": "1",
        "JAX_PLATFORMS": "cpu",
        # The kernel starts outside the repository: make sure it imports this checkout.
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    })
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return nb


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def has_image(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.outputs if o.output_type == "display_data")


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"
            assert "execution" not in cell.metadata, f"{name} cell {i} has execution timing metadata"


@pytest.mark.parametrize("name", NAMES)
def test_reads_tiny_switch_before_anything_heavy(name):
    """The parameter cell comes first and is where the tiny setting is chosen."""
    code = [c for c in read(name).cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert 'os.environ.get("YOLOJAX_NOTEBOOK_TINY") == "1"' in code[0].source
    assert "import jax" not in code[0].source


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    nb = execute("quickstart.ipynb", tmp_path)

    predictions = json.loads((tmp_path / "runs" / "predict" / "predictions.json").read_text())
    boxes = sum(len(p["boxes_xyxy"]) for p in predictions)
    assert boxes >= 1, f"the predict cell found no box: {predictions}"
    predict_cell = tagged(nb, "predict")
    assert has_image(predict_cell), "the predict cell shows no image"
    assert "boxes:" in stdout(predict_cell)

    resumed = re.search(r"resumed from step (\d+), finished at step (\d+) of (\d+)", stdout(tagged(nb, "resume")))
    assert resumed, stdout(tagged(nb, "resume"))
    start, end, total = (int(g) for g in resumed.groups())
    assert 0 < start < end == total
    rows = [json.loads(line) for line in (tmp_path / "runs" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == total
    assert any("mAP50" in r for r in rows)
    assert has_image(tagged(nb, "curves"))


@pytest.mark.slow
def test_multi_device_runs(tmp_path):
    nb = execute("multi_device.ipynb", tmp_path)

    assert "{'data': 2, 'model': 2}" in stdout(tagged(nb, "mesh"))
    table = stdout(tagged(nb, "sharding"))
    assert re.search(r"^path\s+shape\s+spec\s+per-device", table, re.MULTILINE), table
    assert "'model'" in table  # some parameters are split over the model axis
    trained = stdout(tagged(nb, "train"))
    speed = re.search(r"rules=tp: (\d+) steps of 8 images .* ([\d.]+) images/s", trained)
    assert speed, trained
    assert int(speed.group(1)) == 4 and float(speed.group(2)) > 0
    assert has_image(tagged(nb, "speed"))
