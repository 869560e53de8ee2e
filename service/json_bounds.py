"""JSON request bodies parsed with bounds on what they may build (`loads_bounded`).

`json.loads` turns 3 bytes of `{},` into ~70 bytes of Python objects: a 60 MB body of
empty objects, under the body-size cap, took 1.7 GB before pydantic could say "at most
10,000 runs". So a body is first *scanned* -- regular expressions over the bytes, no
object built -- and parsed only if its shape is one the API could accept:

- at most `MAX_DEPTH` nested containers (a batch needs 5: body, runs, run, loss curve, point);
- at most `MAX_ITEMS` items in any array (the batch limit and the loss-curve limit) and
  `MAX_MEMBERS` members in any object;
- at most `MAX_OBJECTS` objects (a batch: the body, each run, each run's `extra` and
  `curves`) and `MAX_ARRAYS` arrays (the `runs` list, each run's loss curve and each of its
  `curves` series) in the whole body.
  Arrays of two numbers (loss-curve points) are not counted: they are the one thing a
  large legitimate body is made of, and their memory is bounded by the body size.

The scan stops at the first bound a body breaks (an `InvalidInput` naming where), so memory
stays near the body's size. Runs of scalars and number pairs are matched by one regular
expression each; only containers holding other containers are walked in Python, and the
bounds cap how many of those there are. The scan is lax where `json.loads` is strict (it
may pass a body that `json.loads` then refuses), never the other way round.
"""

from __future__ import annotations

import json
import re
from typing import Any

from service.errors import InvalidInput
from service.limits import MAX_BATCH_RUNS, MAX_CURVE_SERIES, MAX_EXTRA_KEYS, MAX_LOSS_CURVE_POINTS

MAX_DEPTH = 8
MAX_ITEMS = max(MAX_BATCH_RUNS, MAX_LOSS_CURVE_POINTS)
MAX_MEMBERS = 4 * MAX_EXTRA_KEYS
# A full batch whose every run has extra, curves, a loss curve and every curve series it may
# have passes: ~30k objects and ~180k arrays are a few tens of MB at most, not GBs.
MAX_OBJECTS = 3 * MAX_BATCH_RUNS + 64
MAX_ARRAYS = (1 + MAX_CURVE_SERIES) * MAX_BATCH_RUNS + 64

_WS = rb"[ \t\n\r]*+"
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
# Lax (json.loads checks the exact grammar afterwards): a sign, a digit, then number characters.
_NUMBER = rb"-?+[0-9][0-9.eE+\-]*+"
_CONSTANT = rb"NaN|-?Infinity"  # json.loads accepts them (validation then refuses them)
_NUMERIC = rb"(?:" + _NUMBER + rb"|" + _CONSTANT + rb")"
_SCALAR = rb"(?:" + _STRING + rb"|" + _NUMERIC + rb"|true|false|null)"
_PAIR = rb"\[" + _WS + _NUMERIC + _WS + rb"," + _WS + _NUMERIC + _WS + rb"\]"
_ITEM = rb"(?:" + _SCALAR + rb"|" + _PAIR + rb")"  # a value that is no container to walk
_MEMBER = _STRING + _WS + rb":" + _WS + _ITEM

PAIR = re.compile(_PAIR)
ITEM = re.compile(_ITEM)
KEY = re.compile(rb"(" + _STRING + rb")" + _WS + rb":" + _WS)
WS = re.compile(_WS)
STRING = re.compile(_STRING)
# A whole container of at most MAX_ITEMS items (MAX_MEMBERS members), none of them a
# container to walk: [1, "a", [2, 3]] or {"a": 1, "b": [2, 3]}. The regular expression
# engine does the counting: a longer one does not match (and is not scanned to its end).
FLAT_ARRAY = re.compile(
    rb"\[" + _WS + rb"(?:" + _ITEM + _WS + rb"(?:," + _WS + _ITEM + _WS + rb"){0,%d}+)?+\]" % (MAX_ITEMS - 1)
)
FLAT_OBJECT = re.compile(
    rb"\{" + _WS + rb"(?:" + _MEMBER + _WS + rb"(?:," + _WS + _MEMBER + _WS + rb"){0,%d}+)?+\}" % (MAX_MEMBERS - 1)
)
# More items (members) than allowed, none a container: the first MAX_ITEMS + 1 suffice to say so.
LONG_ARRAY = re.compile(rb"\[" + _WS + rb"(?:" + _ITEM + _WS + rb"," + _WS + rb"){%d}" % MAX_ITEMS + _ITEM)
LONG_OBJECT = re.compile(rb"\{" + _WS + rb"(?:" + _MEMBER + _WS + rb"," + _WS + rb"){%d}" % MAX_MEMBERS + _MEMBER)
# Items (members) each followed by a comma, inside a container that also holds containers;
# at most one more than allowed, so that counting them costs little.
ITEM_RUN = re.compile(rb"(?:" + _ITEM + _WS + rb"," + _WS + rb"){0,%d}+" % (MAX_ITEMS + 1))
MEMBER_RUN = re.compile(rb"(?:" + _MEMBER + _WS + rb"," + _WS + rb"){0,%d}+" % (MAX_MEMBERS + 1))

_BOM = b"\xef\xbb\xbf"


class _Syntax(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def _text(body: bytes, start: int, end: int) -> bytes:
    """body[start:end] with every string emptied, so that the separators left are structural."""
    part = body[start:end]
    return STRING.sub(b'""', part) if b'"' in part else part


class _Scan:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.objects = 0
        self.arrays = 0

    def refuse(self, path: list[Any], message: str) -> InvalidInput:
        field = ".".join(str(part) for part in path) or "body"
        index = None
        if len(path) >= 2 and path[0] == "runs" and isinstance(path[1], int):
            index, field = path[1], ".".join(str(part) for part in path[2:]) or "runs"
        detail = {"field": field, "message": message, "index": index, "loc": list(path) or ["body"]}
        where = f"run {index}: " if index is not None else ""
        return InvalidInput(f"invalid input: {where}{field}: {message}", [detail])

    def skip_ws(self, pos: int) -> int:
        match = WS.match(self.body, pos)
        assert match is not None  # `[ \t\n\r]*` matches everywhere
        return match.end()

    def count_members(self, start: int, end: int, path: list[Any], before: int = 0) -> int:
        """`before` plus the members in body[start:end]; at most MAX_MEMBERS."""
        return self.check_members(before + _text(self.body, start, end).count(b":"), path)

    def check_members(self, members: int, path: list[Any]) -> int:
        if members > MAX_MEMBERS:
            raise self.refuse(path, f"must have at most {MAX_MEMBERS} members")
        return members

    def check_items(self, items: int, path: list[Any]) -> int:
        if items > MAX_ITEMS:
            raise self.refuse(path, f"must have at most {MAX_ITEMS} items")
        return items

    def container(self, path: list[Any], depth: int, kind: str) -> None:
        if depth > MAX_DEPTH:
            raise self.refuse(path, f"nested deeper than {MAX_DEPTH} levels")
        if kind == "object":
            self.objects += 1
            if self.objects > MAX_OBJECTS:
                raise self.refuse(
                    path,
                    f"the body holds more than {MAX_OBJECTS} JSON objects (a batch of {MAX_BATCH_RUNS} runs needs fewer)",
                )
        else:
            self.arrays += 1
            if self.arrays > MAX_ARRAYS:
                raise self.refuse(
                    path,
                    f"the body holds more than {MAX_ARRAYS} JSON arrays other than [number, number] pairs "
                    f"(a batch of {MAX_BATCH_RUNS} runs needs fewer)",
                )

    def value(self, pos: int, depth: int, path: list[Any]) -> int:
        """Scan the value at `pos`; the position after it."""
        body = self.body
        if pos >= len(body):
            raise _Syntax(pos)
        lead = body[pos]
        if lead == 0x7B:  # {
            self.container(path, depth, "object")
            flat = FLAT_OBJECT.match(body, pos)
            if flat is not None:
                return flat.end()
            if LONG_OBJECT.match(body, pos):
                self.check_members(MAX_MEMBERS + 1, path)
            return self.walk_object(pos, depth, path)
        if lead == 0x5B:  # [
            pair = PAIR.match(body, pos)
            if pair is not None:
                return pair.end()
            self.container(path, depth, "array")
            flat = FLAT_ARRAY.match(body, pos)
            if flat is not None:
                return flat.end()
            if LONG_ARRAY.match(body, pos):
                self.check_items(MAX_ITEMS + 1, path)
            return self.walk_array(pos, depth, path)
        item = ITEM.match(body, pos)
        if item is None:
            raise _Syntax(pos)
        return item.end()

    def walk_object(self, pos: int, depth: int, path: list[Any]) -> int:
        body = self.body
        pos = self.skip_ws(pos + 1)
        if body[pos : pos + 1] == b"}":
            return pos + 1
        members = 0
        while True:
            run = MEMBER_RUN.match(body, pos)
            assert run is not None  # `(…)*+` matches everywhere
            members = self.count_members(pos, run.end(), path, members)
            pos = run.end()
            key = KEY.match(body, pos)
            if key is None:
                raise _Syntax(pos)
            pos = self.value(key.end(), depth + 1, [*path, _key(key.group(1))])
            members = self.check_members(members + 1, path)
            pos = self.skip_ws(pos)
            separator = body[pos : pos + 1]
            if separator == b"}":
                return pos + 1
            if separator != b",":
                raise _Syntax(pos)
            pos = self.skip_ws(pos + 1)

    def walk_array(self, pos: int, depth: int, path: list[Any]) -> int:
        body = self.body
        pos = self.skip_ws(pos + 1)
        if body[pos : pos + 1] == b"]":
            return pos + 1
        items = 0
        while True:
            run = ITEM_RUN.match(body, pos)
            assert run is not None
            if run.end() > pos:
                text = _text(body, pos, run.end())
                # One comma after each item, and one inside each pair (with its '[').
                items = self.check_items(items + text.count(b",") - text.count(b"["), path)
                pos = run.end()
            pos = self.skip_ws(self.value(pos, depth + 1, [*path, items]))
            items = self.check_items(items + 1, path)
            separator = body[pos : pos + 1]
            if separator == b"]":
                return pos + 1
            if separator != b",":
                raise _Syntax(pos)
            pos = self.skip_ws(pos + 1)


def _key(raw: bytes) -> str:
    try:
        key = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
    return key if isinstance(key, str) else str(key)


def check_shape(body: bytes) -> None:
    """Raise InvalidInput if the JSON in `body` breaks a bound (module docstring), or
    json.JSONDecodeError where its syntax is certainly wrong; return if it may be parsed."""
    encoding = json.detect_encoding(body)
    if encoding not in ("utf-8", "utf-8-sig"):  # UTF-16/32, which json.loads also reads
        body = body.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
    start = len(_BOM) if body.startswith(_BOM) else 0
    scan = _Scan(body)
    try:
        pos = scan.skip_ws(scan.value(scan.skip_ws(start), 1, []))
        if pos != len(body):
            raise _Syntax(pos)
    except _Syntax as error:
        found = body[error.pos : error.pos + 1]
        reason = f"unexpected {found.decode('latin-1')!r} at byte {error.pos}" if found else "unexpected end"
        raise json.JSONDecodeError(reason, "", 0) from None


def loads_bounded(body: bytes) -> Any:
    """`json.loads(body)`, after `check_shape` has found nothing that would make it costly."""
    check_shape(body)
    return json.loads(body)
