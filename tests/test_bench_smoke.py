"""Smoke test of the benchmark (not a timed test): ``benchmarks/run.py --quick`` runs
every scenario at tiny sizes for elevenconv, the official SDK and the floor, prints the
table and writes valid JSON. Figures are not checked here -- they are a machine's, see
benchmarks/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def test_quick_benchmark_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| figure | official SDK | elevenconv | floor |" in out
    assert "| elevenconv / floor |" in out
    for title in ("end_session()", "pong delay", "audio delivery latency", "tool round trip"):
        assert title in out
    doc = json.loads((tmp_path / "quick-latest.json").read_text())
    assert doc["quick"] is True
    summary = doc["summary"]
    for key in ("end_session", "pong", "stream", "cpu", "idle", "tool", "concurrent"):
        assert summary[key]["elevenconv"]["n"] > 0, key
        # The floor (a bare websocket-client reader) runs wherever it applies.
        assert summary[key]["floor"]["n"] > 0, key
    assert "floor" in doc["extra"]["concurrent"]
    if "bargein" in summary:  # no audio device in the floor client: shown as "-"
        assert "floor" not in summary["bargein"]
        assert "floor" not in doc["raw"]["bargein"]
    try:
        import elevenlabs  # noqa: F401
    except ImportError:
        assert "elevenconv measured alone" in out
    else:
        assert summary["stream"]["official"]["n"] > 0
    assert not doc["server_report"]["violations"], doc["server_report"]
    assert not doc["server_report"]["errors"], doc["server_report"]
