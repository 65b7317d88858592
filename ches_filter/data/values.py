"""Python values ↔ Arrow types, losslessly: schema inference, fit checks, JSON-text columns.

The promise of ``ches score`` is that every input value comes out unchanged. This module holds
the three pieces that keep it:

- :class:`SchemaInference` reads every row (of a local JSON file: a cheap first pass) and widens
  the type of each field where the data needs it: ``int`` → ``float`` when a float appears (if
  every integer is exact as a float64), the union of object keys at every depth (objects inside
  lists too), columns first seen late, null-only fields that later get values, lists whose
  items widen. Columns and keys keep their order of first appearance. Where no Arrow type holds
  every value exactly (a string in one row and an object in another, an integer and a string,
  an integer beyond 64 bits, an object that has no key in any row) it raises
  :class:`TypeConflict` naming the field and the first two rows that disagree, unless the column
  is to be kept as JSON text.
- :func:`misfit` says whether a value fits an Arrow type exactly (the check made before every
  row is converted: ``from_pylist`` alone would truncate ``7.5`` into an int64 column or drop a
  key a struct type lacks, without a word).
- JSON-text columns (``--keep-json-columns``): a field whose values no Arrow type holds is stored
  in a string column as the JSON text of each value (strings too, so ``json.loads`` gives every
  value back exactly; a null stays null). Such a column's Arrow field carries
  :data:`JSON_TEXT_METADATA`, so the Parquet shards say it themselves.
"""

from __future__ import annotations

import json
import math
import numbers
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

#: Field metadata of a column stored as JSON text (see module docstring).
JSON_TEXT_METADATA = {b"ches_filter.encoding": b"json"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_FLOAT_INT = 2**53  # every integer of at most this magnitude is exact as a float64

Location = tuple[str | None, str, int]  # (file or None, "line" | "row_id", number)


def json_text_field(name: str) -> pa.Field:
    return pa.field(name, pa.string(), metadata=JSON_TEXT_METADATA)


def is_json_text(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(b"ches_filter.encoding") == b"json"


def json_text_columns(schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` stored as JSON text."""
    return [field.name for field in schema if is_json_text(field)]


def encode_json_text(value: Any) -> str | None:
    """The JSON text of a value (null stays null); ``json.loads`` gives the value back."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False)


def decode_json_text(rows: Iterable[dict[str, Any]], names: Iterable[str]) -> list[dict[str, Any]]:
    """Rows read back from shards with their JSON-text columns decoded to the original values."""
    names = list(names)
    out = []
    for row in rows:
        if names:
            row = dict(row)
            for name in names:
                if row.get(name) is not None:
                    row[name] = json.loads(row[name])
        out.append(row)
    return out


# --------------------------------------------------------------------------- inference

_KIND_WORDS = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a float",
    "str": "a string",
    "list": "a list",
    "struct": "an object",
}


@dataclass
class TypeConflict(Exception):
    """No Arrow type holds every value of ``path`` exactly (see :meth:`message`)."""

    column: str  # the top-level column the field belongs to
    path: str  # dotted path; ``[]`` marks the items of a list (``messages[].content``)
    what: str  # e.g. "a string on {0} and an object on {1}"
    where: tuple[Location, ...]

    def message(self, describe: Callable[[Location], str]) -> str:
        what = self.what.format(*(describe(w) for w in self.where))
        return f"field {shorten(self.path)!r} is {what}"


def shorten(text: str, limit: int = 120) -> str:
    """A field path (made of the dataset's own keys) cut to ``limit`` characters for messages."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Node:
    """The type seen so far at one place of the rows (a column, a key, the items of a list)."""

    __slots__ = ("arrow", "column", "fields", "first", "inexact", "item", "kind", "path")

    def __init__(self, column: str, path: str) -> None:
        self.column = column
        self.path = path
        self.kind: str | None = None  # None: only nulls so far
        self.first: dict[str, Location] = {}  # where each kind was first seen
        self.inexact: Location | None = None  # an integer a float64 can't hold exactly
        self.item: _Node | None = None
        self.fields: dict[str, _Node] | None = None
        self.arrow: pa.DataType | None = None  # the type of another Python object (hub streams)


def _kind_of(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return "str"
    if kind is bool:
        return "bool"
    if kind is int:
        return "int"
    if kind is float:
        return "float"
    if isinstance(value, dict):
        return "struct"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    try:  # another Python object (a streamed hub dataset): whatever Arrow makes of it
        return f"arrow:{pa.infer_type([value])}"
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return f"python:{type(value).__name__}"


def _word(kind: str) -> str:
    if kind.startswith("arrow:"):
        return f"a {kind[6:]} value"
    if kind.startswith("python:"):
        return f"a Python {kind[7:]}"
    return _KIND_WORDS[kind]


def _observe(node: _Node, value: Any, where: Location) -> None:
    if value is None:
        return
    kind = _kind_of(value)
    if kind == "int" and not _INT64_MIN <= value <= _INT64_MAX:
        raise TypeConflict(
            node.column, node.path, "an integer beyond 64 bits on {0}", (where,)
        )
    current = node.kind
    if current != kind:
        if current is None:
            node.kind = kind
        elif {current, kind} == {"int", "float"}:
            node.kind = "float"
        elif kind.startswith("python:"):
            raise TypeConflict(node.column, node.path, _word(kind) + " on {0}", (where,))
        else:
            raise TypeConflict(
                node.column,
                node.path,
                f"{_word(current)} on {{0}} and {_word(kind)} on {{1}}",
                (node.first[current], where),
            )
        node.first.setdefault(kind, where)
        if kind.startswith("arrow:"):
            node.arrow = pa.infer_type([value])
    if kind == "int":
        if node.inexact is None and abs(value) > _EXACT_FLOAT_INT and float(value) != value:
            node.inexact = where
        if node.kind == "float" and node.inexact is not None:
            _inexact(node)
    elif kind == "float":
        if node.inexact is not None:
            _inexact(node)
    elif kind == "str":
        return
    elif kind == "list":
        item = node.item
        if item is None:
            item = node.item = _Node(node.column, node.path + "[]")
        for element in value:
            if element.__class__ is not str or item.kind != "str":  # else nothing to learn
                _observe(item, element, where)
    elif kind == "struct":
        fields = node.fields
        if fields is None:
            fields = node.fields = {}
        for key, element in value.items():
            child = fields.get(key)
            if child is None:
                child = fields[key] = _Node(node.column, f"{node.path}.{key}")
            elif element.__class__ is str and child.kind == "str":  # nothing to learn
                continue
            _observe(child, element, where)


def _inexact(node: _Node) -> None:
    assert node.inexact is not None
    raise TypeConflict(
        node.column,
        node.path,
        "an integer on {0} that a float column can't hold exactly, and a float on {1}",
        (node.inexact, node.first["float"]),
    )


def _arrow_type(node: _Node) -> pa.DataType:
    """The Arrow type of everything seen at ``node``; null-only parts are ``string``."""
    kind = node.kind
    if kind is None or kind == "str":  # a field that is null in every row: a string column
        return pa.string()
    if kind == "bool":
        return pa.bool_()
    if kind == "int":
        return pa.int64()
    if kind == "float":
        return pa.float64()
    if kind == "list":
        return pa.list_(pa.string() if node.item is None else _arrow_type(node.item))
    if kind == "struct":
        if not node.fields:  # Parquet has no struct without children
            raise TypeConflict(
                node.column,
                node.path,
                "an empty object ({{}}) in every row (first on {0}), which Parquet can't store",
                (node.first["struct"],),
            )
        return pa.struct([pa.field(key, _arrow_type(child)) for key, child in node.fields.items()])
    assert node.arrow is not None
    return node.arrow


def _has_null(node: _Node) -> bool:
    if node.kind is None:
        return True
    if node.kind == "list":
        return node.item is None or _has_null(node.item)
    if node.kind == "struct":
        return any(_has_null(child) for child in (node.fields or {}).values())
    return False


class SchemaInference:
    """Widen an Arrow schema row by row (see the module docstring); ``keep_json`` turns a column
    without a lossless type into a JSON-text column instead of raising :class:`TypeConflict`."""

    def __init__(self, *, keep_json: bool = False) -> None:
        self.keep_json = keep_json
        self.rows = 0
        self._columns: dict[str, _Node] = {}
        self.json_columns: dict[str, TypeConflict] = {}  # column → why it is JSON text

    def observe(self, row: Mapping[str, Any], where: Location) -> None:
        self.rows += 1
        columns = self._columns
        for name, value in row.items():
            node = columns.get(name)
            if node is None:
                node = columns[name] = _Node(name, name)
            elif value.__class__ is str and node.kind == "str":  # the common case, fast
                continue
            if name in self.json_columns:
                continue
            try:
                _observe(node, value, where)
            except TypeConflict as conflict:
                self._conflict(conflict)

    def _conflict(self, conflict: TypeConflict) -> None:
        if not self.keep_json:
            raise conflict
        self.json_columns.setdefault(conflict.column, conflict)

    def has_null_parts(self) -> bool:
        """Some field is so far only null (or only empty lists): more rows could tell its type."""
        return any(
            _has_null(node) for name, node in self._columns.items() if name not in self.json_columns
        )

    def schema(self) -> pa.Schema:
        fields = []
        for name, node in self._columns.items():
            if name not in self.json_columns:
                try:
                    fields.append(pa.field(name, _arrow_type(node)))
                    continue
                except TypeConflict as conflict:
                    self._conflict(conflict)
            fields.append(json_text_field(name))
        return pa.schema(fields)


# --------------------------------------------------------------------------- fit checks

#: None when the value fits; else (the path below the column, e.g. ``.name`` or ``[]``, and why).
Checker = Callable[[Any], "tuple[str, str] | None"]


def _fits_float32(value: float) -> bool:
    return math.isnan(value) or struct.unpack("f", struct.pack("f", value))[0] == value


def _is_int(value: Any) -> bool:
    """A Python or numpy integer, not a boolean (numpy's bool_ is no ``numbers.Integral``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_checker(low: int, high: int, name: str) -> Checker:
    def check(value: Any) -> tuple[str, str] | None:
        if value is None or (_is_int(value) and low <= value <= high):
            return None
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return "", f"holds {_describe(value)}, not a number"
        return "", f"holds {_describe(value)}, which a column of type {name} can't hold exactly"

    return check


def _float_checker(dtype: pa.DataType) -> Checker:
    single = not pa.types.is_float64(dtype)
    half = pa.types.is_float16(dtype)  # its values come from such a column: not checked further
    exact = 2**11 if half else 2**24 if single else _EXACT_FLOAT_INT

    def check(value: Any) -> tuple[str, str] | None:
        if value is None:
            return None
        if isinstance(value, float) or (  # a Python float, or numpy's
            isinstance(value, numbers.Real) and not isinstance(value, (numbers.Integral, bool))
        ):
            if not single or half or _fits_float32(float(value)):
                return None
        elif _is_int(value) and (
            abs(value) <= exact or (not single and abs(value) <= _INT64_MAX and float(value) == value)
        ):
            return None
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return "", f"holds {_describe(value)}, not a number"
        return "", f"holds {_describe(value)}, which a column of type {dtype} can't hold exactly"

    return check


def _string_checker(value: Any) -> tuple[str, str] | None:
    if value is None or isinstance(value, str):
        return None
    return "", f"holds {_describe(value)}, not a string"


def _bool_checker(value: Any) -> tuple[str, str] | None:
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    return "", f"holds {_describe(value)}, not a boolean"


def _null_checker(value: Any) -> tuple[str, str] | None:
    return None if value is None else ("", f"holds {_describe(value)} in a column of nulls only")


def _list_checker(dtype: pa.DataType) -> Checker:
    item = checker(dtype.value_type)
    size = dtype.list_size if pa.types.is_fixed_size_list(dtype) else None

    def check(value: Any) -> tuple[str, str] | None:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            return "", f"holds {_describe(value)}, not a list"
        if size is not None and len(value) != size:
            return "", f"holds a list of {len(value)} items, not {size}"
        for element in value:
            problem = item(element)
            if problem is not None:
                return "[]" + problem[0], problem[1]
        return None

    return check


def _struct_checker(dtype: pa.StructType) -> Checker:
    children = {dtype.field(i).name: checker(dtype.field(i).type) for i in range(dtype.num_fields)}

    def check(value: Any) -> tuple[str, str] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            return "", f"holds {_describe(value)}, not an object"
        for key, element in value.items():
            child = children.get(key)
            if child is None:
                return f".{key}", "is a key that the column's type lacks"
            problem = child(element)
            if problem is not None:
                return f".{key}" + problem[0], problem[1]
        return None

    return check


def checker(dtype: pa.DataType) -> Checker:
    """A function telling whether a Python value fits ``dtype`` exactly, and if not, where/why."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return _string_checker
    if pa.types.is_boolean(dtype):
        return _bool_checker
    if pa.types.is_integer(dtype):
        half = 2 ** (dtype.bit_width - 1)
        if pa.types.is_unsigned_integer(dtype):
            return _int_checker(0, 2 * half - 1, str(dtype))
        return _int_checker(-half, half - 1, str(dtype))
    if pa.types.is_floating(dtype):
        return _float_checker(dtype)
    if pa.types.is_null(dtype):
        return _null_checker
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        return _list_checker(dtype)
    if pa.types.is_struct(dtype):
        return _struct_checker(dtype)
    # Other types (timestamps, decimals, binary, maps, dictionaries …) come from Parquet, Arrow or
    # hub sources whose values were read from that very type: Arrow's own conversion checks them.
    return lambda value: None


def misfit(value: Any, dtype: pa.DataType) -> tuple[str, str] | None:
    """None when ``value`` fits ``dtype`` exactly; else (path below the column, why not)."""
    return checker(dtype)(value)


def _describe(value: Any) -> str:
    kind = _kind_of(value)
    word = _word(kind)
    if kind in ("int", "float"):
        return f"{word} {value!r}"[:80]
    return word
