"""Task-aligned label assignment (TOOD's TAL) with the semantics of ultralytics 8.4.190.

Everything is dense over (batch, max boxes, anchors) with fixed shapes: no Python loop over
boxes, no data-dependent shapes, no host synchronisation, so it jit-compiles and shards.

Differences in *mechanics* (not in results) from ultralytics' ``TaskAlignedAssigner``:
metrics are computed for every (gt, anchor) pair and then masked, instead of gathered at the
``nonzero`` pairs; the values are the same.

Ties. The top-k selection meets exact ties in practice: every anchor inside a box whose
predicted box has CIoU <= 0 with it has alignment metric exactly 0, and a box with fewer than
``topk`` positive-metric candidates must pick some of those zeros. ``lax.top_k`` takes tied
values in index order, which is what ``torch.topk``'s CUDA kernel does (ultralytics trains on
CUDA); torch's CPU algorithms (nth_element / partial_sort) pick ties in an unspecified order,
so ultralytics on CPU can differ from ultralytics on CUDA here. A zero-metric pick gets a
target score of 0 and changes the loss only when the same anchor is also claimed by another
box (then it goes to the box it overlaps most). ``argmax`` picks the first maximum, as
``torch.max(dim)`` does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from yolojax.ops.boxes import bbox_iou, xywh2xyxy, xyxy2xywh
from yolojax.ops.precision import compute_dtype


class Assignment(NamedTuple):
    """Output of :func:`assign`. B images, A anchors, C classes."""

    target_labels: jax.Array  # int32 (B, A): class of the assigned box (gt 0's for background)
    target_bboxes: jax.Array  # float32 (B, A, 4): xyxy of the assigned box, units of gt_bboxes
    target_scores: jax.Array  # float32 (B, A, C): one-hot class * normalised alignment; 0 for bg
    fg_mask: jax.Array  # bool (B, A): anchor is assigned to a box
    target_gt_idx: jax.Array  # int32 (B, A): index into the M boxes (0 for background)


def select_candidates_in_gts(
    anc_points: jax.Array,
    gt_bboxes: jax.Array,
    mask_gt: jax.Array,
    min_side: float,
    eps: float = 1e-9,
) -> jax.Array:
    """Anchors strictly inside each box: (A, 2), (B, M, 4) xyxy, (B, M) -> bool (B, M, A).

    Valid boxes with a side shorter than ``min_side`` (ultralytics' ``stride_val``: the second
    stride, 16 px for YOLOv8) are enlarged to ``min_side`` about their centre first, so that
    tiny boxes still contain anchors. Coordinates in pixels.
    """
    xywh = xyxy2xywh(gt_bboxes)
    small = (xywh[..., 2:] < min_side) & mask_gt[..., None]
    xywh = jnp.concatenate(
        [xywh[..., :2], jnp.where(small, jnp.asarray(min_side, xywh.dtype), xywh[..., 2:])], -1
    )
    boxes = xywh2xyxy(xywh)[:, :, None, :]  # (B, M, 1, 4)
    x, y = anc_points[:, 0], anc_points[:, 1]
    return (
        (x - boxes[..., 0] > eps)
        & (y - boxes[..., 1] > eps)
        & (boxes[..., 2] - x > eps)
        & (boxes[..., 3] - y > eps)
    )


def _pow(x: jax.Array, p: float) -> jax.Array:
    # torch computes pow(x, 0.5) as sqrt; keep the same rounding for the common exponent.
    return jnp.sqrt(x) if p == 0.5 else x**p


def _topk_mask(metric: jax.Array, k: int) -> jax.Array:
    """bool (..., A): True at the k largest entries of each row of ``metric`` (..., A)."""
    _, idx = jax.lax.top_k(metric, k)  # (..., k), ties -> lower index first
    hits = jnp.zeros(metric.shape, jnp.int32)
    lead = jnp.indices(idx.shape[:-1], sparse=True)
    hits = hits.at[(*[i[..., None] for i in lead], idx)].add(1)
    return hits > 0


def assign(
    pd_scores: jax.Array,
    pd_bboxes: jax.Array,
    anc_points: jax.Array,
    gt_labels: jax.Array,
    gt_bboxes: jax.Array,
    mask_gt: jax.Array,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
    min_side: float = 16.0,
    topk2: int | None = None,
) -> Assignment:
    """Assign ground-truth boxes to anchors as ultralytics' ``TaskAlignedAssigner``.

    With the defaults this is the assigner that 8.4.190's ``v8DetectionLoss`` builds:
    ``topk=10, alpha=0.5, beta=6.0, eps=1e-9``, ``stride_val`` = 16 (``min_side``) for
    strides (8, 16, 32), and ``topk2`` = ``topk`` (no second filtering).

    Args:
      pd_scores: (B, A, C) predicted class *probabilities* (sigmoid applied).
      pd_bboxes: (B, A, 4) predicted boxes, xyxy pixels.
      anc_points: (A, 2) anchor centres (x, y) in pixels.
      gt_labels: (B, M) integer class ids (any value on padded rows).
      gt_bboxes: (B, M, 4) ground-truth boxes, xyxy pixels (any value on padded rows).
      mask_gt: (B, M) bool, True for real boxes.

    Returns:
      :class:`Assignment`. All computation is in float32 (float64 when the predictions are)
      and carries no gradient.

    Algorithm: a box's candidates are the anchors inside it (see
    :func:`select_candidates_in_gts`); its alignment with each is ``score**alpha *
    max(CIoU, 0)**beta`` (score of the box's class). Each box keeps its ``topk`` best-aligned
    anchors (restricted to candidates); an anchor kept by several boxes goes to the box it
    overlaps most (argmax of CIoU over all boxes, first index on ties). Target scores are the
    one-hot class times ``align * max_overlap_of_box / (max_align_of_box + eps)``.
    """
    fdt = compute_dtype(pd_scores.dtype, pd_bboxes.dtype)
    pd_scores = jax.lax.stop_gradient(pd_scores).astype(fdt)
    pd_bboxes = jax.lax.stop_gradient(pd_bboxes).astype(fdt)
    anc_points = jax.lax.stop_gradient(anc_points).astype(fdt)
    gt_bboxes = jax.lax.stop_gradient(gt_bboxes).astype(fdt)
    gt_labels = gt_labels.astype(jnp.int32)
    mask_gt = mask_gt.astype(bool)
    b, a, c = pd_scores.shape
    m = gt_bboxes.shape[1]
    if m == 0:  # ultralytics' early return for a batch without boxes
        return Assignment(
            jnp.full((b, a), c, jnp.int32),
            jnp.zeros((b, a, 4), fdt),
            jnp.zeros((b, a, c), fdt),
            jnp.zeros((b, a), bool),
            jnp.zeros((b, a), jnp.int32),
        )

    # Candidates and alignment metric, (B, M, A).
    mask_in_gts = select_candidates_in_gts(anc_points, gt_bboxes, mask_gt, min_side)
    cand = mask_in_gts & mask_gt[..., None]
    ciou = bbox_iou(gt_bboxes[:, :, None, :], pd_bboxes[:, None, :, :], xywh=False, CIoU=True)
    overlaps = jnp.where(cand, jnp.maximum(ciou, 0.0), 0.0)
    labels = jnp.clip(gt_labels, 0, c - 1)
    bbox_scores = jnp.take_along_axis(
        jnp.swapaxes(pd_scores, 1, 2), labels[:, :, None], axis=1, mode="clip"
    )  # (B, M, A): score of each box's class at each anchor
    align_metric = jnp.where(cand, _pow(bbox_scores, alpha) * _pow(overlaps, beta), 0.0)

    # Top-k anchors per box, restricted to candidates of real boxes.
    mask_pos = _topk_mask(align_metric, topk) & cand

    # An anchor claimed by several boxes goes to the one with the highest overlap.
    claims = mask_pos.sum(axis=1)  # (B, A)
    best = jnp.argmax(overlaps, axis=1)  # (B, A), first index on ties
    is_best = jnp.arange(m)[None, :, None] == best[:, None, :]
    mask_pos = jnp.where((claims > 1)[:, None, :], is_best, mask_pos)
    if topk2 is not None and topk2 != topk:
        mask_pos &= _topk_mask(align_metric * mask_pos, topk2)

    fg_mask = mask_pos.any(axis=1)  # (B, A)
    target_gt_idx = jnp.argmax(mask_pos, axis=1).astype(jnp.int32)  # 0 for background

    # Targets of the assigned boxes.
    target_labels = jnp.maximum(jnp.take_along_axis(gt_labels, target_gt_idx, axis=1, mode="clip"), 0)
    target_bboxes = jnp.take_along_axis(gt_bboxes, target_gt_idx[..., None], axis=1, mode="clip")
    onehot = jax.nn.one_hot(target_labels, c, dtype=fdt)
    target_scores = onehot * fg_mask[..., None]

    # Normalise: each box's best-aligned anchor gets that box's highest overlap.
    align_metric = align_metric * mask_pos
    pos_align = align_metric.max(axis=-1, keepdims=True)  # (B, M, 1)
    pos_overlaps = (overlaps * mask_pos).max(axis=-1, keepdims=True)
    norm = (align_metric * pos_overlaps / (pos_align + eps)).max(axis=1)  # (B, A)
    target_scores = target_scores * norm[..., None]
    return Assignment(target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx)


def box_buckets(max_boxes: int, smallest: int = 8) -> tuple[int, ...]:
    """The box counts :func:`assign_bucketed` compiles the assigner for when batches are padded
    to ``max_boxes`` rows: the powers of two from ``smallest`` below ``max_boxes``, then
    ``max_boxes`` itself (e.g. 100 -> (8, 16, 32, 64, 100))."""
    sizes, n = [], smallest
    while n < max_boxes:
        sizes.append(n)
        n *= 2
    return (*sizes, max_boxes)


def assign_bucketed(
    pd_scores: jax.Array,
    pd_bboxes: jax.Array,
    anc_points: jax.Array,
    gt_labels: jax.Array,
    gt_bboxes: jax.Array,
    mask_gt: jax.Array,
    **kwargs,
) -> Assignment:
    """:func:`assign` at a cost that follows the batch's real box count, not its padding.

    The assigner's work is O(B * M * A) for M box rows. Here the real rows of each image are
    moved to the front (in their order), and :func:`assign` runs, through ``lax.switch``, on
    only the first n rows, n the smallest of :func:`box_buckets` (M) that holds the batch's
    largest real count. Padded rows never change an assignment, so the result equals
    :func:`assign` on all M rows; ``target_gt_idx`` still indexes the original rows. Same
    arguments and result as :func:`assign`; one executable holds every bucket.
    """
    m = gt_bboxes.shape[1]
    buckets = box_buckets(m)
    if len(buckets) == 1:
        return assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **kwargs)
    mask_gt = mask_gt.astype(bool)
    gt_bboxes = jax.lax.stop_gradient(gt_bboxes)
    order = jnp.argsort(~mask_gt, axis=1, stable=True)  # (B, M): real rows first, in order
    front = (jnp.take_along_axis(gt_labels, order, axis=1), jnp.take_along_axis(gt_bboxes, order[..., None], axis=1),
             jnp.take_along_axis(mask_gt, order, axis=1))
    predictions = jax.lax.stop_gradient((pd_scores, pd_bboxes, anc_points))
    index = jnp.searchsorted(jnp.asarray(buckets), front[2].sum(axis=1).max())

    def branch(n: int):
        return lambda labels, boxes, mask: assign(*predictions, labels[:, :n], boxes[:, :n], mask[:, :n], **kwargs)

    t = jax.lax.switch(index, [branch(n) for n in buckets], *front)
    # Back to the original rows; background anchors point at row 0, as in assign().
    gt_idx = jnp.where(t.fg_mask, jnp.take_along_axis(order, t.target_gt_idx, axis=1), 0).astype(jnp.int32)
    target_labels = jnp.maximum(jnp.take_along_axis(gt_labels.astype(jnp.int32), gt_idx, axis=1), 0)
    target_bboxes = jnp.take_along_axis(gt_bboxes.astype(t.target_bboxes.dtype), gt_idx[..., None], axis=1)
    return t._replace(target_labels=target_labels, target_bboxes=target_bboxes, target_gt_idx=gt_idx)
