"""The public surface: ``__all__`` is complete and exact, imports stay light."""

from __future__ import annotations

import ast
import configparser
import inspect
import json
import os
import subprocess
import sys
import types
from importlib import resources
from pathlib import Path

import pytest

import elevenconv
import elevenconv.errors
from tests.conftest import scaled

PACKAGE_DIR = Path(elevenconv.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

#: Names ``elevenconv/__init__.py`` binds only to write itself, not to export.
IMPORT_HELPERS = {"annotations", "TYPE_CHECKING", "Any"}

#: Optional or heavy dependencies that ``import elevenconv`` must not pull in.
LAZY_DEPENDENCIES = ("pyaudio", "numpy", "soxr", "websockets")


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (importing this checkout); return its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO_ROOT),
        timeout=scaled(30),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- __all__ -------------------------------------------------------------------------------


def test_all_has_no_duplicates_and_is_sorted() -> None:
    assert len(elevenconv.__all__) == len(set(elevenconv.__all__))
    assert list(elevenconv.__all__) == sorted(elevenconv.__all__)


@pytest.mark.parametrize("name", elevenconv.__all__)
def test_every_name_in_all_resolves(name: str) -> None:
    value = getattr(elevenconv, name)
    assert value is not None
    assert not isinstance(value, types.ModuleType), f"{name} is a module, not an API name"


def test_every_public_name_in_the_namespace_is_in_all() -> None:
    public = {
        name
        for name, value in vars(elevenconv).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    missing = public - set(elevenconv.__all__) - IMPORT_HELPERS
    assert not missing, f"public names missing from elevenconv.__all__: {sorted(missing)}"


def test_every_name_bound_in_init_source_is_exported() -> None:
    # Static view of the same rule: includes the TYPE_CHECKING-only (lazy) imports.
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8"))
    bound: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("elevenconv")
        ):
            bound.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node in tree.body:
            bound.add(node.name)
        elif isinstance(node, ast.Assign) and node in tree.body:
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
    bound = {n for n in bound if not n.startswith("_") or n == "__version__"}
    assert bound - set(elevenconv.__all__) == set()
    assert set(elevenconv.__all__) - bound == set(), "__all__ names a name __init__ never binds"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from elevenconv import *", namespace)  # the thing under test
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(elevenconv.__all__)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = elevenconv.no_such_name  # type: ignore[attr-defined]
    assert not hasattr(elevenconv, "no_such_name")


def test_version_is_a_string() -> None:
    assert isinstance(elevenconv.__version__, str)
    assert elevenconv.__version__
    from elevenconv._version import __version__

    assert elevenconv.__version__ == __version__


# -- the brief's imports ---------------------------------------------------------------------


def test_documented_import_lines_work() -> None:
    namespace: dict[str, object] = {}
    exec(  # exactly the lines users copy
        "from elevenconv import Conversation, ConversationInitiationData, ClientTools, "
        "AudioInterface, ElevenLabsClient, __version__\n"
        "from elevenconv.errors import ElevenConvError, AuthenticationError, "
        "SessionNotActiveError, ProtocolError\n",
        namespace,
    )
    for name in (
        "Conversation",
        "ConversationInitiationData",
        "ClientTools",
        "AudioInterface",
        "ElevenLabsClient",
        "ElevenConvError",
        "AuthenticationError",
        "SessionNotActiveError",
        "ProtocolError",
    ):
        assert inspect.isclass(namespace[name]), name
    assert namespace["__version__"] == elevenconv.__version__


def test_errors_reexported_at_top_level_are_the_same_objects() -> None:
    for name in (
        "AuthenticationError",
        "ElevenConvError",
        "ProtocolError",
        "SessionNotActiveError",
    ):
        assert getattr(elevenconv, name) is getattr(elevenconv.errors, name)


# -- errors ----------------------------------------------------------------------------------


def test_session_not_active_error_is_a_runtime_error() -> None:
    from elevenconv.errors import ElevenConvError, SessionNotActiveError

    assert issubclass(SessionNotActiveError, RuntimeError)
    assert issubclass(SessionNotActiveError, ElevenConvError)


def test_authentication_error_is_an_elevenconv_error() -> None:
    from elevenconv.errors import AuthenticationError, ElevenConvError

    assert issubclass(AuthenticationError, ElevenConvError)
    assert AuthenticationError("x", 401).status_code == 401


@pytest.mark.parametrize("name", elevenconv.errors.__all__)
def test_every_error_derives_from_elevenconv_error(name: str) -> None:
    cls = getattr(elevenconv.errors, name)
    assert inspect.isclass(cls)
    assert issubclass(cls, elevenconv.errors.ElevenConvError)
    assert issubclass(cls, Exception)


def test_errors_all_lists_every_exception_class() -> None:
    defined = {
        name
        for name, value in vars(elevenconv.errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == "elevenconv.errors"
    }
    assert defined == set(elevenconv.errors.__all__)


def test_std_exception_bases_as_documented() -> None:
    e = elevenconv.errors
    assert issubclass(e.ConfigurationError, ValueError)
    assert issubclass(e.ConnectionFailedError, ConnectionError)
    assert issubclass(e.StartTimeoutError, TimeoutError)
    assert issubclass(e.StartTimeoutError, e.ConnectionFailedError)
    assert issubclass(e.ToolTimeoutError, TimeoutError)
    assert issubclass(e.ToolTimeoutError, e.ToolError)
    assert issubclass(e.SessionAlreadyStartedError, RuntimeError)
    assert issubclass(e.ConnectionClosedOK, e.ConnectionClosed)
    assert issubclass(e.ConnectionClosedError, e.ConnectionClosed)
    assert issubclass(e.LocalProtocolError, e.ProtocolError)
    assert issubclass(e.RemoteProtocolError, e.ProtocolError)


# -- typing marker ---------------------------------------------------------------------------


def test_py_typed_ships_with_the_package() -> None:
    marker = resources.files("elevenconv").joinpath("py.typed")
    assert marker.is_file()
    setup_cfg = REPO_ROOT / "setup.cfg"
    if setup_cfg.is_file():  # packaged as package data too, not just present in the tree
        config = configparser.ConfigParser()
        config.read(setup_cfg, encoding="utf-8")
        assert "py.typed" in config.get("options.package_data", "elevenconv", fallback="")


# -- light imports ---------------------------------------------------------------------------


def test_import_does_not_load_optional_dependencies() -> None:
    code = (
        "import json, sys\n"
        "import elevenconv\n"
        f"heavy = [m for m in {LAZY_DEPENDENCIES!r} if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy,"
        " 'pyaudio_module': 'elevenconv._pyaudio_interface' in sys.modules}))\n"
    )
    result = json.loads(run_python(code))
    assert result == {"heavy": [], "pyaudio_module": False}


def test_default_audio_interface_is_reachable_lazily() -> None:
    code = (
        "import json, sys\n"
        "import elevenconv\n"
        "before = 'elevenconv._pyaudio_interface' in sys.modules\n"
        "cls = elevenconv.DefaultAudioInterface\n"
        "factory = elevenconv.create_default_audio_interface\n"
        "print(json.dumps({\n"
        "  'before': before,\n"
        "  'after': 'elevenconv._pyaudio_interface' in sys.modules,\n"
        "  'is_audio_interface': issubclass(cls, elevenconv.AudioInterface),\n"
        "  'factory_callable': callable(factory),\n"
        "  'pyaudio': 'pyaudio' in sys.modules,\n"
        "}))\n"
    )
    assert json.loads(run_python(code)) == {
        "before": False,
        "after": True,
        "is_audio_interface": True,
        "factory_callable": True,
        "pyaudio": False,
    }


def test_testing_fake_websocket_is_importable() -> None:
    from elevenconv.testing import FakeWebSocket

    assert inspect.isclass(FakeWebSocket)
    assert FakeWebSocket.__module__.startswith("elevenconv.testing")


def test_importing_testing_does_not_load_websockets() -> None:
    code = (
        "import sys\n"
        "from elevenconv.testing import FakeWebSocket\n"
        "print('websockets' in sys.modules)\n"
    )
    assert run_python(code).strip() == "False"
