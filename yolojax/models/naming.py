"""yolojax variable / module paths under ultralytics' (torch) names, for name-based options
such as ``freeze``."""

from __future__ import annotations

from collections.abc import Sequence

# Flax leaf -> torch state-dict leaf (the inverse of yolojax.weights.ultralytics.torch_key_to_flax).
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def ultralytics_name(path: Sequence[str], leaf: bool = True) -> str:
    """A yolojax path -> ultralytics' dotted name: ``("model_22", "cv2_0_0", "conv",
    "kernel")`` -> ``"model.22.cv2.0.0.conv.weight"``; with ``leaf=False`` the path is a
    module's: ``("model_0", "bn")`` -> ``"model.0.bn"``."""
    parts = [str(p) for p in path]
    if leaf:
        parts[-1] = _TORCH_LEAF.get(parts[-1], parts[-1])
        return ".".join([*(p.replace("_", ".") for p in parts[:-1]), parts[-1]])
    return ".".join(p.replace("_", ".") for p in parts)


def in_frozen_layer(name: str, frozen: Sequence[str]) -> bool:
    """ultralytics' test ``any(x in name for x in freeze_layer_names)``."""
    return any(f in name for f in frozen)


# Training-only parameters kept beside the model's in ``params`` (knowledge distillation's
# projector, yolojax.loss.distill): trained, clipped and averaged into the EMA with the model,
# never part of the weights a run hands on (validation, checkpoints_best as weights, exports).
DISTILL_PROJECTOR = "distill_projector"


def model_variables(variables: dict) -> dict:
    """``variables`` ({"params", "batch_stats"}) without the training-only parameters
    (:data:`DISTILL_PROJECTOR`): the detector's own."""
    params = variables["params"]
    if DISTILL_PROJECTOR not in params:
        return variables
    return {**variables, "params": {k: v for k, v in params.items() if k != DISTILL_PROJECTOR}}
