"""Client tools: functions the agent can call on your side, plain and ``async``.

    python samples/client_tools.py                       # against the built-in simulator
    python samples/client_tools.py --agent-id ID         # a real agent with these tools

The simulator's agent here calls ``get_current_time`` when you mention "time" and
``get_weather`` (with ``{"city": "Paris"}``) when you mention "weather". Tools run on a
worker pool, never on the thread reading the socket; an ``async def`` tool runs to
completion on a worker. What a tool returns is sent back to the agent as its result.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import queue

from elevenconv import ClientTools, Conversation, ElevenLabsClient


def get_current_time(params: dict) -> str:
    """A plain tool: runs on a worker thread."""
    return datetime.datetime.now().strftime("%H:%M")


async def get_weather(params: dict) -> dict:
    """An async tool: awaited to completion on a worker (no event loop of yours needed)."""
    await asyncio.sleep(0.1)  # e.g. an HTTP call with an async client
    return {"city": params.get("city", "?"), "sky": "sunny", "celsius": 21}


def main() -> int:
    parser = argparse.ArgumentParser(description="Client tools demo.")
    parser.add_argument("--agent-id", help="a real agent (default: the built-in simulator)")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args()

    tools = ClientTools(timeout=10)  # a tool slower than 10 s answers with an error
    tools.register("get_current_time", get_current_time)
    tools.register("get_weather", get_weather)  # async detected; is_async=True also works

    sim = None
    if args.agent_id:
        client, agent_id = ElevenLabsClient(), args.agent_id
    else:
        from elevenconv.testing import AgentSimulator, ToolRule

        sim = AgentSimulator().start()
        sim.add_agent(
            "tools-agent",
            tools={
                "time": ToolRule("time", "get_current_time", reply="It is {result}."),
                "weather": ToolRule(
                    "weather", "get_weather", {"city": "Paris"}, reply="Weather: {result}"
                ),
            },
        )
        client, agent_id = ElevenLabsClient(base_url=sim.base_url), "tools-agent"

    answers: queue.Queue[str] = queue.Queue()
    conv = Conversation(
        client,
        agent_id,
        requires_auth=args.private,
        client_tools=tools,
        callback_agent_response=answers.put,
    )
    conv.on("client_tool_call", lambda name, params: print(f"[agent calls {name}({params})]"))
    try:
        conv.start_session()
        print("agent:", answers.get(timeout=10))  # greeting
        for question in ("What time is it?", "How is the weather?", "Bye!"):
            print("you:  ", question)
            conv.send_user_message(question)
            print("agent:", answers.get(timeout=15))
        conv.wait_for_session_end(10)  # the agent hangs up after "bye"
    finally:
        conv.end_session()
        if sim is not None:
            sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
