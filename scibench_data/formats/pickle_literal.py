"""Read plain literals out of a pickle without running it.

PyTables stores any attribute it cannot map to an HDF5 type (a list of column
names, a dict of shapes) as a pickle, and unpickles it on access: opening a
pandas HDFStore with pandas or PyTables runs whatever those bytes say. This
module evaluates pickles statically with :mod:`pickletools`, accepting only
opcodes that build ``None``, bools, numbers, strings, lists, tuples, dicts and
``collections.OrderedDict`` (as a plain dict). Anything else (any other
global, any call) raises :class:`UnsafePickleError` before anything is built.
"""

from __future__ import annotations

import pickletools
from typing import Any


class UnsafePickleError(ValueError):
    """The pickle holds something other than plain literals."""


_MARK = object()
_ALLOWED_GLOBALS = {("collections", "OrderedDict")}
_LITERAL = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
}


def _pop_mark(stack: list) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise UnsafePickleError("MARK expected on the stack")


def _memo_key(arg: object) -> int:
    """The memo index a PUT/GET opcode carries (an int, or its text for the protocol 0 forms)."""
    if not isinstance(arg, (int, str)):
        raise UnsafePickleError(f"memo opcode without an index ({arg!r})")
    return int(arg)


def literal_from_pickle(data: bytes) -> Any:
    """The value a pickle of plain literals describes, built without unpickling."""
    stack: list = []
    memo: dict[int, Any] = {}
    try:
        ops = list(pickletools.genops(data))
    except Exception as err:
        raise UnsafePickleError(f"not a readable pickle ({err})") from err
    for op, arg, _pos in ops:
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name in _LITERAL:
            stack.append(arg.decode("latin-1") if name.endswith("STRING") and isinstance(arg, bytes) else arg)
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE"):
            stack.append({"EMPTY_LIST": [], "EMPTY_DICT": {}, "EMPTY_TUPLE": ()}[name])
        elif name == "LIST":
            stack.append(_pop_mark(stack))
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(stack)))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            last = tuple(stack[-n:])
            del stack[-n:]
            stack.append(last)
        elif name == "DICT":
            items = _pop_mark(stack)
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "APPEND":
            value = stack.pop()
            _container(stack, list).append(value)
        elif name == "APPENDS":
            items = _pop_mark(stack)
            _container(stack, list).extend(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _container(stack, dict)[_hashable(key)] = value
        elif name == "SETITEMS":
            items = _pop_mark(stack)
            target = _container(stack, dict)
            for k, v in zip(items[::2], items[1::2]):
                target[_hashable(k)] = v
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[_memo_key(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if _memo_key(arg) not in memo:
                raise UnsafePickleError(f"memo {arg} read before it was written")
            stack.append(memo[_memo_key(arg)])
        elif name == "GLOBAL":
            module, _, qualname = str(arg).partition(" ")
            stack.append(_global(module, qualname))
        elif name == "STACK_GLOBAL":
            qualname, module = stack.pop(), stack.pop()
            stack.append(_global(str(module), str(qualname)))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if func is not _ORDERED_DICT or args not in ((), ([],)):
                raise UnsafePickleError("a call other than OrderedDict()")
            stack.append({})
        elif name == "STOP":
            if len(stack) != 1:
                raise UnsafePickleError("malformed pickle (stack not empty at STOP)")
            return stack[0]
        else:
            raise UnsafePickleError(f"opcode {name} is not allowed in a plain literal")
    raise UnsafePickleError("pickle has no STOP")


_ORDERED_DICT = object()


def _global(module: str, qualname: str) -> object:
    if (module, qualname) not in _ALLOWED_GLOBALS:
        raise UnsafePickleError(f"refers to {module}.{qualname}; only plain literals are read")
    return _ORDERED_DICT


def _container(stack: list, kind: type) -> Any:
    if not stack or not isinstance(stack[-1], kind):
        raise UnsafePickleError(f"expected a {kind.__name__} on the stack")
    return stack[-1]


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError as err:
        raise UnsafePickleError(f"unhashable dict key {key!r}") from err
    return key
