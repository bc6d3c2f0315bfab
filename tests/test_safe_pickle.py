"""yolojax.weights.safe_pickle: the data-only pickle machine builds what pickle builds, in budget."""

from __future__ import annotations

import codecs
import io
import pickle

import pytest

from yolojax.weights.safe_pickle import Budget, load

GLOBALS = {
    **{
        (module, name): builtin
        for module in ("builtins", "__builtin__")
        for name, builtin in (("set", set), ("frozenset", frozenset), ("bytes", bytes))
    },
    ("_codecs", "encode"): codecs.encode,
}


def refuse(obj, state):
    raise ValueError("no BUILD here")


def safe_load(data: bytes, limit: int = 1 << 24):
    return load(
        data,
        find_class=lambda module, name: GLOBALS[(module, name)],
        persistent_load=lambda pid: ("storage", pid),
        set_state=refuse,
        budget=Budget(limit),
    )


class PersistentPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("pid", obj.key) if isinstance(obj, Stored) else None


class Stored:
    def __init__(self, key):
        self.key = key


@pytest.mark.parametrize("protocol", range(6))
def test_builds_what_pickle_builds(protocol):
    shared = ["shared", 2**70, -(2**40)]
    obj = {
        "numbers": [0, 1, -1, 255, 65536, -(2**31), 2**31, 2**100, 1.5, -0.0],
        "constants": (None, True, False),
        "text": ["", "é€", "a" * 300, b"", b"\x00\xff" * 200],
        "tuples": ((), (1,), (1, 2), (1, 2, 3), (1, (2, (3, (4,))))),
        "sets": [{1, "a"}, frozenset({(1, 2)}), set()],
        "memo": [shared, shared, {"again": shared}],
        7: {"int key": 1, (1, "tuple"): 2},
    }
    data = pickle.dumps(obj, protocol=protocol)
    got = safe_load(data)
    assert got == pickle.loads(data) == obj
    assert got["memo"][0] is got["memo"][1] is got["memo"][2]["again"]


@pytest.mark.parametrize("protocol", [1, 2, 4])
def test_recursive_structures_and_persistent_ids(protocol):
    cycle: list = []
    cycle.append((cycle, Stored("k")))
    buffer = io.BytesIO()
    PersistentPickler(buffer, protocol=protocol).dump(cycle)
    got = safe_load(buffer.getvalue())
    assert got[0][0] is got and got[0][1] == ("storage", ("pid", "k"))


def test_budget_bounds_what_a_pickle_builds():
    data = pickle.dumps(["x" * 1000] * 1 + ["y" * 1000 + str(i) for i in range(2000)], protocol=2)
    assert len(safe_load(data, limit=4 << 20)) == 2001
    with pytest.raises(ValueError, match=r"at byte \d+ \(BINUNICODE\): the pickle would take "
                       r"what this load builds past its budget of 1,000,000 bytes"):
        safe_load(data, limit=1_000_000)


def test_refusals_name_the_opcode_and_byte():
    with pytest.raises(ValueError, match=r"at byte 2 \(GLOBAL\): KeyError"):
        safe_load(pickle.dumps(print, protocol=2))
    with pytest.raises(ValueError, match=r"\(BUILD\): no BUILD here"):
        safe_load(b"\x80\x02}q\x00}q\x01b.")
    with pytest.raises(ValueError, match=r"\(SETITEM\): SETITEM on a list, not a dict"):
        safe_load(b"\x80\x02]K\x01K\x02s.")
    with pytest.raises(ValueError, match=r"memo index 5 was never set"):
        safe_load(b"\x80\x02h\x05.")
    with pytest.raises(ValueError, match=r"ends with 2 objects on its stack"):
        safe_load(b"\x80\x02NN.")
    with pytest.raises(ValueError, match=r"after byte 2 \(NONE\): pickle exhausted before"):
        safe_load(b"\x80\x02N")
