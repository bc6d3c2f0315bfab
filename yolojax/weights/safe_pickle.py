"""A pickle reader that only builds data, with every resource bounded.

:func:`load` runs the opcodes that :func:`pickletools.genops` decodes on a small stack
machine of its own, instead of :class:`pickle.Unpickler`. Compared with even a restricted
``Unpickler``:

- Only opcodes that build data run: numbers, strings, bytes, lists, tuples, dicts, sets,
  the memo, globals (resolved by the caller's ``find_class``), persistent ids
  (``persistent_load``), calls (REDUCE, NEWOBJ, NEWOBJ_EX) of objects that ``find_class``
  returned during this load, and BUILD (handed to the caller's ``set_state``). Every other
  opcode (INST, OBJ, EXT1/2/4, PERSID, out-of-band buffers, Python 2 strings) is refused.
- Containers grow only through their own opcodes: APPEND(S) on lists, SETITEM(S) on dicts,
  ADDITEMS on sets. Nothing else is mutated, so a file cannot change an object that
  outlives the load.
- The memo is a dict: a memo index of 2**31 costs one entry, not a table of 2**31 slots.
- Strings and bytes are read from the pickle itself, so none is longer than the file.
- Every object the machine creates or grows is charged its ``sys.getsizeof`` (a call: its
  arguments and its result) to a :class:`Budget` that the caller also charges for what it
  makes, e.g. tensor storages. A small file therefore cannot make large objects, such as
  a set built from a memoized 1 MB list for every 5 bytes of pickle.
- Tuples nest at most :data:`MAX_TUPLE_DEPTH` deep: hashing a tuple recurses in C with no
  limit, and a 10**6-deep tuple used as a dict key crashes the interpreter.

Time is linear in the size of the pickle. Every failure, whatever its cause, is raised as
one ``ValueError`` that names the opcode and its byte offset.
"""

from __future__ import annotations

import pickletools
import sys
from collections.abc import Callable
from typing import Any

MAX_TUPLE_DEPTH = 100

# Opcodes whose decoded argument is the value to push (numbers, str, bytes).
_PUSH_ARGUMENT = frozenset(
    ("INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT UNICODE BINUNICODE "
     "SHORT_BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES BINBYTES8").split()
)
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_IGNORED = frozenset({"PROTO", "FRAME"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EMPTY = {"EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_SET": set}
_POINTER_BYTES = 8


class Budget:
    """The bytes one load may create, ``limit`` (``basis`` says how it was set, for the
    message); shared by :func:`load` and its callbacks."""

    def __init__(self, limit: int, basis: str = "") -> None:
        self.limit = limit
        self.basis = f" ({basis})" if basis else ""
        self.used = 0

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more; raises ``ValueError`` naming ``what`` past the limit."""
        self.used += nbytes
        if self.used > self.limit:
            raise ValueError(
                f"{what} would take what this load builds past its budget of {self.limit:,} "
                f"bytes{self.basis}"
            )


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception, on one line and at most 200 characters."""
    text = " ".join(str(error).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load(
    data: bytes,
    *,
    find_class: Callable[[str, str], Any],
    persistent_load: Callable[[Any], Any],
    set_state: Callable[[Any, Any], None],
    budget: Budget,
) -> Any:
    """The object a pickle builds, run as described in the module docstring.

    ``find_class(module, name)`` resolves GLOBAL/STACK_GLOBAL; ``persistent_load(pid)``
    resolves BINPERSID; ``set_state(obj, state)`` performs BUILD (it must refuse objects it
    does not own). Raises ``ValueError`` ("at byte N (OPCODE): reason") for a malformed or
    refused pickle, and for any error raised by the callbacks.
    """
    return _Machine(find_class, persistent_load, set_state, budget).run(data)


class _Machine:
    """The stack machine behind :func:`load`; one instance per pickle."""

    def __init__(
        self,
        find_class: Callable[[str, str], Any],
        persistent_load: Callable[[Any], Any],
        set_state: Callable[[Any, Any], None],
        budget: Budget,
    ) -> None:
        self.find_class = find_class
        self.persistent_load = persistent_load
        self.set_state = set_state
        self.budget = budget
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.callables: dict[int, Any] = {}  # id -> global; holding it keeps the id unique
        self.tuple_depths: dict[int, tuple[int, tuple]] = {}  # id -> (depth, the tuple)

    def run(self, data: bytes) -> Any:
        """The pickle's object; genops raises ValueError for data that ends before STOP."""
        where = "at byte 0"  # "at" an opcode that fails, "after" one when decoding the next
        try:
            for opcode, argument, position in pickletools.genops(data):
                where = f"at byte {position} ({opcode.name})"
                if opcode.name == "STOP":
                    return self.result()
                self.step(opcode.name, argument)
                where = f"after byte {position} ({opcode.name})"
        except Exception as e:  # noqa: BLE001 - every failure becomes one ValueError
            reason = " ".join(str(e).split()) if isinstance(e, ValueError) else describe(e)
            raise ValueError(f"{where}: {reason}") from None

    def result(self) -> Any:
        if len(self.stack) != 1 or self.marks:
            raise ValueError(f"the pickle ends with {len(self.stack)} objects on its stack")
        return self.stack[0]

    def step(self, name: str, argument: Any) -> None:
        if name in _PUSH_ARGUMENT:
            self.push_new(argument)
        elif name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name])
        elif name in _EMPTY:
            self.push_new(_EMPTY[name]())
        elif name in _MEMO_PUT:
            self.memo_put(argument)
        elif name in _MEMO_GET:
            self.memo_get(argument)
        elif name in _HANDLERS:
            _HANDLERS[name](self, argument)
        elif name not in _IGNORED:
            raise ValueError(f"unsupported pickle opcode {name}")

    # -- stack, marks and memo --------------------------------------------------------

    def push_new(self, obj: Any) -> None:
        self.budget.charge(sys.getsizeof(obj), "the pickle")
        self.stack.append(obj)

    def pop(self) -> Any:
        if not self.stack:
            raise ValueError("pop from an empty stack")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise ValueError("the stack is empty")
        return self.stack[-1]

    def mark(self, _: Any) -> None:
        self.marks.append(self.stack)
        self.stack = []

    def pop_mark(self, _: Any = None) -> list[Any]:
        if not self.marks:
            raise ValueError("no MARK to pop to")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def pop_item(self, _: Any) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def dup(self, _: Any) -> None:
        self.stack.append(self.top())

    def memo_put(self, index: int) -> None:
        if index < 0:
            raise ValueError(f"negative memo index {index}")
        self.grow(self.memo, lambda: self.memo.__setitem__(index, self.top()))

    def memoize(self, _: Any) -> None:
        self.memo_put(len(self.memo))

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise ValueError(f"memo index {index} was never set")
        self.stack.append(self.memo[index])

    def grow(self, container: Any, change: Callable[[], Any]) -> None:
        """Run ``change`` (which adds to ``container``) and charge what it grew by."""
        before = sys.getsizeof(container)
        change()
        self.budget.charge(sys.getsizeof(container) - before, "the pickle")

    # -- containers -------------------------------------------------------------------

    def list_from_mark(self, _: Any) -> None:
        self.push_new(self.pop_mark())

    def tuple_from_mark(self, _: Any) -> None:
        self.push_tuple(self.pop_mark())

    def tuple_of(self, count: int) -> None:
        if len(self.stack) < count:
            raise ValueError(f"a tuple of {count} from a stack of {len(self.stack)}")
        items = self.stack[len(self.stack) - count :]
        del self.stack[len(self.stack) - count :]
        self.push_tuple(items)

    def push_tuple(self, items: list[Any]) -> None:
        depth = 1 + max((self.tuple_depth(item) for item in items), default=0)
        if depth > MAX_TUPLE_DEPTH:
            raise ValueError(f"tuples nested more than {MAX_TUPLE_DEPTH} deep")
        new = tuple(items)
        if depth > 1:
            self.tuple_depths[id(new)] = (depth, new)
        self.push_new(new)

    def tuple_depth(self, obj: Any) -> int:
        if type(obj) is not tuple:
            return 0
        return self.tuple_depths.get(id(obj), (1,))[0]

    def dict_from_mark(self, _: Any) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise ValueError("a dict from an odd number of items")
        self.push_new(dict(zip(items[::2], items[1::2], strict=True)))

    def frozenset_from_mark(self, _: Any) -> None:
        self.push_new(frozenset(self.pop_mark()))

    def append(self, _: Any) -> None:
        value = self.pop()
        target = self.target(list, "APPEND")
        self.grow(target, lambda: target.append(value))

    def appends(self, _: Any) -> None:
        items = self.pop_mark()
        target = self.target(list, "APPENDS")
        self.grow(target, lambda: target.extend(items))

    def setitem(self, _: Any) -> None:
        value = self.pop()
        key = self.pop()
        target = self.target(dict, "SETITEM")
        self.grow(target, lambda: target.__setitem__(key, value))

    def setitems(self, _: Any) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise ValueError("SETITEMS with an odd number of items")
        target = self.target(dict, "SETITEMS")
        self.grow(target, lambda: target.update(zip(items[::2], items[1::2], strict=True)))

    def additems(self, _: Any) -> None:
        items = self.pop_mark()
        target = self.target(set, "ADDITEMS")
        self.grow(target, lambda: target.update(items))

    def target(self, kind: type, opcode: str) -> Any:
        """The object under the stack top, which ``opcode`` may only change if a ``kind``."""
        obj = self.top()
        if not isinstance(obj, kind):
            raise ValueError(f"{opcode} on a {type(obj).__name__}, not a {kind.__name__}")
        return obj

    # -- globals, calls, state and persistent ids -------------------------------------

    def global_from_line(self, argument: str) -> None:
        module, _, name = argument.partition(" ")
        self.push_global(module, name)

    def stack_global(self, _: Any) -> None:
        name, module = self.pop(), self.pop()
        if type(module) is not str or type(name) is not str:
            raise ValueError("STACK_GLOBAL of a module or name that is not a string")
        self.push_global(module, name)

    def push_global(self, module: str, name: str) -> None:
        obj = self.find_class(module, name)
        self.callables[id(obj)] = obj
        self.stack.append(obj)

    def reduce(self, _: Any) -> None:
        args = self.pop()
        func = self.pop()
        self.stack.append(self.call(func, args, {}))

    def newobj(self, _: Any) -> None:
        """NEWOBJ calls the global like REDUCE: the stand-ins that ``find_class`` returns
        build the same object either way."""
        self.reduce(None)

    def newobj_ex(self, _: Any) -> None:
        kwargs = self.pop()
        if type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
            raise ValueError("NEWOBJ_EX keywords that are not a dict of strings")
        args = self.pop()
        cls = self.pop()
        self.stack.append(self.call(cls, args, kwargs))

    def call(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        """``func(*args, **kwargs)`` for a global of this load, charging inputs and result."""
        if self.callables.get(id(func)) is not func:
            raise ValueError(f"a call of a {type(func).__name__}, not of a global")
        if type(args) is not tuple:
            raise ValueError(f"call arguments in a {type(args).__name__}, not a tuple")
        arguments = (*args, *kwargs.values())
        inputs = sum(sys.getsizeof(a) for a in arguments) + _POINTER_BYTES * len(arguments)
        self.budget.charge(inputs, "a call")
        result = func(*args, **kwargs)
        self.budget.charge(sys.getsizeof(result), "a call")
        return result

    def build(self, _: Any) -> None:
        state = self.pop()
        self.set_state(self.top(), state)

    def binpersid(self, _: Any) -> None:
        self.stack.append(self.persistent_load(self.pop()))


_HANDLERS: dict[str, Callable[[_Machine, Any], None]] = {
    "MARK": _Machine.mark,
    "POP": _Machine.pop_item,
    "POP_MARK": _Machine.pop_mark,
    "DUP": _Machine.dup,
    "MEMOIZE": _Machine.memoize,
    "LIST": _Machine.list_from_mark,
    "TUPLE": _Machine.tuple_from_mark,
    "EMPTY_TUPLE": lambda m, _: m.push_tuple([]),
    "TUPLE1": lambda m, _: m.tuple_of(1),
    "TUPLE2": lambda m, _: m.tuple_of(2),
    "TUPLE3": lambda m, _: m.tuple_of(3),
    "DICT": _Machine.dict_from_mark,
    "FROZENSET": _Machine.frozenset_from_mark,
    "APPEND": _Machine.append,
    "APPENDS": _Machine.appends,
    "SETITEM": _Machine.setitem,
    "SETITEMS": _Machine.setitems,
    "ADDITEMS": _Machine.additems,
    "GLOBAL": _Machine.global_from_line,
    "STACK_GLOBAL": _Machine.stack_global,
    "REDUCE": _Machine.reduce,
    "NEWOBJ": _Machine.newobj,
    "NEWOBJ_EX": _Machine.newobj_ex,
    "BUILD": _Machine.build,
    "BINPERSID": _Machine.binpersid,
}
