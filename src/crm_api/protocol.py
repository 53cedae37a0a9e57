"""The HTTP/1.1 protocol ``crm-api serve`` runs uvicorn with: uvicorn's httptools protocol
with a cap on the request head and problem responses where uvicorn answers plain text.

uvicorn's httptools protocol accepts a request line and headers of any size: the parser
keeps appending what arrives (a 50 MB header held a worker's event loop for seconds, and
its memory with it) before the application, and so the middleware's limits, see a byte.
The same holds for a chunked body's trailer fields (a 50 MB trailer: 19 s of a stalled
worker), which come after the body the middleware counts. Here the parser is fed at most
``Settings.max_request_head_bytes`` without a byte of body among them; past that the
request is refused at once: ``414 uri_too_long`` while still in the request line, else
``431 request_head_too_large``. A request the parser cannot read is
``400 invalid_http_request``. Each refusal is an RFC 9457 problem, with a request id, on a
connection that is then closed — after reading (and dropping) what the client is still
sending, for at most :data:`LINGER_S` and :data:`LINGER_BYTES`, so that it gets the answer
rather than a reset.

Bodies themselves are not counted here (the middleware's ``max_body_bytes`` does that).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from crm_api.config import get_settings
from crm_api.errors import problem_body
from crm_api.logs import request_id_var

logger = logging.getLogger("crm_api.access")

#: After a refusal, how long and how much of what the client still sends is read and
#: dropped before the connection is closed (closing on unread data resets it, and the
#: client may then never see the answer).
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a bounded request head (module docstring).

    What is bounded is the run of bytes fed to the parser without a byte of body among
    them: the head of a request (request line and headers), and within a chunked body its
    framing (chunk sizes, extensions) and trailer fields — which the parser buffers like
    headers. Any body byte ends a run; so does the end of a request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_limit = get_settings().max_request_head_bytes
        self._run = 0  # bytes fed since the request began or its last body byte
        self._phase = "request_line"  # then "headers", then "body"
        self._lingering: int | None = None  # bytes dropped since a refusal

    # Parser callbacks (called from inside ``feed_data``)
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase == "request_line":
            self._phase = "headers"
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = "body"
        self._run = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._run = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # the next request on the connection starts its head (pipelined or later)
        self._phase = "request_line"
        self._run = 0

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._linger(len(data))
            return
        while data:
            room = self.head_limit - self._run
            if room <= 0:
                self._refuse_run()
                return
            piece, data = data[:room], data[room:]
            if self._phase == "request_line" and b"\n" in piece:
                # the request line ended in this piece (the parser reports headers only
                # once each is complete)
                self._phase = "headers"
            self._run += len(piece)  # reset by on_body / on_message_complete meanwhile
            super().data_received(piece)
            if self.transport.is_closing() or self._lingering is not None:
                return

    def send_400_response(self, msg: str) -> None:
        """What the parser cannot read (uvicorn's own answer is ``text/plain``)."""
        self._refuse(400, "invalid_http_request", "The request is not valid HTTP/1.1.")

    # Refusals
    def _refuse_run(self) -> None:
        limit = self.head_limit
        if self._phase == "request_line":
            self._refuse(414, "uri_too_long", f"The request line exceeds {limit} bytes.")
        elif self._phase == "headers":
            self._refuse(
                431,
                "request_head_too_large",
                f"The request line and headers exceed {limit} bytes.",
            )
        else:
            self._refuse(
                431,
                "request_head_too_large",
                f"The chunked body's framing or trailer fields exceed {limit} bytes "
                "without any body data.",
            )

    def _refuse(self, status: int, code: str, detail: str) -> None:
        if self._lingering is not None or self.transport.is_closing():
            return
        cycle = self.cycle
        if self._phase == "body":
            assert cycle is not None  # this request's
            if cycle.response_started:
                # answered already (without waiting for the body): no second answer
                self._close()
                return
            # the application is still waiting for this body: it sees a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # a pipelined request before this one is still being answered: ours cannot
            # follow it on the wire, so the connection just ends
            self._close()
            return
        request_id = uuid.uuid4().hex
        token = request_id_var.set(request_id)  # no request context exists at this level
        try:
            content = orjson.dumps(problem_body(status, code, detail))
            logger.warning(
                "request refused before the application", extra={"status": status, "code": code}
            )
        finally:
            request_id_var.reset(token)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(content),
            b"cache-control: no-store\r\n",
            b"x-content-type-options: nosniff\r\n",
            b"x-request-id: " + request_id.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + content)
        self._lingering = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self._close)

    def _linger(self, received: int) -> None:
        assert self._lingering is not None
        self._lingering += received
        if self._lingering > LINGER_BYTES:
            self._close()

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
