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
    assert "baseline" not in out  # only with --baseline
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


def test_quick_benchmark_with_a_baseline_tree(tmp_path: Path) -> None:
    """``--baseline TREE``: a fourth column, another checkout's elevenconv run by this
    tree's clients.py. The repository itself is the baseline here, so nothing else is
    needed; the worker reports where its elevenconv came from."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--only",
            "idle,tool",
            "--baseline",
            str(ROOT),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| figure | official SDK | elevenconv | floor | baseline |" in out
    assert "| elevenconv / baseline |" in out
    doc = json.loads((tmp_path / "quick-latest.json").read_text())
    assert doc["baseline"]["tree"] == str(ROOT.resolve())
    assert doc["baseline"]["git_commit"] == doc["git_commit"]
    for key in ("idle", "tool"):
        assert doc["summary"][key]["baseline"]["n"] > 0, key
        for run in doc["raw"][key]["baseline"]:
            assert Path(run["elevenconv_file"]).resolve().is_relative_to(ROOT.resolve())
    assert set(doc["summary"]) == {"idle", "tool"}
    assert "baseline" in doc["table_markdown"]


def test_baseline_worker_imports_the_other_tree(tmp_path: Path) -> None:
    """clients.py --elevenconv-path imports elevenconv from that tree, not its own."""
    tree = tmp_path / "tree"
    (tree / "elevenconv").mkdir(parents=True)
    (tree / "elevenconv" / "__init__.py").write_text("__version__ = 'fake'\n")
    code = (
        "import sys; sys.argv[0] = 'clients.py'; "
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import clients; "
        f"m = clients.import_elevenconv(__import__('pathlib').Path({str(tree)!r})); "
        "print(m.__file__, m.__version__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(tree / "elevenconv" / "__init__.py"), "fake"]
