"""O(1) whole-file checks: read a header or a tail, never the tensors.

Why only headers and tails: a 20 GB model must cost what a 1 MB one costs, and a save
that died mid-write leaves a file that is short, not one with wrong bytes in the middle.
Both formats make shortness visible at a fixed place:

* safetensors: 8-byte little-endian header length N, then N bytes of JSON whose
  ``data_offsets`` say where every tensor ends; the file is exactly 8 + N + max(end)
  bytes (safetensors format spec, github.com/huggingface/safetensors README).
* torch.save zip archives: the last 22 bytes are the end-of-central-directory record
  ``PK\\x05\\x06`` (PKWARE APPNOTE 4.3.16); torch writes no archive comment, so a file
  cut anywhere loses it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
EOCD = b"PK\x05\x06"
EOCD_SIZE = 22
ZIP64_LOCATOR = b"PK\x06\x07"
ZIP64_EOCD = b"PK\x06\x06"


def check_safetensors(path: Path) -> str | None:
    """None if the file is a whole safetensors file, else what is wrong with it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return f"{path.name} is empty (0 bytes)"
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated: {size} bytes, less than its 8-byte header"
            (n,) = struct.unpack("<Q", head)
            if n > MAX_SAFETENSORS_HEADER:
                return f"{path.name} is not a safetensors file: header length {n} is implausible"
            if 8 + n > size:
                return f"{path.name} is truncated: header says {n} bytes of JSON, file has {size}"
            raw = f.read(n)
    except OSError as exc:
        return f"{path.name} cannot be read: {exc.strerror or exc}"
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return f"{path.name} has a damaged header (not JSON)"
    if not isinstance(header, dict):
        return f"{path.name} has a damaged header (not a JSON object)"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                           for x in offsets) or offsets[0] > offsets[1]):
            return f"{path.name} has a damaged header (tensor {key!r} has no valid data_offsets)"
        end = max(end, offsets[1])
    expected = 8 + n + end
    if size < expected:
        return f"{path.name} is truncated: {size} bytes, its header needs {expected}"
    if size > expected:
        return f"{path.name} has {size - expected} unexpected trailing bytes (expected {expected})"
    return None


def check_torch_zip(path: Path) -> str | None:
    """None if the file ends in a consistent zip end record, else what is wrong.

    Reads at most the last 98 bytes (EOCD plus the zip64 locator and record).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return f"{path.name} is empty (0 bytes)"
            if size < EOCD_SIZE:
                return f"{path.name} is truncated: {size} bytes, too short for a torch archive"
            tail_len = min(size, EOCD_SIZE + 20 + 56)
            f.seek(size - tail_len)
            tail = f.read(tail_len)
    except OSError as exc:
        return f"{path.name} cannot be read: {exc.strerror or exc}"
    eocd = tail[-EOCD_SIZE:]
    if not eocd.startswith(EOCD):
        return f"{path.name} is truncated or damaged: no zip end record at its end"
    _sig, _disk, _cd_disk, _n_disk, _n, cd_size, cd_offset, comment = struct.unpack(
        "<4sHHHHIIH", eocd)
    if comment != 0:
        return f"{path.name} is damaged: unexpected archive comment"
    if cd_offset + cd_size == size - EOCD_SIZE:
        return None
    # torch's writer always adds zip64 records (record + locator) before the EOCD.
    return _check_zip64(path.name, tail, size)


def _check_zip64(name: str, tail: bytes, size: int) -> str | None:
    if len(tail) < EOCD_SIZE + 20 + 56:
        return f"{name} is damaged: zip64 records missing"
    locator = tail[-EOCD_SIZE - 20:-EOCD_SIZE]
    if not locator.startswith(ZIP64_LOCATOR):
        return f"{name} is damaged: zip64 locator missing"
    (record_offset,) = struct.unpack("<Q", locator[8:16])
    if record_offset != size - EOCD_SIZE - 20 - 56:
        return f"{name} is damaged: zip64 end record not where its locator says"
    record = tail[-EOCD_SIZE - 20 - 56:-EOCD_SIZE - 20]
    if not record.startswith(ZIP64_EOCD):
        return f"{name} is damaged: zip64 end record missing"
    cd_size, cd_offset = struct.unpack("<QQ", record[40:56])
    if cd_offset + cd_size != record_offset:
        return f"{name} is damaged: its central directory does not end where the file does"
    return None
