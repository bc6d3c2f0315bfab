"""yolojax plan: the train step compiled for a target, and the figures read off it.

* Collectives are read from HLO text (every form the CPU and TPU compilers print), chips are
  found by device kind, and the roofline is the arithmetic it says.
* ``yolojax plan topology=cpu:8`` compiles the real step on 8 simulated CPU devices in a
  subprocess (this process keeps its one device) and writes the documented JSON keys.
* ``topology=v5e:2x2`` compiles it for a TPU through libtpu's compile-only devices, in a
  Python that has libtpu (``YOLOJAX_TPU_PYTHON``: .ci/run builds one, so libtpu stays out of
  the other tests' processes); without it the test skips, and with
  ``YOLOJAX_REQUIRE_TPU_COMPILE=1`` (CI) that skip fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolojax.parallel.chips import CHIPS, chip_for, roofline
from yolojax.parallel.compiled import Collective, collectives, laid_out_bytes, memory_traffic

REPO = Path(__file__).resolve().parents[1]
PLAN_KEYS = {"devices", "dtype", "peak_bytes_per_device", "fits", "flops_per_device", "bytes_accessed_per_device",
             "collectives", "step_seconds_estimate", "compile_seconds"}

CPU_HLO = """
HloModule jit_step, entry_computation_layout={(f32[64,32]{1,0})->f32[8,32]{1,0}}

ENTRY %main.1 (param.1: f32[8,32], param.2: bf16[16,64]) -> f32[8,32] {
  %param.1 = f32[8,32]{1,0} parameter(0)
  %param.2 = bf16[16,64]{1,0} parameter(1)
  %all-gather = f32[64,32]{1,0} all-gather(%param.1), channel_id=1, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, dimensions={0}
  %all-reduce = (f32[32,64]{1,0}, f32[16]{0}) all-reduce(%dot.1, %b), channel_id=2, replica_groups=[1,8]<=[8], to_apply=%add
  %all-reduce.1 = bf16[16,64]{1,0} all-reduce(%param.2), channel_id=3, replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  %reduce-scatter = f32[8,32]{1,0} reduce-scatter(%all-gather), channel_id=4, replica_groups=[1,8]<=[8], dimensions={0}
  ROOT %r = f32[8,32]{1,0} add(%reduce-scatter, %param.1)
}
"""

TPU_HLO = """
ENTRY %main {
  %p = bf16[128,256]{1,0:T(8,128)(2,1)} parameter(0)
  %all-gather-start = (bf16[128,256]{1,0:T(8,128)(2,1)}, bf16[1024,256]{1,0:T(8,128)(2,1)}) all-gather-start(bf16[128,256]{1,0:T(8,128)(2,1)} %p), channel_id=5, replica_groups=[1,8]<=[8], dimensions={0}
  %all-gather-done = bf16[1024,256]{1,0:T(8,128)(2,1)} all-gather-done(%all-gather-start)
  %all-reduce-start = f32[1000]{0:T(1024)} all-reduce-start(f32[1000]{0:T(1024)} %g), channel_id=6, replica_groups=[2,4]<=[8], to_apply=%add
  %all-reduce-done = f32[1000]{0:T(1024)} all-reduce-done(%all-reduce-start)
}
"""


def test_collectives_are_read_from_cpu_hlo_text():
    found = {(c.op, c.dtype): c for c in collectives(CPU_HLO, num_devices=8)}
    assert set(found) == {("all-gather", "f32"), ("all-reduce", "f32"), ("all-reduce", "bf16"),
                          ("reduce-scatter", "f32")}
    assert found["all-gather", "f32"] == Collective("all-gather", "f32", 1, 64 * 32 * 4, 8)
    assert found["all-reduce", "f32"].bytes == (32 * 64 + 16) * 4 and found["all-reduce", "f32"].group_size == 8
    assert found["all-reduce", "bf16"] == Collective("all-reduce", "bf16", 1, 16 * 64 * 2, 4)
    assert found["reduce-scatter", "f32"].bytes == 64 * 32 * 4  # the operand (looked up by name), not the result


def test_async_tpu_collectives_count_once_with_their_larger_side():
    found = {(c.op, c.dtype): c for c in collectives(TPU_HLO)}
    assert found["all-gather", "bf16"] == Collective("all-gather", "bf16", 1, 1024 * 256 * 2, 8)
    assert found["all-reduce", "f32"] == Collective("all-reduce", "f32", 1, 4000, 4)


def test_tpu_layouts_pad_the_minor_dimensions_to_their_tiles():
    # 16 channels (the minor-most dimension, first in the layout) in 128 lanes: 8x the bytes.
    assert laid_out_bytes("bf16[16,320,320,16]{3,2,1,0:T(8,128)(2,1)}") == (16 * 320 * 320 * 16 * 2,
                                                                            16 * 320 * 320 * 128 * 2)
    assert laid_out_bytes("f32[5,3]{0,1:T(8,128)}") == (60, 8 * 128 * 4)  # dimension 0 is minor here
    assert laid_out_bytes("f32[1000]{0}") == (4000, 4000)  # no tile, no padding


def test_memory_traffic_counts_each_kernel_once_by_layer():
    hlo = """
ENTRY %main {
  %p = bf16[8,64,64,16]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  %k = bf16[3,3,16,16]{3,2,1,0:T(8,128)(2,1)} parameter(1)
  %conv = bf16[8,64,64,16]{3,2,1,0:T(8,128)(2,1)} convolution(%p, %k), metadata={op_name="jit(step)/model_2/m_0/cv1/conv"}
  %fusion = bf16[8,64,64,16]{3,2,1,0:T(8,128)(2,1)} fusion(%conv), kind=kLoop, metadata={op_name="jit(step)/model_2/m_0/cv1/bn/mul"}
  ROOT %t = (bf16[8,64,64,16]{3,2,1,0:T(8,128)(2,1)}) tuple(%fusion)
}
"""
    traffic = memory_traffic(hlo)
    act_plain, act_laid = 8 * 64 * 64 * 16 * 2, 8 * 64 * 64 * 128 * 2
    kernel_plain, kernel_laid = 3 * 3 * 16 * 16 * 2, 3 * 3 * 16 * 128 * 2
    assert traffic == {"model_2/m_0": (3 * act_plain + kernel_plain + act_plain, 3 * act_laid + kernel_laid + act_laid, 2)}


def test_chips_and_the_roofline():
    assert chip_for("TPU v5 lite") is CHIPS["v5e"] and chip_for("TPU v5") is CHIPS["v5p"]
    assert chip_for("TPU v6 lite") is CHIPS["v6e"] and chip_for("NVIDIA H100 80GB HBM3") is CHIPS["h100"]
    assert chip_for("cpu") is None
    v5e = CHIPS["v5e"]
    ring = [Collective("all-reduce", "f32", 2, 8 * 10**6, 4)]
    est = roofline(197e12, 819e9 * 2, ring, v5e)  # 1 s of compute, 2 s of memory
    assert est.bound == "memory" and est.compute_seconds == pytest.approx(1.0)
    assert est.collective_seconds == pytest.approx(2 * v5e.collective_latency + 1.5 * 8e6 / v5e.link_bandwidth)
    assert est.step_seconds == pytest.approx(2.0 + est.collective_seconds)


def _plan(python: str, tmp_path: Path, *keys: str, env: dict | None = None) -> dict:
    out = tmp_path / "plan.json"
    proc = subprocess.run([python, "-m", "yolojax.plan", *keys, f"json={out}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    plan = json.loads(out.read_text())
    assert PLAN_KEYS <= set(plan) and "per device:" in proc.stdout
    return plan


@pytest.mark.slow
def test_plan_compiles_the_bfloat16_step_on_a_simulated_cpu_mesh(tmp_path):
    plan = _plan(sys.executable, tmp_path, "model=yolov8n.pt", "imgsz=64", "batch=16", "topology=cpu:8",
                 "dtype=bfloat16", "mesh.data=4", "mesh.model=2", "rules=tp", env={"JAX_PLATFORMS": "cpu"})
    assert plan["devices"] == 8 and plan["dtype"] == "bfloat16" and plan["mesh"] == {"data": 4, "model": 2}
    assert plan["per_device_batch"] == 4 and plan["rules"] == "tp" and plan["fits"] is None
    assert plan["peak_bytes_per_device"] > plan["memory"]["argument_bytes"] > 0 and plan["flops_per_device"] > 1e7
    reduces = [c for c in plan["collectives"] if c["op"] == "all-reduce"]
    assert reduces and {c["dtype"] for c in reduces} <= {"f32", "s32"}  # float32 sums in a bfloat16 step
    assert plan["step_seconds_estimate"] is None and plan["compile_seconds"] > 0


def test_plan_refuses_an_unknown_topology_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "yolojax", "plan", "topology=v9x:2x2"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "topology='v9x:2x2'" in proc.stderr


@pytest.mark.slow
def test_plan_compiles_for_a_tpu_topology_without_a_tpu(tmp_path):
    python = os.environ.get("YOLOJAX_TPU_PYTHON")
    if not python:
        message = "needs YOLOJAX_TPU_PYTHON, a Python with jax[tpu] (libtpu) installed"
        if os.environ.get("YOLOJAX_REQUIRE_TPU_COMPILE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    plan = _plan(python, tmp_path, "model=yolov8n.pt", "imgsz=64", "batch=8", "topology=v5e:2x2",
                 env={"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "JAX_PLATFORMS": "cpu"})
    assert plan["devices"] == 4 and plan["chip"] == "v5e" and plan["dtype"] == "bfloat16"  # dtype=auto on TPU
    assert plan["fits"] is True and 0 < plan["peak_bytes_per_device"] < 16 * 2**30
    reduces = [c for c in plan["collectives"] if c["op"] == "all-reduce"]
    assert reduces and all(c["dtype"] in ("f32", "s32") for c in reduces)
    assert plan["step_seconds_estimate"] > 0 and plan["images_per_second_per_chip"] > 0


def _plan_of(peak_state: int, temp: int, hbm: int, rules: str = "data"):
    import dataclasses

    from yolojax.parallel.compiled import ProgramCost
    from yolojax.train.plan import Plan

    chip = dataclasses.replace(CHIPS["v5e"], hbm_bytes=hbm)
    cost = ProgramCost(peak_bytes=peak_state + temp, argument_bytes=peak_state, output_bytes=peak_state,
                       alias_bytes=peak_state, temp_bytes=temp, flops=1e12, bytes_accessed=1e11, io_bytes=1e10,
                       xla_optimal_seconds=-1.0, collectives=[])
    return Plan("v5e:4x4", 16, chip, "bfloat16", (16, 1), rules, "jit", True, 256, 16, 640, 32, "SGD", cost,
                roofline(1e12, 1e11, [], chip), roofline(1e12, 1e10, [], chip), cost.peak_bytes <= hbm, 1.0)


def test_a_plan_that_does_not_fit_suggests_fsdp_or_a_smaller_batch():
    from yolojax.train.plan import describe, suggestions

    gib = 2**30
    assert suggestions(_plan_of(2 * gib, 4 * gib, 16 * gib)) == []  # fits
    state_bound = suggestions(_plan_of(12 * gib, 6 * gib, 16 * gib))  # fsdp: 12/16 + 6 GiB fits
    assert state_bound[0].startswith("rules=fsdp") and "~6.75 GiB" in state_bound[0]
    activation_bound = suggestions(_plan_of(1 * gib, 30 * gib, 16 * gib, rules="fsdp"))
    assert activation_bound[0].startswith("batch=128 (8 images per device)")  # 1 + 30/2 = 16 GiB
    lines = describe(_plan_of(1 * gib, 30 * gib, 16 * gib, rules="fsdp"))
    assert any("DOES NOT FIT" in line for line in lines) and lines[-1].startswith("suggestion: batch=128")
    assert any("optimal_seconds (-1) is not a duration" in line for line in lines)
