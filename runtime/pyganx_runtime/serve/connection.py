"""The HTTP/1.1 protocol ``serve`` runs under uvicorn: uvicorn's h11 protocol with a
deadline for each request head.

uvicorn times out a connection only while it sits idle after a response
(``timeout_keep_alive``), and any byte received cancels that timer. A client that opens
a connection and sends its request line and headers a byte at a time ("slow loris")
holds the connection as long as it likes; one that sends nothing at all, too. Here
the whole head of each request (request line and headers) must arrive within
``head_timeout`` seconds: counted from the moment the connection opens for its first
request, and, on a kept-alive connection, from the first byte of each later one (the
idle time before that byte is uvicorn's keep-alive timeout's to bound, so a keep-alive
timeout longer than the head timeout keeps its meaning). The timer is not reset by the
bytes that trickle in. When it runs out, a partly sent request is answered 408 (JSON,
like every error of the service) and the connection is closed; a connection on which
nothing was sent is just closed.
"""
from __future__ import annotations

import asyncio
import json
from typing import ClassVar, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _timeout_answer(seconds: float) -> bytes:
    body = json.dumps({"error": f"the request's headers did not arrive within {seconds:g} s"}).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head does not arrive
    within ``head_timeout`` seconds (a class attribute: see ``head_timeout_protocol``)."""

    head_timeout: ClassVar[float] = 10.0
    _head_deadline: asyncio.TimerHandle | None = None
    _first_request = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))   # a stream server's: a Transport
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._watch_head()

    def _watch_head(self) -> None:
        """Starts the deadline when the connection waits for a request head (h11: the
        client's side is IDLE), for a later request only once a byte of it is in; stops it
        once the head is in."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_deadline is None:
            if self._first_request or self.conn.trailing_data[0]:
                self._head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif not waiting:
            self._first_request = False
            self._cancel_head_deadline()

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        received, _ = self.conn.trailing_data
        if received:
            self.transport.write(_timeout_answer(self.head_timeout))
        self.transport.close()


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutProtocol]:
    """The protocol class to give uvicorn (``http=``) for a head deadline of ``seconds``:
    uvicorn builds one protocol per connection from the class alone."""
    if seconds <= 0:
        raise ValueError(f"the head timeout must be positive, got {seconds}")
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout": float(seconds)})


__all__ = ["HeadTimeoutProtocol", "head_timeout_protocol"]
