"""Detection loss and task-aligned assigner against ultralytics 8.4.190 (the test oracle).

The oracle runs on CPU torch. The assigner's top-k meets exact ties (anchors inside a box
whose CIoU with their prediction is <= 0 all have metric 0). torch.topk's CUDA kernel, where
ultralytics trains, takes tied values in index order, as ``lax.top_k`` does; its CPU
algorithms pick them in an unspecified order. So the oracle runs with ``torch.topk``
replaced by a stable sort (CUDA's choice); see ``stable_topk``.
"""

import collections
import contextlib
import os
import types

os.environ.setdefault("YOLO_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.loss import DetectionLoss, assign, assign_bucketed, box_buckets
from yolojax.ops import make_anchors

STRIDES = (8, 16, 32)
REG_MAX = 16


# ---------------------------------------------------------------------------------------------
# Oracle helpers


@pytest.fixture(scope="module")
def ul():
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.utils import loss, ops, tal

    return types.SimpleNamespace(torch=torch, loss=loss, ops=ops, tal=tal)


TopK = collections.namedtuple("TopK", "values indices")


@contextlib.contextmanager
def stable_topk(torch):
    """Make torch.topk pick exactly tied values in index order, as its CUDA kernel does."""
    original = torch.topk

    def topk(x, k, dim=-1, largest=True, sorted=True):
        values, idx = torch.sort(x, dim=dim, descending=largest, stable=True)
        return TopK(values.narrow(dim, 0, k), idx.narrow(dim, 0, k))

    torch.topk = topk
    try:
        yield
    finally:
        torch.topk = original


def ultralytics_criterion(ul, nc, gains=(7.5, 0.5, 1.5), class_weights=None):
    """v8DetectionLoss built on a stand-in exposing what its __init__ reads."""
    torch = ul.torch

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # for next(parameters()).device
            self.args = types.SimpleNamespace(box=gains[0], cls=gains[1], dfl=gains[2])
            head = types.SimpleNamespace(
                stride=torch.tensor(STRIDES, dtype=torch.float32), nc=nc, reg_max=REG_MAX
            )
            self.model = [head]
            if class_weights is not None:
                self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    return ul.loss.v8DetectionLoss(Stub())


def random_feats(rng, b, h, w, nc, plain):
    """Random but plausible raw head outputs, NHWC per level.

    ``plain``: every logit ~ N(0, 2). Otherwise box logits peak at a random distance in
    [0.3, 6] cells per side (so predicted boxes have sensible sizes and CIoU with the targets
    is often positive), and class logits ~ N(-2, 2).
    """
    feats = []
    for s in STRIDES:
        shape = (b, h // s, w // s)
        if plain:
            f = rng.normal(0, 2, (*shape, 4 * REG_MAX + nc))
        else:
            d = rng.uniform(0.3, 6.0, (*shape, 4, 1))
            box = -((np.arange(REG_MAX) - d) ** 2) / (2 * 0.8**2)
            box = box + rng.normal(0, 0.5, (*shape, 4, REG_MAX))
            cls = rng.normal(-2, 2, (*shape, nc))
            f = np.concatenate([box.reshape(*shape, 4 * REG_MAX), cls], -1)
        feats.append(f.astype(np.float32))
    return feats


def random_targets(rng, counts, nc, border):
    """ultralytics' batch rows (batch_idx, cls, cx, cy, w, h), normalised, sorted by image."""
    rows = []
    for i, n in enumerate(counts):
        for _ in range(n):
            bw, bh = rng.uniform(0.02, 0.6, 2)
            cx, cy = rng.uniform(bw / 2, 1 - bw / 2), rng.uniform(bh / 2, 1 - bh / 2)
            if border and rng.random() < 0.4:  # touch one image edge
                side = rng.integers(4)
                cx = bw / 2 if side == 0 else 1 - bw / 2 if side == 1 else cx
                cy = bh / 2 if side == 2 else 1 - bh / 2 if side == 3 else cy
            rows.append([i, rng.integers(nc), cx, cy, bw, bh])
    return np.asarray(rows, np.float32).reshape(-1, 6)


def to_batch(ul, rows, b, m, h, w):
    """Our padded batch for the same targets: xyxy pixels computed with ultralytics' own
    arithmetic (scale, then xywh2xyxy, in float32) so both see bit-identical boxes."""
    torch = ul.torch
    xywh = torch.from_numpy(rows[:, 2:6].copy()) * torch.tensor([w, h, w, h], dtype=torch.float32)
    xyxy = ul.ops.xywh2xyxy(xywh).numpy()
    batch = dict(
        boxes=np.zeros((b, m, 4), np.float32),
        classes=np.zeros((b, m), np.int32),
        mask=np.zeros((b, m), bool),
    )
    fill = np.zeros(b, int)
    for row, box in zip(rows, xyxy):
        i = int(row[0])
        batch["boxes"][i, fill[i]] = box
        batch["classes"][i, fill[i]] = int(row[1])
        batch["mask"][i, fill[i]] = True
        fill[i] += 1
    return batch


def run_ultralytics(ul, feats, rows, nc, grad=False, class_weights=None):
    torch = ul.torch
    crit = ultralytics_criterion(ul, nc, class_weights=class_weights)
    levels = [torch.tensor(f).permute(0, 3, 1, 2).contiguous().requires_grad_(grad) for f in feats]
    b, no = levels[0].shape[:2]
    flat = torch.cat([x.reshape(b, no, -1) for x in levels], -1)
    preds = {"boxes": flat[:, : 4 * REG_MAX], "scores": flat[:, 4 * REG_MAX :], "feats": levels}
    t = torch.from_numpy(rows)
    batch = {"batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:6]}
    with stable_topk(torch):
        (fg, gt_idx, tboxes, _, _), _, items = crit.get_assigned_targets_and_loss(preds, batch)
        out = dict(
            items={k.removesuffix("_loss"): float(v) for k, v in items.items()},
            fg=fg.numpy(), gt_idx=gt_idx.numpy(), tboxes=tboxes.numpy(),
        )
        if grad:
            loss, _ = crit(preds, batch)  # loss * batch_size, as the trainer receives it
            loss.sum().backward()  # what ultralytics' trainer back-propagates
            out["grads"] = [x.grad.permute(0, 2, 3, 1).numpy() for x in levels]
    return out


def _loss_and_assignment(loss_fn, feats, batch):
    total, parts = loss_fn(feats, batch)
    return total, parts, loss_fn.assign_targets(feats, batch)


# DetectionLoss is a frozen dataclass, hence hashable: a static jit argument.
_loss_and_assignment_jit = jax.jit(_loss_and_assignment, static_argnums=0)


def ours(loss_fn, feats, batch):
    return _loss_and_assignment_jit(loss_fn, [jnp.asarray(x) for x in feats], batch)


def rel_err(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


# One jitted value-and-grad at one small shape, shared by the gradient, edge-case and
# axis_name tests so that it compiles once.
SMALL = dict(b=2, m=50, h=64, w=96, nc=3)
small_step = jax.jit(jax.value_and_grad(DetectionLoss(SMALL["nc"]), has_aux=True))


# ---------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize(
    "h, w, nc, plain, border",
    [(128, 128, 80, False, False), (160, 256, 3, True, True), (256, 160, 80, False, True)],
    ids=["128x128-nc80", "160x256-nc3-normal-logits-border", "256x160-nc80-border"],
)
def test_loss_matches_ultralytics(ul, h, w, nc, plain, border):
    rng = np.random.default_rng(h * 1000 + w + nc)
    b, m = 4, 50
    counts = [0, int(rng.integers(1, 20)), int(rng.integers(20, 50)), 50]  # empty ... full
    feats = random_feats(rng, b, h, w, nc, plain)
    rows = random_targets(rng, counts, nc, border)
    batch = to_batch(ul, rows, b, m, h, w)
    ref = run_ultralytics(ul, feats, rows, nc)
    total, parts, asg = ours(DetectionLoss(nc), feats, batch)

    errs = {k: rel_err(float(parts[k]), ref["items"][k]) for k in ("box", "cls", "dfl")}
    print("relative errors", errs)
    assert max(errs.values()) < 1e-4, (errs, ref["items"])
    assert abs(float(total) - sum(float(v) for v in parts.values())) <= 1e-5 * float(total)

    fg = np.asarray(asg.fg_mask)
    assert fg[0].sum() == 0 and (fg[1:].sum(1) > 0).all()  # non-trivial assignment
    np.testing.assert_array_equal(fg, ref["fg"])
    np.testing.assert_array_equal(np.asarray(asg.target_gt_idx)[fg], ref["gt_idx"][fg])
    np.testing.assert_allclose(np.asarray(asg.target_bboxes)[fg], ref["tboxes"][fg], rtol=1e-6)


def test_cls_pw_weights_and_loss_match_ultralytics(ul):
    """cls_pw: ultralytics' DetectionTrainer weights (1 / count) ** cls_pw, mean 1, and its
    class-weighted BCE; a class without labels gets the mean weight."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    from yolojax.loss.class_weights import class_weights

    counts = np.array([40, 3, 0, 7], np.float32)
    for cls_pw in (0.0, 0.5, 1.0):
        trainer = types.SimpleNamespace(args=types.SimpleNamespace(cls_pw=cls_pw))
        theirs = DetectionTrainer.compute_class_weights(trainer, counts)
        ours_w = class_weights(counts, cls_pw)
        if cls_pw == 0:
            assert ours_w is None
            continue
        np.testing.assert_allclose(ours_w, theirs / theirs.mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="cls_pw"):
        class_weights(counts, 1.5)

    h, w, nc, b, m = 128, 96, 4, 3, 20
    rng = np.random.default_rng(5)
    feats = random_feats(rng, b, h, w, nc, plain=False)
    rows = random_targets(rng, [2, 9, 20], nc, border=False)
    weights = class_weights(counts, 1.0)
    ref = run_ultralytics(ul, feats, rows, nc, class_weights=weights)
    _, parts, _ = ours(DetectionLoss(nc, class_weights=weights), feats, to_batch(ul, rows, b, m, h, w))
    unweighted = run_ultralytics(ul, feats, rows, nc)["items"]["cls"]
    assert rel_err(float(parts["cls"]), ref["items"]["cls"]) < 1e-5
    assert rel_err(ref["items"]["cls"], unweighted) > 5e-4  # the weights matter at this precision


@pytest.mark.parametrize("topk2", [None, 4])
def test_assigner_matches_ultralytics(ul, topk2):
    torch = ul.torch
    rng = np.random.default_rng(7)
    b, m, nc, h, w = 3, 12, 5, 64, 96
    points, strides = make_anchors([(h // s, w // s) for s in STRIDES], STRIDES)
    anc = np.array(points * strides)
    a = anc.shape[0]
    scores = rng.uniform(0, 1, (b, a, nc)).astype(np.float32)
    half = rng.uniform(2, 30, (b, a, 4)) * np.asarray(strides)[None] / 8
    pd = np.concatenate([anc - half[..., :2], anc + half[..., 2:]], -1).astype(np.float32)
    xy = rng.uniform(0, [w, h], (b, m, 2))
    gt = np.concatenate([xy, xy + rng.uniform(2, 50, (b, m, 2))], -1).astype(np.float32)
    gt[0, 0] = [0, 0, 30, 20]  # top-left corner box: its zero-metric anchors are the ties
    pd[0, :40] += 500.0  # ... made real: predictions there miss every box
    gt[1, 1] = [0, 0, w, h]  # whole image
    gt[1, 2] = [w - 3, h - 3, w, h]  # tiny box in the corner (enlarged to 16 px)
    labels = rng.integers(0, nc, (b, m)).astype(np.int32)
    mask = np.ones((b, m), bool)
    mask[0, 8:] = False
    mask[2] = False  # an image without boxes
    gt[~mask] = 0.0

    res = jax.jit(lambda *x: assign(*x, topk2=topk2))(
        jnp.asarray(scores), jnp.asarray(pd), jnp.asarray(anc), labels, jnp.asarray(gt), mask
    )
    assigner = ul.tal.TaskAlignedAssigner(
        topk=10, num_classes=nc, alpha=0.5, beta=6.0, stride=list(STRIDES), topk2=topk2
    )
    with stable_topk(torch):
        ref = assigner(
            torch.from_numpy(scores), torch.from_numpy(pd), torch.from_numpy(anc),
            torch.from_numpy(labels[..., None].astype(np.float32)), torch.from_numpy(gt),
            torch.from_numpy(mask[..., None].astype(np.float32)),
        )
    ref_labels, ref_boxes, ref_scores, ref_fg, ref_idx = (x.numpy() for x in ref)
    assert res.fg_mask.shape == (b, a) and res.target_scores.shape == (b, a, nc)
    assert ref_fg[:2].sum() > 20 and ref_fg[2].sum() == 0
    np.testing.assert_array_equal(np.asarray(res.fg_mask), ref_fg)
    np.testing.assert_array_equal(np.asarray(res.target_gt_idx), ref_idx)
    np.testing.assert_array_equal(np.asarray(res.target_labels), ref_labels)
    np.testing.assert_array_equal(np.asarray(res.target_bboxes), ref_boxes)
    np.testing.assert_allclose(np.asarray(res.target_scores), ref_scores, rtol=1e-5, atol=1e-6)


def test_gradient_matches_ultralytics_backprop(ul):
    """batch_size * grad(total) == grad of what ultralytics' trainer back-propagates."""
    rng = np.random.default_rng(11)
    b, m, h, w, nc = (SMALL[k] for k in ("b", "m", "h", "w", "nc"))
    feats = random_feats(rng, b, h, w, nc, plain=False)
    rows = random_targets(rng, [4, 25], nc, border=True)
    batch = to_batch(ul, rows, b, m, h, w)
    ref = run_ultralytics(ul, feats, rows, nc, grad=True)
    (_, parts), grads = small_step([jnp.asarray(x) for x in feats], batch)
    for k in ("box", "cls", "dfl"):
        assert rel_err(float(parts[k]), ref["items"][k]) < 1e-4
    for g, r in zip(grads, ref["grads"]):
        g = np.asarray(g) * b
        assert np.isfinite(g).all()
        assert np.abs(g - r).max() <= 1e-4 * np.abs(r).max()


# ---------------------------------------------------------------------------------------------
# Edge cases


def edge_batches(h, w, m, b=2):
    """Fixed-shape batches: no boxes at all; all m rows valid; boxes on the borders."""
    rng = np.random.default_rng(5)
    empty = dict(boxes=np.zeros((b, m, 4), np.float32), classes=np.zeros((b, m), np.int32),
                 mask=np.zeros((b, m), bool))
    xy = rng.uniform(0, [w - 8, h - 8], (b, m, 2))
    full = dict(
        boxes=np.concatenate([xy, xy + rng.uniform(4, 40, (b, m, 2))], -1).clip(0, [w, h, w, h]).astype(np.float32),
        classes=rng.integers(0, 3, (b, m)).astype(np.int32),
        mask=np.ones((b, m), bool),
    )
    border = {k: v.copy() for k, v in empty.items()}
    edge_boxes = [[0, 0, w, h], [0, 0, 10, 10], [w - 2, h - 2, w, h], [0, 20, 30, h],
                  [w / 2, 0, w, 3], [0, 0, w, 0.5]]
    border["boxes"][0, : len(edge_boxes)] = edge_boxes
    border["mask"][0, : len(edge_boxes)] = True
    border["classes"][0, : len(edge_boxes)] = np.arange(len(edge_boxes)) % 3
    return {"empty": empty, "full": full, "border": border}


def test_edge_cases_are_finite_and_jitted(ul):
    b, m, h, w, nc = (SMALL[k] for k in ("b", "m", "h", "w", "nc"))
    feats = [jnp.asarray(f) for f in random_feats(np.random.default_rng(3), b, h, w, nc, plain=True)]
    step = small_step
    for name, batch in edge_batches(h, w, m, b).items():
        (total, parts), grads = step(feats, batch)
        assert np.isfinite(float(total)), name
        assert all(np.isfinite(float(v)) for v in parts.values()), name
        assert all(np.isfinite(np.asarray(g)).all() for g in grads), name
        if name == "empty":
            assert float(parts["box"]) == 0.0 and float(parts["dfl"]) == 0.0
            logits = np.concatenate([np.asarray(f)[..., 4 * REG_MAX :].reshape(-1) for f in feats])
            bce_sum = np.sum(np.logaddexp(0.0, logits))  # BCE with all-zero targets, tss = 1
            np.testing.assert_allclose(float(parts["cls"]), 0.5 * bce_sum, rtol=1e-5)
        else:
            assert float(parts["box"]) > 0 and float(parts["dfl"]) > 0
    assert step._cache_size() == 1  # one compilation for every batch at this shape

    # Same numbers as ultralytics (the empty batch reaches its n_max_boxes == 0 early exit).
    for name, batch in edge_batches(h, w, m, b).items():
        if name == "full":
            continue
        valid = np.argwhere(batch["mask"])
        xyxy = batch["boxes"][batch["mask"]]
        xywhn = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / w, (xyxy[:, 1] + xyxy[:, 3]) / 2 / h,
                          (xyxy[:, 2] - xyxy[:, 0]) / w, (xyxy[:, 3] - xyxy[:, 1]) / h], -1)
        rows = np.concatenate([valid[:, :1], batch["classes"][batch["mask"]][:, None], xywhn], -1)
        rows = rows.astype(np.float32).reshape(-1, 6)
        same = to_batch(ul, rows, b, m, h, w)
        ref = run_ultralytics(ul, [np.asarray(f) for f in feats], rows, nc)
        (_, parts), _ = step(feats, same)
        for k in ("box", "cls", "dfl"):
            assert rel_err(float(parts[k]), ref["items"][k]) < 1e-4 or abs(ref["items"][k]) < 1e-7, (name, k)

    # Low-precision head outputs: computed in float32.
    (total, parts), grads = jax.jit(jax.value_and_grad(DetectionLoss(nc), has_aux=True))(
        [f.astype(jnp.bfloat16) for f in feats], edge_batches(h, w, m, b)["full"]
    )
    assert total.dtype == jnp.float32 and np.isfinite(float(total))
    assert all(g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all() for g in grads)


def test_axis_name_splits_the_global_loss():
    """With axis_name, per-shard losses and gradients sum to the whole-batch ones."""
    b, m, h, w, nc = (SMALL[k] for k in ("b", "m", "h", "w", "nc"))
    feats = [jnp.asarray(f) for f in random_feats(np.random.default_rng(9), b, h, w, nc, plain=False)]
    batch = edge_batches(h, w, m, b)["full"]
    batch["mask"][1, 10:] = False
    (total, parts), grads = small_step(feats, batch)

    sharded = DetectionLoss(nc, axis_name="data")
    split = lambda x: x.reshape(2, x.shape[0] // 2, *x.shape[1:])
    (s_total, s_parts), s_grads = jax.jit(
        jax.vmap(jax.value_and_grad(sharded, has_aux=True), axis_name="data")
    )(jax.tree.map(split, feats), jax.tree.map(split, {k: jnp.asarray(v) for k, v in batch.items()}))
    np.testing.assert_allclose(float(s_total.sum()), float(total), rtol=1e-5)
    for k in parts:
        np.testing.assert_allclose(float(s_parts[k].sum()), float(parts[k]), rtol=1e-5)
    for g, sg in zip(grads, s_grads):
        np.testing.assert_allclose(np.asarray(sg).reshape(g.shape), np.asarray(g), rtol=1e-4, atol=1e-8)
    assert small_step._cache_size() == 1


def test_box_buckets():
    assert box_buckets(100) == (8, 16, 32, 64, 100)
    assert box_buckets(64) == (8, 16, 32, 64)
    assert box_buckets(5) == (5,)


@pytest.mark.parametrize("real_counts", [(3, 0), (9, 14), (40, 2)])
def test_bucketed_assigner_equals_the_full_one(real_counts):
    """Real rows anywhere among 48 padded ones (with junk in the padding): same assignment,
    with target_gt_idx pointing at the original rows."""
    rng = np.random.default_rng(sum(real_counts))
    b, m, nc, h, w = 2, 48, 4, 64, 64
    points, strides = make_anchors([(h // s, w // s) for s in STRIDES], STRIDES)
    anc = np.array(points * strides)
    scores = rng.uniform(0, 1, (b, anc.shape[0], nc)).astype(np.float32)
    half = rng.uniform(2, 30, (b, anc.shape[0], 4)) * np.asarray(strides)[None] / 8
    pd = np.concatenate([anc - half[..., :2], anc + half[..., 2:]], -1).astype(np.float32)
    xy = rng.uniform(0, [w, h], (b, m, 2))
    gt = np.concatenate([xy, xy + rng.uniform(2, 40, (b, m, 2))], -1).astype(np.float32)
    labels = rng.integers(0, nc, (b, m)).astype(np.int32)
    mask = np.zeros((b, m), bool)
    for i, n in enumerate(real_counts):
        mask[i, rng.choice(m, n, replace=False)] = True
    args = (jnp.asarray(scores), jnp.asarray(pd), jnp.asarray(anc), labels, jnp.asarray(gt), mask)
    full = jax.jit(assign)(*args)
    bucketed = jax.jit(assign_bucketed)(*args)
    assert int(full.fg_mask.sum()) > 0
    for name, a, c in zip(full._fields, full, bucketed):
        if name == "target_scores":  # the same arithmetic, compiled separately: float32 noise
            np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(np.asarray(c), np.asarray(a), err_msg=name)
