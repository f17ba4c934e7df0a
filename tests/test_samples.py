"""Every sample runs against the built-in simulator, in a subprocess, and exits 0."""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from elevenconv import Conversation
from elevenconv.testing import FakeWebSocket
from tests.conftest import scaled

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def _run(
    *args: str, stdin: str | None = None, timeout: float = 45
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ELEVENLABS_API_KEY"}
    return subprocess.run(
        [*args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        cwd=REPO,
        env=env,
    )


@pytest.mark.timeout(60)
def test_text_chat_sample() -> None:
    done = _run(sys.executable, str(SAMPLES / "text_chat.py"), "--simulate", stdin="hello\nbye\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "agent: Hello! I'm the simulated agent. How can I help you today?",
        "agent: Hello there! You can say bye to end the call.",
        "agent: Goodbye! It was nice talking to you.",
        "[conversation over]",
    ]


@pytest.mark.timeout(60)
def test_client_tools_sample_calls_the_sync_and_the_async_tool() -> None:
    done = _run(sys.executable, str(SAMPLES / "client_tools.py"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"agent: It is \d\d:\d\d\.", done.stdout)
    assert '"sky": "sunny"' in done.stdout
    assert "agent: Goodbye!" in done.stdout


@pytest.mark.timeout(90)
def test_pytest_example_passes() -> None:
    done = _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                str(SAMPLES / "test_my_app.py"), timeout=80)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def _load_sample(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_sample", SAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the GUI toolkit is imported inside the classes only
    return module


@pytest.mark.timeout(30)
def test_tk_gui_bridge_marshals_events_headless() -> None:
    """The GUI-independent part: handlers only enqueue; drain() runs on the 'GUI' thread.
    (The windows themselves run under Xvfb in tests/test_gui_tk.py and test_gui_qt.py.)"""
    bridge = _load_sample("tk_gui").CallBridge()
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    bridge.attach(conv)
    conv.start_session()
    fake.push(
        {"type": "agent_response", "agent_response_event": {"agent_response": "Hi", "event_id": 1}}
    )
    fake.server_close(1000, "done")
    conv.wait_for_session_end(scaled(5))  # session_ended handlers have run by now
    conv.end_session()
    shown: list[tuple[str, object]] = []
    bridge.drain(lambda kind, value: shown.append((kind, value)))
    kinds = [kind for kind, _ in shown]
    assert kinds[0] == "connected" and shown[0][1] is conv
    assert ("agent", "Hi") in shown
    assert kinds[-1] == "ended" and shown[-1][1] == (conv, "done")
    with pytest.raises(queue.Empty):
        bridge.items.get_nowait()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["tk_gui", "qt_gui"])
def test_gui_sample_help_needs_no_display(name: str) -> None:
    env_display = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    done = subprocess.run(
        [sys.executable, str(SAMPLES / f"{name}.py"), "--help"],
        capture_output=True, text=True, timeout=scaled(30), cwd=REPO, env=env_display,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--simulate" in done.stdout and "--no-voice" in done.stdout
