"""Model contract: shapes, anchor order, BatchNorm semantics, dtypes, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.models import SCALES, BatchNorm, YOLOv8, scaled_channels, scaled_depth
from yolojax.ops.anchors import bbox2dist, dist2bbox, make_anchors


@pytest.fixture(scope="module")
def nano():
    model = YOLOv8(scale="n", num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 96, 3)), train=False)
    return model, variables


def test_eval_output_shape_and_order(nano):
    model, variables = nano
    images = jax.random.uniform(jax.random.key(1), (2, 64, 96, 3))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    n = sum((64 // s) * (96 // s) for s in (8, 16, 32))
    assert out.shape == (2, n, 4 + 3) and out.dtype == jnp.float32
    scores = out[..., 4:]
    assert bool(jnp.all((scores >= 0) & (scores <= 1)))
    # Box centres sit near their anchors: stride-8 rows first, row-major within a level.
    points, strides = make_anchors([(8, 12), (4, 6), (2, 3)], (8, 16, 32))
    centre_px = np.asarray(points * strides)
    assert np.allclose(centre_px[:3], [[4, 4], [12, 4], [20, 4]])
    assert np.allclose(centre_px[12], [4, 12])
    offset = np.abs(np.asarray(out[0, :, :2]) - centre_px) / np.asarray(strides)
    assert offset.max() < 15.0 + 1e-3  # at most reg_max - 1 grid cells from the anchor


def test_train_mode_returns_raw_levels_and_updates_stats(nano):
    model, variables = nano
    images = jax.random.uniform(jax.random.key(2), (2, 64, 96, 3))
    feats, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert [f.shape for f in feats] == [(2, 8, 12, 67), (2, 4, 6, 67), (2, 2, 3, 67)]
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(updates["batch_stats"])
    assert len(old) == len(new) and any(not np.allclose(a, b) for a, b in zip(old, new))


def test_head_bias_init_follows_ultralytics(nano):
    _, variables = nano
    head = variables["params"]["model_22"]
    for i, s in enumerate((8, 16, 32)):
        assert np.allclose(head[f"cv2_{i}_2"]["bias"], 2.0)
        assert np.allclose(head[f"cv3_{i}_2"]["bias"], np.log(5 / 3 / (640 / s) ** 2))
    assert np.array_equal(head["dfl"]["conv"]["kernel"].reshape(-1), np.arange(16))


def test_scaling_rules_match_yolov8_yaml():
    assert [scaled_channels(s, 1024) for s in "nsmlx"] == [256, 512, 576, 512, 640]
    assert [scaled_channels(s, 64) for s in "nsmlx"] == [16, 32, 48, 64, 80]
    assert [scaled_depth(s, 6) for s in "nsmlx"] == [2, 2, 4, 6, 6]
    assert [scaled_depth(s, 3) for s in "nsmlx"] == [1, 1, 2, 3, 3]
    assert set(SCALES) == set("nsmlx")


def test_batchnorm_matches_torch_train_and_eval():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 6, 8)).astype(np.float32)
    bn_t = torch.nn.BatchNorm2d(8, eps=1e-3, momentum=0.03)
    with torch.no_grad():
        bn_t.weight.uniform_(0.5, 1.5)
        bn_t.bias.uniform_(-1, 1)
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x, train=False)
    v = {
        "params": {"scale": bn_t.weight.detach().numpy(), "bias": bn_t.bias.detach().numpy()},
        "batch_stats": v["batch_stats"],
    }
    y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    y_t = bn_t(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(y, y_t, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], bn_t.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"], bn_t.running_var.numpy(), rtol=1e-5)
    bn_t.eval()
    v["batch_stats"] = upd["batch_stats"]
    y_eval = bn.apply(v, x, train=False)
    y_eval_t = bn_t(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(y_eval, y_eval_t, atol=1e-5)


def test_bf16_computes_in_bf16_with_fp32_params():
    model = YOLOv8(scale="n", num_classes=3, dtype=jnp.bfloat16)
    images = jnp.zeros((1, 64, 64, 3))
    variables = model.init(jax.random.key(0), images, train=False)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    feats, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert all(f.dtype == jnp.bfloat16 for f in feats)
    assert model.apply(variables, images, train=False).dtype == jnp.float32


@pytest.mark.parametrize("shape, message", [
    ((1, 64, 70, 3), r"image height and width must be multiples of 32, got \(64, 70\)"),
    ((1, 64, 64), r"images must be \(B, H, W, 3\), got shape \(1, 64, 64\)"),
    ((1, 64, 64, 1), r"images must be \(B, H, W, 3\), got shape \(1, 64, 64, 1\)")])
def test_bad_input_shape_is_refused(nano, shape, message):
    model, variables = nano
    with pytest.raises(ValueError, match=message):
        model.apply(variables, jnp.zeros(shape), train=False)


def test_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="unknown YOLOv8 scale"):
        YOLOv8(scale="q").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_dist2bbox_bbox2dist_round_trip():
    points = jnp.array([[10.5, 4.5], [3.5, 7.5]])
    boxes_xyxy = jnp.array([[8.0, 2.0, 14.0, 9.0], [1.0, 6.0, 5.0, 12.0]])
    dist = bbox2dist(points, boxes_xyxy, reg_max=16)
    np.testing.assert_allclose(dist2bbox(dist, points, xywh=False), boxes_xyxy, atol=1e-6)
    xywh = dist2bbox(dist, points, xywh=True)
    np.testing.assert_allclose(xywh[0], [11.0, 5.5, 6.0, 7.0], atol=1e-6)
    # Distances beyond the last DFL bin are clipped to reg_max - 1 - 0.01.
    far = bbox2dist(points[:1], jnp.array([[-100.0, 0.0, 14.0, 9.0]]), reg_max=16)
    assert float(far[0, 0]) == pytest.approx(14.99)
