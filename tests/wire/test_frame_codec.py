import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtara_core.errors import BadRequest, FrameTooLarge, RuntaraError
from runtara_core.wire.frame_codec import (
    FrameDecoder,
    SingleFrameReader,
    encode_frame,
    frame_bytes,
    unpack_payload,
)

MESSAGES = [
    {"op": "checkpoint", "checkpoint_id": "step-1", "state": b"\x00\x01" * 50},
    {"ok": True, "found": False, "state": b"", "nested": {"list": [1, 2.5, None, "é"]}},
    {"op": "x" * 1000},
]


@pytest.mark.parametrize("message", MESSAGES)
def test_round_trip(message):
    frames = FrameDecoder().feed(encode_frame(message))
    assert [unpack_payload(f) for f in frames] == [message]


def test_many_frames_in_one_chunk():
    data = b"".join(encode_frame(m) for m in MESSAGES)
    assert [unpack_payload(f) for f in FrameDecoder().feed(data)] == MESSAGES


def test_partial_reads_at_every_split_point():
    data = encode_frame(MESSAGES[0]) + encode_frame(MESSAGES[1])
    for split in range(len(data) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(data[:split]) + decoder.feed(data[split:])
        assert [unpack_payload(f) for f in frames] == MESSAGES[:2], split
        decoder.check_complete()


def test_byte_by_byte():
    data = encode_frame(MESSAGES[1])
    decoder = FrameDecoder()
    frames = []
    for i in range(len(data)):
        frames += decoder.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert frames == []
    assert [unpack_payload(f) for f in frames] == [MESSAGES[1]]


def test_frame_exactly_at_limit_is_accepted():
    payload = msgpack.packb(b"a" * 95)  # bin8 header (2 bytes) + 95 = 97 bytes
    limit = len(payload)
    frames = FrameDecoder(limit).feed(frame_bytes(payload, limit))
    assert frames == [payload]


def test_frame_one_byte_over_limit_is_refused_from_its_header_alone():
    limit = 100
    decoder = FrameDecoder(limit)
    with pytest.raises(FrameTooLarge, match="101 bytes exceeds the limit of 100"):
        decoder.feed(struct.pack(">I", limit + 1))  # no body needed to refuse it
    with pytest.raises(FrameTooLarge):
        frame_bytes(b"x" * (limit + 1), limit)
    with pytest.raises(FrameTooLarge):
        encode_frame({"a": "x" * 200}, limit)


def test_zero_length_frame_is_a_frame_but_not_a_message():
    assert FrameDecoder().feed(b"\x00\x00\x00\x00") == [b""]
    with pytest.raises(BadRequest, match="empty frame"):
        unpack_payload(b"")


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", b"\x92\x01", b"\xd9\x05ab", b"\x81\xa1a", b"\x01\x02", b"\xff" * 3],
    ids=["reserved-byte", "short-array", "short-str", "truncated-map", "trailing", "ints"],
)
def test_garbage_payloads_are_bad_requests(payload):
    with pytest.raises(BadRequest):
        unpack_payload(payload)


def test_stream_ending_inside_a_frame():
    decoder = FrameDecoder()
    decoder.feed(encode_frame({"a": 1})[:-1])
    with pytest.raises(BadRequest, match="stream ended inside a frame"):
        decoder.check_complete()
    header_only = FrameDecoder()
    header_only.feed(b"\x00\x00")
    with pytest.raises(BadRequest, match="header"):
        header_only.check_complete()


def test_single_frame_reader_wants_exactly_one_frame():
    reader = SingleFrameReader()
    reader.feed(encode_frame({"a": 1}))
    assert reader.finish() == {"a": 1}
    with pytest.raises(BadRequest, match="without a frame"):
        SingleFrameReader().finish()
    two = SingleFrameReader()
    with pytest.raises(BadRequest, match="exactly one frame"):
        two.feed(encode_frame({"a": 1}) + encode_frame({"b": 2}))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_random_bytes_only_ever_raise_typed_errors(data, split):
    reader = SingleFrameReader(max_frame_bytes=200)
    try:
        reader.feed(data[:split])
        reader.feed(data[split:])
        reader.finish()
    except RuntaraError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_payloads_only_ever_raise_bad_request(payload):
    try:
        unpack_payload(payload)
    except BadRequest:
        pass


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_like, st.integers(min_value=0, max_value=1000))
def test_round_trip_any_value_at_any_split(value, split):
    data = encode_frame(value)
    split = min(split, len(data))
    decoder = FrameDecoder()
    frames = decoder.feed(data[:split]) + decoder.feed(data[split:])
    assert [unpack_payload(f) for f in frames] == [value]
