"""The connection-level limits in front of the service (docs/serve.md, "Limits"), on the
real thing: `pyganx-runtime serve` (uvicorn) in a subprocess, spoken to over raw sockets.
A request head that trickles in a byte at a time is cut off at --header-timeout, on a
fresh connection and on a kept-alive one (where the idle time before a request is the
keep-alive timeout's); a connection that sends nothing is closed;
beyond --limit-concurrency uvicorn answers 503."""
from __future__ import annotations

import json
import select
import socket
from urllib.parse import urlsplit

import pytest

from pyganx_runtime.cli import main as cli_main
from pyganx_runtime.serve.process import start_server, stop_server

HEADER_TIMEOUT = 1.0
#: a request head long enough to take 40 s at one byte per 0.5 s
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"p" * 20 + b"\r\n\r\n"
#: the safety net of every blocking read: far beyond the timeouts under test, so a
#: failure shows as a failed assertion instead of a hung test
SAFETY = 60.0


@pytest.fixture(scope="module")
def server(models):
    try:
        proc, url = start_server([models["digits"]], "--device", "cpu", "--log-level", "warning",
                                 "--header-timeout", str(HEADER_TIMEOUT), "--limit-concurrency", "2", timeout=60)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield urlsplit(url)
    out = stop_server(proc)
    assert "Traceback" not in out, out


def _connect(url) -> socket.socket:
    s = socket.create_connection((url.hostname, url.port), timeout=SAFETY)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_all(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _trickle(s: socket.socket, data: bytes) -> tuple[int, bytes]:
    """Sends ``data`` one byte every 0.5 s until the server answers or closes: (bytes
    sent, what the server sent until it closed the connection)."""
    for sent in range(len(data)):
        readable, _, _ = select.select([s], [], [], 0.5)
        if readable:
            return sent, _read_all(s)
        try:
            s.sendall(data[sent:sent + 1])
        except (BrokenPipeError, ConnectionResetError):
            return sent, b""
    readable, _, _ = select.select([s], [], [], SAFETY)
    return len(data), _read_all(s) if readable else b"(no answer)"


def _assert_408(sent: int, answer: bytes) -> None:
    assert sent < len(SLOW_HEAD), "the server waited for the whole slowly sent head"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower()
    assert "did not arrive within 1 s" in json.loads(body)["error"]


def _request(url, head: bytes) -> bytes:
    """One request on a fresh connection: the whole answer (the server closes it)."""
    with _connect(url) as s:
        s.sendall(head)
        return _read_all(s)


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(server):
    with _connect(server) as s:
        _assert_408(*_trickle(s, SLOW_HEAD))
    # the service goes on
    answer = _request(server, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


def _healthz(s: socket.socket) -> bytes:
    """One request on a kept-alive connection: its answer."""
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = b""
    while b'"status":"ok"' not in answer:
        chunk = s.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


def test_the_deadline_starts_again_for_each_request_on_a_kept_alive_connection(server):
    with _connect(server) as s:
        assert _healthz(s).startswith(b"HTTP/1.1 200 ")
        _assert_408(*_trickle(s, SLOW_HEAD))


def test_a_kept_alive_connection_idles_for_the_keep_alive_timeout_not_the_header_timeout(server):
    # --keep-alive-timeout is 5 s (the default): an idle time of twice --header-timeout
    # between two requests does not close the connection
    with _connect(server) as s:
        assert _healthz(s).startswith(b"HTTP/1.1 200 ")
        readable, _, _ = select.select([s], [], [], 2 * HEADER_TIMEOUT)
        assert not readable, "the server closed (or wrote to) an idle kept-alive connection"
        assert _healthz(s).startswith(b"HTTP/1.1 200 ")


def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server) as s:
        assert _read_all(s) == b""      # EOF, not the socket's SAFETY timeout (that raises)


def test_beyond_the_concurrency_limit_uvicorn_answers_503(server):
    # a request whose body never comes holds its connection (and request) open: with
    # --limit-concurrency 2, it and one more connection are the limit. Its
    # "Expect: 100-continue" makes the server say when the request has reached the app.
    with _connect(server) as holder:
        holder.sendall(b"POST /v1/translate/digits HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                       b"Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
        assert holder.recv(65536).startswith(b"HTTP/1.1 100 ")
        answer = _request(server, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 "), answer
    # the holder went away mid-upload: no traceback in the server's log (the fixture checks)


@pytest.mark.parametrize("flag", ["--header-timeout", "--keep-alive-timeout", "--limit-concurrency",
                                  "--shutdown-timeout"])
def test_a_limit_below_its_minimum_is_a_one_line_usage_error(models, flag, capsys):
    assert cli_main(["serve", str(models["digits"]), flag, "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
