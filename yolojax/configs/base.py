"""Every default of ``python -m yolojax.train`` (ultralytics' cfg/default.yaml values).

Any field can be overridden on the command line, e.g. ``--config.epochs=3``; unknown fields
are refused. Per-model configs (configs/yolov8{n,s,m,l,x}.py, configs/yolo11{n,s,m,l,x}.py) start
from ``get_config()``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # Model and weights.
    c.model = ml_collections.ConfigDict()
    c.model.family = "yolov8"      # yolov8, yolo11 (yolojax.models.registry)
    c.model.scale = "s"            # n, s, m, l, x
    c.model.num_classes = -1       # -1: from the dataset's names (must match when set)
    c.model.reg_max = 16
    c.weights = ""                 # '' (from scratch), an ultralytics .pt, a converted dir or a train workdir
    c.cls_remap = True             # fine-tuning: copy pretrained class rows by class name (ultralytics' cls_remap)
    # Compute dtype, ultralytics' amp: 'auto' computes in bfloat16 on GPU and TPU and in float32 on
    # CPU; parameters, optimiser state, EMA, BatchNorm statistics, the loss and every cross-device
    # gradient sum stay float32 whatever it is.
    c.dtype = "auto"               # auto | float32 | bfloat16

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.yaml = ""               # ultralytics data.yaml (path, train, val, names)
    c.data.workers = 8             # Grain worker processes (0: in the main process)
    c.data.threads = 1             # batch-building threads per worker
    c.data.prefetch = 2            # batches buffered per worker
    c.data.max_boxes = 0           # M, box rows per image; 0: from the label scan (no box dropped); N: a cap
    c.data.mosaic_pool = "batch"   # mosaic partners from the same 'batch' or the whole 'dataset'
    c.data.augment_on = "host"     # host | device: where augmentation's pixel work runs (docs/data.md)
    # Image cache, ultralytics' cache=: '' none; 'ram' (or True): train and val images decoded and
    # resized to imgsz once, in one memory-mapped file all workers share; 'disk': ultralytics'
    # image.npy files beside the images. Same batches bit for bit; refused when the room is
    # short (docs/data.md, "Image cache").
    c.data.cache = ""
    # ultralytics' dataset options (data/base.py, data/build.py):
    c.fraction = 1.0               # train images used: a ratio in (0, 1], or a count when > 1 (the first, sorted)
    c.single_cls = False           # every label becomes class 0; val is class-agnostic (one class)
    c.classes = ""                 # keep only these class ids' labels, e.g. "0" or "[0, 2, 3]" ('' keeps all)
    c.rect = False                 # train on rect batches (sorted by aspect ratio, no shuffle, no mosaic/mixup/cutmix)
    c.multi_scale = 0.0            # each batch resized to a random multiple of 32 in imgsz * (1 +- multi_scale)
    # A prepared TFDS dataset instead of a data.yaml (array_record; docs/data.md, "TFDS"):
    # `yolojax train data=tfds:coco/2017` sets data.tfds.name.
    c.data.tfds = ml_collections.ConfigDict()
    c.data.tfds.name = ""          # NAME[/CONFIG][:VERSION], e.g. 'coco/2017'; '' reads data.yaml
    c.data.tfds.data_dir = ""      # where it was prepared; '': $TFDS_DATA_DIR, else ~/tensorflow_datasets
    c.data.tfds.train = "train"    # the TFDS split (or split expression) trained on
    c.data.tfds.val = "validation" # the TFDS split validated on
    # Built-in synthetic shapes dataset: when root is set and data.yaml is empty, the dataset
    # is written there in YOLO format (once) and used as data.yaml.
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.root = ""
    c.data.synthetic.num_train = 128
    c.data.synthetic.num_val = 32
    c.data.synthetic.min_size = 160
    c.data.synthetic.max_size = 320
    c.data.synthetic.max_shapes = 4
    c.data.synthetic.seed = 0

    # Run length.
    c.imgsz = 640
    c.batch_size = 16              # global batch
    c.epochs = 100
    c.max_steps = 0                # 0: no cap
    c.patience = 100               # early stop after this many epochs without a better val mAP50-95 (0: off)
    c.time = 0.0                   # hours: stop (checkpoint, validate) once training has run this long (0: off)
    c.save_period = -1             # also keep the epoch-end checkpoint of every Nth epoch (< 1: off)
    c.seed = 0

    # Optimiser (ultralytics' trainer arithmetic, see yolojax/train/optim.py).
    c.optimizer = "auto"           # SGD, Adam, AdamW, auto
    c.lr0 = 0.01
    c.lrf = 0.01
    c.momentum = 0.937
    c.weight_decay = 0.0005
    c.warmup_epochs = 3.0
    c.warmup_momentum = 0.8
    c.warmup_bias_lr = 0.1
    c.cos_lr = False
    c.nbs = 64
    # Layers whose params and BatchNorm statistics stay fixed: the first N layers ("10"), or a
    # list of layer indices / names ("[0, 1, '22.cv2']"); '.dfl' is always frozen.
    c.freeze = ""

    # Loss gains.
    c.box = 7.5
    c.cls = 0.5
    c.dfl = 1.5
    c.cls_pw = 0.0                 # class weights (1 / label count) ** cls_pw in the cls BCE, mean 1 (0: off; <= 1)

    # Knowledge distillation (ultralytics' distill_model, dis; docs/compression.md): a frozen
    # teacher runs on each batch and the student's P3-P5 features, projected to the teacher's
    # widths, are pulled toward its features, weighted by its class confidence.
    c.distill_model = ""           # the teacher: a .pt, converted dir or train workdir ('' off)
    c.dis = 6.0                    # the distillation loss gain
    # Sparsity training before `yolojax prune` (network slimming): bn_l1 * sign(gamma) added to
    # every BatchNorm scale's gradient (0: off; 1e-4 .. 1e-3 typical).
    c.bn_l1 = 0.0

    # Augmentation.
    c.hsv_h = 0.015
    c.hsv_s = 0.7
    c.hsv_v = 0.4
    c.degrees = 0.0
    c.translate = 0.1
    c.scale = 0.5
    c.shear = 0.0
    c.perspective = 0.0
    c.flipud = 0.0
    c.fliplr = 0.5
    c.mosaic = 1.0
    c.mixup = 0.0
    c.cutmix = 0.0                 # probability of CutMix (a patch of another mosaic view pasted in)
    c.bgr = 0.0                    # probability of feeding the image with its channels swapped (BGR)
    c.close_mosaic = 10

    # Validation after each epoch, with the EMA weights.
    c.val = ml_collections.ConfigDict()
    c.val.enabled = True
    c.val.every_epochs = 1
    c.val.batch_size = 0           # 0: 2 x batch_size (as ultralytics)
    c.val.conf = 0.001
    c.val.iou = 0.7
    c.val.max_det = 0              # 0: ultralytics' 300, raised to the most labels of one image
    c.val.rect = True              # ultralytics validates with rect batches during training

    # Parallelism.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.model = 1
    # Multi-host (jax.distributed): a coordinator "host:port" here or in JAX_COORDINATOR_ADDRESS
    # (with JAX_NUM_PROCESSES, JAX_PROCESS_ID); auto=True lets JAX detect TPU pods / SLURM / MPI.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator = ""
    c.distributed.num_processes = 0  # 0: from the environment
    c.distributed.process_id = -1    # -1: from the environment
    c.distributed.auto = False
    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = "jit"        # jit (GSPMD) | pmap (shard_map data parallel)
    c.parallel.rules = "data"      # data | fsdp | tp (parameter sharding rules, jit mode)
    # BatchNorm statistics over the global batch (True: exact, equal to one device, one small
    # all-reduce per BatchNorm layer) or per device (False: ultralytics' DDP, no BN collective
    # on the forward pass). docs/parallel.md, "BatchNorm statistics".
    c.parallel.sync_bn = True

    # Checkpointing (WORKDIR/checkpoints) and logging (metrics.jsonl, tensorboard/).
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500  # also at every epoch end and at the end of the run; 0: epochs only
    c.checkpoint.keep = 3           # the last K steps in WORKDIR/checkpoints (0: all)
    c.checkpoint.keep_best = True   # also WORKDIR/checkpoints_best: the step of the best val mAP50-95
    c.checkpoint.async_save = True
    c.log_every_steps = 10
    c.progress = True              # tqdm progress bar
    c.plots = True                 # after training: labels.jpg, train_batch*.jpg, the final validation's plots
    c.max_nonfinite = 10           # stop after this many non-finite losses in a row
    # Persistent XLA compilation cache: 'auto' (~/.cache/yolojax/jax), a directory, or 'off'.
    c.compile_cache = "auto"
    return c
