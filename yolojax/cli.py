"""The ``yolojax`` command in ultralytics' syntax, and shared command-line helpers.

    yolojax train model=yolov8n.pt data=coco8.yaml epochs=3 imgsz=640 batch=16
    yolojax train model=yolo11n.yaml data=coco8.yaml epochs=3
    yolojax val model=runs/detect/train data=coco8.yaml
    yolojax train model=yolov8n.pt data=tfds:coco/2017 data.tfds.data_dir=/data/tfds
    yolojax predict model=yolov8n.pt source=bus.jpg conf=0.25
    yolojax export model=runs/detect/train format=onnx
    yolojax convert model=yolov8n.pt out=runs/yolov8n
    yolojax prune model=yolov8n.pt ratio=0.3 method=bn_scale out=runs/yolov8n_pruned30 data=coco8.yaml
    yolojax help

``KEY=VALUE`` arguments use ultralytics 8.4.190's names (cfg/default.yaml). For train they
map onto the fields of ``configs/base.py`` through :data:`TRAIN_KEYS`; any config field may
also be named directly (``max_steps=100``, ``mesh.data=4``, ``checkpoint.keep=5``). An
unknown key is refused, naming the nearest valid one. ``model=yolov8s.yaml`` (or
``yolo11s.yaml``) picks the family and scale and trains from scratch; ``model=yolov8s.pt``
also starts from those weights (a .pt, converted directory or train workdir whose name gives
no model: the family and scale it holds).
As in ultralytics, runs go to ``project/name`` (runs/detect/train, train2, ... unless
``exist_ok=True``; ``resume=True`` reuses the directory, which yolojax resumes from).

Each mode parses its keys and makes one call into the packages: train
(:func:`yolojax.train.run.train`), val (:func:`yolojax.evaluation.validate`), predict
(:func:`yolojax.inference.predict`), export (:func:`yolojax.inference.export`), convert
(:mod:`yolojax.weights`), prune (:func:`yolojax.prune.prune_and_validate`).
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from yolojax.config import check_arguments, config_names, default_config, flatten, load_config
from yolojax.console import ConfigError, configure_logging, error_line


# ultralytics train argument -> yolojax config field (configs/base.py). Every other config
# field is accepted under its own dotted name; model, cfg, project, name, exist_ok and
# resume are handled by train_config().
TRAIN_KEYS: dict[str, str] = {
    "data": "data.yaml", "epochs": "epochs", "imgsz": "imgsz", "batch": "batch_size", "workers": "data.workers",
    "seed": "seed", "optimizer": "optimizer", "lr0": "lr0", "lrf": "lrf", "momentum": "momentum",
    "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "warmup_momentum": "warmup_momentum",
    "warmup_bias_lr": "warmup_bias_lr", "cos_lr": "cos_lr", "nbs": "nbs", "box": "box", "cls": "cls", "dfl": "dfl",
    "hsv_h": "hsv_h", "hsv_s": "hsv_s", "hsv_v": "hsv_v", "degrees": "degrees", "translate": "translate",
    "scale": "scale", "shear": "shear", "perspective": "perspective", "flipud": "flipud", "fliplr": "fliplr",
    "mosaic": "mosaic", "mixup": "mixup", "close_mosaic": "close_mosaic", "val": "val.enabled", "conf": "val.conf",
    "iou": "val.iou", "max_det": "val.max_det", "cache": "data.cache", "augment_on": "data.augment_on",
    "patience": "patience", "time": "time", "save_period": "save_period", "fraction": "fraction", "freeze": "freeze",
    "single_cls": "single_cls", "classes": "classes", "multi_scale": "multi_scale", "rect": "rect",
    "cutmix": "cutmix", "bgr": "bgr", "cls_pw": "cls_pw", "distill_model": "distill_model", "dis": "dis",
}
RUN_KEYS = ("model", "cfg", "project", "name", "exist_ok", "resume")
# ultralytics 8.4.190's amp values (engine/trainer.py) -> dtype: True is mixed precision on an
# accelerator and float32 on CPU (its check_amp), i.e. dtype='auto'.
AMP_DTYPES = {True: "auto", False: "float32", "fp32": "float32", "bf16": "bfloat16"}
# yolojax plan's own keys, beside the train ones (yolojax.train.plan, docs/scaling.md).
PLAN_KEYS = ("model", "cfg", "topology", "json", "hlo", "rules", "sync_bn")
PLAN_HELP = """usage: yolojax plan KEY=VALUE ...   (also python -m yolojax.plan KEY=VALUE ...)
The train step of these train keys compiled for a target without running it; per device: peak
memory (and whether it fits the chip), FLOPs, bytes, collectives, a roofline step time.
  topology=   '' this machine's devices (default); cpu:N simulated CPU devices; a TPU topology
              such as v5e:2x2 ... v5e:16x16, v5p:2x2x1, v6e:4x4 (pip install 'yolojax[tpu]')
  model=      yolov8{n,s,m,l,x} or yolo11{n,s,m,l,x} .pt or .yaml (the weights need not exist);
              data= for the class count
  batch=      the global batch; imgsz=, dtype= or amp=, mesh.data=, mesh.model=, parallel.mode=
  rules=      parallel.rules: data, fsdp or tp; sync_bn= parallel.sync_bn (True: global BN statistics)
  json=PATH   write the figures as JSON; hlo=PATH write the compiled HLO text
  and every other train key (yolojax help). docs/scaling.md explains the figures."""

# ultralytics argument -> keyword of the yolojax function each other mode calls.
VAL_KEYS = {"model": "weights", "data": "data", "imgsz": "imgsz", "batch": "batch", "conf": "conf", "iou": "iou",
            "max_det": "max_det", "rect": "rect", "split": "split", "workers": "workers", "plots": "plots",
            "project": "project", "name": "name", "compile_cache": "compile_cache", "cache": "cache",
            "data.tfds.data_dir": "tfds_data_dir"}
PREDICT_KEYS = {"model": "weights", "source": "source", "imgsz": "imgsz", "conf": "conf", "iou": "iou",
                "max_det": "max_det", "agnostic_nms": "agnostic", "rect": "rect", "save": "save_images",
                "vid_stride": "vid_stride",
                "project": "project", "name": "name", "compile_cache": "compile_cache"}
EXPORT_KEYS = {"model": "weights", "format": "fmt", "imgsz": "imgsz", "batch": "batch", "dynamic": "dynamic",
               "opset": "opset", "int8": "int8", "quantize": "quantize", "data": "data", "fraction": "fraction",
               "compile_cache": "compile_cache"}
# ultralytics 8.4.190's quantize= values that mean int8=True (its int8= is the deprecated spelling).
INT8_QUANTIZE = (8, "8", "int8", "w8a8")
CONVERT_KEYS = {"model": "weights", "out": "out"}
PRUNE_KEYS = {"model": "weights", "ratio": "ratio", "method": "method", "out": "out", "data": "data", "imgsz": "imgsz",
              "compile_cache": "compile_cache"}

DEFAULT_PROJECT = "runs/detect"

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A command line that cannot run: reported in one line, exit status 2."""


def parse_value(raw: str) -> Any:
    """An ultralytics command-line value: true/false/none, a number or list literal, else the string."""
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    return value if isinstance(value, (int, float, list, tuple)) else raw


def parse_pairs(args: Sequence[str], valid: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` (or a bare key, meaning True) arguments -> {key: raw value}; a key not in
    ``valid`` raises :class:`UsageError` naming the nearest valid key. ultralytics' ``device``
    is taken and left out with a warning: JAX lays out every visible device."""
    pairs: dict[str, str] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if key == "device":
            logger.warning("device=%s is not applicable: JAX uses every visible device (choose them with "
                           "CUDA_VISIBLE_DEVICES or JAX_PLATFORMS=cpu; train lays them out with mesh.data)", raw)
            continue
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else "; `yolojax help` lists the keys"
            raise UsageError(f"unknown argument '{key}'{hint}")
        if sep and not raw:
            raise UsageError(f"'{key}=' has no value")
        pairs[key] = raw if sep else "True"
    return pairs


def _typed(field: str, current: Any, raw: str) -> Any:
    """``raw`` converted to the type of the config field's current value (as config_flags does)."""
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(current, (int, float)):
            return type(current)(ast.literal_eval(raw))
    except (ValueError, SyntaxError, TypeError):
        expected = {"bool": "true or false", "int": "an integer", "float": "a number"}[type(current).__name__]
        raise UsageError(f"{field}={raw}: expected {expected}") from None
    return raw


def model_scale(model: str) -> tuple[str, str, str]:
    """ultralytics ``model=`` -> (family, scale, weights): ``yolo11s.yaml`` -> ("yolo11", "s", "");
    ``yolov8s.pt`` -> ("yolov8", "s", "yolov8s.pt"); other weights (a .pt, converted dir, train
    workdir) -> the family and scale they hold.

    Raises:
      ConfigError: one line naming ``model=``: another architecture, weights that do not exist
        (nothing is downloaded) or cannot be read.
    """
    from yolojax.models.registry import FAMILIES, parse_model_name

    name = Path(model).name
    parsed = parse_model_name(name)
    if name.lower().endswith((".yaml", ".yml")):
        if parsed is None:
            names = " or ".join(f"{f}{{n,s,m,l,x}}.yaml" for f in FAMILIES)
            raise ConfigError(f"model={model}: must be {names} (the architectures yolojax builds), "
                              "a .pt, a converted directory or a train workdir")
        return parsed[0].name, parsed[1], ""
    if not Path(model).exists():
        raise ConfigError(f"model={model}: does not exist (no weights are downloaded: give a local .pt or "
                          "directory)")
    if parsed is not None:
        return parsed[0].name, parsed[1], model
    from yolojax.weights import load_weights

    try:
        info = load_weights(model)[1]
    except ValueError as e:
        raise ConfigError(f"model={model}: {error_line(e)}") from None
    return info.get("family", "yolov8"), info["scale"], model


def run_dir(pairs: Mapping[str, Any], default_name: str, reuse: bool = False) -> Path:
    """ultralytics' save_dir: project/name, or name2, name3 ... when it exists and is not empty
    (unless ``exist_ok`` or ``reuse``)."""
    base = Path(str(pairs.get("project", DEFAULT_PROJECT))) / str(pairs.get("name", default_name))
    if reuse or parse_value(str(pairs.get("exist_ok", "False"))) is True:
        return base
    path, n = base, 2
    while path.exists() and any(path.iterdir()):
        path, n = base.with_name(f"{base.name}{n}"), n + 1
    return path


def train_config(args: Sequence[str]) -> tuple[Any, Path]:
    """``yolojax train`` arguments -> (ml_collections config, workdir), nothing run yet.

    The config starts from ``cfg=`` (a config file or a shipped config's name, e.g. ``quickstart``)
    or the shipped ``yolov8{scale}`` config, the scale from
    ``model=`` (default yolov8n.yaml, as ultralytics); then every key is set through
    :data:`TRAIN_KEYS` (``amp`` through :data:`AMP_DTYPES`) or by its own field name. Raises
    :class:`UsageError`.
    """
    pairs = parse_pairs(args, sorted({*TRAIN_KEYS, *RUN_KEYS, "amp", *flatten(default_config())}))
    config = config_from_pairs(pairs, *model_scale(pairs.get("model", "yolov8n.yaml")), skip=RUN_KEYS)
    resume = parse_value(pairs.get("resume", "False")) is True
    return config, run_dir(pairs, "train", reuse=resume)


def config_from_pairs(pairs: Mapping[str, str], family: str, scale: str, weights: str,
                      skip: Sequence[str] = ()) -> Any:
    """The train config of ``pairs`` (``cfg=`` or the shipped ``{family}{scale}`` config, e.g.
    yolo11n, then each key but ``skip`` set on its field), with ``family``, ``scale`` and
    ``weights`` from ``model=``; ``data=tfds:NAME`` sets ``data.tfds.name``."""
    from yolojax.data.sources.tfds import TfdsSpec, is_tfds

    config = load_config(pairs.get("cfg", f"{family}{scale}"))
    if "model" in pairs or "cfg" not in pairs:
        config.model.family, config.model.scale, config.weights = family, scale, weights
    current = flatten(config)
    if "amp" in pairs and "dtype" in pairs:
        raise UsageError(f"amp={pairs['amp']} and dtype={pairs['dtype']} both set the compute dtype: give one")
    for key, raw in pairs.items():
        if key in skip:
            continue
        if key == "amp":
            config.dtype = amp_dtype(raw)
            continue
        field = TRAIN_KEYS.get(key, key)
        if key == "data" and is_tfds(raw):  # data=tfds:NAME: a TFDS dataset, not a data.yaml
            try:
                field, raw = "data.tfds.name", TfdsSpec.parse(raw).name
            except ValueError as e:
                raise UsageError(str(e)) from None
        parent = config
        for part in field.split(".")[:-1]:
            parent = parent[part]
        parent[field.split(".")[-1]] = _typed(key, current[field], raw)
    return config


def amp_dtype(raw: str) -> str:
    """ultralytics' ``amp`` value -> the ``dtype`` field (:data:`AMP_DTYPES`); raises :class:`UsageError`."""
    value = parse_value(raw)
    if isinstance(value, str):
        value = value.lower()
    if value not in AMP_DTYPES:
        raise UsageError(f"amp={raw}: expected True (dtype=auto: bfloat16 on GPU/TPU), False or fp32 (float32), or "
                         "bf16; float16 is not offered (bfloat16 needs no loss scaler)")
    return AMP_DTYPES[value]


def _call_args(args: Sequence[str], keys: Mapping[str, str], required: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of a mode's function, each value checked by its ultralytics name
    (:func:`yolojax.config.check_arguments`) before any work; ``compile_cache`` (default
    "auto") is taken out and applied (:func:`yolojax.runtime.enable_compilation_cache`)."""
    from yolojax.runtime import enable_compilation_cache

    pairs = parse_pairs(args, sorted(keys))
    missing = [k for k in required if k not in pairs]
    if missing:
        raise UsageError(f"missing {', '.join(f'{k}=...' for k in missing)}")
    compile_cache = str(pairs.pop("compile_cache", "auto"))
    values = {k: parse_value(v) for k, v in pairs.items()}
    check_arguments(values)
    enable_compilation_cache(compile_cache)
    return {keys[k]: v for k, v in values.items()}


def _onnx_or_weights(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``weights=model.onnx`` -> an onnxruntime ``model_fn`` and its ``info`` instead; imgsz
    defaults to the model's fixed (square) input size, as ultralytics reads it from the file."""
    if str(kwargs.get("weights", "")).lower().endswith(".onnx"):
        from yolojax.inference.onnx_runtime import OnnxDetector

        detector = OnnxDetector(kwargs.pop("weights"))
        kwargs.update(model_fn=detector, info=detector.info)
        if "imgsz" not in kwargs and detector.input_hw and detector.input_hw[0] == detector.input_hw[1]:
            kwargs["imgsz"] = detector.input_hw[0]
    return kwargs


def run_train(args: Sequence[str]) -> int:
    """``yolojax train``: exit status 0 (finished), 75 (stopped by a signal, resumable), 1 (a
    refusal or a fault, one line), 130 (a second signal): :mod:`yolojax.train.outcome`."""
    from yolojax.train.outcome import exit_status, final_status, interrupted_line, log_last_line, summary_line
    from yolojax.train.run import NonFiniteLossError, TrainError, train

    config, workdir = train_config(args)
    try:
        summary = train(config, workdir)
    except (ConfigError, NonFiniteLossError, TrainError) as e:
        print(f"yolojax train: error: {e}", file=sys.stderr)
        return final_status(1, getattr(e, "log_path", None))
    except KeyboardInterrupt:
        print(f"yolojax train: {interrupted_line(workdir)}", file=sys.stderr)
        return final_status(130)
    print(summary_line(summary), file=sys.stderr)
    log_last_line(summary, summary_line(summary))
    if summary["stopped_by_signal"] is not None:
        print(f"to resume: {resume_command(args, Path(summary['workdir']))}", file=sys.stderr)
    return exit_status(summary)


def resume_command(args: Sequence[str], workdir: Path) -> str:
    """The ``yolojax train`` command that resumes the run in ``workdir``: ``args`` with
    ``project``/``name`` naming it and ``resume=True`` (the same command again would start a
    new run in the next free ``nameN``, as ultralytics does)."""
    kept = [a for a in args if a.split("=", 1)[0] not in ("project", "name", "exist_ok", "resume")]
    return shlex.join(["yolojax", "train", *kept, f"project={workdir.parent}", f"name={workdir.name}", "resume=True"])


def run_val(args: Sequence[str]) -> int:
    from yolojax.data.sources.tfds import TfdsSpec, is_tfds
    from yolojax.evaluation import json_results, validate

    kwargs = _onnx_or_weights(_call_args(args, VAL_KEYS, ("model", "data")))
    tfds_data_dir = str(kwargs.pop("tfds_data_dir", ""))
    if is_tfds(kwargs["data"]):
        kwargs["data"] = TfdsSpec.parse(kwargs["data"], data_dir=tfds_data_dir)
    elif tfds_data_dir:
        raise UsageError("data.tfds.data_dir= is for a TFDS dataset (data=tfds:NAME)")
    out = run_dir(kwargs, "val")
    kwargs.pop("project", None), kwargs.pop("name", None)
    if kwargs.pop("plots", True):
        kwargs["plots_dir"] = out
    results = validate(**kwargs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_results(results), indent=2))
    print(f"results in {out}")
    return 0


def run_predict(args: Sequence[str]) -> int:
    from yolojax.inference import predict

    kwargs = _onnx_or_weights(_call_args(args, PREDICT_KEYS, ("model", "source")))
    out = run_dir(kwargs, "predict")
    kwargs.pop("project", None), kwargs.pop("name", None)
    results = predict(kwargs.pop("weights", None), kwargs.pop("source"), out, **kwargs)
    print(f"{len(results)} images, {sum(len(r['classes']) for r in results)} detections -> {out}")
    return 0


def run_export(args: Sequence[str]) -> int:
    from yolojax.inference import export

    kwargs = _call_args(args, EXPORT_KEYS, ("model",))
    if "quantize" in kwargs:  # ultralytics' newer spelling of int8=True; fp32/None: no quantization
        quantize = kwargs.pop("quantize")
        if quantize not in (*INT8_QUANTIZE, None, 32, "32", "fp32"):
            raise UsageError(f"quantize={quantize!r}: yolojax exports quantize=8 (int8, w8a8) or 32 (fp32, None)")
        kwargs.setdefault("int8", quantize in INT8_QUANTIZE)
    weights, fmt = str(kwargs.pop("weights")), str(kwargs.pop("fmt", "onnx"))
    out = export(weights, fmt, **kwargs)
    if kwargs.get("int8"):
        from yolojax.inference.exporters import default_out

        print(f"wrote {default_out(weights, fmt)}")
    print(f"wrote {out}")
    return 0


def run_convert(args: Sequence[str]) -> int:
    from yolojax.weights import load_ultralytics, save_converted

    kwargs = _call_args(args, CONVERT_KEYS, ("model",))
    weights = Path(str(kwargs["weights"]))
    if not weights.is_file():
        raise UsageError(f"model={weights} is not a .pt file")
    out = save_converted(*load_ultralytics(weights), kwargs.get("out", weights.with_suffix("")))
    print(f"wrote {out}")
    return 0


def run_prune(args: Sequence[str]) -> int:
    """``yolojax prune``: ``ratio`` of the channels of ``model`` removed (:mod:`yolojax.models.prune`),
    written as a converted directory ``out``; with ``data``, the pruned model validated there."""
    from yolojax.prune import prune_and_validate

    kwargs = _call_args(args, PRUNE_KEYS, ("model", "ratio"))
    prune_and_validate(str(kwargs["weights"]), kwargs["ratio"], kwargs.get("method", "bn_scale"),
                       str(kwargs["out"]) if "out" in kwargs else None,
                       str(kwargs["data"]) if "data" in kwargs else None, kwargs.get("imgsz"))
    return 0


def run_plan(args: Sequence[str]) -> int:
    """``yolojax plan``: the train step of these train keys compiled for ``topology=`` (this
    machine's devices, ``cpu:N``, or a TPU topology such as ``v5e:2x2``) and its per-device
    figures printed (:func:`yolojax.train.plan.make_plan`); ``json=PATH`` also writes them.
    ``batch`` is the global batch; ``rules`` and ``sync_bn`` name ``parallel.rules`` and
    ``parallel.sync_bn``; ``hlo=PATH`` writes the compiled HLO text. Weights need not exist
    (the scale comes from the name); the class count comes from ``data=``, else from existing
    weights, else 80."""
    from yolojax.parallel.targets import check_target_name, request_cpu_devices

    if args[:1] and args[0] in ("help", "-h", "--help"):
        print(PLAN_HELP)
        return 0
    pairs = parse_pairs(args, sorted({*TRAIN_KEYS, *PLAN_KEYS, "amp", *flatten(default_config())}))
    topology = str(pairs.get("topology", ""))
    try:
        check_target_name(topology)
    except ValueError as e:
        raise UsageError(str(e)) from None
    request_cpu_devices(topology)  # before anything starts JAX's backends
    model = pairs.get("model", "yolov8n.yaml")
    from yolojax.models.registry import parse_model_name

    parsed = parse_model_name(Path(model).name)
    family, scale, weights = (parsed[0].name, parsed[1], model) if parsed else model_scale(model)
    renamed = {{"rules": "parallel.rules", "sync_bn": "parallel.sync_bn"}.get(k, k): v for k, v in pairs.items()}
    config = config_from_pairs(renamed, family, scale, "", skip=("model", "cfg", "topology", "json", "hlo"))
    num_classes = plan_class_count(str(pairs.get("data", "")), weights, config.data.tfds.data_dir)
    config.data.yaml = config.data.tfds.name = config.data.tfds.data_dir = ""
    from yolojax.parallel.targets import target_devices
    from yolojax.train.plan import describe, make_plan
    from yolojax.train.settings import resolve

    settings = resolve(config, need_data=False)
    plan = make_plan(settings, target_devices(topology), num_classes=num_classes, hlo_path=pairs.get("hlo"))
    for line in describe(plan):
        print(line)
    if "json" in pairs:
        out = Path(str(pairs["json"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plan.as_json(), indent=1) + "\n")
        print(f"wrote {out}")
    return 0


def plan_class_count(data: str, weights: str, tfds_data_dir: str = "") -> int:
    """The class count a plan builds the head for: ``data=``'s names (a data.yaml, or a TFDS
    dataset in ``tfds_data_dir``), else existing weights' names, else COCO's 80."""
    if data:
        from yolojax.data.sources.dataset import dataset_names
        from yolojax.data.sources.tfds import TfdsSpec, is_tfds

        try:
            return len(dataset_names(TfdsSpec.parse(data, data_dir=tfds_data_dir) if is_tfds(data) else Path(data)))
        except Exception as e:  # noqa: BLE001 - any failure is a dataset that cannot serve
            raise ConfigError(f"data={data}: {error_line(e)}") from None
    if weights and Path(weights).exists():
        from yolojax.weights import load_weights

        names = load_weights(weights)[1].get("names")
        if names:
            return len(names)
    return 80


MODES: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "train": (run_train, "train a model (the fields of yolojax/configs/base.py)"),
    "val": (run_val, "mAP50 / mAP50-95 on a data.yaml, tfds:NAME or COCO JSON (model=*.onnx runs onnxruntime)"),
    "predict": (run_predict, "annotated images and predictions.json (model=*.onnx runs onnxruntime)"),
    "export": (run_export, "format=onnx (default) or format=pt (an ultralytics checkpoint)"),
    "convert": (run_convert, "an ultralytics .pt -> a yolojax checkpoint directory (out=DIR)"),
    "prune": (run_prune, "structured channel pruning: ratio=0.3 [method=bn_scale|l1 out=DIR data=Y] -> a checkpoint dir"),
    "plan": (run_plan, "the train step compiled for topology= (cpu:N, v5e:2x2, ...): memory, FLOPs, collectives"),
}


def help_text() -> str:
    """What ``yolojax help`` prints: the modes and every key each accepts."""
    fields = sorted(set(flatten(default_config())) - set(TRAIN_KEYS.values()))
    lines = ["usage: yolojax MODE KEY=VALUE ...   (ultralytics' syntax and argument names)", "", "modes:"]
    lines += [f"  {mode:8s} {text}" for mode, (_, text) in MODES.items()] + ["  help     this text", ""]
    lines.append("train keys (ultralytics' names):")
    lines.append("  " + ", ".join(RUN_KEYS))
    lines.append(f"  cfg: a config file, or a shipped config's name ({', '.join(config_names())})")
    lines.append("  " + ", ".join(f"{k} -> {v}" for k, v in TRAIN_KEYS.items() if k != v))
    lines.append("  same name as the config field: " + ", ".join(k for k, v in TRAIN_KEYS.items() if k == v))
    lines.append("  and every other config field by name: " + ", ".join(fields))
    lines.append("  amp: True (dtype=auto), False or fp32 (float32), bf16 (bfloat16)")
    lines.append("  data: a data.yaml, or tfds:NAME (a prepared TFDS dataset: sets data.tfds.name)")
    for mode, keys in (("val", VAL_KEYS), ("predict", PREDICT_KEYS), ("export", EXPORT_KEYS),
                       ("convert", CONVERT_KEYS), ("prune", PRUNE_KEYS)):
        lines.append(f"{mode} keys: {', '.join(keys)}")
    lines.append(f"plan keys: the train keys and {', '.join(PLAN_KEYS)}")
    lines.append("example: yolojax train model=yolov8n.pt data=coco8.yaml epochs=3 imgsz=640 batch=16")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``yolojax`` console command; returns the exit status (2: bad command line, 1: bad input)."""
    if argv is None:
        from yolojax.runtime import reexec_with_malloc_tunables

        reexec_with_malloc_tunables()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["detect"]:  # ultralytics' optional task word
        args = args[1:]
    if not args or args[0] in ("help", "-h", "--help"):
        print(help_text())
        return 0
    mode, rest = args[0], args[1:]
    # Every mode logs yolojax's lines one way; set up before any mode imports its packages, or
    # absl (imported by Grain and Orbax) installs logging.basicConfig's handler on the empty
    # root logger and doubles every line.
    configure_logging()
    try:
        if mode not in MODES:
            near = difflib.get_close_matches(mode, [*MODES, "help"], n=1)
            raise UsageError(f"unknown mode '{mode}'{f'; did you mean {near[0]!r}?' if near else ''} "
                             f"(modes: {', '.join(MODES)}, help)")
        return MODES[mode][0](rest)
    except UsageError as e:
        print(f"yolojax {mode}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except (ValueError, ImportError, OSError) as e:
        print(f"yolojax {mode}: error: {error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
