"""optuna-dashboard, started for real on loopback, serves the studies with the learned user attrs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from optuna_deelbo.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.skipif(shutil.which("optuna-dashboard") is None, reason="optuna-dashboard is not installed")
def test_dashboard_shows_learned_user_attrs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deelbo.db'}"
    argv = ["compare", "--storage", url, "--strategies", "deelbo", "--report", "", "--no-progress"]
    assert main([*argv, "--steps", "10", "--pretrain-steps", "10", "--n-train", "50"]) == 0
    port = _free_port()
    exe = shutil.which("optuna-dashboard")
    assert exe is not None
    server = subprocess.Popen(
        [exe, url, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["digits-N50-seed0/l2-sp/deelbo"]
        detail = _get(f"{base}/api/studies/{studies[0]['study_id']}?after=0")
        assert len(detail["trials"]) == 4
        keys = {a["key"] for t in detail["trials"] for a in t["user_attrs"]}
        assert {"learned:weight_decay", "learned:lambda", "learned:tau", "learned:sigma", "mode"} <= keys
        study_keys = {a["key"] for a in detail["user_attrs"]}
        assert {"time:total_s", "test:accuracy", "description"} <= study_keys
    finally:
        server.terminate()
        server.wait(timeout=10)
