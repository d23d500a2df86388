"""Typed errors shared by every part of Runtara.

Each error carries one of the stable wire codes of DESIGN section 2, so a server can turn any
``RuntaraError`` into an error response and a client can turn an error response back into the
same type. Callers catch types, never compare message strings.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_OP = "UNKNOWN_OP"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    INVALID_STATE = "INVALID_STATE"
    CONFLICT = "CONFLICT"
    INTERNAL = "INTERNAL"


class RuntaraError(Exception):
    """Base of every error that has a wire code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(RuntaraError):
    code = ErrorCode.BAD_REQUEST


class UnknownOp(RuntaraError):
    code = ErrorCode.UNKNOWN_OP


class FrameTooLarge(RuntaraError):
    code = ErrorCode.FRAME_TOO_LARGE


class Unauthenticated(RuntaraError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(RuntaraError):
    code = ErrorCode.FORBIDDEN


class NotFound(RuntaraError):
    code = ErrorCode.NOT_FOUND


class InvalidState(RuntaraError):
    code = ErrorCode.INVALID_STATE


class Conflict(RuntaraError):
    code = ErrorCode.CONFLICT


class InternalError(RuntaraError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[RuntaraError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownOp,
        FrameTooLarge,
        Unauthenticated,
        Forbidden,
        NotFound,
        InvalidState,
        Conflict,
        InternalError,
    )
}


def error_from_wire(code: str, message: str) -> RuntaraError:
    """The typed error for a wire ``code``; an unknown code becomes ``InternalError``."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        return InternalError(f"peer sent unknown error code {code!r}: {message}")
    return cls(message)


class TransportError(Exception):
    """The connection to a server failed or was lost; the request may not have been applied.

    Not a wire error: it never travels in a response.
    """


class HandshakeError(TransportError):
    """The QUIC/TLS handshake was refused (untrusted certificate, name mismatch, wrong ALPN)."""


class ConnectionLost(TransportError):
    """The connection dropped while a request was in flight."""


class RequestTimeout(TransportError):
    """No response arrived within the request's timeout."""


class ConfigError(Exception):
    """A setting is invalid; the message names the setting and what is wrong with it."""
