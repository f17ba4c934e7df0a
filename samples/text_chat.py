"""The simplest text chat: type a line, read the agent's answer.

    python samples/text_chat.py --simulate              # offline, built-in simulator
    python samples/text_chat.py --agent-id YOUR_AGENT   # a public agent
    ELEVENLABS_API_KEY=... python samples/text_chat.py --agent-id ID --private

Each line you type is sent; the program waits for the answer before reading the next
line, so it works with piped input too (``printf 'hello\\nbye\\n' | python ...``).
The agent's events arrive on the Conversation's events thread; this main thread only
reads input and waits on a threading.Event.
"""

from __future__ import annotations

import argparse
import sys
import threading

from elevenconv import Conversation, ElevenLabsClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent-id")
    parser.add_argument("--private", action="store_true", help="needs ELEVENLABS_API_KEY")
    parser.add_argument("--simulate", action="store_true", help="use the built-in simulator")
    args = parser.parse_args()
    if not (args.agent_id or args.simulate):
        parser.error("give --agent-id or --simulate")

    sim = None
    client = ElevenLabsClient()
    agent_id = args.agent_id
    if args.simulate:
        from elevenconv.testing import AgentSimulator

        sim = AgentSimulator().start()  # a local agent on 127.0.0.1
        sim.add_agent("sim-agent", tools={})  # no client tools in this sample
        client, agent_id = ElevenLabsClient(base_url=sim.base_url), "sim-agent"

    answered = threading.Event()

    def on_response(text: str) -> None:  # runs on the events thread
        print("agent:", text, flush=True)
        answered.set()

    conv = Conversation(
        client, agent_id, requires_auth=args.private, callback_agent_response=on_response
    )
    conv.on("session_ended", lambda *_: (print("[conversation over]"), answered.set()))
    try:
        conv.start_session()
        answered.wait(5)  # the agent's greeting, if it has one
        for line in sys.stdin:
            if not conv.is_session_active():
                break
            if line.strip():
                answered.clear()
                conv.send_user_message(line.strip())
                answered.wait(30)
    except KeyboardInterrupt:
        pass
    finally:
        conv.end_session()  # closes the socket and joins every thread
        if sim is not None:
            sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
