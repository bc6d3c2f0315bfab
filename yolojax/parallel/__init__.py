"""Mesh, partition rules (data / tensor / fsdp), jit and shard_map ('pmap') train steps,
multi-host initialisation and host-to-device batch placement. See docs/parallel.md."""

from yolojax.parallel.distributed import (
    broadcast_json, initialize_distributed, is_main_process, local_batch_size, process_count, process_index,
)
from yolojax.parallel.mesh import (
    AXES, DATA, MODEL, batch_sharding, make_mesh, replicated, resolve_axis_sizes,
)
from yolojax.parallel.rules import (
    RULE_SETS, TACTICS, follow, get_rules, path_str, per_device_bytes, sharding_table, spec_for,
    state_shardings, tree_shardings, tree_specs,
)
from yolojax.parallel.step import (
    MODES, constrained_apply, init_sharded_state, make_jit_train_step, make_parallel_train_step,
    local_data_shards, make_pmap_train_step, place_batch, process_batch_rows, shard_array, shard_state,
)

__all__ = [
    "AXES", "DATA", "MODEL", "MODES", "RULE_SETS", "TACTICS", "batch_sharding", "broadcast_json",
    "constrained_apply", "follow", "get_rules", "init_sharded_state", "initialize_distributed",
    "is_main_process", "local_batch_size", "local_data_shards", "make_jit_train_step", "make_mesh",
    "make_parallel_train_step", "make_pmap_train_step", "path_str",
    "per_device_bytes", "place_batch", "process_batch_rows", "process_count", "process_index",
    "replicated", "resolve_axis_sizes", "shard_array", "shard_state", "sharding_table",
    "spec_for", "state_shardings", "tree_shardings", "tree_specs",
]
