"""Hostile .pt files: each is refused with one ValueError naming the file and the part, in
bounded memory and time, and none changes what later loads return.

Every file is crafted here opcode by opcode (no torch needed). The loads run in one child
process under an address-space limit (RLIMIT_AS) and a timeout, so a file that would
exhaust memory, hang or crash the interpreter fails its test instead of the test run. The
child loads the official yolov8n.pt before and after the hostile files and compares the two
results bit for bit.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from yolojax.weights.torch_file import read_torch_file

from torch_zip import write_torch_zip
from shared_data import WEIGHTS, require

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_WEIGHTS = WEIGHTS
ADDRESS_SPACE_BYTES = 3 << 29  # 1.5 GiB: every file below asks for more without its bounds
CASE_SECONDS = 5.0
PEAK_GROWTH_MB = 100  # a refusal may raise the child's peak memory by at most this much

# --------------------------------------------------------------------------------------
# Pickles written opcode by opcode (protocol 2, as torch.save writes them).
# --------------------------------------------------------------------------------------


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def put(index: int) -> bytes:
    return pickle.LONG_BINPUT + struct.pack("<I", index)


def get(index: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", index)


def tuple_of(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def dict_of(*pairs: tuple[bytes, bytes]) -> bytes:
    return pickle.EMPTY_DICT + pickle.MARK + b"".join(k + v for k, v in pairs) + pickle.SETITEMS


def call(func: bytes, *args: bytes) -> bytes:
    return func + tuple_of(*args) + pickle.REDUCE


def pickled(*body: bytes) -> bytes:
    return pickle.PROTO + b"\x02" + b"".join(body) + pickle.STOP


def tensor(key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """torch._utils._rebuild_tensor_v2 of a FloatStorage with ``numel`` elements."""
    storage = tuple_of(
        text("storage"), glob("torch", "FloatStorage"), text(key), text("cpu"), integer(numel)
    )
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        storage + pickle.BINPERSID,
        integer(0),
        tuple_of(*map(integer, size)),
        tuple_of(*map(integer, stride)),
        pickle.NEWFALSE,
        call(glob("collections", "OrderedDict")),
    )


def module(state: bytes) -> bytes:
    """A pickled torch Sequential: its class, NEWOBJ, then BUILD with ``state`` (__dict__)."""
    sequential = glob("torch.nn.modules.container", "Sequential")
    return sequential + pickle.EMPTY_TUPLE + pickle.NEWOBJ + state + pickle.BUILD


def detection_model(state: bytes, memo: int = 10**6) -> bytes:
    """An ultralytics DetectionModel, memoized at ``memo`` before its state is set."""
    head = glob("ultralytics.nn.tasks", "DetectionModel") + pickle.EMPTY_TUPLE + pickle.NEWOBJ
    return head + put(memo) + state + pickle.BUILD


def model_of(child: bytes) -> Callable[[Path], None]:
    """A file holding a DetectionModel whose one submodule, 'model', is ``child``."""
    return raw_pickle(detection_model(dict_of((text("_modules"), dict_of((text("model"), child))))))


def shared_chain(levels: int) -> bytes:
    """``levels`` nested modules, each with children 'a' and 'b' that are the same module:
    2**levels paths through a few KB of pickle."""
    node = module(dict_of())
    for level in range(levels):
        children = dict_of((text("a"), node + put(level)), (text("b"), get(level)))
        node = module(dict_of((text("_modules"), children)))
    return node


# --------------------------------------------------------------------------------------
# A zip bomb.
# --------------------------------------------------------------------------------------


def deflate_bomb(path: Path, member: str, inflated: int) -> None:
    """Make stored ``member`` of the zip at ``path`` a deflate stream of ``inflated`` zero
    bytes, as its headers then declare: a few MB that inflate to ``inflated``."""
    chunk = 1 << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(bytes(chunk)) + packer.flush(zlib.Z_FULL_FLUSH)  # same every chunk
    stream = block * (inflated // chunk) + packer.flush()
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members[member] = stream
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(member).header_offset
    struct.pack_into("<H", raw, local + 8, zipfile.ZIP_DEFLATED)
    struct.pack_into("<I", raw, local + 22, inflated)
    entry = struct.unpack_from("<I", raw, raw.rindex(b"PK\x05\x06") + 16)[0]  # directory start
    while raw[entry + 46 : entry + 46 + len(member)] != member.encode():
        entry += 46 + sum(struct.unpack_from("<3H", raw, entry + 28))  # name, extra, comment
    struct.pack_into("<H", raw, entry + 10, zipfile.ZIP_DEFLATED)
    struct.pack_into("<I", raw, entry + 24, inflated)
    path.write_bytes(bytes(raw))


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# --------------------------------------------------------------------------------------
# The hostile files: kind -> (writer, what the refusal must say).
# --------------------------------------------------------------------------------------


def zip_bomb(path: Path) -> None:
    numel = (3 << 30) // 4  # 3 GiB of float32
    body = dict_of((text("w"), tensor("0", numel, (numel,), (1,))))
    write_torch_zip(path, pickled(body), {"0": b""})
    deflate_bomb(path, "archive/data/0", 3 << 30)


def one_tensor(
    numel: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        body = dict_of((text("w"), tensor("0", numel, size, stride)))
        write_torch_zip(path, pickled(body), {"0": floats(*range(numel))})

    return write


def head(cv3: tuple[int, ...], cv2: tuple[int, ...]) -> Callable[[Path], None]:
    """A state dict of the two Detect output convs with shapes ``cv3`` and ``cv2``; a shape
    with a 0 has an empty storage."""

    def write(path: Path) -> None:
        storages, entries = {}, []
        for index, (key, shape) in enumerate(
            (("model.22.cv3.0.2.weight", cv3), ("model.22.cv2.0.2.weight", cv2))
        ):
            storages[str(index)] = bytes(4 * math.prod(shape))
            strides = (1,) * len(shape)
            entries.append((text(key), tensor(str(index), math.prod(shape), shape, strides)))
        write_torch_zip(path, pickled(dict_of(*entries)), storages)

    return write


def raw_pickle(*body: bytes) -> Callable[[Path], None]:
    return lambda path: write_torch_zip(path, pickled(*body))


def call_amplification(path: Path) -> None:
    """torch.Size of one memoized list of 2**17 ints, 50,000 times, kept in a list: 650 KB
    asking for 50 GB."""
    ints = pickle.MARK + (pickle.BININT1 + b"\x00") * (1 << 17) + pickle.LIST + put(1)
    repeat = get(0) + get(1) + pickle.TUPLE1 + pickle.REDUCE + pickle.APPEND
    body = glob("torch", "Size") + put(0) + pickle.POP + ints + pickle.POP
    write_torch_zip(path, pickled(body, pickle.EMPTY_LIST, repeat * 50_000))


def nested_dicts(depth: int) -> bytes:
    """{'model': {'model': ... {} ...}}, ``depth`` dicts deep."""
    levels = text("model") + put(0) + pickle.EMPTY_DICT + (get(0) + pickle.EMPTY_DICT) * (depth - 1)
    return pickle.EMPTY_DICT + levels + pickle.SETITEM * depth


def duplicate_members(path: Path) -> None:
    body = dict_of((text("w"), tensor("0", 2, (2,), (1,))))
    write_torch_zip(path, pickled(body), {"0": floats(1, 2)})
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as z:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it writes
        z.writestr("archive/data/0", floats(3, 4))


def corrupt_crc(path: Path) -> None:
    body = dict_of((text("w"), tensor("0", 4, (4,), (1,))))
    write_torch_zip(path, pickled(body), {"0": floats(1.5, 2.5, 3.5, 4.5)})
    path.write_bytes(path.read_bytes().replace(floats(4.5), floats(5.5)))


def build_on(target: bytes) -> Callable[[Path], None]:
    """BUILD with a __dict__ and slot state on a global the file names."""
    state = tuple_of(dict_of((text("dtype"), text("int16"))), dict_of((text("name"), text("x"))))
    return raw_pickle(dict_of((text("x"), target + state + pickle.BUILD)))


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "zip_bomb": (zip_bomb, r"member 'archive/data/0' is compressed .*zip bomb"),
    "stride_0_expansion": (
        one_tensor(1, (1 << 29,), (0,)),
        r"tensor on storage archive/data/0: stride 0 on a dimension longer than 1",
    ),
    "view_larger_than_storage": (
        one_tensor(16, (1000, 1000), (1, 1)),
        r"a view of 1000000 elements is larger than its storage of 16",
    ),
    "stride_2**62": (one_tensor(4, (2,), (1 << 62,)), r"exceeds its storage of 4 elements"),
    "memo_index_2**27": (
        lambda p: write_torch_zip(p, b"\x80\x02N" + put(1 << 27) + b"."),
        r"holds no model",
    ),
    "string_claiming_1_TB": (
        raw_pickle(pickle.BINUNICODE8 + struct.pack("<Q", 1 << 40) + b"abc"),
        r"archive/data\.pkl after byte 0 \(PROTO\): expected 1099511627776 bytes",
    ),
    "call_amplification": (
        call_amplification,
        r"a call would take what this load builds past its budget of [\d,]+ bytes "
        r"\(4 x the file size \+ 64 MiB\)",
    ),
    "deep_tuple_as_dict_key": (
        raw_pickle(pickle.EMPTY_DICT, pickle.EMPTY_TUPLE, pickle.TUPLE1 * 200_000, pickle.NONE,
                   pickle.SETITEM),
        r"tuples nested more than 100 deep",
    ),
    "dict_10000_deep": (raw_pickle(nested_dicts(10_000)), r"holds no model"),
    "zero_element_head_10**12_classes": (
        head((10**12, 0, 1, 1), (64, 1, 1, 1)),
        r"'model\.22\.cv3\.0\.2\.weight' gives 1000000000000 classes, not 1 to 65536",
    ),
    "zero_element_box_head": (
        head((80, 1, 1, 1), (4 * 10**9, 0, 1, 1)),
        r"'model\.22\.cv2\.0\.2\.weight' gives 4000000000 box outputs",
    ),
    "chain_of_40_shared_submodules": (
        model_of(shared_chain(40)),
        r"module 'model(\.a){32}' is nested more than 32 modules deep",
    ),
    "chain_of_30_shared_submodules": (
        model_of(shared_chain(30)),
        r"no Detect head weight",
    ),
    "module_contains_itself": (
        model_of(get(10**6)),
        r"module 'model' contains itself",
    ),
    "parameters_as_list": (
        raw_pickle(detection_model(dict_of((text("_parameters"), pickle.EMPTY_LIST)))),
        r"the top module: _parameters is not a dict",
    ),
    "build_relabels_storage_type": (
        build_on(glob("torch", "HalfStorage")),
        r"refusing BUILD on a StorageType",
    ),
    "build_on_rebuild_function": (
        build_on(glob("torch._utils", "_rebuild_tensor_v2")),
        r"refusing BUILD on a function",
    ),
    "build_on_module_class": (
        build_on(glob("ultralytics.nn.tasks", "DetectionModel")),
        r"refusing BUILD on a type",
    ),
    "duplicate_member_names": (duplicate_members, r"duplicate member 'archive/data/0'"),
    "corrupt_crc": (corrupt_crc, r"member 'archive/data/0': BadZipFile: Bad CRC-32"),
    "storage_shorter_than_numel": (
        lambda p: write_torch_zip(p, pickled(tensor("0", 4, (4,), (1,))), {"0": floats(1, 2, 3)}),
        r"holds 12 bytes, not the 16 bytes its storage declares",
    ),
    "opcode_INST": (
        raw_pickle(pickle.MARK + pickle.INST + b"collections\nOrderedDict\n"),
        r"unsupported pickle opcode INST",
    ),
    "opcode_EXT1": (raw_pickle(pickle.EXT1 + b"\x01"), r"unsupported pickle opcode EXT1"),
    "call_of_a_list": (
        raw_pickle(pickle.EMPTY_LIST, pickle.EMPTY_TUPLE, pickle.REDUCE),
        r"a call of a list, not of a global",
    ),
}

# The child: limit its address space, load the reference, every hostile file, the reference.
CHILD = r"""
import json, resource, sys, time
spec = json.load(open(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_AS, (spec["address_space"], spec["address_space"]))
from yolojax.weights import load_weights

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def flat(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        path = (*prefix, key)
        out.update(flat(value, path) if isinstance(value, dict) else {path: value})
    return out

def fingerprint(path):
    variables, info = load_weights(path)
    arrays = {"/".join(k): (str(v.dtype), v.shape, v.tobytes()) for k, v in flat(variables).items()}
    return arrays, info

reference = fingerprint(spec["reference"]) if spec["reference"] else None
result = {"baseline_peak_mb": peak_mb(), "cases": {}}
for kind, path in spec["cases"]:
    start = time.perf_counter()
    try:
        load_weights(path)
        outcome = {"loaded": True}
    except ValueError as e:
        outcome = {"error": str(e)}
    except Exception as e:
        outcome = {"escaped": f"{type(e).__name__}: {e}"[:1000]}
    outcome.update(seconds=time.perf_counter() - start, peak_mb=peak_mb())
    result["cases"][kind] = outcome
if reference is not None:
    result["reference_unchanged"] = fingerprint(spec["reference"]) == reference
json.dump(result, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def hostile_loads(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    cases = []
    for kind, (write, _) in HOSTILE.items():
        path = root / f"{kind}.pt"
        write(path)
        cases.append((kind, str(path)))
    reference = str(OFFICIAL_WEIGHTS) if OFFICIAL_WEIGHTS.is_file() else ""
    spec = {"address_space": ADDRESS_SPACE_BYTES, "reference": reference, "cases": cases}
    (root / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "spec.json"), str(root / "result.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((root / "result.json").read_text())
    result["paths"] = dict(cases)
    return result


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_file_is_refused_in_one_line(hostile_loads, kind):
    outcome = hostile_loads["cases"][kind]
    assert "error" in outcome, outcome
    message = outcome["error"]
    assert message.startswith(hostile_loads["paths"][kind])
    assert "\n" not in message and len(message) < 600, message
    assert re.search(HOSTILE[kind][1], message), message
    assert outcome["seconds"] < CASE_SECONDS, outcome


def test_hostile_files_stay_within_memory_and_leave_later_loads_unchanged(hostile_loads):
    peak = max(outcome["peak_mb"] for outcome in hostile_loads["cases"].values())
    assert peak - hostile_loads["baseline_peak_mb"] < PEAK_GROWTH_MB, hostile_loads
    require(OFFICIAL_WEIGHTS)
    assert hostile_loads["reference_unchanged"]


# --------------------------------------------------------------------------------------
# Unusual but valid layouts still load; every command refuses in one line.
# --------------------------------------------------------------------------------------


def test_unusual_but_valid_tensor_layouts_load(tmp_path):
    body = dict_of(
        (text("row_with_huge_unit_stride"), tensor("0", 6, (1, 3), (1 << 62, 2))),
        (text("overlapping"), tensor("0", 6, (2, 3), (1, 1))),
        (text("transposed"), tensor("0", 6, (3, 2), (1, 3))),
        (text("empty"), tensor("0", 6, (0, 5), (5, 1))),
    )
    write_torch_zip(tmp_path / "layouts.pt", pickled(body), {"0": floats(*range(6))})
    got = read_torch_file(tmp_path / "layouts.pt")
    storage = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(got["row_with_huge_unit_stride"], storage[[[0, 2, 4]]])
    np.testing.assert_array_equal(got["overlapping"], [storage[0:3], storage[1:4]])
    np.testing.assert_array_equal(got["transposed"], storage.reshape(2, 3).T)
    assert got["empty"].shape == (0, 5) and got["empty"].dtype == np.float32
    assert not any(a.flags.writeable for a in got.values() if a.size)


@pytest.fixture(scope="module")
def cyclic_model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    from yolojax.data.sources.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cli")
    HOSTILE["module_contains_itself"][0](root / "cyclic.pt")
    return root / "cyclic.pt", write_synthetic_dataset(root / "data", num_train=1, num_val=1)


def test_convert_predict_and_val_refuse_in_one_line(cyclic_model_and_data, tmp_path, capsys):
    from yolojax import convert, predict, val

    pt, data_yaml = cyclic_model_and_data
    image = next((data_yaml.parent / "images" / "val").glob("*.jpg"))
    commands = {
        "convert": (convert.main, [str(pt), str(tmp_path / "out")]),
        "predict": (
            predict.main,
            ["--weights", str(pt), "--source", str(image), "--out", str(tmp_path)],
        ),
        "val": (val.main, ["--weights", str(pt), "--data", str(data_yaml)]),
    }
    for name, (main, argv) in commands.items():
        assert main(argv) == 1, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{pt}: module 'model' contains itself" in err, (name, err)


def test_train_refuses_in_one_line(cyclic_model_and_data, tmp_path):
    pt, data_yaml = cyclic_model_and_data
    proc = subprocess.run(
        [sys.executable, "-m", "yolojax.train", "--config", str(REPO / "configs" / "yolov8n.py"),
         "--workdir", str(tmp_path / "w"), f"--config.data.yaml={data_yaml}", f"--config.weights={pt}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("yolojax.train: error:")]
    assert errors == [f"yolojax.train: error: {pt}: module 'model' contains itself"], proc.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()
