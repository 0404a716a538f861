"""Training observability: TensorBoard event files and metrics.jsonl / metrics.csv (the console line is
`cdiff_jax.progress.ProgressLine`).

The event files are written by hand (TFRecord framing around hand-encoded `Event` protocol
buffers) so TensorBoard can plot a run without TensorFlow, tensorboard or protobuf becoming
dependencies of the trainer. `read_event_scalars` reads them back for tests and plotting scripts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import socket
import struct
import time
from collections.abc import Iterator, Mapping

FILE_VERSION = "brain.Event:2"
JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
EVENT_PREFIX = "events.out.tfevents."


# ---- CRC32C (Castagnoli), the checksum of the TFRecord framing ----

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC32C_TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord stores rotated-and-offset CRCs, so a CRC of bytes that contain CRCs stays well mixed."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(data: bytes) -> bytes:
    """One TFRecord: length, CRC of the length, data, CRC of the data."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _records(blob: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, data) per TFRecord; a bad CRC or a truncated record is a ValueError naming its offset."""
    offset = 0
    while offset < len(blob):
        if offset + 12 > len(blob):
            raise ValueError(f"truncated record header at offset {offset}")
        header = blob[offset:offset + 8]
        if struct.unpack_from("<I", blob, offset + 8)[0] != masked_crc32c(header):
            raise ValueError(f"length CRC mismatch in record at offset {offset}")
        end = offset + 12 + struct.unpack("<Q", header)[0] + 4
        if end > len(blob):
            raise ValueError(f"truncated record at offset {offset}")
        data = blob[offset + 12:end - 4]
        if struct.unpack_from("<I", blob, end - 4)[0] != masked_crc32c(data):
            raise ValueError(f"data CRC mismatch in record at offset {offset}")
        yield offset, data
        offset = end


# ---- the few protocol buffer pieces an Event with scalar summaries needs ----

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_FLOAT32_MAX = 3.4028234663852886e38


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is encoded as its 64-bit two's complement
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """A tagged field; `payload` is the already encoded value (length-prefixed here for _BYTES)."""
    key = _varint(number << 3 | wire_type)
    return key + _varint(len(payload)) + payload if wire_type == _BYTES else key + payload


def _float32(value: float) -> bytes:
    """float32 bytes; values beyond float32 range become +-inf rather than crashing a diverging run's log."""
    if abs(value) > _FLOAT32_MAX and not math.isinf(value):
        value = math.copysign(math.inf, value)
    return struct.pack("<f", value)


def _encode_event(wall_time: float, step: int, body: bytes) -> bytes:
    """Event{1: wall_time, 2: step, body}; body is the encoded file_version (3) or summary (5) field."""
    return _field(1, _FIXED64, struct.pack("<d", wall_time)) + _field(2, _VARINT, _varint(step)) + body


def _encode_summary(scalars: Mapping[str, float]) -> bytes:
    """Summary{repeated 1: Value{1: tag, 2: simple_value}}."""
    return b"".join(
        _field(1, _BYTES, _field(1, _BYTES, tag.encode()) + _field(2, _FIXED32, _float32(value)))
        for tag, value in scalars.items())


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _decode_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) of a message: varints as int, everything else as raw bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        wire_type = key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        else:
            if wire_type == _BYTES:
                size, pos = _read_varint(buf, pos)
            elif wire_type in (_FIXED64, _FIXED32):
                size = 8 if wire_type == _FIXED64 else 4
            else:
                raise ValueError(f"unsupported protobuf wire type {wire_type}")
            if pos + size > len(buf):
                raise ValueError("truncated protobuf field")
            value, pos = buf[pos:pos + size], pos + size
        yield key >> 3, wire_type, value


def _event_scalars(event: bytes) -> Iterator[tuple[str, int, float]]:
    """(tag, step, simple_value) of the scalar Values of one Event; other fields and Values are skipped."""
    step, summaries = 0, []
    for number, wire_type, value in _decode_fields(event):
        if (number, wire_type) == (2, _VARINT):
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif (number, wire_type) == (5, _BYTES):
            summaries.append(value)
    for summary in summaries:
        for number, wire_type, value_msg in _decode_fields(summary):
            if (number, wire_type) != (1, _BYTES):
                continue
            tag, simple = None, None
            for field, wt, value in _decode_fields(value_msg):
                if (field, wt) == (1, _BYTES):
                    tag = value.decode()
                elif (field, wt) == (2, _FIXED32):
                    simple = struct.unpack("<f", value)[0]
            if tag is not None and simple is not None:
                yield tag, step, simple


def read_event_scalars(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of an event file, or of all event files of a directory in name
    (= creation time) order, so a resumed run reads as one series. Values are float32, as stored.

    Both CRCs of every record are verified; a corrupt or truncated file raises ValueError naming
    the file and the offset of the offending record.
    """
    path = pathlib.Path(path)
    files = sorted(path.glob(EVENT_PREFIX + "*")) if path.is_dir() else [path]
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        try:
            for offset, data in _records(file.read_bytes()):
                try:
                    for tag, step, value in _event_scalars(data):
                        scalars.setdefault(tag, []).append((step, value))
                except ValueError as err:
                    raise ValueError(f"bad Event in record at offset {offset}: {err}") from None
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None
    return scalars


# ---- the writer ----

def _drop_rows_after(run_dir: pathlib.Path, step: int) -> None:
    """Rewrite metrics.jsonl and metrics.csv (atomically) without the rows of steps after `step`."""
    for name in (JSONL_NAME, CSV_NAME):
        path = run_dir / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines(keepends=True)
        if name == JSONL_NAME:
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        else:
            kept = lines[:1] + [line for line in lines[1:] if line.strip() and int(line.split(",", 1)[0]) <= step]
        if len(kept) != len(lines):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(path)


def _csv_header(path: pathlib.Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f))


class MetricsWriter:
    """Appends every `write(step, scalars)` to a TensorBoard event file, metrics.jsonl and metrics.csv.

    All files are opened for appending, so a resumed run continues the same logs (TensorBoard
    merges the event files of a directory; a writer started in the same second on the same host
    appends to the same event file without repeating its file_version record). jsonl and csv are
    flushed on every write so they can be tailed; the event file at most every `flush_seconds`
    (`flush()` forces it), because TensorBoard polls anyway.

    A CSV cannot grow columns, so metrics.csv has them fixed by the first write ever made in the
    run directory (read back from its header on resume): `step`, `time`, then that write's keys.
    A later write with a key outside them raises ValueError before anything is written; give such
    metrics their own run directory or include them from the first write on. Keys missing from a
    write are left empty. metrics.jsonl has no such restriction.

    A run resumed from step S passes `resume_step=S`: rows of later steps in metrics.jsonl and metrics.csv
    (written after that checkpoint by a run that was killed) are dropped, so no step appears twice there.

    Only one process of a multi-host run should log: with `enabled=False` (the trainer passes
    `jax.process_index() == 0`) nothing is created or written.
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, flush_seconds: float = 10.0,
                 resume_step: int | None = None):
        self.enabled = enabled
        self._flush_seconds = flush_seconds
        self._files = []
        if not enabled:
            return
        run_dir = pathlib.Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _drop_rows_after(run_dir, resume_step)
        self.event_path = run_dir / f"{EVENT_PREFIX}{int(time.time())}.{socket.gethostname()}"
        self._events = open(self.event_path, "ab")
        if self._events.tell() == 0:
            self._events.write(_frame(_encode_event(time.time(), 0, _field(3, _BYTES, FILE_VERSION.encode()))))
        self._jsonl = open(run_dir / JSONL_NAME, "a")
        self._columns = _csv_header(run_dir / CSV_NAME)  # None until the first write fixes them
        self._csv_file = open(run_dir / CSV_NAME, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        self._files = [self._events, self._jsonl, self._csv_file]
        self._last_event_flush = time.monotonic()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        step = int(step)
        values = {tag: float(value) for tag, value in scalars.items()}  # float() also fetches device scalars
        reserved = {"step", "time"} & values.keys()
        if reserved:
            raise ValueError(f"scalar names {sorted(reserved)} are reserved for the step and the wall time")
        if self._columns is None:
            self._columns = ["step", "time", *values]
            self._csv.writerow(self._columns)
        new = [tag for tag in values if tag not in self._columns]
        if new:
            raise ValueError(f"{CSV_NAME} columns are fixed to {self._columns} by the first write; new key(s) {new} "
                             "cannot be added (log them from the first write on, or use another run directory)")
        row = {"step": step, "time": time.time(), **values}
        self._events.write(_frame(_encode_event(row["time"], step, _field(5, _BYTES, _encode_summary(values)))))
        self._jsonl.write(json.dumps(row) + "\n")
        self._csv.writerow([row.get(column, "") for column in self._columns])
        self._jsonl.flush()
        self._csv_file.flush()
        if time.monotonic() - self._last_event_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        for f in self._files:
            f.flush()
        self._last_event_flush = time.monotonic()

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
