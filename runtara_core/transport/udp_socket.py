"""UDP sockets for QUIC endpoints, bound where we say (loopback stays loopback)."""

from __future__ import annotations

import ipaddress
import socket

# The default receive buffer (~208 KB) drops datagrams in connection storms even on loopback,
# and every drop costs a 100 ms+ loss-recovery round (aioquic-notes, pitfall 9).
SERVER_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def literal_address(host: str, port: int) -> tuple[int, tuple] | None:
    """Family and sockaddr of an IP literal, without a resolver (no thread, no lookup); None
    for a name. The common case: the environment hands launches the core's IP address."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return None  # a link-local address with a zone: let the resolver build its sockaddr
    if ip.version == 4:
        return socket.AF_INET, (str(ip), port)
    return socket.AF_INET6, (str(ip), port, 0, 0)


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """Address family and sockaddr for ``host:port`` (first result, UDP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def bound_server_socket(host: str, port: int) -> socket.socket:
    family, sockaddr = resolve(host, port)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _grow_buffer(sock, socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None))
        _grow_buffer(sock, socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None))
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _grow_buffer(sock: socket.socket, option: int, force_option: int | None) -> None:
    """Ask for a large buffer; the FORCE variant (root only) goes past net.core.rmem_max."""
    if force_option is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force_option, SERVER_SOCKET_BUFFER_BYTES)
            return
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, option, SERVER_SOCKET_BUFFER_BYTES)
