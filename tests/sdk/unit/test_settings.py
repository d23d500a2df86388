"""A launch's settings: a bad server address is refused when they load, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtara_sdk.settings import InstanceSettings


def settings(addr: str) -> InstanceSettings:
    return InstanceSettings(instance_id="i", instance_token="t", server_addr=addr)


@pytest.mark.parametrize("addr, host, port", [("127.0.0.1:8001", "127.0.0.1", 8001), ("[::1]:9", "::1", 9)])
def test_server_address_is_parsed_like_the_servers(addr: str, host: str, port: int) -> None:
    assert settings(addr).server_host_port() == (host, port)


@pytest.mark.parametrize("addr", ["localhost", "host:port", "127.0.0.1:70000", ":8001"])
def test_a_bad_server_address_is_refused_when_the_settings_load(addr: str) -> None:
    with pytest.raises(ValidationError, match="server_addr"):
        settings(addr)
