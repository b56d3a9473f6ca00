"""A small Forward protocol v1 client for tests, written from the spec, not from the server.

It frames messages the way Fluentd's out_forward and the fluent-logger libraries do
(including out_forward's str32-wrapped PackedForward entries) and plays the client side of
the HELO/PING/PONG handshake, so the server is exercised as real clients would use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import ssl
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives import hashes

from audit.ingest.forward import CredentialLookup
from audit.producers.schemas import ProducerIdentity

Entry = tuple[Any, dict[str, Any]]


def event_time(seconds: int, nanoseconds: int = 0) -> msgpack.ExtType:
    """EventTime: ext type 0, uint32 seconds and uint32 nanoseconds, big-endian."""
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanoseconds))


def sha512_hex(*parts: bytes) -> str:
    h = hashes.Hash(hashes.SHA512())
    for part in parts:
        h.update(part)
    return h.finalize().hex()


def pack_entries(entries: list[Entry]) -> bytes:
    return b"".join(msgpack.packb([t, r]) for t, r in entries)


def packed_forward(
    tag: str,
    entries: list[Entry],
    *,
    chunk: str | None = None,
    gzip_parts: int = 0,
    as_str32: bool = False,
) -> bytes:
    """A PackedForward message, or CompressedPackedForward when gzip_parts > 0."""
    payload = pack_entries(entries)
    option: dict[str, Any] = {"size": len(entries), "compressed": "text"}
    if gzip_parts:
        payload = gzip_members(payload, gzip_parts)
        option["compressed"] = "gzip"
    if chunk is not None:
        option["chunk"] = chunk
    body = str32(payload) if as_str32 else msgpack.packb(payload)
    return b"\x93" + msgpack.packb(tag) + body + msgpack.packb(option)


def gzip_members(data: bytes, members: int) -> bytes:
    """`data` split into `members` concatenated gzip members, as Fluentd's buffers store it."""
    step = max(1, -(-len(data) // members))
    parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    return b"".join(gzip.compress(p) for p in parts)


def str32(payload: bytes) -> bytes:
    """A msgpack str32 header around raw bytes: how out_forward sends PackedForward entries."""
    return b"\xdb" + struct.pack(">I", len(payload)) + payload


class ProtocolViolation(Exception):
    """The server sent something the spec does not allow."""


class HandshakeRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Credentials:
    shared_key: str
    hostname: str = "engine-1"
    username: str = ""
    password: str = ""


class ForwardClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._unpacker = msgpack.Unpacker(raw=False)

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        credentials: Credentials | None = None,
        server_name: str | None = None,
    ) -> ForwardClient:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=server_hostname if ssl_context else None
        )
        client = cls(reader, writer)
        if credentials is not None:
            try:
                await client.handshake(credentials, server_name=server_name)
            except BaseException:
                await client.close()
                raise
        return client

    async def receive(self, timeout: float = 5.0) -> Any:
        """The next msgpack object from the server; EOFError when the server closed."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    return self._unpacker.unpack()
                except msgpack.OutOfData:
                    pass
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self._unpacker.feed(data)

    async def handshake(self, cred: Credentials, *, server_name: str | None = None) -> None:
        helo = await self.receive()
        if not isinstance(helo, list) or len(helo) != 2 or helo[0] != "HELO":
            raise ProtocolViolation(f"expected HELO, got {helo!r}")
        nonce, auth = helo[1].get("nonce"), helo[1].get("auth", "")
        if not isinstance(nonce, bytes) or not isinstance(auth, bytes | str):
            raise ProtocolViolation("HELO nonce/auth of the wrong type")
        salt = os.urandom(16).hex()  # out_forward: SecureRandom.hex(16), sent as str
        digest = sha512_hex(salt.encode(), cred.hostname.encode(), nonce, cred.shared_key.encode())
        if auth:
            password = sha512_hex(
                auth if isinstance(auth, bytes) else auth.encode(),
                cred.username.encode(),
                cred.password.encode(),
            )
            ping = ["PING", cred.hostname, salt, digest, cred.username, password]
        else:
            ping = ["PING", cred.hostname, salt, digest, "", ""]
        await self.send_raw(msgpack.packb(ping))
        pong = await self.receive()
        if not isinstance(pong, list) or len(pong) != 5 or pong[0] != "PONG":
            raise ProtocolViolation(f"expected PONG, got {pong!r}")
        _, ok, reason, hostname, server_digest = pong
        if not ok:
            raise HandshakeRefused(reason)
        if server_name is not None and hostname != server_name:
            raise ProtocolViolation(f"server calls itself {hostname!r}")
        expected = sha512_hex(salt.encode(), hostname.encode(), nonce, cred.shared_key.encode())
        if server_digest != expected:
            raise ProtocolViolation("server does not know the shared key")

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_message(
        self, tag: str, time: Any, record: Any, *, chunk: str | None = None
    ) -> None:
        frame: list[Any] = [tag, time, record]
        if chunk is not None:
            frame.append({"chunk": chunk})
        await self.send_raw(msgpack.packb(frame))

    async def send_forward(
        self, tag: str, entries: list[Entry], *, chunk: str | None = None, size: bool = False
    ) -> None:
        option: dict[str, Any] = {}
        if chunk is not None:
            option["chunk"] = chunk
        if size:
            option["size"] = len(entries)
        frame: list[Any] = [tag, [[t, r] for t, r in entries]]
        if option:
            frame.append(option)
        await self.send_raw(msgpack.packb(frame))

    async def send_packed(
        self,
        tag: str,
        entries: list[Entry],
        *,
        chunk: str | None = None,
        gzip_parts: int = 0,
        as_str32: bool = False,
    ) -> None:
        """PackedForward, or CompressedPackedForward when gzip_parts > 0."""
        await self.send_raw(
            packed_forward(tag, entries, chunk=chunk, gzip_parts=gzip_parts, as_str32=as_str32)
        )

    async def read_ack(self, timeout: float = 5.0) -> str:
        reply = await self.receive(timeout)
        if not isinstance(reply, dict) or set(reply) != {"ack"}:
            raise ProtocolViolation(f"expected an ack, got {reply!r}")
        ack = reply["ack"]
        if not isinstance(ack, str):
            raise ProtocolViolation("ack is not a str")
        return ack

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (anything it sends first is dropped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def credentials_lookup(
    users: dict[str, str], tenant: str = "acme", streams: tuple[str, ...] = ("*",)
) -> CredentialLookup:
    """The forward server's user lookup over a fixed table (the service reads producers from
    its control database): every user a producer of `tenant` bound to `streams`."""

    async def lookup(username: str) -> tuple[str, ProducerIdentity] | None:
        if username not in users:
            return None
        return users[username], ProducerIdentity(username, username, tenant, streams)

    return lookup
