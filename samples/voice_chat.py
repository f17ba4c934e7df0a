"""Talk to an ElevenLabs agent through your microphone and speaker.

    python samples/voice_chat.py --agent-id YOUR_AGENT_ID
    ELEVENLABS_AGENT_ID=... ELEVENLABS_API_KEY=... python samples/voice_chat.py   # private
    python samples/voice_chat.py --simulate        # offline, against the local simulator

Prints what you said, what the agent answered and when it starts and stops speaking.
Ctrl+C ends the conversation cleanly. Needs the ``audio`` extra for the sound devices
(``pip install "elevenconv[audio]"``); ``--help`` works without it.

Loudspeakers work: with the ``audio`` extra, echo cancellation (WebRTC's AEC3, through
``livekit``) removes the agent's voice from the microphone, so it does not interrupt
itself and you can still barge in (the README's Audio section has the measurements).
``--no-echo-cancellation`` turns it off: do that with headphones (with no echo to learn
from, the canceller damps your speech over the agent's for its first seconds, measured
in the test suite); ``--echo-guard`` is the
half-duplex fallback (the microphone sends silence while the agent speaks).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from elevenconv import Conversation, ElevenConvError, ElevenLabsClient


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Voice chat with an ElevenLabs agent through the default microphone "
        "and speaker. Ctrl+C to end.",
    )
    parser.add_argument(
        "--agent-id",
        default=os.environ.get("ELEVENLABS_AGENT_ID"),
        help="the agent to talk to (default: $ELEVENLABS_AGENT_ID)",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="API base URL (default: the public ElevenLabs API); e.g. a local simulator",
    )
    parser.add_argument(
        "--no-echo-cancellation",
        action="store_true",
        help="turn echo cancellation off (on by default when installed); use it with headphones",
    )
    parser.add_argument(
        "--echo-guard",
        action="store_true",
        help="half-duplex for loudspeakers: send silence while the agent speaks",
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="talk to elevenconv's local AgentSimulator instead (no account, no network)",
    )
    args = parser.parse_args(argv)
    if not args.agent_id and not args.simulate:
        parser.error("give --agent-id or set ELEVENLABS_AGENT_ID (or use --simulate)")
    return args


@contextlib.contextmanager
def agent_service(args: argparse.Namespace) -> Iterator[tuple[ElevenLabsClient, str, bool]]:
    """Yield (client, agent id, requires_auth): the real service or the simulator."""
    if args.simulate:
        from elevenconv.testing import AgentSimulator

        # A protocol-faithful agent on 127.0.0.1 that speaks (espeak-ng if installed)
        # and listens (an energy-based voice detector), in real time.
        with AgentSimulator() as sim:
            print(f"(simulator on {sim.base_url})")
            yield ElevenLabsClient(api_key=sim.api_key, base_url=sim.base_url), "sim-agent", False
        return
    kwargs: dict[str, Any] = {}
    if args.base_url:
        kwargs["base_url"] = args.base_url
    client = ElevenLabsClient(**kwargs)  # api_key: $ELEVENLABS_API_KEY, if set
    # With an API key, ask for a signed URL (private agents); without, connect directly
    # (public agents).
    yield client, args.agent_id, client.has_api_key


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # Imported here, not at the top, so --help works without PyAudio or a sound device.
    from elevenconv import create_default_audio_interface

    try:
        audio = create_default_audio_interface()  # devices are opened by start_session()
    except ImportError as exc:  # PyAudio missing: the message says how to install it
        print(f"Error: {exc}", file=sys.stderr)
        return 1

    with agent_service(args) as (client, agent_id, requires_auth):
        conversation = Conversation(
            client,
            agent_id,
            requires_auth=requires_auth,
            audio_interface=audio,
            # None (the default): on when its dependency is installed; False: off.
            echo_cancellation=False if args.no_echo_cancellation else None,
            echo_guard=args.echo_guard,
        )

        # Every handler runs on the Conversation's events thread, one at a time: keep
        # them short (printing is fine).
        conversation.on("user_transcript", lambda text: print(f"You:   {text}"))
        conversation.on("agent_response", lambda text: print(f"Agent: {text}"))
        conversation.on(
            "agent_response_correction",
            lambda original, corrected: print(f"Agent (interrupted): {corrected}"),
        )
        conversation.on("mode_change", lambda mode: print(f"  [{mode}]"))
        conversation.on("interruption", lambda event_id: print("  [you interrupted]"))
        conversation.on("error", lambda exc: print(f"  [error] {exc}", file=sys.stderr))

        @conversation.on("session_ended")
        def on_ended(conversation_id: str | None, code: int | None, reason: str) -> None:
            detail = f": {reason}" if reason else ""
            print(f"Conversation {conversation_id} ended (code {code}{detail})")

        try:
            conversation.start_session()
            active = getattr(conversation, "echo_cancellation_active", False)
            print(f"Connected (echo cancellation {'on' if active else 'off'}): start talking.")
            print("Ctrl+C to end.")
            # Blocks until the agent (or the network) ends the call; Ctrl+C gets through.
            conversation.wait_for_session_end()
        except KeyboardInterrupt:
            print("\nEnding...")
        except ElevenConvError as exc:  # could not connect, bad key, no sound device, ...
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        finally:
            # Idempotent: closes the connection, stops the audio, joins the threads.
            conversation.end_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
