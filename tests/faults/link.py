"""A TCP link between one client process and a server that the test can cut in one direction.

Once cut, what the client sends is read and dropped: a message it wrote "successfully" never
reaches the server, as when a connection dies with data still in flight. (Pausing the server
instead would not do: the bytes would wait in its socket buffer and be read once it resumed.)
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class Link:
    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.port = 0

    async def __aenter__(self) -> Link:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """From now on, drop everything the client sends (the server's side still flows)."""
        self._cut = True

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers |= {client_writer, server_writer}
        try:
            await asyncio.gather(
                self._pump(client_reader, server_writer, droppable=True),
                self._pump(server_reader, client_writer, droppable=False),
            )
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, droppable: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if droppable and self._cut:
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # either end went away: the link is over
        finally:
            writer.close()
