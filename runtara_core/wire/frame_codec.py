"""Frame codec: a 4-byte big-endian length, then that many bytes of msgpack.

Pure and I/O-free, in the style of aioquic's own codecs: the QUIC adapters feed it whatever
chunks arrive on a stream and get whole frames back. Every malformed input ends in a typed
``RuntaraError`` (``FrameTooLarge`` or ``BadRequest``), never an unexpected exception.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from runtara_core.errors import BadRequest, FrameTooLarge

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024


def pack_payload(message: Any) -> bytes:
    """msgpack-encode a message (str as str, bytes as bin)."""
    try:
        return msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"message cannot be encoded as msgpack: {exc}") from None


def unpack_payload(payload: bytes) -> Any:
    """Decode one frame's msgpack payload; anything undecodable is ``BadRequest``."""
    if not payload:
        raise BadRequest("empty frame: expected a msgpack message")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except msgpack.ExtraData:
        raise BadRequest("frame holds trailing bytes after its msgpack message") from None
    except Exception as exc:  # msgpack raises many types (ValueError, FormatError, ...)
        raise BadRequest(f"frame is not valid msgpack ({type(exc).__name__})") from None


def frame_bytes(payload: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Prefix an encoded payload with its length."""
    if len(payload) > max_frame_bytes:
        raise FrameTooLarge(
            f"frame of {len(payload)} bytes exceeds the limit of {max_frame_bytes} bytes"
        )
    return HEADER.pack(len(payload)) + payload


def encode_frame(message: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    return frame_bytes(pack_payload(message), max_frame_bytes)


class FrameDecoder:
    """Incremental decoder: feed stream chunks of any size, collect complete payloads.

    The length header is checked as soon as its four bytes arrive, so an oversized frame is
    refused before its body is buffered.
    """

    __slots__ = ("_buffer", "_max", "_expected")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._expected: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every payload it completed (possibly none)."""
        self._buffer += data
        frames: list[bytes] = []
        while True:
            if self._expected is None:
                if len(self._buffer) < HEADER_SIZE:
                    return frames
                (length,) = HEADER.unpack_from(self._buffer)
                if length > self._max:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds the limit of {self._max} bytes"
                    )
                del self._buffer[:HEADER_SIZE]
                self._expected = length
            if len(self._buffer) < self._expected:
                return frames
            frames.append(bytes(self._buffer[: self._expected]))
            del self._buffer[: self._expected]
            self._expected = None

    def check_complete(self) -> None:
        """Call at end of stream: a partial frame left over is a ``BadRequest``."""
        if self._expected is not None:
            raise BadRequest(
                f"stream ended inside a frame: got {len(self._buffer)} of {self._expected} bytes"
            )
        if self._buffer:
            raise BadRequest(
                f"stream ended inside a frame header: got {len(self._buffer)} of {HEADER_SIZE} bytes"
            )


class SingleFrameReader:
    """Collects the one frame a request or response stream carries (one stream per RPC)."""

    __slots__ = ("_decoder", "_frames", "received")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self._frames: list[bytes] = []
        self.received = 0

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        self._frames += self._decoder.feed(data)
        if len(self._frames) > 1:
            raise BadRequest("a stream carries exactly one frame; got a second one")

    def finish(self) -> Any:
        """End of stream: return the decoded message or raise a typed error."""
        self._decoder.check_complete()
        if not self._frames:
            raise BadRequest("stream ended without a frame")
        return unpack_payload(self._frames[0])


class HeadFrameReader:
    """Collects the request frame at the head of a stream, leaving what follows it untouched.

    An upload's request frame is followed by raw (unframed) bytes, and it must be routed as soon
    as it is complete, before the stream ends; so this reader stops after one frame and hands
    back the bytes after it instead of parsing them as frames.
    """

    __slots__ = ("_buffer", "_max", "_expected", "done")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._expected: int | None = None
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Add ``data``; once the head frame is complete, return ``(payload, rest)`` (once).

        ``rest`` holds the bytes of ``data`` that follow the frame. Feeding after that is an error.
        """
        if self.done:
            raise RuntimeError("the head frame was already returned")
        self._buffer += data
        if self._expected is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self._max} bytes")
            del self._buffer[:HEADER_SIZE]
            self._expected = length
        if len(self._buffer) < self._expected:
            return None
        payload, rest = bytes(self._buffer[: self._expected]), bytes(self._buffer[self._expected :])
        self._buffer = bytearray()
        self.done = True
        return payload, rest

    def check_complete(self) -> None:
        """Call at end of stream if ``feed`` never returned the frame: always a ``BadRequest``."""
        if self.done:
            return
        if self._expected is not None:
            raise BadRequest(
                f"stream ended inside a frame: got {len(self._buffer)} of {self._expected} bytes"
            )
        if self._buffer:
            raise BadRequest(
                f"stream ended inside a frame header: got {len(self._buffer)} of {HEADER_SIZE} bytes"
            )
        raise BadRequest("stream ended without a frame")
