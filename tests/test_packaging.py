"""Packaging: honest metadata, complete artifacts, an sdist whose tests run, visible exports.

The artifacts are built once per module (``python -m build``, as ``make dist`` does);
scripts/test additionally installs the wheel alone in a fresh venv (scripts/wheel-smoke).
"""

from __future__ import annotations

import configparser
import email
import email.message
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import elevenconv
import elevenconv.testing
from tests.conftest import scaled

ROOT = Path(__file__).resolve().parent.parent
#: The CPython versions CI tests (scripts/test): classifiers must say exactly these.
TESTED_PYTHONS = ("3.11", "3.12", "3.13")


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def requirement_lines(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


# -- dir() shows the lazy exports --------------------------------------------------------------


@pytest.mark.parametrize("module", [elevenconv, elevenconv.testing], ids=lambda m: m.__name__)
def test_dir_lists_every_export_including_the_lazy_ones(module: object) -> None:
    listed = set(dir(module))
    missing = set(module.__all__) - listed  # type: ignore[attr-defined]
    assert not missing, f"dir({module.__name__}) lacks {sorted(missing)}"  # type: ignore[attr-defined]


def test_dir_of_elevenconv_does_not_import_pyaudio() -> None:
    code = (
        "import sys, elevenconv\n"
        "names = dir(elevenconv)\n"
        "assert 'DefaultAudioInterface' in names, names\n"
        "assert 'elevenconv._pyaudio_interface' not in sys.modules\n"
        "assert 'pyaudio' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        timeout=scaled(30), check=False,
    )
    assert done.returncode == 0, done.stderr


# -- metadata ------------------------------------------------------------------------------------


def test_python_requires_and_classifiers_agree_with_what_ci_tests() -> None:
    config = setup_cfg()
    assert config["options"]["python_requires"].strip() == f">={TESTED_PYTHONS[0]}"
    classifiers = requirement_lines(config["metadata"]["classifiers"])
    versions = {
        c.rsplit(":: ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions == set(TESTED_PYTHONS)
    assert "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "license is an expression"


def test_websockets_is_a_core_dependency_with_a_lower_bound_of_17() -> None:
    # The built-in simulator (elevenconv chat/simulate) must work on the plain install,
    # and it uses websockets' sync server API of 17.0 (which needs Python >= 3.11).
    core = requirement_lines(setup_cfg()["options"]["install_requires"])
    websockets = [r for r in core if r.startswith("websockets")]
    assert websockets and ">= 17" in websockets[0], core


def test_every_dependency_has_a_lower_bound_and_the_constraints_pin_it() -> None:
    config = setup_cfg()
    runtime = requirement_lines(config["options"]["install_requires"])
    for extra in ("audio", "resample", "testing"):
        runtime += requirement_lines(config["options.extras_require"][extra])
    for req in runtime:
        assert ">=" in req, f"{req}: no lower bound (the lowest-versions job cannot test it)"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lowest-constraints")],
        capture_output=True, text=True, timeout=scaled(30), check=True,
    )
    pins = dict(line.split("==") for line in done.stdout.split())
    for req in runtime:
        name, lower = re.match(r"([\w.-]+)\s*>=\s*([\w.]+)", req).groups()  # type: ignore[union-attr]
        assert pins[name.lower()] == lower, (req, pins)


def test_metadata_has_license_author_keywords_and_urls() -> None:
    meta = setup_cfg()["metadata"]
    assert meta["license"].strip() == "MIT"
    assert meta["license_files"].strip() == "LICENSE"
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert meta["author"].strip()
    assert len(meta["keywords"].split(",")) >= 5
    assert requirement_lines(meta["project_urls"])


# -- built artifacts ----------------------------------------------------------------------------


@dataclass
class Dist:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=scaled(300), check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("elevenconv-*.whl")
    (sdist,) = out.glob("elevenconv-*.tar.gz")
    return Dist(wheel, sdist)


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_wheel_contents(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "elevenconv = elevenconv.cli:main" in zf.read(entry_points).decode()
    assert any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names), names
    assert "elevenconv/py.typed" in names
    assert "elevenconv/testing/_simulator.py" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "samples/"))]
    meta = wheel_metadata(dist.wheel)
    assert meta["Version"] == elevenconv.__version__
    assert meta["Requires-Python"] == f">={TESTED_PYTHONS[0]}"
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("websockets") and "extra" not in r for r in requires), requires
    assert meta.get_all("Project-URL") and meta["Keywords"] and meta["Author"]
    assert "MIT" in (meta.get("License-Expression") or meta.get("License") or "")


def files_the_sdist_must_carry() -> set[str]:
    """The test-suite with every fixture and helper (not caches or node_modules)."""
    wanted = {"LICENSE", "README.md", "CHANGELOG.md", "mkdocs.yml", "setup.cfg", "pyproject.toml"}
    for base in ("tests", "docs", "samples", "scripts"):
        for path in (ROOT / base).rglob("*"):
            rel = path.relative_to(ROOT)
            if path.is_file() and not {"node_modules", "__pycache__"} & set(rel.parts):
                wanted.add(rel.as_posix())
    return wanted


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_sdist_carries_the_tests_fixtures_helpers_and_license(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert top == f"elevenconv-{elevenconv.__version__}"
    missing = files_the_sdist_must_carry() - names
    assert not missing, f"MANIFEST.in leaves out: {sorted(missing)}"
    assert not [n for n in names if "node_modules" in n or "__pycache__" in n]


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_the_sdists_own_tests_run(dist: Dist, tmp_path: Path) -> None:
    with tarfile.open(dist.sdist) as tf:
        tf.extractall(tmp_path, filter="data")
    (src,) = tmp_path.glob("elevenconv-*")
    # A user's unpacked sdist, not CI: no ../shared/spec beside it, so the YAML cross-check
    # skips there (with CI set it would insist on the file).
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(src)
    where = subprocess.run(
        [sys.executable, "-c", "import elevenconv; print(elevenconv.__file__)"],
        capture_output=True, text=True, env=env, cwd=src, timeout=scaled(30), check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(src.resolve()), where
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_protocol.py", "tests/test_exports.py", "tests/testing/test_contract.py",
            "tests/test_packaging.py::test_ci_runs_the_test_command",
            "tests/test_docs.py::test_every_event_is_in_the_events_table",
        ],
        capture_output=True, text=True, env=env, cwd=src, timeout=scaled(300), check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert re.search(r"\b\d{2,} passed", out), out[-2000:]


def test_ci_runs_the_test_command() -> None:
    assert "exec bash scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("dist", "docs", "wheel-smoke"):
        assert re.search(rf"^{target}:", makefile, re.M), target
