"""The wire between the grader (trusted) and the process that runs a student's code (untrusted).

Messages are frames: an 8-byte big-endian length, then the payload. The grader sends pickles (the student's
process may unpickle whatever it likes: it only hurts itself). The student's process answers with
:func:`encode`, which the grader reads back with :func:`decode`: a JSON header and raw tensor bytes, never a
pickle, so nothing the student's process sends can run code in the grader. :func:`decode` accepts only
``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, lists, tuples, dicts with string keys, and
torch tensors and numpy arrays of plain numeric dtypes, and checks every length against the bytes it got.

Only the standard library, numpy and torch are needed.
"""
from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

import numpy as np
import torch

MAX_FRAME = 1 << 28  # 256 MiB: far above any message in the course (the largest is 3 MB of Monte Carlo draws)
MAX_DEPTH = 32  # nesting of lists/tuples/dicts in one answer

# dtype name -> (torch dtype, numpy dtype); bfloat16 has no numpy dtype, so it travels as raw uint16 bits.
_DTYPES = {
    "float16": (torch.float16, np.float16),
    "float32": (torch.float32, np.float32),
    "float64": (torch.float64, np.float64),
    "bfloat16": (torch.bfloat16, None),
    "complex64": (torch.complex64, np.complex64),
    "complex128": (torch.complex128, np.complex128),
    "int8": (torch.int8, np.int8),
    "int16": (torch.int16, np.int16),
    "int32": (torch.int32, np.int32),
    "int64": (torch.int64, np.int64),
    "uint8": (torch.uint8, np.uint8),
    "bool": (torch.bool, np.bool_),
}
_TORCH_NAME = {t: name for name, (t, _) in _DTYPES.items()}
_NUMPY_NAME = {np.dtype(n): name for name, (_, n) in _DTYPES.items() if n is not None}


class WireError(ValueError):
    """A frame or an answer that does not follow the format (truncated, oversized, wrong types)."""


class Unsupported(TypeError):
    """An answer holds an object the format cannot carry (a function, a module, a custom class, ...)."""


# -- framing ----------------------------------------------------------------------------------------------------
def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame (length + payload) to the file descriptor ``fd``."""
    data = struct.pack(">Q", len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError(f"no answer within the time limit ({n - left} of {n} bytes read)")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None, max_size: int = MAX_FRAME) -> bytes:
    """Read one frame from ``fd``; ``deadline`` is a ``time.monotonic()`` value (``None``: wait for ever).

    Raises ``TimeoutError`` past the deadline, ``EOFError`` when the writer is gone, :class:`WireError` when the
    announced length exceeds ``max_size``.
    """
    (size,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
    if size > max_size:
        raise WireError(f"a frame of {size} bytes is larger than the limit of {max_size} bytes")
    return _read_exact(fd, size, deadline)


# -- answers: encode (in the student's process) and decode (in the grader) ---------------------------------------
def encode(value: Any) -> bytes:
    """``value`` as bytes for :func:`decode`; raises :class:`Unsupported` for objects the format cannot carry."""
    blobs: list[bytes] = []

    def enc(v, depth):
        if depth > MAX_DEPTH:
            raise Unsupported(f"the answer is nested deeper than {MAX_DEPTH} levels")
        if v is None or isinstance(v, (bool, str)):
            return {"k": "atom", "v": v}
        if isinstance(v, (int, np.integer)) and not isinstance(v, np.bool_):
            return {"k": "int", "v": str(int(v))}  # a string: JSON numbers lose big ints in other readers
        if isinstance(v, (float, np.floating)):
            return {"k": "float", "v": float(v).hex()}  # hex is exact and spells nan and inf
        if isinstance(v, (complex, np.complexfloating)):
            return {"k": "complex", "v": [float(v.real).hex(), float(v.imag).hex()]}
        if isinstance(v, np.bool_):
            return {"k": "atom", "v": bool(v)}
        if isinstance(v, torch.Tensor):
            if v.layout != torch.strided:
                raise Unsupported(f"a tensor with layout {v.layout} (send .to_dense())")
            t = v.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
            if t.dtype not in _TORCH_NAME:
                raise Unsupported(f"a tensor of dtype {t.dtype}")
            raw = t.view(torch.uint16) if t.dtype == torch.bfloat16 else t
            blobs.append(raw.numpy().tobytes())
            return {"k": "tensor", "dtype": _TORCH_NAME[t.dtype], "shape": list(t.shape), "blob": len(blobs) - 1}
        if isinstance(v, np.ndarray):
            if v.dtype not in _NUMPY_NAME:
                raise Unsupported(f"a numpy array of dtype {v.dtype}")
            blobs.append(np.ascontiguousarray(v).tobytes())
            return {"k": "ndarray", "dtype": _NUMPY_NAME[v.dtype], "shape": list(v.shape), "blob": len(blobs) - 1}
        if isinstance(v, (tuple, list)):  # torch.Size and named tuples arrive as plain tuples
            return {"k": "tuple" if isinstance(v, tuple) else "list", "items": [enc(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            if not all(isinstance(key, str) for key in v):
                raise Unsupported("a dict with keys that are not strings")
            return {"k": "dict", "items": [[str(key), enc(x, depth + 1)] for key, x in v.items()]}
        raise Unsupported(f"a {type(v).__module__}.{type(v).__qualname__}")

    header = json.dumps({"value": enc(value, 0), "sizes": [len(b) for b in blobs]}).encode()
    return struct.pack(">I", len(header)) + header + b"".join(blobs)


def _read_header(data: bytes) -> tuple[dict, list[int], list[int]]:
    """The JSON header of an encoded answer, its blob sizes and the blobs' byte offsets, all checked."""
    if not isinstance(data, (bytes, bytearray)):
        raise WireError(f"data must be bytes, got {type(data).__name__}")
    if len(data) < 4:
        raise WireError("truncated answer: no header length")
    (hlen,) = struct.unpack(">I", data[:4])
    if 4 + hlen > len(data):
        raise WireError(f"truncated answer: a header of {hlen} bytes announced, {len(data) - 4} present")
    try:
        header = json.loads(data[4:4 + hlen].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise WireError(f"the answer's header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict) or not isinstance(header.get("sizes"), list) or "value" not in header:
        raise WireError("the answer's header must be an object with 'value' and 'sizes'")
    sizes = header["sizes"]
    if not all(type(s) is int and s >= 0 for s in sizes):
        raise WireError("blob sizes must be non-negative integers")
    offsets, pos = [], 4 + hlen
    for size in sizes:
        offsets.append(pos)
        pos += size
    if pos != len(data):
        raise WireError(f"the blobs announce {pos - 4 - hlen} bytes, {len(data) - 4 - hlen} present")
    return header, sizes, offsets


def decode(data: bytes) -> Any:
    """The value :func:`encode` wrote; raises :class:`WireError` on anything else (it never unpickles)."""
    header, sizes, offsets = _read_header(data)
    used: set[int] = set()

    def blob(node):
        index = node.get("blob")
        if type(index) is not int or not 0 <= index < len(sizes) or index in used:
            raise WireError(f"bad blob index {index!r}")
        used.add(index)
        shape = node.get("shape")
        if not isinstance(shape, list) or len(shape) > 64 or not all(type(s) is int and s >= 0 for s in shape):
            raise WireError(f"bad shape {shape!r}")
        name = node.get("dtype")
        if name not in _DTYPES:
            raise WireError(f"dtype {name!r} is not allowed")
        itemsize = torch.empty((), dtype=_DTYPES[name][0]).element_size()
        numel = 1
        for s in shape:
            numel *= s
        if numel * itemsize != sizes[index]:
            raise WireError(f"shape {shape} of {name} needs {numel * itemsize} bytes, the blob has {sizes[index]}")
        raw = bytes(data[offsets[index]:offsets[index] + sizes[index]])
        return name, shape, raw

    def dec(node, depth):
        if depth > MAX_DEPTH:
            raise WireError(f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict) or not isinstance(node.get("k"), str):
            raise WireError(f"bad node {str(node)[:80]!r}")
        kind = node["k"]
        try:
            if kind == "atom":
                value = node.get("v")
                if value is not None and type(value) not in (bool, str):
                    raise WireError(f"bad atom {value!r}")
                return value
            if kind == "int":
                text = node.get("v")
                if type(text) is not str or len(text) > 400:
                    raise WireError("bad int")
                return int(text)
            if kind == "float":
                return float.fromhex(node["v"])
            if kind == "complex":
                re, im = node["v"]
                return complex(float.fromhex(re), float.fromhex(im))
        except (TypeError, ValueError, KeyError) as exc:
            if isinstance(exc, WireError):
                raise
            raise WireError(f"bad {kind} node: {exc}") from None
        if kind == "tensor":
            name, shape, raw = blob(node)
            torch_dtype, _ = _DTYPES[name]
            carrier = torch.uint16 if torch_dtype == torch.bfloat16 else torch_dtype
            flat = (torch.frombuffer(bytearray(raw), dtype=carrier) if raw else torch.empty(0, dtype=carrier))
            out = flat.reshape(shape)
            return out.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else out
        if kind == "ndarray":
            name, shape, raw = blob(node)
            _, numpy_dtype = _DTYPES[name]
            if numpy_dtype is None:
                raise WireError(f"dtype {name} is not a numpy dtype")
            return np.frombuffer(raw, dtype=numpy_dtype).reshape(shape).copy()
        if kind in ("tuple", "list"):
            items = node.get("items")
            if not isinstance(items, list):
                raise WireError(f"bad {kind}")
            values = [dec(x, depth + 1) for x in items]
            return tuple(values) if kind == "tuple" else values
        if kind == "dict":
            items = node.get("items")
            if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                      for p in items):
                raise WireError("bad dict")
            return {key: dec(x, depth + 1) for key, x in items}
        raise WireError(f"unknown node kind {kind!r}")

    value = dec(header["value"], 0)
    if len(used) != len(sizes):
        raise WireError("the answer carries bytes no value uses")
    return value
