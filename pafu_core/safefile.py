"""Reading safetensors files that may be hostile: the header is checked before anything is allocated.

A safetensors file is an 8-byte header length, a JSON header naming every tensor's dtype, shape and
byte range, then the bytes. ``read_header`` validates all of it against the file's own size (so a
header cannot promise more data than the file holds, and nothing larger than the file is ever
allocated) and turns every defect into one sentence that names the file. Pickle files are
recognised and refused without being unpickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

#: safetensors dtype names -> (torch dtype, bytes per element)
DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}


class FileFormatError(ValueError):
    """A file that cannot be what it should be; the message names the file and the defect."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    path: str
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def looks_like_pickle(start: bytes, size: int) -> bool:
    """torch.save / pickle files start with a pickle opcode or a zip signature. A safetensors file can
    start with the same bytes (its header length, little-endian: 0x80 is 128 mod 256), so a start that
    reads as a fitting header length followed by the JSON header's '{' is never taken for a pickle."""
    if len(start) >= 9 and start[8:9] == b"{" and 2 <= int.from_bytes(start[:8], "little") <= size - 8:
        return False
    return start[:1] == b"\x80" or start[:2] == b"PK"


def sniff(path: str | os.PathLike) -> str:
    """What a file's first bytes say it is: ``"safetensors"`` (a fitting header length, then ``{``),
    ``"torch"`` (a zip signature ``PK\\x03\\x04``, or a pickle protocol 2..5 opcode: what torch.save writes),
    or else a short description of what it is instead ("a text file", "an empty file", ...)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        start = fh.read(512)
    if not start:
        return "an empty file"
    if len(start) >= 9 and start[8:9] == b"{" and 2 <= int.from_bytes(start[:8], "little") <= size - 8:
        return "safetensors"
    if start[:4] == b"PK\x03\x04" or (start[:1] == b"\x80" and len(start) > 1 and 2 <= start[1] <= 5):
        return "torch"
    if start[:2] == b"PK":
        return "a zip file that torch.save did not write"
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError as e:      # a multi-byte character cut at the end of the 512 bytes is still text
        text = start[:e.start].decode("utf-8") if e.start >= len(start) - 3 and e.start > 0 else None
    if text is not None and all(c.isprintable() or c in "\n\r\t\f" for c in text):
        return "a text file"
    return "its first bytes are neither a zip, a pickle nor a safetensors header"


def read_header(path: str | os.PathLike, what: str = "file", max_header_bytes: int = 100_000_000) -> Header:
    """Parse and validate a safetensors header; reads at most ``max_header_bytes`` + 8 bytes."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    size = os.path.getsize(path)

    def fail(problem: str):
        raise FileFormatError(f"{what} {name}: {problem}")

    if size == 0:
        fail("the file is empty")
    with open(path, "rb") as fh:
        start = fh.read(9)
        fh.seek(8)
        if looks_like_pickle(start, size):
            fail("this is a pickle / torch.save file; only safetensors files are read here, because a "
                 "pickle can run arbitrary code when it is loaded")
        if len(start) < 8:
            fail(f"the file is only {size} bytes, too short to be a safetensors file")
        n = int.from_bytes(start[:8], "little")
        if n < 2 or n > size - 8:
            if sniff(path) == "a text file":
                fail("not a safetensors file: it is a text file")
            fail("not a safetensors file, or a truncated one (its header length does not fit the file)")
        if n > max_header_bytes:
            fail(f"its header claims {n} bytes, more than a {what} can need ({max_header_bytes})")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):         # bad JSON, bad UTF-8, absurd nesting or numbers
        fail("not a safetensors file: its header is not valid JSON")
    if not isinstance(header, dict):
        fail("not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        fail("its __metadata__ is not a mapping of strings to strings")
    data_bytes = size - 8 - n
    tensors = {}
    for key, entry in header.items():
        if not isinstance(entry, dict):
            fail(f"header entry {key!r} is not a tensor description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            fail(f"tensor {key!r} has unknown dtype {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape)):
            fail(f"tensor {key!r} has no valid shape (a list of non-negative integers)")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            fail(f"tensor {key!r} has no valid data_offsets (two integers)")
        lo, hi = offsets
        if not 0 <= lo <= hi <= data_bytes:
            fail(f"tensor {key!r} lies outside the file (bytes {lo}..{hi} of {data_bytes}): truncated file?")
        if (hi - lo) != math.prod(shape) * DTYPES[dtype][1]:
            fail(f"tensor {key!r} declares shape {shape} ({dtype}) but {hi - lo} bytes of data")
        tensors[key] = TensorEntry(key, dtype, tuple(shape), lo, hi)
    return Header(path, tensors, metadata)


def load_tensors(header: Header, names=None) -> dict[str, torch.Tensor]:
    """The tensors of a validated header (all, or ``names``), on the CPU."""
    from safetensors import safe_open
    wanted = list(header.tensors) if names is None else list(names)
    try:
        with safe_open(header.path, framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in wanted}
    except Exception as e:           # a defect the header check could not see
        raise FileFormatError(f"{os.path.basename(header.path)}: its tensor data cannot be read ({e})") from None
