"""TensorBoard event files read back for the tests: tensorboardX only writes them and tensorboard is no dependency,
so the TFRecord framing is read here and each record parsed as tensorboardX's `Event` protocol buffer."""

import io
import pathlib
import struct

import numpy as np
from PIL import Image
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c


def read_events(path) -> list[Event]:
    """The events of an event file, or of all event files of a directory in name (= start) order; both CRCs of
    every record are checked."""
    path = pathlib.Path(path)
    events = []
    for file in sorted(path.glob("events.out.tfevents.*")) if path.is_dir() else [path]:
        blob, offset = file.read_bytes(), 0
        while offset < len(blob):
            header = blob[offset : offset + 8]
            assert struct.unpack_from("<I", blob, offset + 8)[0] == masked_crc32c(header), f"{file} at {offset}"
            data = blob[offset + 12 : offset + 12 + struct.unpack("<Q", header)[0]]
            offset += 12 + len(data)
            assert struct.unpack_from("<I", blob, offset)[0] == masked_crc32c(data), f"{file} at {offset}"
            offset += 4
            events.append(Event.FromString(data))
    return events


def scalars(path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the scalar summaries."""
    out = {}
    for event in read_events(path):
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def images(path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """{tag: [(step, decoded image), ...]} of the image summaries."""
    out = {}
    for event in read_events(path):
        for value in event.summary.value:
            if value.WhichOneof("value") == "image":
                decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
                out.setdefault(value.tag, []).append((event.step, decoded))
    return out


def texts(path) -> dict[str, list[tuple[int, str]]]:
    """{tag: [(step, text), ...]} of the text summaries (tensorboardX tags them `TAG/text_summary`)."""
    out = {}
    for event in read_events(path):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "text":
                tag = value.tag.removesuffix("/text_summary")
                out.setdefault(tag, []).append((event.step, value.tensor.string_val[0].decode()))
    return out
