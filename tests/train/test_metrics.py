"""Hand-written TensorBoard event files and jsonl/csv logs."""

import csv
import json
import math
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from cdiff_jax.train import metrics
from cdiff_jax.train.metrics import MetricsWriter, crc32c, read_event_scalars

STEPS = [(1, {"loss": 0.731, "lr": 1e-4}), (2, {"loss": 0.52, "lr": 2e-4}), (10, {"loss": 0.0213, "lr": 3e-4})]


def _event_class():
    """An independent Event/Summary/Value decoder: the real protobuf library, from a descriptor built here."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="cdiff_test_event.proto", package="cdifftest", syntax="proto3")
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".cdifftest.Value",
                      label=F.LABEL_REPEATED)
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="graph_def", number=4, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".cdifftest.Summary",
                    label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("cdifftest.Event"))


def _raw_records(blob):
    """(offset, data) per record, CRCs ignored: the framing as the test reads it independently."""
    offset, out = 0, []
    while offset < len(blob):
        (length,) = struct.unpack_from("<Q", blob, offset)
        out.append((offset, blob[offset + 12:offset + 12 + length]))
        offset += 16 + length
    assert offset == len(blob)
    return out


def _write_run(run_dir, steps=STEPS, **kwargs):
    with MetricsWriter(run_dir, **kwargs) as writer:
        for step, scalars in steps:
            writer.write(step, scalars)
    return writer.event_path


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_event_file_round_trip(tmp_path):
    path = _write_run(tmp_path)
    assert path.parent == tmp_path and path.name.startswith("events.out.tfevents.")
    expected = {tag: [(step, float(np.float32(scalars[tag]))) for step, scalars in STEPS] for tag in ("loss", "lr")}
    assert read_event_scalars(path) == expected
    assert read_event_scalars(tmp_path) == expected


def test_events_decode_with_protobuf(tmp_path):
    Event = _event_class()
    events = [Event.FromString(data) for _, data in _raw_records(_write_run(tmp_path).read_bytes())]
    assert events[0].file_version == "brain.Event:2" and not events[0].HasField("summary")
    assert [e.step for e in events[1:]] == [step for step, _ in STEPS]
    for event, (_, scalars) in zip(events[1:], STEPS):
        assert {v.tag: v.simple_value for v in event.summary.value} == {k: np.float32(v) for k, v in scalars.items()}
        assert event.wall_time > 1.6e9


def test_reader_accepts_protobuf_encoded_events_and_skips_unknown_fields(tmp_path):
    Event = _event_class()
    event = Event(wall_time=1.5, step=-3, graph_def=b"\x01\x02")
    event.summary.value.add(tag="a", simple_value=0.25)
    event.summary.value.add(tag="no_value")
    path = tmp_path / "events.out.tfevents.0.host"
    path.write_bytes(metrics._frame(Event(file_version="brain.Event:2").SerializeToString())
                     + metrics._frame(event.SerializeToString()))
    assert read_event_scalars(path) == {"a": [(-3, 0.25)]}


def test_corruption_names_the_record_offset(tmp_path):
    blob = _write_run(tmp_path).read_bytes()
    second = _raw_records(blob)[1][0]
    for flipped, message in [(second, "length CRC"), (second + 12, "data CRC"), (len(blob) - 1, "data CRC")]:
        bad = bytearray(blob)
        bad[flipped] ^= 0x40
        (tmp_path / "bad").write_bytes(bytes(bad))
        record = second if flipped < len(blob) - 1 else _raw_records(blob)[-1][0]
        with pytest.raises(ValueError, match=f"{message} mismatch in record at offset {record}$"):
            read_event_scalars(tmp_path / "bad")
    (tmp_path / "bad").write_bytes(blob[:-3])
    with pytest.raises(ValueError, match="truncated record at offset"):
        read_event_scalars(tmp_path / "bad")


def test_float32_overflow_is_stored_as_inf(tmp_path):
    path = _write_run(tmp_path, [(1, {"grad_norm": 1e39}), (2, {"grad_norm": -1e39})])
    assert read_event_scalars(path) == {"grad_norm": [(1, math.inf), (2, -math.inf)]}


def test_jsonl_and_csv(tmp_path):
    _write_run(tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [{"step": s, **x} for s, x in STEPS]
    assert all(r["time"] > 1.6e9 for r in records)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "time", "loss", "lr"]
    assert [[int(r[0]), float(r[2]), float(r[3])] for r in rows[1:]] == [[s, x["loss"], x["lr"]] for s, x in STEPS]
    assert [float(r[1]) for r in rows[1:]] == [r["time"] for r in records]


@pytest.mark.parametrize("same_second", [True, False])
def test_second_writer_appends(tmp_path, monkeypatch, same_second):
    clock = iter(range(1_700_000_000, 1_800_000_000))
    monkeypatch.setattr(metrics.time, "time", (lambda: 1_700_000_000.0) if same_second else lambda: float(next(clock)))
    _write_run(tmp_path, STEPS[:2])
    _write_run(tmp_path, [(3, {"lr": 5e-4, "loss": 0.4})])  # resumed run, keys in another order
    event_files = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert len(event_files) == (1 if same_second else 2)
    for path in event_files:
        assert path.read_bytes().count(b"brain.Event:2") == 1
        assert _event_class().FromString(_raw_records(path.read_bytes())[0][1]).file_version == "brain.Event:2"
    assert read_event_scalars(tmp_path)["loss"] == [(1, np.float32(0.731)), (2, np.float32(0.52)), (3, np.float32(0.4))]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "time", "loss", "lr"] and [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[3][2:] == ["0.4", "0.0005"]


def test_csv_columns_are_fixed_by_the_first_write(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 1.0, "lr": 0.1})
        writer.write(2, {"loss": 0.5})
        with pytest.raises(ValueError, match=r"new key\(s\) \['eval_loss'\]"):
            writer.write(3, {"loss": 0.4, "eval_loss": 0.6})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(3, {"time": 1.0})
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r[0::2] for r in csv.reader(f)] == [["step", "loss"], ["1", "1.0"], ["2", "0.5"]]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert read_event_scalars(tmp_path) == {"loss": [(1, 1.0), (2, 0.5)], "lr": [(1, np.float32(0.1))]}


def test_event_flush_is_throttled(tmp_path):
    writer = MetricsWriter(tmp_path, flush_seconds=1e9)
    writer.write(1, {"loss": 1.0})
    assert (tmp_path / "metrics.jsonl").read_text() and read_event_scalars(writer.event_path) == {}
    writer.flush()
    assert read_event_scalars(writer.event_path) == {"loss": [(1, 1.0)]}
    writer.close()
    eager = _write_run(tmp_path / "eager", [], flush_seconds=0.0)
    assert eager.read_bytes()  # the file_version record


def test_disabled_writer_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "run", enabled=False) as writer:
        writer.write(1, {"loss": 1.0})
        writer.flush()
    assert not (tmp_path / "run").exists()


def test_a_resumed_writer_drops_the_rows_a_killed_run_wrote_after_its_checkpoint(tmp_path):
    _write_run(tmp_path, STEPS)  # steps 1..3 logged, the run killed after a checkpoint at step 1
    with MetricsWriter(tmp_path, resume_step=1) as writer:
        writer.write(2, {"loss": 0.5, "lr": 1e-3})
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r[0] for r in csv.reader(f)] == ["step", "1", "2"]
