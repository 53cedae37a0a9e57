"""A TCP proxy in front of the test PostgreSQL that a test can break on purpose, without
touching the server other engineers share:

* ``freeze()``: connections stay open but nothing is forwarded, either way, and new
  connections are accepted and then ignored: what clients see of a SIGSTOPped server or a
  dead middlebox. ``thaw()`` resumes forwarding whatever was held.
* ``refuse(sqlstate)``: new connections get PostgreSQL's own FATAL answer to the startup
  message (``53300`` "too many clients", ``57P03`` "the database system is starting up"),
  while connections already open keep working.
* ``drop_all()``: cut every open connection (a crashed server, a failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104

_MESSAGES = {
    "53300": "sorry, too many clients already",
    "57P03": "the database system is starting up",
    "57P01": "terminating connection due to administrator command",
}


def error_response(sqlstate: str) -> bytes:
    """A backend ``ErrorResponse`` message (severity FATAL)."""
    fields = b""
    for tag, value in (
        (b"S", "FATAL"),
        (b"V", "FATAL"),
        (b"C", sqlstate),
        (b"M", _MESSAGES.get(sqlstate, "refused by the test proxy")),
    ):
        fields += tag + value.encode() + b"\0"
    fields += b"\0"
    return b"E" + struct.pack("!i", len(fields) + 4) + fields


class PgProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream_url = upstream_url
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 5432
        #: The embedded cluster (``?host=/path/to/socket/dir``) listens on a Unix socket only.
        socket_dir = dict(parse_qsl(parts.query)).get("host", "")
        self.upstream_socket = (
            f"{socket_dir}/.s.PGSQL.{self.upstream_port}" if socket_dir.startswith("/") else None
        )
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refuse: str | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    @property
    def url(self) -> str:
        """The upstream URL with host and port replaced by the proxy's."""
        parts = urlsplit(self.upstream_url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}", query=query))

    async def start(self) -> PgProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> PgProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def refuse(self, sqlstate: str | None) -> None:
        self._refuse = sqlstate

    def drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.thaw()
        self.drop_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            if self._refuse is not None:
                await self._answer_refusal(reader, writer, self._refuse)
                return
            await self._flowing.wait()  # frozen: accepted by the kernel, never answered
            if self.upstream_socket is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream_socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            self._writers.add(up_writer)
            self._spawn(self._pump(reader, up_writer))
            self._spawn(self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()

    async def _answer_refusal(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sqlstate: str
    ) -> None:
        while True:
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            payload = await reader.readexactly(length - 4)
            code = struct.unpack("!i", payload[:4])[0] if len(payload) >= 4 else 0
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                writer.write(b"N")  # no encryption; the client sends its startup next
                await writer.drain()
                continue
            break
        writer.write(error_response(sqlstate))
        await writer.drain()
        writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)
