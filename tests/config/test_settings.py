import pytest

from runtara_core.config import HostPort, load_settings, parse_host_port
from runtara_core.errors import ConfigError


def test_defaults_need_no_configuration(monkeypatch):
    for name in ("RUNTARA_DATA_DIR", "RUNTARA_DATABASE_URL", "RUNTARA_CORE_ADDR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.core_address == HostPort("127.0.0.1", 8001)
    assert settings.env_address == HostPort("127.0.0.1", 8002)
    assert settings.effective_database_url == "sqlite:///.data/runtara.db"
    assert settings.max_frame_bytes == 16 * 1024 * 1024


def test_database_url_follows_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNTARA_DATABASE_URL", raising=False)
    monkeypatch.setenv("RUNTARA_DATA_DIR", str(tmp_path))
    assert load_settings().effective_database_url == f"sqlite:///{tmp_path}/runtara.db"


@pytest.mark.parametrize(
    "variable,value,expected",
    [
        ("RUNTARA_CORE_ADDR", "8001", "RUNTARA_CORE_ADDR: expected HOST:PORT"),
        ("RUNTARA_ENV_ADDR", "localhost:99999", "RUNTARA_ENV_ADDR: port 99999"),
        ("RUNTARA_MAX_FRAME_BYTES", "lots", "RUNTARA_MAX_FRAME_BYTES: Input should be a valid integer"),
        ("RUNTARA_MAX_FRAME_BYTES", "0", "RUNTARA_MAX_FRAME_BYTES: Input should be greater than or equal to 64"),
        ("RUNTARA_DATABASE_URL", "mysql://x", "RUNTARA_DATABASE_URL: expected sqlite:///PATH"),
        ("RUNTARA_LAUNCHER", "teleport", "RUNTARA_LAUNCHER: Input should be 'fork' or 'spawn'"),
        ("RUNTARA_TLS_INSECURE", "maybe", "RUNTARA_TLS_INSECURE"),
        ("RUNTARA_MAX_BUFFERED_BYTES_PER_CONNECTION", "1000", "must be at least RUNTARA_MAX_FRAME_BYTES"),
    ],
)
def test_invalid_setting_is_one_line_naming_it(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text,expected",
    [("127.0.0.1:8001", HostPort("127.0.0.1", 8001)), ("[::1]:9", HostPort("::1", 9)), ("localhost:0", HostPort("localhost", 0))],
)
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected
    assert parse_host_port(str(expected)) == expected
