"""The code sandbox's wire: plain values and handles as tagged JSON, in length-prefixed frames.

Copied into the sandbox (as `sandbox_wire.py`) and imported there by the test runner and by the
solution process; standard library only. The runner decodes what the solution process sends, so
decoding trusts nothing: only exact plain types come out (None, bool, int, float, str, bytes,
bytearray, complex, and list, tuple, dict, set, frozenset of those), or a `Handle` that the
runner turns into a remote reference. Anything else, a frame over `MAX_FRAME` bytes, nesting
deeper than `MAX_DEPTH`, or malformed JSON is a `WireError`, never an object with behaviour of
its own: a value that came from the solution compares as the plain value it is.

Tags: list `{"l": [...]}`, tuple `{"t": [...]}`, dict `{"d": [[k, v], ...]}`, set `{"s": [...]}`,
frozenset `{"fs": [...]}`, bytes `{"b": hex}`, bytearray `{"ba": hex}`, complex `{"c": [re, im]}`,
float `{"f": repr}` (so 1.0 stays a float and nan and inf travel), handle `{"h": id}`. None,
bool, int and str are JSON's own.
"""

import json
import os
import select
import struct
import time

MAX_FRAME = 64 << 20
MAX_DEPTH = 200
HEADER = struct.Struct(">I")


class WireError(Exception):
    """A frame or value that breaks the wire format."""


class Handle:
    """A reference to an object that stays in the solution process."""

    __slots__ = ("id",)

    def __init__(self, id):
        self.id = id


def encode(value, handle_of, depth=0):
    """`value` as JSON-able tagged data; a value that is not exactly plain becomes `handle_of(value)`."""
    if depth > MAX_DEPTH:
        raise WireError("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return {"f": repr(value)}
    if kind is Handle:
        return {"h": value.id}
    if kind in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "s", frozenset: "fs"}[kind]
        return {tag: [encode(v, handle_of, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, handle_of, depth + 1), encode(v, handle_of, depth + 1)] for k, v in value.items()]}
    if kind in (bytes, bytearray):
        return {"b" if kind is bytes else "ba": value.hex()}
    if kind is complex:
        return {"c": [repr(value.real), repr(value.imag)]}
    return {"h": handle_of(value)}


def decode(data, from_handle, depth=0):
    """The plain value `data` encodes; handles become `from_handle(id)`. WireError otherwise."""
    if depth > MAX_DEPTH:
        raise WireError("nested too deeply")
    kind = type(data)
    if data is None or kind in (bool, int, str):
        return data
    if kind is not dict or len(data) != 1:
        raise WireError(f"not a tagged value: {kind.__name__}")
    ((tag, body),) = data.items()
    try:
        if tag == "f" and type(body) is str:
            return float(body)
        if tag == "h" and type(body) is int:
            return from_handle(body)
        if tag in ("b", "ba") and type(body) is str:
            return (bytes if tag == "b" else bytearray).fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) is str for x in body):
            return complex(float(body[0]), float(body[1]))
        if type(body) is not list:
            raise WireError(f"tag {tag!r} without a list")
        if tag == "d":
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("a dict item that is not a pair")
                out[decode(pair[0], from_handle, depth + 1)] = decode(pair[1], from_handle, depth + 1)
            return out
        items = [decode(x, from_handle, depth + 1) for x in body]
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "fs":
            return frozenset(items)
    except (TypeError, ValueError, OverflowError) as e:  # an unhashable key, a bad number
        raise WireError(f"{type(e).__name__}: {e}") from None
    raise WireError(f"unknown tag {tag!r}")


def send(fd, message):
    """One frame: the message as JSON, its length first."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise WireError(f"a frame of {len(body)} bytes, over {MAX_FRAME}")
    view = memoryview(HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view):]


def receive(fd, deadline=None):
    """One frame's message. TimeoutError past `deadline` (time.monotonic), EOFError when the other
    side closed, WireError for a frame that breaks the format."""
    size = HEADER.unpack(_read(fd, HEADER.size, deadline))[0]
    if size > MAX_FRAME:
        raise WireError(f"a frame of {size} bytes, over {MAX_FRAME}")
    try:
        return json.loads(_read(fd, size, deadline))
    except (ValueError, RecursionError) as e:
        raise WireError(f"not JSON: {type(e).__name__}") from None


def _read(fd, n, deadline):
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("the solution did not answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the solution process is gone")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
