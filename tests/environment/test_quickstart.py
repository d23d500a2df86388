"""The README's main job, as a user runs it: a fresh directory, no configuration but ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.environment.conftest import free_udp_port


def test_quickstart_runs_the_order_image_end_to_end(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RUNTARA_ENV_ADDR": f"127.0.0.1:{free_udp_port()}",
        "RUNTARA_CORE_ADDR": f"127.0.0.1:{free_udp_port()}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "runtara_environment.quickstart"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed (completed) after attempt 1" in result.stdout
    output = json.loads(result.stdout.split("output:\n", 1)[1])
    assert output["order_id"] == "order-1001" and output["shipment_id"].startswith("shp_")
    # Defaults only: SQLite, generated certificates and admin token, all under the working dir.
    assert (tmp_path / ".data" / "runtara.db").is_file()
    assert (tmp_path / ".data" / "admin-token").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "certs" / "dev-ca.pem").is_file()
