"""NMS parity with ultralytics' non_max_suppression (test oracle only)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

import jax
import jax.numpy as jnp

from yolojax.ops import non_max_suppression


def _random_predictions(seed: int, batch: int = 3, n: int = 400, nc: int = 12) -> np.ndarray:
    """(B, N, 4 + nc) xywh + scores with heavy overlap: boxes jittered around a few centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(50, 590, size=(batch, 15, 2))
    pick = rng.integers(0, 15, size=(batch, n))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 12, size=(batch, n, 2))
    wh = rng.uniform(10, 160, size=(batch, n, 2))
    # Distinct scores (no exact ties); mostly small, some large, so the thresholds matter.
    scores = rng.uniform(0, 1, size=(batch, n, nc)) ** 3
    return np.concatenate([xy, wh, scores], axis=-1).astype(np.float32)


def _ultralytics_nms(pred: np.ndarray, **kw):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")  # ultralytics then uses torchvision.ops.nms (fast, its usual path)
    nms = pytest.importorskip("ultralytics.utils.nms")
    out = nms.non_max_suppression(torch.from_numpy(pred).permute(0, 2, 1).contiguous(), max_time_img=1e6, **kw)
    return [o.numpy() for o in out]


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape, (a.shape, b.shape)
        # Same kept detections in the same (descending score) order.
        np.testing.assert_array_equal(a[:, 5], b[:, 5])
        np.testing.assert_allclose(a[:, 4], b[:, 4], rtol=0, atol=0)
        np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        {"conf_thres": 0.25, "iou_thres": 0.45},
        {"conf_thres": 0.1, "iou_thres": 0.7, "agnostic": True},
        {"conf_thres": 0.05, "iou_thres": 0.6, "multi_label": True},
        {"conf_thres": 0.001, "iou_thres": 0.7, "multi_label": True, "max_det": 50},
        {"conf_thres": 0.2, "iou_thres": 0.5, "max_det": 7},
        {"conf_thres": 0.01, "iou_thres": 0.5, "max_nms": 60},
    ],
)
def test_nms_matches_ultralytics(kw):
    pred = _random_predictions(seed=len(str(kw)))
    theirs = _ultralytics_nms(pred, **kw)
    ours = non_max_suppression(pred, **kw).to_list()
    _assert_same(ours, theirs)
    assert sum(len(t) for t in theirs) > 0


def test_nms_classes_filter_and_empty():
    pred = _random_predictions(seed=5, batch=2, n=100, nc=6)
    pred[1, :, 4:] = 0.0  # second image: nothing above threshold
    theirs = _ultralytics_nms(pred, conf_thres=0.2, iou_thres=0.5, classes=[1, 4])
    ours = non_max_suppression(pred, conf_thres=0.2, iou_thres=0.5, classes=[1, 4])
    _assert_same(ours.to_list(), theirs)
    assert int(ours.count[1]) == 0
    assert ours.boxes.shape == (2, 300, 4) and ours.classes.dtype == np.int32


def test_nms_rejects_bad_thresholds():
    with pytest.raises(ValueError, match=r"^conf_thres 1.5 outside \[0, 1\]"):
        non_max_suppression(np.zeros((1, 10, 6), np.float32), conf_thres=1.5)
    with pytest.raises(ValueError, match=r"^iou_thres -0.1 outside \[0, 1\]"):
        non_max_suppression(np.zeros((1, 10, 6), np.float32), iou_thres=-0.1)
    with pytest.raises(ValueError, match=r"^prediction must be \(B, N, 4 \+ nc\), got \(10, 6\)"):
        non_max_suppression(np.zeros((10, 6), np.float32))


@pytest.mark.parametrize("n_alive", [40, 1500, 6000, 12000])
def test_greedy_on_the_alive_prefix_equals_greedy_on_all_slots(n_alive):
    """non_max_suppression runs the greedy loop on the shortest GREEDY_SIZES prefix holding
    every image's alive candidates; it must keep what the loop over all K slots keeps. The
    best-scored 60% of the alive boxes are one tight cluster (one kept), so the other kept
    boxes sit deep in the candidate list, past any too-short prefix."""
    from yolojax.ops import nms

    rng = np.random.default_rng(n_alive)
    b, n = 2, 30000  # one class: K = 30000 slots
    pred = np.zeros((b, n, 5), np.float32)
    pred[..., :2] = rng.uniform(0, 600, (b, n, 2))
    pred[..., 2:4] = rng.uniform(5, 40, (b, n, 2))
    for i in range(b):  # image i has n_alive / (i + 1) scores above conf
        alive = rng.choice(n, n_alive // (i + 1), replace=False)
        scores = np.sort(rng.uniform(0.01, 1.0, alive.size))[::-1]
        pred[i, alive, 4] = scores
        cluster = alive[: int(0.6 * alive.size)]
        pred[i, cluster, :4] = [300, 300, 100, 100] + rng.uniform(-1, 1, (cluster.size, 4))
    pred = jnp.asarray(pred)
    got = nms.non_max_suppression(pred, 0.001, 0.7, max_det=300)

    def full(p):
        cand, cand_offset, alive, top, cls = nms._candidates(p, 0.001, False, False, 30000, 7680.0, None)
        keep, count = nms._greedy_keep(cand_offset, alive, 0.7, 300)
        ok = jnp.arange(300) < count
        return jnp.where(ok[:, None], cand[keep], 0.0), jnp.where(ok, top[keep], 0.0), jnp.where(ok, cls[keep], 0), count

    want = jax.vmap(full)(pred)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert int(got.count[0]) > 1  # boxes past the cluster were kept
