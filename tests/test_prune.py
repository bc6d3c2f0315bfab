"""Structured channel pruning (yolojax.models.prune, python -m yolojax.prune, yolojax prune).

The must-show check: channels whose BatchNorm gamma and beta are zero output SiLU(0) = 0, so
removing exactly those channels (and the matching inputs of every consumer) leaves the model's
outputs unchanged, in eval mode on a real image and in train mode (raw head outputs, batch
statistics). Everything runs yolov8n at small sizes to stay fast.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax import cli
from yolojax import prune as prune_command
from yolojax.models import YOLOv8, default_widths, model_from_info
from yolojax.models.prune import channel_graph, min_keep, model_widths, prune, prune_variables, select_channels
from yolojax.models.summary import model_summary
from yolojax.models.yolov8 import resolve_widths
from yolojax.weights import count_params, load_weights
from shared_data import COCO8, WEIGHTS, bus_jpg, require

RATIO = 0.3


@pytest.fixture(scope="module")
def nano():
    require(WEIGHTS)
    return load_weights(WEIGHTS)


@pytest.fixture(scope="module")
def zeroed(nano):
    """(yolov8n variables with gamma = beta = 0 on the channels bn_scale removes at RATIO, the
    full widths table, those keep indices)."""
    variables, info = nano
    widths = model_widths(info)
    keep = select_channels(variables["params"], widths, RATIO, "bn_scale")
    out = jax.tree.map(np.array, variables)
    graph = channel_graph(widths)
    for unit, producers in graph.producers.items():
        removed = np.setdiff1d(np.arange(graph.sizes[unit]), keep[unit])
        assert len(keep[unit]) >= min_keep(graph.sizes[unit])
        for path, offset in producers:
            bn = _node(out["params"], path)["bn"]
            bn["scale"][removed + offset] = 0.0
            bn["bias"][removed + offset] = 0.0
    return out, widths, keep


def _node(tree, path):
    for name in path.split("/"):
        tree = tree[name]
    return tree


def _bus_image(size: int) -> np.ndarray:
    from yolojax.data.augment.letterbox import apply_letterbox
    from yolojax.data.image_io import read_image_rgb
    from yolojax.inference.predictor import letterbox_for_predict

    image = read_image_rgb(str(bus_jpg()))
    boxed = apply_letterbox(image, letterbox_for_predict(image.shape[:2], size))
    canvas = np.zeros((size, size, 3), np.uint8)  # letterbox_for_predict pads to a multiple of 32 only
    canvas[: boxed.shape[0], : boxed.shape[1]] = boxed
    return canvas[None].astype(np.float32) / 255.0


def test_pruning_zeroed_channels_leaves_outputs_unchanged(nano, zeroed):
    variables, info = nano
    zero_vars, widths, keep = zeroed
    pruned, new_widths = prune_variables(zero_vars, widths, keep)
    original, smaller = model_from_info(info), model_from_info({**info, "widths": new_widths})
    assert count_params(pruned) < 0.8 * count_params(variables)
    image = jnp.asarray(_bus_image(160))
    before, after = (jax.jit(m.apply, static_argnames="train")(v, image, train=False)
                     for m, v in ((original, zero_vars), (smaller, pruned)))
    assert float(jnp.std(before[..., :4])) > 10 and float(before[..., 4:].max()) > 1e-3  # not a constant output
    np.testing.assert_allclose(after[..., 4:], before[..., 4:], atol=1e-5)  # class scores
    np.testing.assert_allclose(after[..., :4], before[..., :4], atol=1e-5 * 160)  # boxes, in pixels
    # Train mode (batch statistics) in float64, where only the summation order differs.
    with jax.enable_x64(True):
        f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        cast = lambda v: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)  # noqa: E731
        train_fn = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"])[0])  # noqa: E731
        raw = [train_fn(model_from_info(i, **f64))(cast(v), jnp.asarray(image[:, :64, :64], jnp.float64))
               for i, v in ((info, zero_vars), ({**info, "widths": new_widths}, pruned))]
        for a, b in zip(*raw, strict=True):
            np.testing.assert_allclose(b, a, atol=1e-9 * float(jnp.abs(a).max()))


def test_removed_channels_constant_output_moves_into_their_consumers(nano):
    """Channels whose gamma is 0 but beta is not output the constant SiLU(beta): pruning them
    folds that into the consumers' BatchNorm means, so where every consumer is a 1x1 conv (a
    C2f's skipping part, SPPF's cv1 through its max pools) the eval outputs stay equal."""
    variables, info = nano
    widths = model_widths(info)
    graph = channel_graph(widths)
    keep = {u: np.arange(size) for u, size in graph.sizes.items()}
    out = jax.tree.map(np.array, variables)
    rng = np.random.default_rng(0)
    for unit in ("model_15/cv1:0", "model_9/cv1", "model_21/cv1:0"):
        (path, offset), = graph.producers[unit]
        removed = np.arange(0, graph.sizes[unit], 2)
        keep[unit] = np.arange(1, graph.sizes[unit], 2)
        bn = _node(out["params"], path)["bn"]
        bn["scale"][removed + offset] = 0.0
        bn["bias"][removed + offset] = rng.uniform(-2, 3, len(removed))
    pruned, new_widths = prune_variables(out, widths, keep)
    image = jnp.asarray(_bus_image(160))
    before = jax.jit(model_from_info(info).apply)(out, image)
    after = jax.jit(model_from_info({**info, "widths": new_widths}).apply)(pruned, image)
    np.testing.assert_allclose(after[..., 4:], before[..., 4:], atol=1e-4)
    np.testing.assert_allclose(after[..., :4], before[..., :4], atol=1e-4 * 160)
    shift = pruned["batch_stats"]["model_15"]["cv2"]["bn"]["mean"] - out["batch_stats"]["model_15"]["cv2"]["bn"]["mean"]
    assert float(np.abs(shift).max()) > 0.1  # without it the outputs would differ


def test_bn_scale_ranks_globally_by_gamma_and_l1_per_unit(nano, zeroed):
    zero_vars, widths, keep = zeroed
    again = select_channels(zero_vars["params"], widths, RATIO, "bn_scale")
    assert all(np.array_equal(again[u], keep[u]) for u in keep)  # the zeroed channels rank lowest
    graph = channel_graph(widths)
    total, kept = sum(graph.sizes.values()), sum(len(k) for k in keep.values())
    assert total - kept == int(RATIO * total)  # the ratio is of all channels, not of each unit
    l1_keep = select_channels(nano[0]["params"], widths, RATIO, "l1")
    for unit, size in graph.sizes.items():
        assert len(l1_keep[unit]) == size - min(int(RATIO * size), size - min_keep(size))
    params = jax.tree.map(np.array, nano[0]["params"])
    kernel = _node(params, "model_4/cv2")["conv"]["kernel"]
    kernel[..., [3, 17]] = 0.0  # the smallest filters of that unit
    assert not {3, 17} & set(select_channels(params, widths, RATIO, "l1")["model_4/cv2"].tolist())
    floors = select_channels(params, widths, 0.99, "bn_scale")
    assert all(len(floors[u]) == min_keep(s) for u, s in graph.sizes.items())


def test_residual_c2f_parts_share_one_mask(zeroed):
    _, widths, keep = zeroed
    graph = channel_graph(widths)
    assert [p for p, _ in graph.producers["model_2/cv1:1"]] == ["model_2/cv1", "model_2/m_0/cv2"]
    assert graph.producers["model_2/cv1:1"][0][1] == widths["model_2/split"]
    assert graph.inputs["model_9/cv2"] == ("model_9/cv1",) * 4  # SPPF: 4 copies concatenated
    assert graph.inputs["model_12/cv1"] == ("model_9/cv2", "model_6/cv2")  # upsample + concat
    for name in ("model_22/cv2_0_0", "model_22/cv3_0_0", "model_16"):
        assert graph.inputs[name] == ("model_15/cv2",)  # P3 feeds the head and the next neck conv
    assert "model_22/cv2_0_2" not in graph.producers and "model_22/cv3_0_2" not in graph.producers
    assert graph.inputs["model_22/cv3_2_2"] == ("model_22/cv3_2_1",)  # the class output reads; never pruned
    assert widths["model_15/split"] - len(keep["model_15/cv1:0"]) >= 0


def test_widths_tables_and_their_refusals(nano):
    variables, info = nano
    assert default_widths("n", 80)["model_2/cv1"] == 32 and default_widths("s", 80)["model_22/cv3_0_1"] == 128
    with pytest.raises(ValueError, match="unknown key 'model_2/cv9'"):
        resolve_widths("n", 80, widths={"model_2/cv9": 8})
    with pytest.raises(ValueError, match="model_4's Bottleneck outputs must all be"):
        resolve_widths("n", 80, widths={"model_4/m_0/cv2": 5})
    with pytest.raises(ValueError, match="model_2/split"):
        YOLOv8(widths=(("model_2/split", 32),)).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_pruned_dir_loads_validates_and_exports(tmp_path, capsys):
    require(WEIGHTS, COCO8 / "coco8.yaml")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "n30"
    assert cli.main(["prune", f"model={WEIGHTS}", "ratio=0.3", f"out={out}"]) == 0
    assert "-> " in capsys.readouterr().out
    variables, info = load_weights(out)
    assert json.loads((out / "info.json").read_text())["widths"] == info["widths"]
    model = model_from_info(info)
    full = model_summary(model_from_info(load_weights(WEIGHTS)[1]), fused=True)
    small = model_summary(model, fused=True)
    assert small.parameters == count_params(variables) - sum(
        v for k, v in info["widths"].items() if not k.endswith("/split")) < full.parameters
    assert small.gflops < full.gflops
    from yolojax.evaluation.validator import validate

    results = validate(out, COCO8 / "coco8.yaml", imgsz=64, batch=4, verbose=False)
    assert 0.0 <= results["mAP50-95"] <= 1.0 and results["images"] == 4
    onnx_path = tmp_path / "n30.onnx"
    from yolojax import export as export_command

    assert export_command.main(["--weights", str(out), "--out", str(onnx_path), "--imgsz", "64"]) == 0
    image = _bus_image(64)
    ort_out = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"images": image.transpose(0, 3, 1, 2)})[0]
    ours = np.asarray(jax.jit(model.apply, static_argnames="train")(variables, jnp.asarray(image), train=False))
    np.testing.assert_allclose(ort_out.transpose(0, 2, 1)[..., 4:], ours[..., 4:], atol=1e-4)
    assert export_command.main(["--weights", str(out), "--format", "pt", "--out", str(tmp_path / "x.pt")]) == 1
    assert "pruned model (per-layer widths) cannot be written" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "1.0"], "ratio=1.0: expected a fraction of channels to remove in [0, 1)"),
    (["--ratio", "-0.1"], "ratio=-0.1"),
    (["--ratio", "0.3", "--weights", "missing.pt"], "weights missing.pt not found"),
])
def test_prune_command_refusals_are_one_line(argv, message, capsys, tmp_path):
    argv = ["--weights", str(WEIGHTS), *argv] if "--weights" not in argv else argv
    assert prune_command.main([*argv, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_cli_prune_refusals_are_one_line(capsys, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for args, message in ((["ratio=0.3", "method=magnitude"], "method='magnitude': expected one of bn_scale, l1"),
                          (["ratio=0.3", f"out={tmp_path / 'taken'}"], "is not a yolojax checkpoint directory"),
                          (["method=l1"], "missing ratio=...")):
        assert cli.main(["prune", f"model={WEIGHTS}", *args]) in (1, 2)
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_pruning_dense_weights_warns_and_zeroed_ones_do_not(nano, zeroed, caplog):
    from yolojax.models.prune import SPARSE_GAMMA, largest_removed_gamma

    variables, info = nano
    zero_vars, widths, keep = zeroed
    assert largest_removed_gamma(zero_vars["params"], channel_graph(widths), keep) == 0.0
    assert largest_removed_gamma(variables["params"], channel_graph(widths), keep) > SPARSE_GAMMA
    with caplog.at_level("WARNING", logger="yolojax.models.prune"):
        prune(zero_vars, info, RATIO)
        assert not caplog.records
        prune(variables, info, 0.05)
    assert "BatchNorm |gamma| up to 0.5" in caplog.text and "bn_l1" in caplog.text
