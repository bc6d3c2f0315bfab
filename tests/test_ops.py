"""Box ops: conversions, pairwise and elementwise IoU variants, anchors, against ultralytics."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.ops import (
    bbox2dist, bbox_iou, box_area, box_iou, dist2bbox, make_anchors, xywh2xyxy, xyxy2xywh,
)


@pytest.fixture(scope="module")
def ul():
    """ultralytics (AGPL) is a test oracle only."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.utils import metrics, ops, tal

    return torch, metrics, ops, tal


def random_xyxy(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0.5, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def test_conversions_round_trip_and_match_ultralytics(ul):
    torch, _, ops, _ = ul
    rng = np.random.default_rng(0)
    xyxy = random_xyxy(rng, 64).reshape(4, 16, 4)
    xywh = np.array(jax.jit(xyxy2xywh)(jnp.asarray(xyxy)))
    back = np.asarray(jax.jit(xywh2xyxy)(jnp.asarray(xywh)))
    np.testing.assert_allclose(back, xyxy, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(xywh, ops.xyxy2xywh(torch.from_numpy(xyxy)).numpy())
    np.testing.assert_array_equal(back, ops.xywh2xyxy(torch.from_numpy(xywh)).numpy())
    np.testing.assert_allclose(
        np.asarray(jax.jit(box_area)(jnp.asarray(xyxy))), xywh[..., 2] * xywh[..., 3], rtol=1e-6
    )


def test_box_iou_matches_ultralytics(ul):
    torch, metrics, _, _ = ul
    rng = np.random.default_rng(1)
    a, b = random_xyxy(rng, 20), random_xyxy(rng, 30)
    b[:5] = a[:5]  # identical boxes: IoU 1
    ours = np.asarray(jax.jit(box_iou)(jnp.asarray(a), jnp.asarray(b)))
    ref = metrics.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert ours.shape == (20, 30)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.diag(ours[:5, :5]), 1.0, atol=1e-6)
    # Leading batch dims broadcast.
    batched = np.asarray(jax.jit(box_iou)(jnp.asarray(a)[None], jnp.asarray(b)[None]))
    np.testing.assert_allclose(batched[0], ours, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("xywh", [False, True])
@pytest.mark.parametrize("kind", ["IoU", "GIoU", "DIoU", "CIoU"])
def test_bbox_iou_matches_ultralytics(ul, xywh, kind):
    torch, metrics, _, _ = ul
    rng = np.random.default_rng(2)
    b1, b2 = random_xyxy(rng, 40), random_xyxy(rng, 40)
    b2[:4] = b1[:4]  # identical
    b2[4:8] = b1[4:8] + 200.0  # disjoint
    if xywh:  # (ultralytics' xywh path has no eps: a zero height gives NaN there too)
        b1, b2 = np.array(xyxy2xywh(jnp.asarray(b1))), np.array(xyxy2xywh(jnp.asarray(b2)))
    else:
        b1[8, 2:] = b1[8, :2]  # zero-size box
    flags = {k: kind == k for k in ("GIoU", "DIoU", "CIoU")}
    iou = jax.jit(lambda a, b: bbox_iou(a, b, xywh=xywh, **flags))
    ours = np.asarray(iou(jnp.asarray(b1), jnp.asarray(b2)))
    ref = metrics.bbox_iou(torch.from_numpy(b1), torch.from_numpy(b2), xywh=xywh, **flags)
    assert ours.shape == (40,) and np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref.squeeze(-1).numpy(), rtol=1e-5, atol=1e-6)
    # Broadcasting (gt, anchor) pairs as the assigner does.
    pairs = np.asarray(iou(jnp.asarray(b1[:5, None]), jnp.asarray(b2[None, :7])))
    ref_pairs = metrics.bbox_iou(
        torch.from_numpy(b1[:5, None]), torch.from_numpy(b2[None, :7]), xywh=xywh, **flags
    ).squeeze(-1)
    np.testing.assert_allclose(pairs, ref_pairs.numpy(), rtol=1e-5, atol=1e-6)


def test_ciou_gradient_matches_ultralytics(ul):
    """CIoU's alpha is a constant (torch.no_grad in ultralytics): gradients must agree."""
    torch, metrics, _, _ = ul
    rng = np.random.default_rng(3)
    b1, b2 = random_xyxy(rng, 32, 20.0), random_xyxy(rng, 32, 20.0)
    loss = lambda x: bbox_iou(x, jnp.asarray(b2), xywh=False, CIoU=True).sum()
    g = jax.jit(jax.grad(loss))(jnp.asarray(b1))
    t1 = torch.from_numpy(b1).requires_grad_(True)
    metrics.bbox_iou(t1, torch.from_numpy(b2), xywh=False, CIoU=True).sum().backward()
    np.testing.assert_allclose(np.asarray(g), t1.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_anchors_and_distances_match_ultralytics(ul):
    torch, _, _, tal = ul
    hw, strides = ((20, 32), (10, 16), (5, 8)), (8, 16, 32)
    points, stride = jax.jit(make_anchors, static_argnums=(0, 1))(hw, strides)
    feats = [torch.zeros(1, 1, h, w) for h, w in hw]
    ref_p, ref_s = tal.make_anchors(feats, torch.tensor(strides, dtype=torch.float32), 0.5)
    np.testing.assert_array_equal(np.asarray(points), ref_p.numpy())
    np.testing.assert_array_equal(np.asarray(stride), ref_s.numpy())
    rng = np.random.default_rng(4)
    dist = rng.uniform(0, 20, (2, points.shape[0], 4)).astype(np.float32)
    for xywh in (True, False):
        ours = np.asarray(jax.jit(dist2bbox, static_argnums=2)(jnp.asarray(dist), points, xywh))
        ref = tal.dist2bbox(torch.from_numpy(dist), ref_p, xywh=xywh).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    boxes = np.array(jax.jit(dist2bbox, static_argnums=2)(jnp.asarray(dist), points, False))
    # yolojax's reg_max counts bins (16); ultralytics' bbox2dist takes the last bin index (15).
    ours = np.asarray(jax.jit(bbox2dist, static_argnums=2)(points, jnp.asarray(boxes), 16))
    ref = tal.bbox2dist(ref_p, torch.from_numpy(boxes), 15).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert ours.max() <= 15 - 0.01 + 1e-6 and ours.min() >= 0


def test_compute_dtype():
    from yolojax.ops.precision import compute_dtype

    assert compute_dtype(jnp.bfloat16) == jnp.float32
    assert compute_dtype(jnp.float16) == jnp.float32
    assert compute_dtype(jnp.float32) == jnp.float32
    # float64 only exists under jax_enable_x64 (tools/parallel_scenarios.py --dtype float64,
    # run by tests/test_parallel.py, trains a float64 model); without it JAX canonicalises
    # float64 to float32, and so does compute_dtype.
    expected = np.float64 if jax.config.jax_enable_x64 else np.float32
    assert compute_dtype(np.float64) == expected
    assert compute_dtype(jnp.bfloat16, np.float64) == expected
