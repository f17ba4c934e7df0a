"""Secrets stay secret; refused handshakes raise typed errors from start_session()."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from elevenconv import Conversation, ElevenLabsClient
from elevenconv.errors import AuthenticationError, ConnectionFailedError
from tests.conftest import library_threads, scaled
from tests.fixtures_loopback import AgentPeer
from tests.helpers import EventLog, agent_response

pytestmark = pytest.mark.timeout(30)

API_KEY = "sk_TOPSECRET_0123456789abcdef"
SIGNATURE = "sigTOPSECRETsignature987"


def json_response(status: int, body: Any) -> Response:
    data = json.dumps(body).encode()
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, data)


def private_agent_gate(port_holder: dict[str, int]) -> Any:
    """process_request: the signed-URL endpoint and the signature check of a private agent."""

    def process(connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        if url.path == "/v1/convai/conversation/get-signed-url":
            if request.headers.get("xi-api-key") != API_KEY:
                return json_response(
                    401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
                )
            signed = (
                f"ws://127.0.0.1:{port_holder['port']}/v1/convai/conversation?"
                f"agent_id={query['agent_id'][0]}&conversation_signature={SIGNATURE}"
            )
            return json_response(200, {"signed_url": signed})
        if query.get("conversation_signature") != [SIGNATURE]:
            return connection.respond(403, "bad signature")
        return None

    return process


def test_secrets_never_reach_logs_reprs_or_errors(
    loopback_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port: dict[str, int] = {}

    def agent(peer: AgentPeer) -> None:
        init = peer.handshake("conv_private")
        assert init["type"] == "conversation_initiation_client_data"
        peer.expect("user_message")
        peer.send_agent_response("secret-free reply", 1)
        peer.send("not json, to make the client log the raw text")
        peer.wait_closed()

    server = loopback_server(agent, process_request=private_agent_gate(port))
    port["port"] = server.port
    client = ElevenLabsClient(API_KEY, base_url=server.base_url)
    texts: list[str] = [repr(client)]
    with caplog.at_level(logging.DEBUG):
        conv = Conversation(client, "private-agent", requires_auth=True)
        events = EventLog(conv)
        conv.start_session()
        texts.append(repr(conv))
        conv.send_user_message("hi")
        events.wait_for("agent_response")
        events.wait_for("error")
        conv.end_session()
        # A refused key and a reused/forged signature, too.
        with pytest.raises(AuthenticationError) as bad_key:
            Conversation(
                ElevenLabsClient(API_KEY + "x", base_url=server.base_url), "a", requires_auth=True
            ).start_session()
        texts.append(str(bad_key.value))
        forged = Conversation(ElevenLabsClient(base_url=server.base_url), "a", requires_auth=False)
        with pytest.raises(AuthenticationError) as refused:
            forged.start_session()
        texts.append(str(refused.value))
    # Everything logged on the client side (the test server's own "websockets" logger
    # prints request headers; it is not part of the client).
    client_records = [r for r in caplog.records if not r.name.startswith("websockets")]
    texts += [r.getMessage() for r in client_records]
    texts += [str(args[0]) for args in events.of("error")]
    assert len(client_records) > 5  # DEBUG logging really was on
    for text in texts:
        assert API_KEY not in text
        assert SIGNATURE not in text
    assert any("conversation_signature=***" in t for t in texts)  # logged, redacted
    assert not library_threads()


def test_handshake_refused_with_401_or_403_raises_authentication_error(
    loopback_server: Any,
) -> None:
    for status in (401, 403):
        server = loopback_server(
            lambda peer: None, process_request=lambda conn, req, s=status: conn.respond(s, "no")
        )
        conv = Conversation(ElevenLabsClient(base_url=server.base_url), "a", requires_auth=False)
        with pytest.raises(AuthenticationError) as info:
            conv.start_session()
        assert info.value.status_code == status
        assert not library_threads()


def test_handshake_refused_otherwise_raises_connection_failed(loopback_server: Any) -> None:
    server = loopback_server(
        lambda peer: None, process_request=lambda conn, req: conn.respond(500, "oops")
    )
    conv = Conversation(ElevenLabsClient(base_url=server.base_url), "a", requires_auth=False)
    with pytest.raises(ConnectionFailedError, match="500"):
        conv.start_session()


def test_nothing_listening_raises_connection_failed() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conv = Conversation(
        ElevenLabsClient(base_url=f"http://127.0.0.1:{port}"), "a", requires_auth=False
    )
    with pytest.raises(ConnectionFailedError):
        conv.start_session()
    assert not library_threads()


def test_private_agent_without_key_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    conv = Conversation(None, "private", requires_auth=True)
    with pytest.raises(ValueError, match="ELEVENLABS_API_KEY"):
        conv.start_session()


def test_full_session_through_signed_url(loopback_server: Any) -> None:
    port: dict[str, int] = {}

    def agent(peer: AgentPeer) -> None:
        peer.handshake("conv_signed")
        peer.send(agent_response("welcome", 1))
        peer.wait_closed()

    server = loopback_server(agent, process_request=private_agent_gate(port))
    port["port"] = server.port
    conv = Conversation(
        ElevenLabsClient(API_KEY, base_url=server.base_url), "agent-x", requires_auth=True
    )
    events = EventLog(conv)
    with conv:
        assert conv.get_conversation_id() == "conv_signed"
        assert events.wait_for("agent_response", timeout=scaled(5))[0] == ("welcome",)
    assert events.of("session_ended")[0][1] == 1000


def test_websocket_client_trace_never_prints_the_signature(loopback_server: Any) -> None:
    # websocket.enableTrace(True) dumps the handshake (the signed URL's query included)
    # and every frame to its own "websocket" logger; the filter elevenconv installs on it
    # redacts secrets before any handler sees them.
    import io

    import websocket

    port: dict[str, int] = {}

    def agent(peer: AgentPeer) -> None:
        peer.handshake("conv_trace")
        peer.wait_closed()

    server = loopback_server(agent, process_request=private_agent_gate(port))
    port["port"] = server.port
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    websocket.enableTrace(True, handler=handler)
    try:
        conv = Conversation(
            ElevenLabsClient(API_KEY, base_url=server.base_url), "private-agent", requires_auth=True
        )
        conv.start_session()
        conv.end_session()
        conv.wait_for_session_end(scaled(5))
    finally:
        websocket.enableTrace(False)
    trace = out.getvalue()
    assert "GET /v1/convai/conversation" in trace  # the trace really printed the handshake
    assert SIGNATURE not in trace and API_KEY not in trace
    assert "conversation_signature=***" in trace
