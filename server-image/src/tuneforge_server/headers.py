"""Every response says which adapter bytes answered it: ``X-Tuneforge-Adapter-Digest``.

A blue/green switch, a rollback or a stale endpoint is then visible to any client (curl -i, the
``openai`` client's raw response, a load test) without asking the operator. The launcher puts the
pre-flighted digests into ``TUNEFORGE_ADAPTER_DIGESTS`` (``name=sha256:…`` comma-separated, one
per adapter) and hands this class to vLLM's ``--middleware``; it is plain ASGI, so it needs
nothing beyond what vLLM's server already runs on.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ENV", "HEADER", "AdapterDigestHeader", "header_value"]

ENV = "TUNEFORGE_ADAPTER_DIGESTS"
HEADER = b"x-tuneforge-adapter-digest"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def header_value(digests: dict[str, str]) -> str:
    """``name=digest`` pairs in a stable order (the value of :data:`ENV` and of the header)."""
    return ",".join(f"{name}={digest}" for name, digest in sorted(digests.items()))


class AdapterDigestHeader:
    """ASGI middleware adding :data:`HEADER` to every HTTP response when :data:`ENV` is set."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.value = os.environ.get(ENV, "").encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.value:
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, self.value)]
            await send(message)

        await self.app(scope, receive, send_with_header)
