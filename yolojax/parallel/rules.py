"""Partition rules (big_vision style): regexes on parameter paths -> sharding tactics.

A rule list is ordered ``[(regex, tactic), ...]``; the first regex that ``re.search``-es
the '/'-joined path of a leaf (e.g. ``model_2/m_0/cv1/conv/kernel``,
``model_22/cv3_0_0/bn/mean``; paths are relative to the ``params`` or ``batch_stats`` tree)
decides its tactic. A leaf no rule matches is replicated. Tactics:

``replicate``  every device holds the whole array.
``fsdp``       the largest dimension divisible by the 'data' axis size is split over
               'data' (ZeRO-3 / FSDP: parameters, gradients, optimizer state and EMA are
               sharded; XLA all-gathers a weight before use and reduce-scatters its
               gradient); replicated when no dimension divides.
``tp``         output channels (the last dimension: HWIO conv kernels, and the (C,)
               BatchNorm scale, bias, mean and var that follow each conv) split over
               'model' when divisible by its size, else replicated.

Optimizer state, the gradient accumulator and the EMA follow the params: see
:func:`state_shardings`.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from yolojax.parallel.mesh import DATA, MODEL

TACTICS = ("replicate", "fsdp", "tp")

Rules = Sequence[tuple[str, str]]

# Named rule sets (config: parallel.rules = "data" | "tp" | "fsdp", or an explicit list).
RULE_SETS: dict[str, list[tuple[str, str]]] = {
    "data": [(".*", "replicate")],
    "fsdp": [(".*", "fsdp")],
    "tp": [
        (r"(^|/)conv/kernel$", "tp"),  # Conv blocks' HWIO kernels: output channels.
        (r"(^|/)bn/(scale|bias|mean|var)$", "tp"),  # their BatchNorm, channel for channel.
        (r"cv[23]_\d+_2/(kernel|bias)$", "tp"),  # the head's final 1x1 convs.
        (".*", "replicate"),
    ],
}


def get_rules(rules: str | Rules) -> list[tuple[str, str]]:
    """A rule list from a name in :data:`RULE_SETS` or a list of (regex, tactic)."""
    if isinstance(rules, str):
        if rules not in RULE_SETS:
            raise ValueError(f"unknown rule set {rules!r}; expected one of {sorted(RULE_SETS)}")
        return list(RULE_SETS[rules])
    out = []
    for regex, tactic in rules:
        if tactic not in TACTICS:
            raise ValueError(f"unknown tactic {tactic!r} for {regex!r}; expected one of {TACTICS}")
        re.compile(regex)
        out.append((regex, tactic))
    return out


def path_str(path: Sequence[Any]) -> str:
    """A jax key path -> 'a/b/c' (dict keys, attribute names and indices)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def tactic_for(path: str, rules: Rules) -> str:
    for regex, tactic in rules:
        if re.search(regex, path):
            return tactic
    return "replicate"


def spec_for(shape: Sequence[int], tactic: str, mesh: Mesh) -> P:
    """The PartitionSpec that ``tactic`` gives an array of ``shape`` on ``mesh``."""
    shape = tuple(shape)
    if tactic == "replicate" or not shape:
        return P()
    if tactic == "fsdp":
        n = mesh.shape[DATA]
        if n == 1:
            return P()
        # Largest divisible dimension; ties go to the last (output channels of a kernel).
        best = None
        for i, d in enumerate(shape):
            if d % n == 0 and d >= n and (best is None or d >= shape[best]):
                best = i
        if best is None:
            return P()
        return P(*[DATA if i == best else None for i in range(len(shape))])
    if tactic == "tp":
        n = mesh.shape[MODEL]
        if n == 1 or shape[-1] % n:
            return P()
        return P(*([None] * (len(shape) - 1) + [MODEL]))
    raise ValueError(f"unknown tactic {tactic!r}")


def tree_specs(tree: Any, mesh: Mesh, rules: str | Rules) -> Any:
    """A pytree like ``tree`` (arrays or ShapeDtypeStructs) of PartitionSpecs."""
    rules = get_rules(rules)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: spec_for(np.shape(x), tactic_for(path_str(path), rules), mesh), tree
    )


def tree_shardings(tree: Any, mesh: Mesh, rules: str | Rules) -> Any:
    """A pytree like ``tree`` of NamedShardings from ``rules`` (params or batch_stats)."""
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), tree_specs(tree, mesh, rules),
        is_leaf=lambda x: isinstance(x, P),
    )


def _dict_keys(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def follow(tree: Any, reference: Any, reference_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for ``tree`` (e.g. optax state) that follow ``reference`` (e.g. params).

    A leaf whose dict-key path ends with a reference leaf's path and has the same shape
    gets that leaf's sharding (optax's ``mu``/``nu``/momentum trees are params-shaped dicts
    nested under named tuples and, for ``multi_transform``, a dict of group names); every
    other leaf (step counts, injected hyperparameters) is replicated.
    """
    ref = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(reference):
        ref[_dict_keys(path)] = np.shape(leaf)
    ref_sh = {
        _dict_keys(path): s
        for path, s in jax.tree_util.tree_leaves_with_path(
            reference_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
        )
    }
    rep = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = _dict_keys(path)
        for start in range(len(keys)):
            suffix = keys[start:]
            if suffix in ref and ref[suffix] == np.shape(leaf):
                return ref_sh[suffix]
        return rep

    return jax.tree_util.tree_map_with_path(pick, tree)


def state_shardings(state: Any, mesh: Mesh, rules: str | Rules) -> Any:
    """NamedShardings for a whole :class:`yolojax.train.TrainState` (arrays or the
    ShapeDtypeStructs of ``jax.eval_shape``): params and batch_stats by ``rules``;
    grad_accum and EMA like them; opt_state by :func:`follow`; scalars replicated; a
    distillation teacher's variables (``state.teacher``) by ``rules`` too."""
    params = tree_shardings(state.params, mesh, rules)
    batch_stats = tree_shardings(state.batch_stats, mesh, rules)
    rep = NamedSharding(mesh, P())
    return state.replace(
        step=rep,
        params=params,
        batch_stats=batch_stats,
        opt_state=follow(state.opt_state, state.params, params, mesh),
        grad_accum=params,
        last_opt_step=rep,
        ema={"params": params, "batch_stats": batch_stats},
        ema_updates=rep,
        teacher=None if state.teacher is None else {k: tree_shardings(v, mesh, rules) for k, v in state.teacher.items()},
    )


def sharding_table(tree: Any, shardings: Any | None = None, max_rows: int | None = None) -> str:
    """A printable table: path, shape, PartitionSpec, per-device shape, for every leaf.

    ``shardings`` defaults to the leaves' own ``.sharding`` (for placed jax.Arrays).
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if shardings is None:
        shs = [leaf.sharding for _, leaf in leaves]
    else:
        shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    rows = [("path", "shape", "spec", "per-device")]
    for (path, leaf), sh in zip(leaves, shs):
        shape = tuple(np.shape(leaf))
        spec = getattr(sh, "spec", None)
        rows.append((path_str(path), str(shape), str(tuple(spec) if spec is not None else spec),
                     str(tuple(sh.shard_shape(shape)))))
    total = len(rows) - 1
    if max_rows is not None and total > max_rows:
        rows = rows[: max_rows + 1] + [(f"... {total - max_rows} more", "", "", "")]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes the largest-loaded device holds for ``tree`` (arrays or ShapeDtypeStructs)
    under ``shardings``, from each sharding's ``shard_shape`` (nothing is materialised)."""
    total = 0
    shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for leaf, sh in zip(jax.tree.leaves(tree), shs):
        shape = tuple(np.shape(leaf))
        total += int(np.prod(sh.shard_shape(shape), dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total
