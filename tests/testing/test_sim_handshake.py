"""AgentSimulator's HTTP side as the official clients meet it: subprotocols, conversation
tokens (``bearer.<token>``), the token endpoint and CORS for pages on other origins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from elevenconv.testing import AgentSimulator
from tests.conftest import scaled

pytestmark = pytest.mark.timeout(60)

FAST: dict[str, Any] = {"ping_interval": None, "audio_realtime_factor": None, "tts": "tone"}
INIT = {"type": "conversation_initiation_client_data"}


@pytest.fixture
def sim() -> Iterator[AgentSimulator]:
    with AgentSimulator(**FAST) as simulator:
        simulator.add_agent("private-agent", private=True)
        yield simulator


def open_ws(url: str, subprotocols: list[str] | None = None) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=scaled(5), subprotocols=subprotocols)


def start(ws: websocket.WebSocket) -> dict[str, Any]:
    ws.send(json.dumps(INIT))
    msg: dict[str, Any] = json.loads(ws.recv())
    assert msg["type"] == "conversation_initiation_metadata"
    return msg


def token_request(sim: AgentSimulator, agent_id: str, key: str | None = None) -> requests.Response:
    return requests.get(
        sim.base_url + "/v1/convai/conversation/token",
        params={"agent_id": agent_id, "source": "js_sdk", "version": "1.25.0"},
        headers={"xi-api-key": key} if key is not None else {},
        timeout=scaled(5),
    )


def refusal(url: str, subprotocols: list[str] | None = None) -> tuple[int, Any]:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        open_ws(url, subprotocols)
    return info.value.status_code, json.loads(info.value.resp_body or b"null")


def test_convai_is_selected_when_offered(sim: AgentSimulator) -> None:
    ws = open_ws(sim.ws_url(), ["convai"])
    try:
        assert ws.getsubprotocol() == "convai"
        start(ws)
    finally:
        ws.close()
    assert sim.wait_for_session().subprotocol == "convai"


def test_no_subprotocol_offered_gets_none(sim: AgentSimulator) -> None:
    ws = open_ws(sim.ws_url())
    try:
        assert ws.getsubprotocol() is None
        assert "sec-websocket-protocol" not in {k.lower() for k in ws.getheaders() or {}}
        start(ws)
    finally:
        ws.close()
    session = sim.wait_for_session()
    assert session.subprotocol is None
    assert not session.bearer


def test_only_unknown_subprotocols_offered_selects_none(sim: AgentSimulator) -> None:
    # websocket-client refuses a 101 without its subprotocol, as browsers do: the answer
    # carries none, so the handshake fails on the client's side, never with a wrong one.
    with pytest.raises(websocket.WebSocketException, match="Invalid WebSocket Header"):
        open_ws(sim.ws_url(), ["chat"])


def test_bearer_token_from_the_token_endpoint_opens_a_private_agent(
    sim: AgentSimulator,
) -> None:
    response = token_request(sim, "private-agent", "sim-api-key")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    token = response.json()["token"]
    assert isinstance(token, str) and token
    ws = open_ws(sim.ws_url("private-agent"), ["convai", f"bearer.{token}"])
    try:
        # The credential is never echoed back as the selected subprotocol.
        assert ws.getsubprotocol() == "convai"
        start(ws)
    finally:
        ws.close()
    session = sim.wait_for_session()
    assert session.bearer and not session.signed
    assert session.agent_id == "private-agent"
    # Single use, like a signature: the same token again is refused the same way.
    status, body = refusal(sim.ws_url("private-agent"), ["convai", f"bearer.{token}"])
    assert status == 403
    assert body["detail"]["status"] == "invalid_signature"
    assert "already used" in body["detail"]["message"]


def test_bad_bearer_token_is_refused_like_a_bad_signature(sim: AgentSimulator) -> None:
    bad_signature = refusal(sim.ws_url("sim-agent", conversation_signature="forged"))
    cases = [
        ("sim-agent", "bearer.forged"),  # a public agent checks a token it is given, too
        ("private-agent", "bearer.forged"),
        ("private-agent", "bearer."),
        # a token of another agent
        ("private-agent", "bearer." + sim.conversation_token("sim-agent")),
    ]
    for agent_id, offer in cases:
        status, body = refusal(sim.ws_url(agent_id), ["convai", offer])
        assert status == bad_signature[0] == 403, offer
        assert body["detail"]["status"] == bad_signature[1]["detail"]["status"], offer
    assert sim.sessions == []


def test_expired_token_is_refused() -> None:
    with AgentSimulator(signed_url_ttl=0.0, **FAST) as sim:
        token = sim.conversation_token()
        status, body = refusal(sim.ws_url(), ["convai", f"bearer.{token}"])
        assert status == 403
        assert "expired" in body["detail"]["message"]


def test_private_agent_without_credentials_is_refused(sim: AgentSimulator) -> None:
    status, body = refusal(sim.ws_url("private-agent"), ["convai"])
    assert status == 403
    assert body["detail"]["status"] == "authentication_required"


@pytest.mark.parametrize(
    ("agent_id", "key", "status"),
    [
        ("sim-agent", None, 200),  # public: the browser client fetches it with no key
        ("sim-agent", "sim-api-key", 200),
        ("sim-agent", "wrong-key", 401),
        ("private-agent", None, 401),
        ("private-agent", "wrong-key", 401),
        ("no-such-agent", "sim-api-key", 404),
    ],
)
def test_token_endpoint(sim: AgentSimulator, agent_id: str, key: str | None, status: int) -> None:
    response = token_request(sim, agent_id, key)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    if status == 200:
        assert set(response.json()) == {"token"}
    else:
        assert isinstance(response.json()["detail"], dict)
    assert sim.http_requests[-1].status == status


@pytest.mark.parametrize(
    "path",
    ["/v1/convai/conversation/get-signed-url", "/v1/convai/conversation/token"],
)
def test_cors_preflight_and_headers(sim: AgentSimulator, path: str) -> None:
    preflight = requests.options(
        sim.base_url + path,
        params={"agent_id": "private-agent"},
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "xi-api-key",
        },
        timeout=scaled(5),
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "xi-api-key" in preflight.headers["access-control-allow-headers"].lower()
    response = requests.get(
        sim.base_url + path,
        params={"agent_id": "private-agent"},
        headers={"Origin": "http://localhost:5173", "xi-api-key": "sim-api-key"},
        timeout=scaled(5),
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    # Errors carry the headers too, so the page can read the JSON detail.
    refused = requests.get(sim.base_url + path, params={"agent_id": "nope"}, timeout=scaled(5))
    assert refused.status_code in (401, 404)
    assert refused.headers["access-control-allow-origin"] == "*"


def test_old_signed_url_spelling_and_other_methods(sim: AgentSimulator) -> None:
    response = requests.get(
        sim.base_url + "/v1/convai/conversation/get_signed_url",
        params={"agent_id": "sim-agent"},
        headers={"xi-api-key": "sim-api-key"},
        timeout=scaled(5),
    )
    assert response.status_code == 200
    ws = open_ws(response.json()["signed_url"], ["convai"])
    try:
        start(ws)
    finally:
        ws.close()
    assert sim.wait_for_session().signed
    posted = requests.post(sim.base_url + "/v1/convai/conversation/token", timeout=scaled(5))
    assert posted.status_code == 405


# -- POST endpoints of the browser client: uploadFile and postOverallFeedback ------------


def conversation_id_of(sim: AgentSimulator) -> tuple[websocket.WebSocket, str]:
    ws = open_ws(sim.ws_url(), ["convai"])
    meta = start(ws)
    return ws, meta["conversation_initiation_metadata_event"]["conversation_id"]


def test_upload_file_answers_a_file_id(sim: AgentSimulator) -> None:
    ws, conv_id = conversation_id_of(sim)
    try:
        response = requests.post(
            f"{sim.base_url}/v1/convai/conversations/{conv_id}/files",
            files={"file": ("photo.png", b"\x89PNG fake", "image/png")},
            headers={"Origin": "http://localhost:5173"},
            timeout=scaled(5),
        )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == "*"
        file_id = response.json()["file_id"]
        (upload,) = sim.uploads
        assert (upload.conversation_id, upload.file_id) == (conv_id, file_id)
        assert (upload.filename, upload.mime_type, upload.data) == (
            "photo.png",
            "image/png",
            b"\x89PNG fake",
        )
        # The WebSocket on the same port is not disturbed; the file id can be sent.
        ws.send(json.dumps(p_multimodal(file_id)))
        sim.wait_for_client_message("multimodal_message")
        assert any(r.status == 200 and r.path.endswith("/files") for r in sim.http_requests)
    finally:
        ws.close()
    assert sim.violations == []


def p_multimodal(file_id: str) -> dict[str, Any]:
    from elevenconv.protocol import ConversationProtocol

    return ConversationProtocol.multimodal_message("what is this?", file_id)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"feedback": "like"}, 200),
        ({"rating": 4, "comment": "nice"}, 200),
        ({"feedback": "meh"}, 422),
        ({"rating": 9}, 422),
        ({"rating": True}, 422),
        ({}, 422),
        ({"rating": 3, "comment": 5}, 422),
    ],
)
def test_overall_feedback(sim: AgentSimulator, body: dict[str, Any], status: int) -> None:
    ws, conv_id = conversation_id_of(sim)
    ws.close()
    response = requests.post(
        f"{sim.base_url}/v1/convai/conversations/{conv_id}/feedback", json=body, timeout=scaled(5)
    )
    assert response.status_code == status, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    if status == 200:
        assert sim.conversation_feedback == [{"conversation_id": conv_id, **body}]
    else:
        assert sim.conversation_feedback == []
        assert response.json()["detail"]["status"] == "invalid_request"


def test_post_refusals(sim: AgentSimulator) -> None:
    ws, conv_id = conversation_id_of(sim)
    ws.close()
    base = f"{sim.base_url}/v1/convai/conversations"
    cases = [
        (f"{base}/conv_nope/feedback", {"json": {"feedback": "like"}}, 404),
        (f"{base}/conv_nope/files", {"files": {"file": ("a", b"x")}}, 404),
        (f"{base}/{conv_id}/files", {"data": b"not multipart"}, 400),
        (f"{base}/{conv_id}/files", {"files": {"other": ("a", b"x")}}, 400),
        (f"{base}/{conv_id}/feedback", {"data": b"{not json"}, 400),
        (f"{sim.base_url}/v1/somewhere/else", {"json": {}}, 404),
    ]
    for url, kwargs, status in cases:
        response = requests.post(url, timeout=scaled(5), **kwargs)
        assert response.status_code == status, (url, response.text)
        assert response.headers["access-control-allow-origin"] == "*"
        assert isinstance(response.json()["detail"], dict)
    assert sim.uploads == [] and sim.conversation_feedback == []


def test_post_body_too_large_is_refused_without_reading_it(sim: AgentSimulator) -> None:
    import socket

    with socket.create_connection((sim.host, sim.port), timeout=scaled(5)) as sock:
        sock.sendall(
            b"POST /v1/convai/conversations/c/files HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 999999999999\r\n\r\n"
        )
        answer = sock.makefile("rb").readline()
    assert answer.startswith(b"HTTP/1.1 413")


def test_close_does_not_wait_for_an_idle_tcp_connection() -> None:
    import socket

    sim = AgentSimulator(shutdown_timeout=3.0, **FAST).start()
    with socket.create_connection((sim.host, sim.port), timeout=scaled(5)) as idle:
        # Wait until the simulator's thread for it exists (it is peeking at the socket).
        ws = open_ws(sim.ws_url())  # a later connection: the idle one was accepted first
        ws.close()
        sim.close()  # raises SimulatorError if a thread outlived shutdown_timeout
        idle.settimeout(scaled(5))
        assert idle.recv(1) == b""  # closed by the simulator
