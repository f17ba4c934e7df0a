"""elevenconv vs the official SDK (``elevenlabs``) and the floor, against the same
AgentSimulator.

    python benchmarks/run.py            # the full run (about 8 minutes on 2 cores)
    python benchmarks/run.py --quick    # a smoke run (CI): tiny sizes, same code paths
    python benchmarks/run.py --baseline /tmp/oldmain   # + another checkout's elevenconv

One server process (``benchmarks/server.py``) serves every scenario; each measurement
runs in a fresh client process (``benchmarks/clients.py``) for one library, and the
libraries take turns in every round, in an order that changes round by round (ABC, CBA,
BCA, ACB, CAB, BAC: over 6 rounds every library has every place). ``floor`` is no
library: a bare websocket-client reader doing only what a correct client must
(``clients.FloorConversation``), the limit of each figure in this setup; it is measured
in every scenario but barge-in (it has no audio device). Prints one table (median, p99,
ratios elevenconv / official and elevenconv / floor, target, verdict; targets and
verdicts compare with the official SDK) and writes ``benchmarks/results/bench-<date>.json``
and ``benchmarks/results/latest.json`` (``--quick``: ``quick-latest.json`` only) with the
configuration, the environment and every sample.

``--baseline TREE`` adds a fourth column, ``baseline``: the elevenconv package of another
checkout (``git worktree add /tmp/oldmain <commit>``), run by this tree's
``clients.py`` (``--elevenconv-path TREE``: same scenarios, same measurement points;
keywords TREE's Conversation lacks are dropped) in the same interleaved rounds, in every
scenario; the table gains ``baseline`` and ``elevenconv / baseline``, the JSON the tree's
path and commit.

The barge-in figure needs the PulseAudio test stack (``scripts/sound-server``): an
already exported one is used, otherwise one is started in a private directory and
stopped at the end. Without the ``elevenlabs`` package, ``--quick`` measures elevenconv
and the floor only and says so; the full run refuses (``make bench`` installs it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIBS = ("official", "elevenconv", "floor")
#: Another checkout's elevenconv (--baseline): a fourth library, after the others.
BASELINE = "baseline"
LABEL = {
    "official": "official SDK",
    "elevenconv": "elevenconv",
    "floor": "floor",
    BASELINE: "baseline",
}
#: Scenarios the floor client has no part in (it has no audio device).
NO_FLOOR = ("bargein",)

# Scenario sizes: rounds (library order changing, see round_order) x params per round.
FULL: dict[str, dict[str, Any]] = {
    "end_session": {"rounds": 3, "params": {"sessions": 10}},
    "pong": {"rounds": 2, "params": {"blocks": 3, "block_s": 2.0}},
    "stream": {"rounds": 4, "params": {"n": 500, "interval_s": 0.005, "chunk_bytes": 1600}},
    "cpu": {"rounds": 6, "params": {"n": 2000, "interval_s": 0.001, "chunk_bytes": 1600}},
    "idle": {"rounds": 2, "params": {"seconds": 10.0}},
    "tool": {"rounds": 2, "params": {"n": 100, "gap_s": 0.005}},
    "bargein": {"rounds": 2, "params": {"trials": 4}},
    "concurrent": {
        "rounds": 1,
        "params": {"conversations": 200, "chunks": 40, "rate": 4.0, "chunk_bytes": 8000},
    },
}
QUICK: dict[str, dict[str, Any]] = {
    "end_session": {"rounds": 1, "params": {"sessions": 3}},
    "pong": {"rounds": 1, "params": {"blocks": 1, "block_s": 0.5}},
    "stream": {"rounds": 1, "params": {"n": 100, "interval_s": 0.005, "chunk_bytes": 1600}},
    "cpu": {"rounds": 1, "params": {"n": 200, "interval_s": 0.001, "chunk_bytes": 1600}},
    "idle": {"rounds": 1, "params": {"seconds": 1.0}},
    "tool": {"rounds": 1, "params": {"n": 20, "gap_s": 0.005}},
    "bargein": {"rounds": 1, "params": {"trials": 1}},
    "concurrent": {
        "rounds": 1,
        "params": {"conversations": 10, "chunks": 8, "rate": 4.0, "chunk_bytes": 8000},
    },
}


# ======================================================================================
# Statistics
# ======================================================================================


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def round_order(libs: Sequence[str], rnd: int) -> tuple[str, ...]:
    """Round ``rnd``'s library order: rotated by ``rnd // 2``, reversed on odd rounds.
    Three libraries: ABC, CBA, BCA, ACB, CAB, BAC (every order once in 6 rounds; in every
    pair of rounds each library's mean place is the middle). Two: AB, BA, BA, AB. Four
    (--baseline): ABCD, DCBA, BCDA, ADCB, ... (the same: mean place in a pair, middle)."""
    k = (rnd // 2) % len(libs) if libs else 0
    order = tuple(libs[k:]) + tuple(libs[:k])
    return tuple(reversed(order)) if rnd % 2 else order


# ======================================================================================
# Processes
# ======================================================================================


class Server:
    """``benchmarks/server.py`` in its own process; stopped by closing its stdin."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [python, str(HERE / "server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"benchmark server failed to start: {line!r} {err[-2000:]}")
        self.port = int(line.split()[1])
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._readers:
            t.join(10)
        report: dict[str, Any] = {}
        for line in self.stdout:
            if line.startswith("REPORT "):
                report = json.loads(line[len("REPORT ") :])
        report["exit_code"] = self.proc.returncode
        if self.proc.returncode:
            report["stderr_tail"] = "".join(self.stderr)[-2000:]
        return report


def run_worker(
    python: str,
    lib: str,
    scenario: str,
    port: int,
    tag: str,
    params: dict[str, Any],
    env: dict[str, str],
    timeout: float,
    elevenconv_tree: Path | None = None,
) -> dict[str, Any]:
    """One measurement in a fresh client process. ``lib`` is an adapter of clients.py;
    ``elevenconv_tree``: the checkout whose elevenconv it imports (checked there)."""
    cmd = [
        python,
        str(HERE / "clients.py"),
        "--lib",
        lib,
        "--scenario",
        scenario,
        "--port",
        str(port),
        "--tag",
        tag,
        "--params",
        json.dumps(params),
    ]
    if elevenconv_tree is not None:
        cmd += ["--elevenconv-path", str(elevenconv_tree)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = dict(json.loads(line[len("RESULT ") :]))
            if elevenconv_tree is not None:
                where = Path(res["elevenconv_file"]).resolve()
                if not where.is_relative_to(elevenconv_tree.resolve()):
                    raise RuntimeError(f"{tag}: elevenconv from {where}, not {elevenconv_tree}")
            return res
    raise RuntimeError(f"{lib} {scenario} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ======================================================================================
# The sound stack (barge-in only)
# ======================================================================================


class SoundStack:
    """Use the exported PulseAudio test server, or start a private one for this run."""

    def __init__(self) -> None:
        self.env: dict[str, str] | None = None
        self.reason = ""
        self._dir: str | None = None

    def __enter__(self) -> SoundStack:
        script = ROOT / "scripts" / "sound-server"
        needed = ("PULSE_SERVER", "ELEVENCONV_TEST_SPEAKER_SINK")
        if all(os.environ.get(v) for v in needed) and _pactl_ok(dict(os.environ)):
            self.env = {}
            return self
        if not shutil.which("pulseaudio") or not shutil.which("parecord"):
            self.reason = "pulseaudio / parecord not installed"
            return self
        self._dir = tempfile.mkdtemp(prefix="elevenconv-bench-sound-")
        env = dict(os.environ, ELEVENCONV_SOUND_DIR=self._dir)
        proc = subprocess.run(
            ["bash", str(script), "start"], capture_output=True, text=True, env=env, timeout=60
        )
        if proc.returncode != 0:
            self.reason = f"scripts/sound-server start failed: {proc.stderr.strip()[-500:]}"
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            return self
        self.env = {}
        for line in proc.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                self.env[key.strip()] = value.strip().strip("'\"")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            env = dict(os.environ, ELEVENCONV_SOUND_DIR=self._dir)
            subprocess.run(
                ["bash", str(ROOT / "scripts" / "sound-server"), "stop"],
                capture_output=True,
                env=env,
                timeout=60,
            )


def _pactl_ok(env: dict[str, str]) -> bool:
    try:
        subprocess.run(["pactl", "info"], check=True, capture_output=True, timeout=5, env=env)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


# ======================================================================================
# Figures
# ======================================================================================


@dataclass
class Figure:
    key: str
    title: str
    unit: str
    scenario: str
    extract: Callable[[list[dict[str, Any]]], list[float]]
    target: str
    # verdict(ours, official) -> (met, detail); None: reported only
    verdict: Callable[[dict[str, float], dict[str, float] | None], bool] | None
    show: str = "median_p99"  # or "value" (one figure per run: median over rounds)


def _samples(field: str) -> Callable[[list[dict[str, Any]]], list[float]]:
    return lambda results: [x for r in results for x in r[field]]


def _cpu_per_1000(results: list[dict[str, Any]]) -> list[float]:
    return [r["cpu_s"] * 1000 / r["n"] * 1000 for r in results]  # ms per 1,000 messages


def _idle_ms_per_10s(results: list[dict[str, Any]]) -> list[float]:
    return [r["cpu_s"] * 1000 * 10 / r["seconds"] for r in results]


FIGURES = [
    Figure(
        "end_session",
        "`end_session()` -> all library threads gone",
        "ms",
        "end_session",
        _samples("gone_ms"),
        "p99 <= 50 ms",
        lambda o, b: o["p99"] <= 50,
    ),
    Figure(
        "pong",
        "pong delay while a user callback blocks",
        "ms",
        "pong",
        _samples("pong_ms"),
        "p99 <= 10 ms",
        lambda o, b: o["p99"] <= 10,
    ),
    Figure(
        "stream",
        "audio delivery latency, server send -> `output()`",
        "ms",
        "stream",
        _samples("latency_ms"),
        "p99 not above the official SDK's",
        lambda o, b: b is None or o["p99"] <= b["p99"],
    ),
    Figure(
        "cpu",
        "client CPU per 1,000 audio messages (1,600-byte chunks)",
        "ms",
        "cpu",
        _cpu_per_1000,
        "<= 0.8x the official SDK's",
        lambda o, b: b is None or o["median"] <= 0.8 * b["median"],
        show="value",
    ),
    Figure(
        "idle",
        "CPU of a connected, idle session over 10 s",
        "ms",
        "idle",
        _idle_ms_per_10s,
        "not above the official SDK's",
        lambda o, b: b is None or o["median"] <= b["median"],
        show="value",
    ),
    Figure(
        "tool",
        "tool round trip, `client_tool_call` -> `client_tool_result`",
        "ms",
        "tool",
        _samples("tool_ms"),
        "p99 <= 1 ms",
        lambda o, b: o["p99"] <= 1.0,
    ),
    Figure(
        "bargein",
        "barge-in: speaker audio after `interruption` (PulseAudio)",
        "ms",
        "bargein",
        _samples("after_interrupt_ms"),
        "<= 62.5 ms",
        lambda o, b: o["max"] <= 62.5,
    ),
    Figure(
        "concurrent",
        "200 concurrent conversations, 4 chunks/s each: delivery latency",
        "ms",
        "concurrent",
        _samples("latency_ms"),
        "p99 <= 20 ms",
        lambda o, b: o["p99"] <= 20,
    ),
]


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "median": median(values),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(s: dict[str, float] | None, fig: Figure, unit: str, missing: str = "not measured") -> str:
    if not s:
        return missing
    if fig.show == "value":
        spread = f" ({_fmt(s['min'])}-{_fmt(s['max'])})" if s["n"] > 1 else ""
        return f"{_fmt(s['median'])} {unit}{spread}"
    return f"median {_fmt(s['median'])}, p99 {_fmt(s['p99'])} {unit}"


def _ratio(ours: dict[str, float] | None, other: dict[str, float] | None, fig: Figure) -> str:
    if not ours or not other:
        return "-"
    k = "median" if fig.show == "value" else "p99"
    return f"{ours[k] / other[k]:.2f}x" if other[k] else "-"


def render_table(summary: dict[str, Any], extra: dict[str, Any], baseline: bool = False) -> str:
    """The markdown table; ``baseline``: with the ``baseline`` and ``elevenconv /
    baseline`` columns (--baseline), otherwise exactly the three-library table."""
    if baseline:
        rows = [
            "| figure | official SDK | elevenconv | floor | baseline "
            "| elevenconv / official (p99; value) | elevenconv / floor "
            "| elevenconv / baseline | target | met |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        rows = [
            "| figure | official SDK | elevenconv | floor | elevenconv / official (p99; value) "
            "| elevenconv / floor | target | met |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for fig in FIGURES:
        entry = summary.get(fig.key)
        if entry is None:
            continue
        off, ours, floor = entry.get("official"), entry.get("elevenconv"), entry.get("floor")
        floor_cell = _cell(
            floor, fig, fig.unit, "-" if fig.scenario in NO_FLOOR else "not measured"
        )
        title = fig.title
        if fig.key == "end_session":
            title += f" ({entry['sessions']} sessions)"
        if fig.key in ("stream",):
            title += f" ({entry['samples']['elevenconv']:,} chunks)"
        if fig.key == "concurrent":
            title = title.replace("200", str(extra.get("conversations", 200)))
        if fig.key == "pong" and "pong_block_s" in extra:
            title += f" for {extra['pong_block_s']:g} s"
        met = entry.get("met")
        verdict = "-" if met is None else ("yes" if met else "**no**")
        if baseline:
            base = entry.get(BASELINE)
            rows.append(
                f"| {title} | {_cell(off, fig, fig.unit)} | {_cell(ours, fig, fig.unit)} | "
                f"{floor_cell} | {_cell(base, fig, fig.unit)} | {_ratio(ours, off, fig)} | "
                f"{_ratio(ours, floor, fig)} | {_ratio(ours, base, fig)} | "
                f"{fig.target} | {verdict} |"
            )
        else:
            rows.append(
                f"| {title} | {_cell(off, fig, fig.unit)} | {_cell(ours, fig, fig.unit)} | "
                f"{floor_cell} | {_ratio(ours, off, fig)} | {_ratio(ours, floor, fig)} | "
                f"{fig.target} | {verdict} |"
            )
        if fig.key == "concurrent":
            conc = extra.get("concurrent", {})
            cells = []
            for lib in (*LIBS, BASELINE) if baseline else LIBS:
                c = conc.get(lib)
                cells.append(
                    f"{c['threads']} threads, {c['rss_mb']:.0f} MB RSS, CPU {c['cpu_s']:.1f} s"
                    if c
                    else "not measured"
                )
            rows.append(
                "| ... same run: threads, RSS, CPU | "
                + " | ".join(cells)
                + (" | | | | reported | - |" if baseline else " | | | reported | - |")
            )
    return "\n".join(rows)


# ======================================================================================
# Main
# ======================================================================================


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("elevenlabs", "websockets", "websocket-client", "pyee"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    # The tree under test, not the installed metadata (an editable install's may be stale).
    version_file = ROOT / "elevenconv" / "_version.py"
    out["elevenconv"] = version_file.read_text().split("=")[-1].strip().strip("\"'")
    return out


def git_commit(tree: Path = ROOT) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=tree,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_changes(tree: Path, under: str = "elevenconv") -> list[str]:
    """Uncommitted changes to the package in ``tree`` (``git status --porcelain``): the
    commit alone does not say what was measured if there are any."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", under],
            capture_output=True,
            text=True,
            cwd=tree,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument(
        "--official-python",
        default=sys.executable,
        help="interpreter with the elevenlabs package (default: this one)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="another checkout (e.g. a git worktree of the previous main): its elevenconv "
        "is measured beside this one's, in the same rounds, as the column 'baseline'",
    )
    args = parser.parse_args(argv)
    baseline: Path | None = args.baseline.resolve() if args.baseline else None
    if baseline is not None and not (baseline / "elevenconv" / "__init__.py").is_file():
        print(f"--baseline {baseline}: no elevenconv package there", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    only = [s for s in args.only.split(",") if s]
    if only:
        plan = {k: v for k, v in plan.items() if k in only}

    python = {
        "elevenconv": sys.executable,
        "official": args.official_python,
        "floor": sys.executable,
        BASELINE: sys.executable,
    }
    # The clients.py adapter and the checkout its elevenconv comes from, per library.
    adapter = {lib: lib for lib in LIBS} | {BASELINE: "elevenconv"}
    tree: dict[str, Path | None] = dict.fromkeys(LIBS) | {BASELINE: baseline}
    tree["elevenconv"] = ROOT
    notes: list[str] = []
    probe = subprocess.run(
        [python["official"], "-c", "import elevenlabs.conversational_ai.conversation"],
        capture_output=True,
        text=True,
    )
    libs: tuple[str, ...] = LIBS
    if probe.returncode != 0:
        if not args.quick:
            print(
                "the official SDK is not installed: pip install -e '.[bench]' (or make bench)",
                file=sys.stderr,
            )
            return 2
        libs = ("elevenconv", "floor")
        notes.append(
            "official SDK (elevenlabs) not installed: elevenconv measured alone, beside the floor"
        )
    baseline_info: dict[str, Any] | None = None
    if baseline is not None:
        libs += (BASELINE,)
        baseline_info = {
            "tree": str(baseline),
            "git_commit": git_commit(baseline),
            "uncommitted": git_changes(baseline),
        }
        notes.append(
            f"baseline: the elevenconv of {baseline} at {baseline_info['git_commit'] or '?'}"
            + (" (with uncommitted changes)" if baseline_info["uncommitted"] else "")
            + ", run by this tree's benchmarks/clients.py"
        )

    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    started = time.time()
    # Recorded at the start: the tree may get commits while the run goes on.
    commit, uncommitted = git_commit(), git_changes(ROOT)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    server = Server(sys.executable, env)
    print(f"benchmark server on port {server.port}; libraries: {', '.join(libs)}", flush=True)
    sound = SoundStack()
    try:
        with sound:
            for scenario, spec in plan.items():
                worker_scenario = "stream" if scenario == "cpu" else scenario
                wenv = env
                if scenario == "bargein":
                    if sound.env is None:
                        notes.append(f"barge-in not measured: {sound.reason}")
                        continue
                    wenv = dict(env, **sound.env)
                scenario_libs = tuple(
                    lib for lib in libs if not (lib == "floor" and scenario in NO_FLOOR)
                )
                results[scenario] = {lib: [] for lib in scenario_libs}
                for rnd in range(spec["rounds"]):
                    for lib in round_order(scenario_libs, rnd):
                        t0 = time.monotonic()
                        res = run_worker(
                            python[lib],
                            adapter[lib],
                            worker_scenario,
                            server.port,
                            f"{lib}:{scenario}:{rnd}",
                            spec["params"],
                            wenv,
                            timeout=600,
                            elevenconv_tree=tree[lib],
                        )
                        results[scenario][lib].append(res)
                        print(
                            f"  {scenario:<11} round {rnd + 1}/{spec['rounds']} "
                            f"{lib:<10} {time.monotonic() - t0:6.1f} s",
                            flush=True,
                        )
    finally:
        server_report = server.stop()

    summary: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for fig in FIGURES:
        if fig.scenario not in results:
            continue
        entry: dict[str, Any] = {}
        samples: dict[str, int] = {}
        for lib in results[fig.scenario]:
            values = fig.extract(results[fig.scenario][lib])
            entry[lib] = summarize(values)
            samples[lib] = len(values)
        entry["samples"] = samples
        if fig.key == "end_session":
            entry["sessions"] = samples["elevenconv"]
        if fig.verdict is not None:
            entry["met"] = bool(fig.verdict(entry["elevenconv"], entry.get("official")))
        summary[fig.key] = entry
    if "concurrent" in results:
        extra["conversations"] = plan["concurrent"]["params"]["conversations"]
        extra["concurrent"] = {
            lib: {k: v for k, v in results["concurrent"][lib][0].items() if k != "latency_ms"}
            for lib in results["concurrent"]
        }
    if "pong" in results:
        extra["pong_block_s"] = plan["pong"]["params"]["block_s"]
    if "end_session" in results:
        extra["end_session_returned_ms"] = {
            lib: summarize(_samples("returned_ms")(results["end_session"][lib]))
            for lib in results["end_session"]
        }
    if "bargein" in results:
        extra["bargein_trials"] = {
            lib: [t for r in results["bargein"][lib] for t in r["trials"]]
            for lib in results["bargein"]
        }

    if baseline is not None:
        dropped = {
            lib: sorted(
                {
                    k
                    for rs in results.values()
                    for r in rs.get(lib, ())
                    for k in r.get("dropped_kwargs", ())
                }
            )
            for lib in ("elevenconv", BASELINE)
        }
        extra["dropped_kwargs"] = dropped
        if dropped[BASELINE]:
            notes.append(
                "baseline: Conversation keywords it does not take were dropped: "
                + ", ".join(dropped[BASELINE])
            )
    table = render_table(summary, extra, baseline=baseline is not None)
    print()
    print(table)
    for note in notes:
        print(f"note: {note}")
    if server_report.get("violations") or server_report.get("errors"):
        print(f"note: simulator report: {json.dumps(server_report)[:1000]}")

    now = dt.datetime.now(dt.timezone.utc)
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "duration_s": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "versions": versions(),
        "git_commit": commit,
        "uncommitted": uncommitted,
        "baseline": baseline_info,
        "plan": plan,
        "notes": notes,
        "summary": summary,
        "extra": extra,
        "server_report": server_report,
        "table_markdown": table,
        "raw": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    names = (
        ["quick-latest.json"]
        if args.quick
        else [f"bench-{now.strftime('%Y%m%d-%H%M%S')}.json", "latest.json"]
    )
    for name in names:
        path = args.out / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
