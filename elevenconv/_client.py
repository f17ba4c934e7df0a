"""HTTP side of the API: signed URLs for private agents (``requests``)."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests

from elevenconv._transport import redact_url
from elevenconv._version import __version__
from elevenconv.errors import AuthenticationError, ConfigurationError, ConnectionFailedError

__all__ = ["DEFAULT_BASE_URL", "ElevenLabsClient", "add_source_params"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
CONVERSATION_PATH = "/v1/convai/conversation"
SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
SOURCE = "elevenconv"


def add_source_params(url: str) -> str:
    """Append ``source``/``version`` query parameters, as the official SDKs do."""
    parts = urlsplit(url)
    extra = urlencode({"source": SOURCE, "version": __version__})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


class ElevenLabsClient:
    """A minimal ElevenLabs API client: what a conversation needs, no more.

    ``api_key`` defaults to the ``ELEVENLABS_API_KEY`` environment variable; it is only
    required for private agents (:meth:`get_signed_url`). ``base_url`` (default: the
    ``ELEVENLABS_BASE_URL`` environment variable, else ``https://api.elevenlabs.io``)
    selects the region (``https://api.eu.residency.elevenlabs.io``) or a local
    :class:`~elevenconv.testing.AgentSimulator` (``sim.base_url``). ``verify=False``
    disables TLS certificate checks of the signed-URL request only (logged as a warning;
    never in production); the WebSocket's TLS is set with
    ``Conversation(transport_options={"sslopt": {...}})``.
    The key is never logged or shown in ``repr``.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        verify: bool = True,
    ) -> None:
        self._api_key = api_key if api_key is not None else os.environ.get("ELEVENLABS_API_KEY")
        if base_url is None:
            base_url = os.environ.get("ELEVENLABS_BASE_URL") or DEFAULT_BASE_URL
        base = base_url
        self.base_url = base.rstrip("/")
        self.timeout = timeout
        self._session = session
        self.verify = verify
        if not verify:
            log.warning("TLS certificate verification is DISABLED for %s: insecure", self.base_url)

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return f"ElevenLabsClient(base_url={self.base_url!r}, api_key=<{key}>)"

    @property
    def has_api_key(self) -> bool:
        """Whether an API key is configured (the key itself is not exposed)."""
        return bool(self._api_key)

    def conversation_url(self, agent_id: str, environment: str | None = None) -> str:
        """The WebSocket URL of a public agent: ``base_url`` with http->ws, https->wss."""
        parts = urlsplit(self.base_url)
        scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme)
        if scheme is None:
            raise ConfigurationError(f"base_url must be http(s) or ws(s), not {self.base_url!r}")
        params: dict[str, str] = {"agent_id": agent_id}
        if environment:
            params["environment"] = environment
        path = parts.path.rstrip("/") + CONVERSATION_PATH
        return add_source_params(urlunsplit((scheme, parts.netloc, path, urlencode(params), "")))

    def get_signed_url(self, agent_id: str, environment: str | None = None) -> str:
        """Fetch a single-use signed WebSocket URL for a private agent.

        Raises :class:`ConfigurationError` without an API key,
        :class:`AuthenticationError` on 401/403 and :class:`ConnectionFailedError` on
        other failures.
        """
        if not self._api_key:
            raise ConfigurationError(
                "an API key is needed for a private agent: set ELEVENLABS_API_KEY or pass "
                "ElevenLabsClient(api_key=...)"
            )
        params: dict[str, str] = {"agent_id": agent_id}
        if environment:
            params["environment"] = environment
        url = self.base_url + SIGNED_URL_PATH
        http = self._session or requests
        try:
            response = http.get(
                url,
                params=params,
                headers={"xi-api-key": self._api_key},
                timeout=self.timeout,
                verify=self.verify,
            )
        except requests.RequestException as exc:
            raise ConnectionFailedError(
                f"could not fetch a signed URL from {url}: {type(exc).__name__}"
            ) from None
        detail = _detail(response).replace(self._api_key, "***")  # servers may echo it
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"signed URL refused (HTTP {response.status_code}): {detail}; check "
                "the API key and that the agent belongs to its account",
                response.status_code,
            )
        if response.status_code != 200:
            raise ConnectionFailedError(
                f"signed URL request failed (HTTP {response.status_code}): {detail}",
                response.status_code,
            )
        try:
            signed = response.json()["signed_url"]
        except (ValueError, KeyError, TypeError):
            raise ConnectionFailedError("signed URL response has no 'signed_url' field") from None
        if not isinstance(signed, str):
            raise ConnectionFailedError("signed URL response's 'signed_url' is not a string")
        log.debug("got signed URL %s", redact_url(signed))
        return signed


def _detail(response: requests.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.reason or "no detail"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("status")
    return redact_url(str(detail or response.reason or "no detail"))[:200]
