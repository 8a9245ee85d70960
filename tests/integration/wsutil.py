"""Helpers for integration tests: JSON over `websockets`, and a raw socket client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.conftest import UNIT


async def send(ws: ClientConnection, obj: dict[str, Any] | str) -> None:
    await ws.send(obj if isinstance(obj, str) else json.dumps(obj))


async def recv(ws: ClientConnection, timeout: float = UNIT) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return result


async def recv_until(ws: ClientConnection, kind: str, timeout: float = UNIT) -> dict[str, Any]:
    """Read frames until one of type ``kind`` arrives."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await recv(ws, timeout)
            if msg["type"] == kind:
                return msg


async def subscribe(ws: ClientConnection, topic: str, since: int | None = None) -> dict[str, Any]:
    cmd: dict[str, Any] = {"type": "subscribe", "topic": topic, "id": f"sub-{topic}"}
    if since is not None:
        cmd["since"] = since
    await send(ws, cmd)
    return await recv_until(ws, "subscribed")


class RawClient:
    """A WebSocket client on a bare socket: it reads only when told to, never pongs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str = "/ws") -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UNIT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def send_pong(self, payload: bytes = b"") -> None:
        """Answer a ping (this client never does by itself)."""
        self.send_frame(0xA, payload)

    def send_texts(self, *texts: str) -> None:
        """Several text frames in one write (the server reads them together)."""
        self.writer.write(b"".join(self.frame(0x1, text.encode()) for text in texts))

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked, final frame (payloads under 64 KiB)."""
        self.writer.write(self.frame(opcode, payload))

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        """The bytes of one masked, final frame (payloads under 64 KiB)."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        else:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        return header + mask + masked

    async def read_frame(self, timeout: float = UNIT) -> tuple[int, bytes]:
        """One frame: (opcode, payload)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def read_until_close(self, timeout: float = UNIT) -> tuple[int, str, list[int]]:
        """Read to the close frame: (close code, reason, opcodes seen before it)."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                op, payload = await self.read_frame(timeout)
                if op == 8:
                    (code,) = struct.unpack("!H", payload[:2])
                    return code, payload[2:].decode(), seen
                seen.append(op)

    def close(self) -> None:
        self.writer.close()
