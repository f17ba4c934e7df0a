"""Testing your own application with ``elevenconv.testing``: two ways, five lines each.

    python -m pytest samples/test_my_app.py

* :class:`~elevenconv.testing.AgentSimulator` -- a real WebSocket server on loopback that
  speaks the Agents protocol: your code runs unchanged, over the network stack.
* :class:`~elevenconv.testing.FakeWebSocket` -- no network at all: you play the server,
  message by message. Fastest, and lets you send anything (errors, odd messages).
"""

from __future__ import annotations

import queue
from typing import Any

from elevenconv import Conversation, ElevenLabsClient
from elevenconv.testing import AgentSimulator, FakeWebSocket

# -- the "application" under test ---------------------------------------------------------


def ask(
    question: str,
    *,
    client: Any = None,
    agent_id: str = "my-agent",
    websocket_factory: Any = None,
    timeout: float = 10.0,
) -> str:
    """Ask an agent one question and return its answer (the app we want to test)."""
    answers: queue.Queue[str] = queue.Queue()
    conv = Conversation(
        client,
        agent_id,
        requires_auth=False,
        websocket_factory=websocket_factory,
        callback_agent_response=answers.put,
    )
    with conv:  # start_session() ... end_session(), even on errors
        conv.send_user_message(question)
        return answers.get(timeout=timeout)


# -- the tests ----------------------------------------------------------------------------


def test_ask_against_the_simulator() -> None:
    with AgentSimulator() as sim:
        sim.add_agent(
            "my-agent", first_message=None, respond=lambda q: "Paris" if "France" in q else None
        )
        answer = ask(
            "What is the capital of France?", client=ElevenLabsClient(base_url=sim.base_url)
        )
    assert answer == "Paris"
    assert not sim.violations  # every message the app sent followed the protocol


def test_ask_with_a_fake_websocket() -> None:
    def server(fake: FakeWebSocket, message: Any) -> None:  # answers every user message
        if message.get("type") == "user_message":
            fake.push(
                {
                    "type": "agent_response",
                    "agent_response_event": {"agent_response": "Paris", "event_id": 1},
                }
            )

    fake = FakeWebSocket(on_send=server)
    assert ask("What is the capital of France?", websocket_factory=fake) == "Paris"
    assert fake.sent("user_message")[0]["text"] == "What is the capital of France?"
