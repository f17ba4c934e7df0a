"""A fresh clone has no ``../shared/spec``: only the cross-check with the official YAML skips
(with its reason); everything else validates with the project's own contract code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import scaled
from tests.fixtures_contract import MISSING_REASON, ProjectContract

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


def run_without_spec(tmp_path: Path, *tests: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["ELEVENCONV_CONTRACT_YAML"] = str(tmp_path / "no-such" / "agent.asyncapi.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(170),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout


def test_contract_checks_run_without_the_yaml(tmp_path: Path) -> None:
    out = run_without_spec(tmp_path, "tests/test_protocol.py", "tests/testing/test_contract.py")
    skipped = re.findall(r"^SKIPPED \[(\d+)\] (\S+?):\d+: (.*)$", out, re.M)
    assert skipped, out[-2000:]
    # Every skip is the cross-check, for the missing YAML.
    assert {path for _, path, _ in skipped} == {"tests/testing/test_contract.py"}
    assert {reason for _, _, reason in skipped} == {MISSING_REASON}
    passed = int(re.search(r"(\d+) passed", out).group(1))  # type: ignore[union-attr]
    assert passed > 100  # the protocol tests and our own checks of the contract code


def test_project_contract_is_our_code() -> None:
    contract = ProjectContract()
    assert contract.client_errors({"type": "user_message", "text": 3})
    assert (
        contract.server_errors(
            {
                "type": "agent_response",
                "agent_response_event": {"agent_response": "x", "event_id": 1},
            }
        )
        == []
    )
    with pytest.raises(AssertionError, match="violates the contract"):
        contract.validate_client({"type": "multimodal_message", "files": ["f1"]})
    assert "client_error" not in contract.server_types()
    assert "user_audio_chunk" in contract.client_payload_names()
