"""Schedule parity of ``yolojax.train.optim`` with ultralytics' own trainer.

The oracle is ultralytics' real ``BaseTrainer._do_train`` loop (which calls the real
``_setup_train`` -> ``_build_train_pipeline`` -> ``build_optimizer`` / ``_setup_scheduler``,
``_get_warmup_iterations``, the warmup block, ``scheduler.step()`` at every epoch start and
``optimizer_step``) run on a trainer built without its heavy ``__init__``: a tiny torch model
(one Conv2d with bias and one BatchNorm2d, so the weight / bn / bias groups all exist), a fake
list-like train loader and stubs for validation, checkpointing, metrics files and plots.
Nothing of the schedule itself is re-implemented here.

A callback on ``on_train_batch_end`` records every group's lr and the momentum (SGD) or beta1
(Adam*) and ``trainer.accumulate`` after the warmup block set them and after any optimizer step;
``optimizer.step`` is wrapped as well, to prove those are the values the optimizer really used
at step time. The records are compared with ``hyperparams(recipe, ni)`` over the first 300
iterations (or the whole run when it is shorter).
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.engine.trainer import BaseTrainer  # noqa: E402
from ultralytics.utils import callbacks as ul_callbacks  # noqa: E402

from yolojax.models import YOLOv8  # noqa: E402
from yolojax.train.optim import (  # noqa: E402
    describe_recipe, hyperparams, make_recipe, param_groups, resolved_settings,
)

MAX_ITERS = 300
# hyperparams() returns float32 (it feeds optax's float32 hyperparameters); ultralytics keeps
# Python floats (float64). One float32 ulp is 6e-8..1.2e-7 of a value, so even the correctly
# rounded oracle can sit 6e-8 away, and a warmup lr (ni / nw) * lr0 * lf(epoch) takes three
# roundings (lr table, ni / nw, product): < 1.5 ulp < 2**-22 relative. A flat 1e-7 cannot hold
# for every float32 value (observed worst: 1.21e-7 = 1.4 ulp, auto_adamw during warmup), while
# every schedule bug seen so far was off by > 1e-3. Momentum (~0.9) stays within 1e-7 absolute.
LR_RTOL = 2.0**-22
GROUP_NAMES = ("weight", "bn", "bias")  # ultralytics' param_group keys == our group names


# --------------------------------------------------------------------------------------------
# The oracle: ultralytics' real training loop around a trivial model.
# --------------------------------------------------------------------------------------------
class _TinyModel(torch.nn.Module):
    """Conv2d (weight -> decayed 'weight' group, bias -> 'bias') + BatchNorm2d ('bn' + 'bias')."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.criterion = None  # _do_train probes `criterion.update` at every epoch end
        self.args = None

    def forward(self, batch):
        loss = self.bn(self.conv(batch["img"])).square().mean()
        return loss, {"loss": loss.detach()}


class _Loader(list):
    """List of `nb` dummy batches with what the trainer reads from a DataLoader."""

    def __init__(self, dataset_size: int, batch_size: int):
        nb = math.ceil(dataset_size / batch_size)  # torch DataLoader length, drop_last=False
        img = torch.linspace(0, 1, 1 * 3 * 4 * 4).reshape(1, 3, 4, 4)
        super().__init__({"img": img} for _ in range(nb))
        self.dataset = range(dataset_size)
        self.sampler = range(dataset_size)
        self.batch_size = batch_size
        self.drop_last = False
        self.num_workers = 0


class _Validator:
    metrics = SimpleNamespace(keys=[])


class _OracleTrainer(BaseTrainer):
    """BaseTrainer with I/O (datasets, validation, checkpoints, csv) stubbed out."""

    def setup_model(self):
        return None  # self.model is already an nn.Module -> no checkpoint

    def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
        return _Loader(self.dataset_size if mode == "train" else 8, batch_size)

    def get_validator(self):
        return _Validator()

    def validate(self):
        return {}, None

    def save_metrics(self, metrics):
        pass

    def save_model(self):
        return False

    def final_eval(self):
        pass


class _StepLog:
    """Records what the optimizer holds at each batch end and at each real optimizer step."""

    def __init__(self, max_iters: int):
        self.max_iters = max_iters
        self.batches: list[dict] = []  # one per iteration ni
        self.steps: dict[int, dict] = {}  # ni -> settings seen inside optimizer.step()
        self.setup: dict = {}

    @staticmethod
    def snapshot(optimizer) -> dict:
        out = {}
        for g in optimizer.param_groups:
            name = g["param_group"]
            out[f"lr_{name}"] = g["lr"]
            out[f"momentum_{name}"] = g["momentum"] if "momentum" in g else g["betas"][0]
        return out

    def on_pretrain_routine_end(self, trainer):
        """End of the real _setup_train: record the derived numbers, spy on optimizer.step."""
        opt = trainer.optimizer
        groups = {g["param_group"]: g for g in opt.param_groups}
        self.setup = {
            "optimizer": type(opt).__name__,
            "accumulate": trainer.accumulate,  # nominal accumulate, already capped
            "warmup_iters": trainer._get_warmup_iterations(len(trainer.train_loader)),
            "iters_per_epoch": len(trainer.train_loader),
            "groups": {k: (len(g["params"]), g["initial_lr"], g["weight_decay"]) for k, g in groups.items()},
            "lr0": trainer.args.lr0,  # rewritten by optimizer='auto'
            "momentum": groups["weight"]["momentum"] if "momentum" in groups["weight"] else groups["weight"]["betas"][0],
            "warmup_bias_lr": trainer.args.warmup_bias_lr,  # zeroed by optimizer='auto'
        }
        real_step = opt.step

        def spy_step(*args, **kwargs):
            self.steps[len(self.batches)] = self.snapshot(opt)
            return real_step(*args, **kwargs)

        opt.step = spy_step

    def on_train_batch_end(self, trainer):
        self.batches.append({**self.snapshot(trainer.optimizer), "accumulate": trainer.accumulate})
        if len(self.batches) >= self.max_iters:
            trainer.stop = True  # _do_train breaks out between batches and ends the run


def run_ultralytics(*, epochs, batch, dataset_size, nc, **overrides) -> _StepLog:
    """Run ultralytics' real `_do_train` and return what it did to the optimizer."""
    args = get_cfg(
        overrides=dict(
            epochs=epochs, batch=batch, device="cpu", amp=False, plots=False, val=False,
            close_mosaic=0, workers=0, compile=False, **overrides,
        )
    )
    torch.manual_seed(0)
    t = object.__new__(_OracleTrainer)
    t.args = args
    t.dataset_size = dataset_size
    t.device = torch.device("cpu")
    t.accelerator = None
    t.world_size = 0
    t.batch_size = args.batch
    t.epochs = args.epochs
    t.start_epoch = 0
    t.resume = False
    t.data = {"nc": nc, "names": {i: str(i) for i in range(nc)}, "train": "train", "val": "val"}
    t.model = _TinyModel()
    t.save_dir = "unused"
    t.validator = t.metrics = t.ema = t.lf = t.optimizer = t.scheduler = None
    t.plots = {}
    t.best_fitness = t.fitness = t.loss = t.tloss = None
    t.loss_names = ()
    t.plot_idx = [0, 1, 2]
    t.nan_recovery_attempts = 0
    t.callbacks = ul_callbacks.get_default_callbacks()

    log = _StepLog(min(MAX_ITERS, epochs * math.ceil(dataset_size / batch)))
    t.add_callback("on_pretrain_routine_end", log.on_pretrain_routine_end)
    t.add_callback("on_train_batch_end", log.on_train_batch_end)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is trivial; intra-op threads only add contention
    try:
        t._do_train()
    finally:
        torch.set_num_threads(threads)
    assert len(log.batches) == log.max_iters
    return log


# --------------------------------------------------------------------------------------------
# Parity of the schedule.
# --------------------------------------------------------------------------------------------
CASES = {
    # nb=13, warmup 39 iters over 3 epochs, accumulate 4; the whole 130-iteration run.
    "sgd_linear": dict(epochs=10, batch=16, dataset_size=200, nc=80, optimizer="SGD"),
    # nb=38, warmup 114 iters, accumulate 8; the whole 190-iteration run.
    "sgd_cos": dict(epochs=5, batch=8, dataset_size=300, nc=80, optimizer="SGD", cos_lr=True),
    # 4 * ceil(2500 / 64) = 160 <= 10k iterations -> AdamW at lr round(0.01 / (4 + 3), 6) = 0.001429,
    # bias warmup from 0; nb=79, warmup 237 iters, accumulate 2.
    "auto_adamw": dict(epochs=4, batch=32, dataset_size=2500, nc=3, optimizer="auto"),
    # No warmup: the scheduler alone, momentum constant, accumulate 4 from the first batch.
    "no_warmup": dict(epochs=6, batch=16, dataset_size=1000, nc=80, optimizer="SGD", warmup_epochs=0),
    # epochs - 1 < warmup_epochs: warmup capped to 1 epoch (nb=150), accumulate 16.
    "short_run_warmup_capped": dict(epochs=2, batch=4, dataset_size=600, nc=80, optimizer="SGD", warmup_epochs=3),
    # Tiny dataset: accumulate round(64/2)=32 capped to nb * epochs = 10, fractional warmup epochs,
    # weight decay still scaled by the uncapped 32; Adam (betas, no momentum key) with cosine decay.
    "tiny_accumulate_capped_adam": dict(
        epochs=5, batch=2, dataset_size=4, nc=80, optimizer="Adam", lr0=0.001, momentum=0.9,
        warmup_epochs=1.5, cos_lr=True,
    ),
}
RECIPE_KEYS = ("optimizer", "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum",
               "warmup_bias_lr", "cos_lr")


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    cfg = CASES[request.param]
    log = run_ultralytics(**cfg)
    recipe = make_recipe(
        epochs=cfg["epochs"], batch_size=cfg["batch"], dataset_size=cfg["dataset_size"], num_classes=cfg["nc"],
        **{k: cfg[k] for k in RECIPE_KEYS if k in cfg},
    )
    return request.param, cfg, log, recipe


def test_recipe_matches_trainer_setup(case):
    """make_recipe's derived numbers equal the ones the real _setup_train produced."""
    _, cfg, log, recipe = case
    s = log.setup
    assert recipe.optimizer == s["optimizer"]
    assert recipe.iters_per_epoch == s["iters_per_epoch"]
    assert recipe.accumulate == s["accumulate"]
    assert recipe.warmup_iters == s["warmup_iters"]
    assert recipe.lr0 == s["lr0"]
    assert recipe.momentum == s["momentum"]
    assert recipe.warmup_bias_lr == s["warmup_bias_lr"]
    for name, (n, initial_lr, wd) in s["groups"].items():
        assert n > 0, name  # the tiny model populates every group
        assert initial_lr == recipe.lr0, name
        assert wd == (recipe.weight_decay if name == "weight" else 0.0), name
    if cfg["optimizer"] == "auto":
        assert (s["optimizer"], s["lr0"], s["warmup_bias_lr"]) == ("AdamW", round(0.01 / (4 + cfg["nc"]), 6), 0.0)


def test_resolved_settings_are_what_the_trainer_used(case):
    """What train prints and records in config.json ("resolved") equals what ultralytics' _setup_train
    used; optimizer=auto first says which configured values it replaced."""
    _, cfg, log, recipe = case
    s = log.setup
    resolved = resolved_settings(recipe)
    assert {k: resolved[k] for k in ("optimizer", "lr0", "momentum", "accumulate", "warmup_iters", "warmup_bias_lr",
                                     "iters_per_epoch")} == {k: s[k] for k in (
        "optimizer", "lr0", "momentum", "accumulate", "warmup_iters", "warmup_bias_lr", "iters_per_epoch")}
    assert resolved["weight_decay"] == s["groups"]["weight"][2]
    configured = {"lr0": cfg.get("lr0", 0.01), "momentum": cfg.get("momentum", 0.937), "weight_decay": 5e-4}
    lines = describe_recipe(recipe, optimizer=cfg["optimizer"], **configured)
    assert len(lines) == (2 if cfg["optimizer"] == "auto" else 1)
    if cfg["optimizer"] == "auto":
        assert lines[0] == (f"optimizer=auto chose {s['optimizer']} with lr0={s['lr0']:g} and momentum="
                            f"{s['momentum']:g} for this run, in place of the configured lr0=0.01 and momentum=0.937 "
                            "(set optimizer=SGD, Adam or AdamW to use those)")
    assert (f"optimizer {s['optimizer']}: lr0 {s['lr0']:g}, momentum {s['momentum']:g}, weight_decay "
            f"{s['groups']['weight'][2]:g} (0.0005 scaled") in lines[-1]
    assert f"gradients of {s['accumulate']} batch(es) per update, warmup {s['warmup_iters']} iterations" in lines[-1]


def test_steps_used_recorded_values(case):
    """optimizer.step() ran with exactly the lr/momentum recorded at that iteration's batch end."""
    _, _, log, _ = case
    assert log.steps, "the optimizer never stepped"
    for ni, seen in log.steps.items():
        recorded = log.batches[ni]
        assert seen == {k: recorded[k] for k in seen}, ni


def test_schedule_parity(case):
    """lr of each group, momentum and accumulate at every iteration equal hyperparams(recipe, ni)."""
    name, _, log, recipe = case
    n = len(log.batches)
    ours = jax.jit(jax.vmap(lambda ni: hyperparams(recipe, ni)))(jnp.arange(n))
    ours = {k: np.asarray(v) for k, v in ours.items()}
    ref = {k: np.array([b[k] for b in log.batches]) for k in log.batches[0]}

    for g in GROUP_NAMES:
        np.testing.assert_allclose(ours[f"lr_{g}"], ref[f"lr_{g}"], rtol=LR_RTOL, atol=0, err_msg=f"{name}: lr_{g}")
        np.testing.assert_allclose(ours["momentum"], ref[f"momentum_{g}"], rtol=0, atol=1e-7,
                                   err_msg=f"{name}: momentum ({g})")
    np.testing.assert_array_equal(ours["accumulate"], ref["accumulate"], err_msg=f"{name}: accumulate")


def test_update_cadence(case):
    """ultralytics stepped the optimizer exactly where `ni - last_opt_step >= accumulate` puts
    an update with our accumulate (the condition yolojax.train.step uses for `do_update`)."""
    _, _, log, recipe = case
    n = len(log.batches)
    acc = np.asarray(jax.jit(jax.vmap(lambda ni: hyperparams(recipe, ni)["accumulate"]))(jnp.arange(n)))
    ours, last = [], -1
    for ni in range(n):
        if ni - last >= acc[ni]:
            ours.append(ni)
            last = ni
    assert ours == sorted(log.steps)


# --------------------------------------------------------------------------------------------
# Parameter groups of the real YOLOv8n.
# --------------------------------------------------------------------------------------------
def test_param_groups_match_ultralytics_yolov8n():
    from ultralytics.nn.tasks import DetectionModel

    torch_model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    trainer = object.__new__(BaseTrainer)
    trainer.args = get_cfg()
    opt = trainer.build_optimizer(torch_model, name="SGD", lr=0.01, momentum=0.937, decay=5e-4)
    ul = {g["param_group"]: (len(g["params"]), sum(p.numel() for p in g["params"])) for g in opt.param_groups}

    model = YOLOv8(scale="n", num_classes=80)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )["params"]
    labels = traverse_util.flatten_dict(param_groups(shapes))
    leaves = traverse_util.flatten_dict(shapes)
    ours = {
        g: (sum(1 for v in labels.values() if v == g), sum(math.prod(leaves[k].shape) for k, v in labels.items() if v == g))
        for g in ("weight", "bn", "bias", "frozen")
    }

    # ultralytics' build_optimizer puts every parameter in a group, the DFL projection
    # (model.22.dfl.conv.weight, 1x16x1x1) included: it sits in g0 'weight', but _setup_train
    # sets requires_grad=False on every '.dfl' parameter, so it never has a grad and is never
    # updated (nor decayed). yolojax has no requires_grad, so param_groups labels it 'frozen'
    # (optax.set_to_zero) instead: one tensor of 16 values moves from 'weight' to 'frozen'.
    reg_max = 16
    assert ours["frozen"] == (1, reg_max)
    assert ours["weight"] == (ul["weight"][0] - 1, ul["weight"][1] - reg_max)
    assert ours["bn"] == ul["bn"]
    assert ours["bias"] == ul["bias"]
