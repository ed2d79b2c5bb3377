"""A safetensors file written row by row, for outputs too large to hold in memory.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw bytes. With the shapes known up front the header is written
first, and each tensor's rows are written in place as they are produced. The file is written
under a temporary name and renamed once every row is in: a reader never sees a partial file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch
from torch import Tensor


class SafetensorsWriter:
    """Float32 tensors of known shapes, filled along their first dimension with `append`.

    Use as a context manager: leaving it normally checks that every row was written and renames
    the file into place; leaving it with an exception deletes the partial file.
    """

    def __init__(self, path: str | os.PathLike, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        header: dict[str, dict] = {"__metadata__": dict(metadata or {})}
        self.shapes, self.offsets, self.rows = dict(shapes), {}, {}
        offset = 0
        for name, shape in self.shapes.items():
            size = 4 * math.prod(shape)
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.offsets[name], self.rows[name] = offset, 0
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
        self.data_start = 8 + len(encoded)
        self.file = open(self.partial, "wb")  # noqa: SIM115 (open across appends; closed in __exit__)
        self.file.write(struct.pack("<Q", len(encoded)) + encoded)
        self.file.truncate(self.data_start + offset)

    def append(self, name: str, rows: Tensor) -> None:
        """Write the next rows [n, *shape[1:]] of tensor `name`."""
        shape = self.shapes[name]
        if tuple(rows.shape[1:]) != shape[1:] or self.rows[name] + len(rows) > shape[0]:
            raise ValueError(
                f"{name}: rows of shape {tuple(rows.shape)} after {self.rows[name]} written do not fit a tensor of shape {shape}"
            )
        row_bytes = 4 * math.prod(shape[1:])
        self.file.seek(self.data_start + self.offsets[name] + self.rows[name] * row_bytes)
        self.file.write(rows.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        self.rows[name] += len(rows)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.file.close()
        if error_type is not None:
            self.partial.unlink(missing_ok=True)
            return
        missing = {name: (self.rows[name], shape[0]) for name, shape in self.shapes.items() if self.rows[name] != shape[0]}
        if missing:
            self.partial.unlink(missing_ok=True)
            raise ValueError(f"{self.path} not written: rows written / expected {missing}")
        os.replace(self.partial, self.path)
