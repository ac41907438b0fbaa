"""A TCP proxy the drills put between a Switchyard process and RabbitMQ, to break the network.

It runs on its own thread (asyncio) and forwards every connection to one
upstream address. On command it:

- ``reset()``: closes every open connection at once (both sides see a reset);
- ``refuse()``: also closes each new connection as soon as it is accepted;
- ``black_hole()``: keeps accepting and holding connections but forwards
  nothing either way, as a dead route or a silent firewall does: the client
  only notices through its own timeouts or heartbeats;
- ``heal()``: forwards again (connections held in the black hole stay dead;
  clients must reconnect, as they would after a real partition).
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading


class _Link:
    """One proxied connection: the client's side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.writers = [client]
        self.holed = False  # swallowed bytes in a black hole: its stream is broken for good

    def abort(self) -> None:
        for writer in self.writers:
            _abort(writer)


class TcpProxy:
    """``with TcpProxy(("127.0.0.1", 5672)) as proxy: ... proxy.port ...``"""

    FORWARD, REFUSE, BLACK_HOLE = "forward", "refuse", "black-hole"

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = self.FORWARD
        self.accepted = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tcp-proxy")
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.reset()
        self._call(self._close_server())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def reset(self) -> None:
        """Drop every open connection (RST on both sides)."""
        self._call(self._drop(lambda link: True))

    def refuse(self) -> None:
        """Reset every connection, and every new one as soon as it is accepted."""
        self.mode = self.REFUSE
        self.reset()

    def black_hole(self) -> None:
        """Stop forwarding: open and new connections stay open, silent both ways."""
        self.mode = self.BLACK_HOLE

    def heal(self) -> None:
        """Forward again; connections that lost bytes in the black hole are reset."""
        self.mode = self.FORWARD
        self._call(self._drop(lambda link: link.holed))

    # -- inside the loop -------------------------------------------------------

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _close_server(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _drop(self, which) -> None:
        for link in [link for link in self._links if which(link)]:
            link.abort()
            self._links.discard(link)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == self.REFUSE:
            _abort(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._links.discard(link)
            link.abort()
            return
        link.writers.append(up_writer)
        try:
            await asyncio.gather(self._pipe(link, reader, up_writer),
                                 self._pipe(link, up_reader, writer))
        finally:
            self._links.discard(link)
            link.abort()

    async def _pipe(self, link: _Link, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data or writer.is_closing():
                    break
                if link.holed or self.mode == self.BLACK_HOLE:
                    link.holed = True  # these bytes are gone: heal() resets this link
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.abort()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), as a broken network would, not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
