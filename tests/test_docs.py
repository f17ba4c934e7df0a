"""Every code block of the README and of docs/ runs, unchanged, against the simulator.

* ``python`` blocks run as scripts in a fresh interpreter (blocks that define ``test_*``
  functions run under pytest), with ``ELEVENLABS_BASE_URL`` and ``ELEVENLABS_API_KEY``
  pointing at an :class:`~elevenconv.testing.AgentSimulator` that serves the agent ids
  the docs use (``YOUR_AGENT_ID``). That is the documented way to run them offline
  (docs/index.md "Running the examples offline"). Voice blocks (the default PyAudio
  interface) run on the test sound server; their agent hangs up after its greeting.
* ``bash`` blocks: each ``elevenconv ...`` line runs the installed command against the
  simulator; ``export`` lines may only set the variables the harness sets; install and
  build lines (``pip install``, ``make``, ``bash scripts/...``) are checked against
  setup.cfg, the Makefile and the tree (CI runs them for real: scripts/test builds the
  wheel and installs it in a fresh venv).
* The events table and the API reference are complete: every event name the code can
  emit and every public name is documented.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import elevenconv
import elevenconv.errors
import elevenconv.protocol
import elevenconv.testing
from elevenconv.testing import AgentSimulator, Faults, Step
from tests.conftest import scaled

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.glob("**/*.md"))]

#: The agent ids the examples use; the simulator serves each of them.
DOC_AGENTS = ("YOUR_AGENT_ID",)
#: The only variables a doc block may export: the ones the harness points at its simulator.
HARNESS_ENV = ("ELEVENLABS_BASE_URL", "ELEVENLABS_API_KEY")
SIM_KEY = "sim-api-key"  # the simulator's default key, as docs/index.md says
SHELL_LANGS = {"bash", "sh", "shell", "console"}
#: Fenced blocks in these languages are not code (tables of data, diagrams).
TEXT_LANGS = {"", "text", "txt"}
#: Browser/node code: run by tests/test_official_clients.py from a file under tests/js/,
#: which must contain the block verbatim.
JS_LANGS = {"js", "javascript"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def voice(self) -> bool:
        return "create_default_audio_interface" in self.code or "DefaultAudioInterface(" in (
            self.code
        )

    @property
    def is_test_module(self) -> bool:
        return re.search(r"^def test_", self.code, re.M) is not None


def blocks(lang: set[str] | None = None) -> list[Block]:
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            block = Block(
                path, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2)
            )
            if lang is None or block.lang in lang:
                found.append(block)
    return found


def params(items: list[Block], *, audio_if: Any = None) -> list[Any]:
    out = []
    for block in items:
        marks = [pytest.mark.audio] if audio_if and audio_if(block) else []
        out.append(pytest.param(block, id=block.id, marks=marks))
    return out


# -- the simulator the blocks talk to --------------------------------------------------------


@contextlib.contextmanager
def doc_environment(voice: bool, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """A simulator serving the docs' agent ids, and the environment pointing at it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if voice:
        env.update(request.getfixturevalue("sound_server").env)
    # A voice agent hangs up after its greeting, so "talk until the call ends" examples end.
    faults = Faults(after_first_message=(Step.close(1000, "doc example over"),)) if voice else None
    realtime = 1.0 if voice else None
    with AgentSimulator(api_key=SIM_KEY, audio_realtime_factor=realtime) as sim:
        for agent_id in DOC_AGENTS:
            sim.add_agent(agent_id, faults=faults)
        env["ELEVENLABS_BASE_URL"] = sim.base_url
        env["ELEVENLABS_API_KEY"] = SIM_KEY
        yield env
        assert not sim.violations, sim.violations


def run(argv: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    proc = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=scaled(90),
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return proc.stdout


# -- python blocks -----------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("block", params(blocks({"python"}), audio_if=lambda b: b.voice))
def test_python_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with doc_environment(block.voice, request) as env:
        if block.is_test_module:
            (tmp_path / "test_doc_block.py").write_text(block.code, encoding="utf-8")
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            out = run([*argv, "test_doc_block.py"], env, tmp_path)
            assert re.search(r"\d+ passed", out) and "failed" not in out, out
        else:
            (tmp_path / "doc_block.py").write_text(block.code, encoding="utf-8")
            out = run([sys.executable, "doc_block.py"], env, tmp_path)
    if "# the answer to the question" in block.code:
        # The quick start: the greeting, then the answer to the question -- never the
        # greeting twice, never the program ending before the answer (the old race).
        said = [line for line in out.splitlines() if line.startswith("Agent:")]
        assert len(said) == 2, out
        assert said[0] != said[1], out


def test_the_quick_start_is_in_the_readme_and_the_docs() -> None:
    readme = [b.code for b in blocks({"python"}) if b.path.name == "README.md"]
    docs = [b.code for b in blocks({"python"}) if b.path.name == "getting-started.md"]
    quick = [c for c in readme if "# the answer to the question" in c]
    assert quick, "README.md has no quick start that waits for the answer"
    assert quick[0] in docs, "README's quick start differs from docs/getting-started.md"


# -- shell blocks ------------------------------------------------------------------------------


def setup_cfg_extras() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return set(config["options.extras_require"])


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w.-]*):", text, re.M))


def check_pip_install(args: list[str]) -> None:
    targets = [a for a in args if not a.startswith("-")]
    assert targets, args
    for target in targets:
        name, _, extras = target.partition("[")
        assert name in (".", "elevenconv") or re.fullmatch(
            r"(\$\(ls )?dist/elevenconv-\*\.whl\)?", name
        ), f"pip install {target}: not an install route the docs describe"
        for extra in filter(None, extras.rstrip("]").split(",")):
            assert extra.strip() in setup_cfg_extras(), f"no extra {extra!r} in setup.cfg"


def run_elevenconv(args: list[str], background: bool, env: dict[str, str], cwd: Path) -> None:
    argv = [sys.executable, "-m", "elevenconv", *args]
    if args[:1] == ["simulate"]:
        if "--port" in argv:  # the doc's fixed port may be taken: any free one
            argv[argv.index("--port") + 1] = "0"
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
        )
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [lines.put(li) for li in stdout], daemon=True).start()
        try:
            first = lines.get(timeout=scaled(30))
            assert "listening on http://" in first, first
        finally:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=scaled(30))
        assert rc in (0, 130), rc
        return
    assert not background, f"only `elevenconv simulate` may run in the background: {args}"
    interactive = args[:1] == ["chat"] and "--say" not in args and "--script" not in args
    run(argv, env, cwd, stdin="bye\n" if interactive else "")


def run_shell_block(block: Block, env: dict[str, str], cwd: Path) -> None:
    for raw in block.code.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        background = line.endswith("&")
        words = shlex.split(line.rstrip("&").strip())
        if words[0] == "export":
            names = {w.split("=", 1)[0] for w in words[1:]}
            assert names <= set(HARNESS_ENV), f"{block.id}: exports {names - set(HARNESS_ENV)}"
        elif words[0] == "elevenconv":
            run_elevenconv(words[1:], background, env, cwd)
        elif words[:2] == ["python", "-m"] and words[2] == "elevenconv":
            run_elevenconv(words[3:], background, env, cwd)
        elif words[:2] == ["pip", "install"]:
            check_pip_install(words[2:])
        elif words[0] == "make":
            assert set(words[1:]) <= makefile_targets(), f"{block.id}: {line}"
        elif words[0] == "bash" and words[1].startswith("scripts/"):
            assert (ROOT / words[1]).is_file(), f"{block.id}: {line}"
        elif words[0] == "python" and words[1].startswith("samples/"):
            assert (ROOT / words[1]).is_file(), f"{block.id}: {line}"  # run by test_samples
        else:
            pytest.fail(f"{block.id}: tests/test_docs.py does not know how to run: {line}")


def _needs_sound(block: Block) -> bool:
    # `elevenconv chat` without --no-voice (and `devices`) uses a sound device when present.
    return any(
        ln.strip().startswith("elevenconv ")
        and ("devices" in ln or ("chat" in ln and "--no-voice" not in ln))
        for ln in block.code.splitlines()
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", params(blocks(SHELL_LANGS), audio_if=_needs_sound))
def test_shell_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with doc_environment(_needs_sound(block), request) as env:
        run_shell_block(block, env, tmp_path)


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("block", params(blocks(JS_LANGS)))
def test_js_block_is_a_file_the_official_client_tests_run(block: Block) -> None:
    sources = [
        _squash(f.read_text(encoding="utf-8"))
        for f in (ROOT / "tests" / "js").rglob("*")
        if f.suffix in (".js", ".mjs", ".html") and "node_modules" not in f.parts
    ]
    assert any(_squash(block.code) in src for src in sources), (
        f"{block.id}: put this code, verbatim, in a file under tests/js/ that "
        "tests/test_official_clients.py runs against the simulator"
    )


def test_every_fenced_block_has_a_known_language() -> None:
    unknown = [
        b.id
        for b in blocks()
        if b.lang not in SHELL_LANGS | TEXT_LANGS | JS_LANGS | {"python"}
    ]
    assert not unknown, f"blocks tests/test_docs.py would not run: {unknown}"


def test_text_blocks_hold_no_code() -> None:
    # A block without a language is shown, not run: it must not be a program in disguise.
    suspicious = [
        b.id
        for b in blocks(TEXT_LANGS)
        if re.search(r"^(import |from \w+ import |elevenconv |pip install )", b.code, re.M)
    ]
    assert not suspicious, f"code in a block without a language (mark it python/bash): {suspicious}"


# -- completeness ------------------------------------------------------------------------------


def emitted_event_names() -> set[str]:
    """Every event name a Conversation can emit, from the code."""
    names = set(typing.get_args(elevenconv.ConversationEvent))
    for name in elevenconv.protocol.__all__:
        cls = getattr(elevenconv.protocol, name)
        if isinstance(cls, type) and issubclass(cls, elevenconv.protocol.ServerEvent):
            event = getattr(cls, "EVENT", None)
            if event:
                names.add(event)
    # events posted besides EVENT (attachments of an agent_response; the Conversation's own)
    for path in (ROOT / "elevenconv").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        names.update(re.findall(r'\(\("([a-z_]+)", \(', source))
        names.update(re.findall(r'\b_?post\(\s*"([a-z][a-z_]*)"', source))
    return names


def documented_events() -> set[str]:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))


def test_every_event_is_in_the_events_table() -> None:
    missing = emitted_event_names() - documented_events()
    assert not missing, f"docs/events.md: add these events to the table: {sorted(missing)}"


def test_the_events_table_names_only_real_events() -> None:
    extra = documented_events() - emitted_event_names()
    assert not extra, f"docs/events.md documents events the code never emits: {sorted(extra)}"


def api_reference_names() -> set[str]:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    return set(re.findall(r"^::: ([\w.]+)", text, re.M))


@pytest.mark.parametrize(
    ("module", "covered_by_module_page"),
    [
        (elevenconv, False),
        (elevenconv.testing, False),
        (elevenconv.errors, True),
        (elevenconv.protocol, True),
    ],
)
def test_every_public_name_is_in_the_api_reference(
    module: Any, covered_by_module_page: bool
) -> None:
    names = api_reference_names()
    if covered_by_module_page:
        assert module.__name__ in names, f"docs/api.md: add ::: {module.__name__}"
        return
    errors = set(elevenconv.errors.__all__)
    missing = {
        f"{module.__name__}.{n}"
        for n in module.__all__
        if not (module is elevenconv and n in errors)  # documented under elevenconv.errors
    } - names
    assert not missing, f"docs/api.md: add {sorted(missing)}"


def test_the_docs_name_every_page_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.name for p in DOCS.glob("*.md")}
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, re.M))
    assert pages == listed, f"mkdocs.yml nav vs docs/*.md: {pages ^ listed}"
