"""HTTP/1.1 response framing as plain functions: bytes out, no sockets.

The stream response's head is fixed at the moment the first upstream delivers, and nothing in
the framing depends on which upstream is feeding it: a switch is invisible on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

SERVER = "relay"
CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

Buffer = bytes | bytearray | memoryview


def head(status: int, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A response head; header values must already be safe (no CR/LF), they come from our code."""
    lines = [f"HTTP/1.1 {status} {_phrase(status)}", f"Server: {SERVER}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    *,
    keep_alive: bool = True,
    headers: Sequence[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    """A complete response with Content-Length; HEAD gets the same head and no body."""
    hs = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    hs += list(headers)
    hs.append(("Connection", "keep-alive" if keep_alive else "close"))
    return head(status, hs) + (b"" if head_only else body)


def error(status: int, text: str | None = None, *, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A short plain-text error that closes the connection; the text is ours, never upstream's."""
    body = ((text or _phrase(status)) + "\n").encode()
    return response(status, body, keep_alive=False, headers=headers)


def stream_head(content_type: str, *, chunked: bool) -> bytes:
    """The head of a live stream: chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0."""
    hs = [("Content-Type", content_type), ("Cache-Control", "no-cache, no-store")]
    if chunked:
        hs.append(("Transfer-Encoding", "chunked"))
    hs.append(("Connection", "close"))
    return head(200, hs)


def chunk(views: Sequence[Buffer], size: int) -> list[Buffer]:
    """One chunk around `views` (total `size` bytes) without copying them: for writelines."""
    return [b"%x\r\n" % size, *views, CRLF]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
