"""ElevenLabsClient: conversation URLs, and signed URLs from a real local HTTP server."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import elevenconv
from elevenconv import ElevenLabsClient
from elevenconv._client import add_source_params
from elevenconv.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    ElevenConvError,
)
from tests.conftest import scaled

pytestmark = pytest.mark.timeout(20)

API_KEY = "sk_test_5ecret_K3y_do_not_leak"
SIGNED = "wss://api.example.test/v1/convai/conversation?agent_id=a&conversation_signature=sig123"
VERSION = elevenconv.__version__


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


# -- conversation_url ------------------------------------------------------------------------


def test_default_base_url_is_the_production_wss_endpoint() -> None:
    url = ElevenLabsClient().conversation_url("agent_1")
    assert url == (
        "wss://api.elevenlabs.io/v1/convai/conversation"
        f"?agent_id=agent_1&source=elevenconv&version={VERSION}"
    )


@pytest.mark.parametrize(
    ("base_url", "expected_prefix"),
    [
        ("https://api.elevenlabs.io", "wss://api.elevenlabs.io/v1/convai/conversation?"),
        ("https://api.elevenlabs.io/", "wss://api.elevenlabs.io/v1/convai/conversation?"),
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/convai/conversation?"),
        (
            "https://api.eu.residency.elevenlabs.io",
            "wss://api.eu.residency.elevenlabs.io/v1/convai/conversation?",
        ),
        ("https://gw.example.com/eleven", "wss://gw.example.com/eleven/v1/convai/conversation?"),
        ("https://gw.example.com/eleven/", "wss://gw.example.com/eleven/v1/convai/conversation?"),
        ("https://gw.example.com/a/b//", "wss://gw.example.com/a/b/v1/convai/conversation?"),
        ("wss://direct.example.com", "wss://direct.example.com/v1/convai/conversation?"),
        ("ws://localhost:9000", "ws://localhost:9000/v1/convai/conversation?"),
    ],
)
def test_conversation_url_schemes_and_prefixes(base_url: str, expected_prefix: str) -> None:
    url = ElevenLabsClient(base_url=base_url).conversation_url("ag")
    assert url.startswith(expected_prefix), url
    assert query(url) == {"agent_id": ["ag"], "source": ["elevenconv"], "version": [VERSION]}


def test_conversation_url_environment() -> None:
    url = ElevenLabsClient().conversation_url("ag", environment="staging")
    assert query(url) == {
        "agent_id": ["ag"],
        "environment": ["staging"],
        "source": ["elevenconv"],
        "version": [VERSION],
    }


def test_conversation_url_without_environment_has_no_environment_param() -> None:
    assert "environment" not in query(ElevenLabsClient().conversation_url("ag", environment=""))
    assert "environment" not in query(ElevenLabsClient().conversation_url("ag"))


def test_conversation_url_encodes_the_agent_id() -> None:
    agent = "agent with spaces&x=1/é"
    url = ElevenLabsClient().conversation_url(agent)
    assert " " not in url
    assert query(url)["agent_id"] == [agent]
    assert "x" not in query(url)


@pytest.mark.parametrize(
    "base_url", ["ftp://api.elevenlabs.io", "api.elevenlabs.io", "file:///tmp/x", ""]
)
def test_bad_scheme_is_a_configuration_error(base_url: str) -> None:
    client = ElevenLabsClient(base_url=base_url)
    with pytest.raises(ConfigurationError, match="http") as info:
        client.conversation_url("ag")
    assert isinstance(info.value, ValueError)


def test_base_url_trailing_slashes_are_dropped() -> None:
    assert ElevenLabsClient(base_url="https://x.test///").base_url == "https://x.test"


# -- add_source_params -----------------------------------------------------------------------


def test_add_source_params_keeps_existing_params() -> None:
    url = add_source_params(
        "wss://h.test/v1/convai/conversation?agent_id=a&conversation_signature=s"
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "h.test", "/v1/convai/conversation")
    assert query(url) == {
        "agent_id": ["a"],
        "conversation_signature": ["s"],
        "source": ["elevenconv"],
        "version": [VERSION],
    }
    assert parts.query.startswith("agent_id=a&conversation_signature=s&")


def test_add_source_params_without_query() -> None:
    assert add_source_params("wss://h.test/p") == (
        f"wss://h.test/p?source=elevenconv&version={VERSION}"
    )


def test_add_source_params_keeps_the_fragment_and_blank_values() -> None:
    url = add_source_params("ws://h.test/p?empty=&k=v#frag")
    assert urlsplit(url).fragment == "frag"
    assert query(url) == {
        "empty": [""],
        "k": ["v"],
        "source": ["elevenconv"],
        "version": [VERSION],
    }


# -- key handling ----------------------------------------------------------------------------


def test_repr_never_shows_the_key() -> None:
    client = ElevenLabsClient(api_key=API_KEY, base_url="https://x.test")
    assert API_KEY not in repr(client)
    assert API_KEY not in str(client)
    assert "<set>" in repr(client)
    assert "https://x.test" in repr(client)
    assert client.has_api_key


def test_repr_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    client = ElevenLabsClient()
    assert "<unset>" in repr(client)
    assert not client.has_api_key


def test_env_key_is_used_when_api_key_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", API_KEY)
    client = ElevenLabsClient()
    assert client.has_api_key
    assert API_KEY not in repr(client)


def test_explicit_key_wins_over_env(monkeypatch: pytest.MonkeyPatch, api: FakeApi) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk_from_env")
    api.reply(200, {"signed_url": SIGNED})
    ElevenLabsClient(api_key=API_KEY, base_url=api.base_url).get_signed_url("ag")
    assert api.next_request().headers["xi-api-key"] == API_KEY


def test_verify_false_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="elevenconv"):
        ElevenLabsClient(base_url="https://x.test", verify=False)
    assert any(
        r.levelno == logging.WARNING and "DISABLED" in r.getMessage() for r in caplog.records
    )


def test_verify_true_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="elevenconv"):
        ElevenLabsClient(base_url="https://x.test")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- get_signed_url against a real HTTP server -----------------------------------------------


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class FakeApi:
    """A ThreadingHTTPServer on 127.0.0.1:0 answering with a canned reply."""

    base_url: str = ""
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    requests: queue.Queue[Seen] = field(default_factory=queue.Queue)

    def reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.content_type = content_type

    def next_request(self) -> Seen:
        return self.requests.get(timeout=scaled(5))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    # Make sure a proxy configured in the environment is not used for the loopback server.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            fake.requests.put(
                Seen(
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                )
            )
            self.send_response(fake.status)
            self.send_header("Content-Type", fake.content_type)
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="test-http-server")
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(scaled(5))
        assert not thread.is_alive()


def client_for(api: FakeApi, **kwargs: Any) -> ElevenLabsClient:
    return ElevenLabsClient(api_key=API_KEY, base_url=api.base_url, timeout=scaled(5), **kwargs)


def test_signed_url_success_sends_key_and_agent_id(api: FakeApi) -> None:
    api.reply(200, {"signed_url": SIGNED})
    assert client_for(api).get_signed_url("agent_42") == SIGNED
    seen = api.next_request()
    assert seen.path == "/v1/convai/conversation/get-signed-url"
    assert seen.query == {"agent_id": ["agent_42"]}
    assert seen.headers["xi-api-key"] == API_KEY


def test_signed_url_sends_environment(api: FakeApi) -> None:
    api.reply(200, {"signed_url": SIGNED})
    client_for(api).get_signed_url("ag", environment="production")
    assert api.next_request().query == {"agent_id": ["ag"], "environment": ["production"]}


def test_signed_url_uses_the_base_url_path_prefix(api: FakeApi) -> None:
    api.reply(200, {"signed_url": SIGNED})
    client = ElevenLabsClient(api_key=API_KEY, base_url=api.base_url + "/gateway/", timeout=5)
    assert client.get_signed_url("ag") == SIGNED
    assert api.next_request().path == "/gateway/v1/convai/conversation/get-signed-url"


def test_signed_url_with_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, api: FakeApi
) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", API_KEY)
    api.reply(200, {"signed_url": SIGNED})
    assert ElevenLabsClient(base_url=api.base_url, timeout=scaled(5)).get_signed_url("a") == SIGNED
    assert api.next_request().headers["xi-api-key"] == API_KEY


def test_signed_url_is_not_logged_with_its_signature(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.reply(200, {"signed_url": SIGNED})
    with caplog.at_level(logging.DEBUG, logger="elevenconv"):
        client_for(api).get_signed_url("ag")
    assert "sig123" not in caplog.text
    assert API_KEY not in caplog.text


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_an_authentication_error(api: FakeApi, status: int) -> None:
    api.reply(status, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}})
    with pytest.raises(AuthenticationError) as info:
        client_for(api).get_signed_url("ag")
    exc = info.value
    assert exc.status_code == status
    assert isinstance(exc, ElevenConvError)
    assert "Invalid API key" in str(exc)
    assert f"HTTP {status}" in str(exc)
    assert API_KEY not in str(exc)
    assert API_KEY not in repr(exc)


def test_auth_failure_with_a_plain_string_detail(api: FakeApi) -> None:
    api.reply(401, {"detail": "Unauthorized: bad key"})
    with pytest.raises(AuthenticationError, match="Unauthorized: bad key"):
        client_for(api).get_signed_url("ag")


def test_auth_failure_detail_with_only_a_status(api: FakeApi) -> None:
    api.reply(401, {"detail": {"status": "invalid_api_key"}})
    with pytest.raises(AuthenticationError, match="invalid_api_key"):
        client_for(api).get_signed_url("ag")


def test_auth_failure_with_a_non_json_body(api: FakeApi) -> None:
    api.reply(401, b"<html>nope</html>", content_type="text/html")
    with pytest.raises(AuthenticationError) as info:
        client_for(api).get_signed_url("ag")
    assert info.value.status_code == 401
    assert "Unauthorized" in str(info.value)  # the HTTP reason phrase


def test_auth_failure_never_echoes_the_key_even_if_the_server_does(api: FakeApi) -> None:
    api.reply(
        401, {"detail": {"status": "invalid_api_key", "message": f"Key {API_KEY} is invalid"}}
    )
    with pytest.raises(AuthenticationError) as info:
        client_for(api).get_signed_url("ag")
    assert API_KEY not in str(info.value)


def test_server_error_is_a_connection_failed_error(api: FakeApi) -> None:
    api.reply(500, {"detail": "internal failure"})
    with pytest.raises(ConnectionFailedError) as info:
        client_for(api).get_signed_url("ag")
    assert info.value.status_code == 500
    assert "HTTP 500" in str(info.value)
    assert "internal failure" in str(info.value)
    assert not isinstance(info.value, AuthenticationError)
    assert API_KEY not in str(info.value)


def test_not_found_is_a_connection_failed_error(api: FakeApi) -> None:
    api.reply(404, {"detail": {"status": "agent_not_found", "message": "Agent not found"}})
    with pytest.raises(ConnectionFailedError, match="Agent not found") as info:
        client_for(api).get_signed_url("ag")
    assert info.value.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": SIGNED},
        {},
        [],
        {"signed_url": None},
        {"signed_url": 12},
        b"not json at all",
    ],
)
def test_bad_success_body_is_a_connection_failed_error(api: FakeApi, body: Any) -> None:
    api.reply(200, body)
    with pytest.raises(ConnectionFailedError, match="signed_url"):
        client_for(api).get_signed_url("ag")


def test_no_key_is_a_configuration_error_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, api: FakeApi
) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    client = ElevenLabsClient(base_url=api.base_url)
    with pytest.raises(ConfigurationError, match="ELEVENLABS_API_KEY"):
        client.get_signed_url("ag")
    assert api.requests.empty()


def test_empty_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "")
    with pytest.raises(ConfigurationError, match="ELEVENLABS_API_KEY"):
        ElevenLabsClient().get_signed_url("ag")


def test_unreachable_server_is_a_connection_failed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ElevenLabsClient(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ConnectionFailedError, match="could not fetch a signed URL") as info:
        client.get_signed_url("ag")
    assert API_KEY not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_a_custom_session_is_used(api: FakeApi) -> None:
    import requests

    api.reply(200, {"signed_url": SIGNED})
    with requests.Session() as session:
        session.headers["X-Test"] = "from-session"
        client = ElevenLabsClient(api_key=API_KEY, base_url=api.base_url, session=session)
        assert client.get_signed_url("ag") == SIGNED
    assert api.next_request().headers["x-test"] == "from-session"


def test_base_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_BASE_URL", "http://127.0.0.1:9/")
    assert ElevenLabsClient().base_url == "http://127.0.0.1:9"
    assert ElevenLabsClient(base_url="https://x.test").base_url == "https://x.test"
    monkeypatch.delenv("ELEVENLABS_BASE_URL")
    assert ElevenLabsClient().base_url == "https://api.elevenlabs.io"
