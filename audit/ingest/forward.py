"""Fluentd Forward protocol v1 server: how engines hand audit records to this service.

Implements the server side of "Forward Protocol Specification v1" (fluent/fluentd wiki) as
Fluentd's own in_forward does: Message, Forward, PackedForward and CompressedPackedForward
modes, EventTime, the `chunk`/`size`/`compressed` options, the HELO/PING/PONG handshake
with optional user auth, TLS, and UDP heartbeats.

Acknowledgements are the point of this module: `{"ack": chunk}` goes out only after the
handler returned, i.e. after the records are stored. Anything else (a refused message, a
store failure, a hostile frame) closes the connection without an ack, so the client keeps
its chunk and resends it. Log lines name the peer, sizes and types, never record contents:
records carry pseudonyms and free text.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import msgpack
import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.constant_time import bytes_eq

from audit.errors import UsageError
from audit.integrity import record as f
from audit.producers.schemas import ProducerIdentity
from audit.settings import AuditSettings

log = logging.getLogger("audit.ingest.forward")

_READ_SIZE = 256 * 1024
# A PING is a few hundred bytes: before the handshake, a peer that has proven nothing may
# not hold more, or unauthenticated connections could fill the memory budget and get every
# producer's large frame closed for it.
_PING_MAX_BYTES = 16 * 1024
_NS = 1_000_000_000
_MAX_CONTAINER_LEN = 65_536
_CLOSE_TIMEOUT_S = 5.0
_UDP_BIND_ATTEMPTS = 8
_OFF_LOOP_BYTES = 256 * 1024  # frames from this size on are decoded in a worker thread
# A decoded message is charged against forward_max_buffered_bytes by what it takes in
# memory, not by its frame's bytes: measured with tracemalloc on _parse_message, a
# 432-byte engine record takes 1.9 KB decoded (4.4x) and an empty record's 7 bytes take
# 189 (27x). Charged by frame bytes alone, ten thousand empty records passed for 70 KB,
# and a few hundred connections could make the server hold gigabytes.
_DECODED_FACTOR = 4
_ENTRY_OVERHEAD = 512
_MIN_ENTRY_BYTES = 3  # [time, {}] on the wire: fixarray, positive fixint, fixmap


@dataclass(frozen=True, slots=True)
class ForwardEntry:
    """One event. `time` is the correctly rounded float of the wire value; `time_ns` is exact."""

    time: float
    record: dict[str, Any]
    time_ns: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.time_ns < 0:
            object.__setattr__(self, "time_ns", round(self.time * _NS))


@dataclass(frozen=True, slots=True)
class Peer:
    address: str
    username: str | None
    tls: bool
    producer: ProducerIdentity | None = None  # who authenticated, when user auth is on


# username -> (password, identity) of an active producer, or None: the handshake's user auth.
CredentialLookup = Callable[[str], Awaitable[tuple[str, ProducerIdentity] | None]]


class ForwardHandler(Protocol):
    async def __call__(self, tag: str, entries: list[ForwardEntry], peer: Peer) -> None:
        """Store the entries durably; returning means stored and lets the server ack.

        Raise ForwardRejected(reason) to refuse the message (no ack, the reason is logged,
        the connection closed): the reason must not quote record contents. Any other
        exception is a temporary failure: no ack, connection closed, the client resends.
        """


class ForwardRejected(Exception):
    """The handler refuses a message for good; str(exc) is logged."""


@dataclass(slots=True)
class ForwardStats:
    """Counters since start; rejected_frames is keyed by the reason code that is logged."""

    connections: int = 0
    messages: int = 0
    entries: int = 0
    acks: int = 0
    rejected_frames: Counter[str] = field(default_factory=Counter)
    handshake_failures: int = 0
    handler_failures: int = 0


class _FrameError(Exception):
    """Closes one connection. `reason` is a stable code (stats, logs); `detail` has no content."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _EventTime(NamedTuple):
    seconds: int
    nanoseconds: int


class _Message(NamedTuple):
    tag: str
    entries: list[ForwardEntry]
    chunk: str | None


def build_ssl_context(settings: AuditSettings) -> ssl.SSLContext | None:
    """Server TLS context from forward_tls_cert/key; None when neither is set."""
    cert, key = settings.forward_tls_cert, settings.forward_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("forward TLS needs both forward_tls_cert and forward_tls_key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load forward TLS certificate/key: {exc}") from exc
    return ctx


# -- decoding ---------------------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> object:
    # EventTime is ext type 0 with uint32 seconds and uint32 nanoseconds, big-endian.
    if code == 0 and len(data) == 8:
        return _EventTime(int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big"))
    return msgpack.ExtType(code, data)


def _unpacker(max_bytes: int, max_events: int) -> msgpack.Unpacker:
    # surrogateescape: Fluentd's out_forward sends PackedForward entries as *str32* holding
    # binary msgpack, so a strict UTF-8 decode would refuse real traffic. The escape is
    # reversible (the payload's bytes are recovered exactly); records are checked for
    # escapes afterwards. Container sizes are capped because msgpack preallocates them
    # from the header, before any element arrived (one over max_events still parses, so
    # that it is reported as too many entries).
    cap = min(max_bytes, max(_MAX_CONTAINER_LEN, max_events + 1))
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogateescape",
        ext_hook=_ext_hook,
        max_buffer_size=max_bytes,
        max_array_len=cap,
        max_map_len=cap,
    )


def _charge(frame_bytes: int, entries: int) -> int:
    """What a decoded message of `entries` from a frame of `frame_bytes` holds, at most."""
    return _DECODED_FACTOR * frame_bytes + _ENTRY_OVERHEAD * entries


def _reservation(available: int, max_events: int) -> int:
    """The charge of the largest message `available` bytes may decode into: a frame
    decoded in a worker thread is reserved for before it starts, since the event loop goes
    on (and other connections with it) while the thread builds it."""
    return _charge(available, min(max_events, available // _MIN_ENTRY_BYTES))


def _decode_error(exc: Exception) -> _FrameError:
    if isinstance(exc, ValueError) and "exceeds max" in str(exc):
        return _FrameError("frame_too_large", "a container or string exceeds the frame limit")
    return _FrameError("malformed_msgpack", type(exc).__name__)


def _is_text(s: str) -> bool:
    # False for strings that were not valid UTF-8 on the wire (surrogate escapes).
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_RECORD_CHECK = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


# The record fields that must be JSON integers (docs/record-spec.md §2, §4).
_INTEGER_FIELDS = (f.EVENT_SEQUENCE, f.SCHEMA, f.CP_FIRST, f.CP_RECORDS)
_MAX_EXACT = 2**53


def _bytes_only(value: object) -> None:
    # bytes are a value problem, not a protocol one: ingest quarantines such a record,
    # where closing the connection would make the client resend it forever.
    if isinstance(value, bytes):
        return
    raise TypeError(f"{type(value).__name__} inside a record")


def _check_record(record: object) -> dict[str, Any]:
    """Maps with str keys all the way down, valid UTF-8, no extension values.

    Serialising with orjson checks exactly that in C: it refuses non-str keys, strings that
    were not UTF-8 on the wire (surrogate escapes) and every extension type. A Python walk
    cost ~40 µs a record, as much as the whole verification behind it.
    """
    if not isinstance(record, dict):
        raise _FrameError("bad_record", f"record is {type(record).__name__}, not a map")
    try:
        orjson.dumps(record, default=_bytes_only, option=_RECORD_CHECK)
    except (orjson.JSONEncodeError, TypeError) as exc:
        # orjson's messages name types and rules, never the offending content.
        raise _FrameError("bad_record", str(exc)) from None
    for name in _INTEGER_FIELDS:
        value = record.get(name)
        if type(value) is float and value.is_integer() and abs(value) <= _MAX_EXACT:
            # Shippers that decode JSON into doubles (Go's encoding/json, JavaScript) send
            # integers as msgpack floats. Within 2**53 that loses nothing, and RFC 8785
            # writes 6.0 and 6 alike, so the hash is the same: take the integer.
            record[name] = int(value)
    return record


def _entry(time: object, record: object) -> ForwardEntry:
    if _with_metadata(time):
        # Forward protocol v1.5 (Fluent Bit's default since it retains metadata): the time
        # is [EventTime, metadata]. The metadata belongs to the shipper, not to the audit
        # record (the record is the sealed record, whole): it is ignored.
        time = cast(list[object], time)[0]
    if isinstance(time, _EventTime):
        if time.nanoseconds >= _NS:
            raise _FrameError("bad_time", "EventTime nanoseconds out of range")
        ns = time.seconds * _NS + time.nanoseconds
    elif isinstance(time, int) and not isinstance(time, bool) and 0 <= time < 2**32:
        ns = time * _NS
    else:
        raise _FrameError("bad_time", f"time of type {type(time).__name__}")
    # int / int is correctly rounded in Python, so `time` is the float nearest to ns.
    return ForwardEntry(ns / _NS, _check_record(record), ns)


def _with_metadata(time: object) -> bool:
    return isinstance(time, list) and len(time) == 2 and isinstance(time[1], dict)


def _options(option: object) -> tuple[str | None, int | None, str]:
    if option is None:
        return None, None, "text"
    if not isinstance(option, dict):
        raise _FrameError("bad_option", f"option is {type(option).__name__}, not a map")
    chunk, size, compressed = option.get("chunk"), option.get("size"), option.get("compressed")
    if chunk is not None and not (isinstance(chunk, str) and _is_text(chunk)):
        raise _FrameError("bad_option", f"chunk of type {type(chunk).__name__}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _FrameError("bad_option", f"size of type {type(size).__name__}")
    if compressed is None:
        compressed = "text"
    # out_forward always sends compressed: "text" or "gzip".
    if compressed not in ("text", "gzip"):
        raise _FrameError("bad_option", "compressed is neither 'text' nor 'gzip'")
    return chunk, size, compressed


def _gunzip(data: bytes, cap: int) -> bytes:
    """All gzip members of `data`, refusing more than `cap` bytes of output (gzip bombs)."""
    out = bytearray()
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            pending = rest
            while not d.eof:
                piece = d.decompress(pending, cap - len(out) + 1)
                out += piece
                if len(out) > cap:
                    raise _FrameError("decompressed_too_large", f"more than {cap} bytes")
                consumed = len(pending) - len(d.unconsumed_tail)
                pending = d.unconsumed_tail
                if not piece and not consumed:
                    raise _FrameError("bad_gzip", "truncated gzip member")
            rest = d.unused_data
    except zlib.error as exc:
        raise _FrameError("bad_gzip", "invalid gzip data") from exc
    return bytes(out)


def _packed_entries(payload: bytes, max_bytes: int, max_events: int) -> list[ForwardEntry]:
    u = _unpacker(max_bytes, max_events)
    u.feed(payload)
    entries: list[ForwardEntry] = []
    end = 0
    while True:
        try:
            item = u.unpack()
        except msgpack.OutOfData:
            break
        except Exception as exc:
            raise _decode_error(exc) from exc
        end = u.tell()
        if len(entries) >= max_events:
            raise _FrameError("too_many_entries", f"more than {max_events} entries")
        if not isinstance(item, list) or len(item) != 2:
            raise _FrameError("bad_entry", f"packed entry is {type(item).__name__}, not [t, r]")
        entries.append(_entry(item[0], item[1]))
    if end != len(payload):
        raise _FrameError("bad_entry", f"{len(payload) - end} trailing bytes in entries")
    return entries


def _parse_message(frame: object, max_bytes: int, max_events: int) -> _Message | None:
    """One decoded frame as (tag, entries, chunk); None for a heartbeat (nil) frame."""
    if frame is None:
        return None  # in_forward treats nil as a TCP heartbeat
    if not isinstance(frame, list) or len(frame) < 2:
        what = f"array of {len(frame)}" if isinstance(frame, list) else type(frame).__name__
        raise _FrameError("unknown_mode", f"frame is {what}")
    tag, second = frame[0], frame[1]
    if not isinstance(tag, str) or not _is_text(tag):
        raise _FrameError("bad_tag", f"tag of type {type(tag).__name__}")
    # The mode is told by the second element (spec, "Modes"); a Message whose time carries
    # v1.5 metadata ([EventTime, {...}]) is told from Forward mode ([[t, r], ...]) by that
    # list's first element, which is a time there and an entry here.
    message_with_metadata = _with_metadata(second) and not isinstance(
        cast(list[object], second)[0], list
    )
    if isinstance(second, list | str | bytes) and not message_with_metadata:
        if len(frame) > 3:
            raise _FrameError("unknown_mode", f"forward frame of {len(frame)} elements")
        chunk, size, compressed = _options(frame[2] if len(frame) == 3 else None)
        if isinstance(second, list):
            if compressed != "text":
                raise _FrameError("bad_option", "compressed option in Forward mode")
            if len(second) > max_events:
                raise _FrameError("too_many_entries", f"{len(second)} > {max_events} entries")
            entries = []
            for item in second:
                if not isinstance(item, list) or len(item) != 2:
                    raise _FrameError("bad_entry", f"entry is {type(item).__name__}, not [t, r]")
                entries.append(_entry(item[0], item[1]))
        else:
            payload = (
                second.encode("utf-8", "surrogateescape") if isinstance(second, str) else second
            )
            if compressed == "gzip":
                payload = _gunzip(payload, max_bytes)
            entries = _packed_entries(payload, max_bytes, max_events)
    else:
        if len(frame) not in (3, 4):
            raise _FrameError("unknown_mode", f"message frame of {len(frame)} elements")
        chunk, size, compressed = _options(frame[3] if len(frame) == 4 else None)
        if compressed != "text":
            raise _FrameError("bad_option", "compressed option in Message mode")
        entries = [_entry(second, frame[2])]
    if size is not None and size != len(entries):
        raise _FrameError("size_mismatch", f"size option {size}, {len(entries)} entries")
    if entries and not tag:
        raise _FrameError("bad_tag", "empty tag")
    return _Message(tag, entries, chunk)


# -- handshake --------------------------------------------------------------------------


def _sha512_hex(*parts: bytes) -> str:
    h = hashes.Hash(hashes.SHA512())
    for part in parts:
        h.update(part)
    return h.finalize().hex()


def _raw(value: object) -> bytes | None:
    # Ruby hashes the bytes as sent, whether the field came as str or bin.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


class _Ping(NamedTuple):
    hostname: bytes
    salt: bytes
    username: str
    password_digest: bytes


@dataclass(slots=True)
class _Handshake:
    shared_key: bytes
    hostname: bytes
    user_auth: bool
    nonce: bytes = field(default_factory=lambda: os.urandom(16))
    auth_salt: bytes = field(default_factory=lambda: os.urandom(16))

    def helo(self) -> bytes:
        auth: bytes | str = self.auth_salt if self.user_auth else ""
        return msgpack.packb(["HELO", {"nonce": self.nonce, "auth": auth, "keepalive": True}])

    def check_ping(self, frame: object) -> _Ping:
        """The PING's fields once its shared key digest matched; raises _FrameError (after
        which PONG false is sent)."""
        # in_forward: ['PING', hostname, shared_key_salt, sha512_hex(salt + hostname + nonce
        # + shared_key), username, sha512_hex(auth_salt + username + password)]
        if not isinstance(frame, list) or len(frame) != 6 or _raw(frame[0]) != b"PING":
            raise _FrameError("invalid ping message", "expected a 6-element PING")
        fields = [_raw(v) for v in frame[1:]]
        hostname, salt, digest, user, password_digest = fields
        if hostname is None or salt is None or digest is None:
            raise _FrameError("invalid ping message", "PING field of the wrong type")
        expected = _sha512_hex(salt, hostname, self.nonce, self.shared_key).encode()
        if not bytes_eq(expected, digest):
            raise _FrameError("shared_key mismatch", "shared key digest does not match")
        name = (user or b"").decode("utf-8", "surrogateescape")
        return _Ping(hostname, salt, name, password_digest or b"")

    def check_password(self, ping: _Ping, password: str | None) -> None:
        # An unknown user is checked against a throwaway password so that timing does not
        # tell which usernames exist.
        secret = (password if password is not None else os.urandom(16).hex()).encode()
        user = ping.username.encode("utf-8", "surrogateescape")
        expected = _sha512_hex(self.auth_salt, user, secret).encode()
        if not bytes_eq(expected, ping.password_digest) or password is None:
            raise _FrameError("username/password mismatch", "user auth failed")

    def pong(self, ping: _Ping) -> bytes:
        proof = _sha512_hex(ping.salt, self.hostname, self.nonce, self.shared_key)
        return msgpack.packb(["PONG", True, "", self.hostname.decode(), proof])


def _pong_failure(reason: str) -> bytes:
    return msgpack.packb(["PONG", False, reason, "", ""])


# -- server -----------------------------------------------------------------------------


class _Heartbeat(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # in_forward answers every heartbeat datagram with one NUL byte to the sender.
        if self.transport is not None:
            self.transport.sendto(b"\x00", addr)


@dataclass(slots=True, eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    host: str = ""
    task: asyncio.Task[None] = field(init=False)
    # Deliveries not finished (handler running, or its ack waiting for the one before),
    # oldest first, with the memory each is charged (_charge): stop() lets them finish.
    inflight: deque[tuple[asyncio.Task[None], int]] = field(default_factory=deque)
    reading: bool = False  # waiting for bytes: stop() may cancel it once nothing is in flight
    failure: BaseException | None = None  # the first failed delivery's: reading stops
    buffered: int = 0  # bytes of an incomplete frame held for this connection

    @property
    def busy(self) -> bool:
        return bool(self.inflight)


def _host(peername: object) -> str:
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return str(peername)


def _address(peername: object) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host = str(peername[0])
        return f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
    return str(peername)


class ForwardServer:
    """TCP (optionally TLS) Forward server plus the UDP heartbeat socket on the same port.

    Each connection is served by one reader task that hands each message to a delivery
    task and reads on: up to `forward_pipeline_depth` messages of a connection are in the
    handler at once, so a sender that keeps several chunks in flight (Fluentd and Fluent Bit
    with acks do) has the next one verified while the last one is being stored. Handler
    calls start in frame order; acks are written in frame order, each only after its own
    handler returned and the previous message was acknowledged. After a failed delivery
    nothing later is acknowledged and the connection is closed: the sender resends what
    it holds unacknowledged, which ingest recognises as already stored.
    """

    def __init__(
        self,
        handler: ForwardHandler,
        settings: AuditSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        credentials: CredentialLookup | None = None,
    ) -> None:
        """With `forward_shared_key` set every connection must pass the handshake; with
        `credentials` too, it must also name a producer and prove its password, and the
        handler sees that producer in `Peer.producer`."""
        self._handler = handler
        self._settings = settings
        self._credentials = credentials
        self._ssl = ssl_context if ssl_context is not None else build_ssl_context(settings)
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._connections: set[_Connection] = set()
        self._per_host: Counter[str] = Counter()
        # Memory held over all connections: incomplete frames' bytes, and the charge of
        # decoded messages until their delivery ends (forward_max_buffered_bytes bounds it).
        self._held = 0
        self._delivering = 0  # deliveries not finished, over all connections
        self._decoding = 0  # frames being decoded in worker threads, over all connections
        self._released = asyncio.Event()  # set (and replaced) whenever memory is released
        self._stopping = False
        self._port = 0
        self.stats = ForwardStats()

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("ForwardServer already started")
        loop = asyncio.get_running_loop()
        s = self._settings
        timeout = s.forward_idle_timeout_s if self._ssl is not None else None
        for attempt in range(_UDP_BIND_ATTEMPTS):
            server = await asyncio.start_server(
                self._on_connect,
                s.forward_host,
                s.forward_port,
                ssl=self._ssl,
                ssl_handshake_timeout=timeout,
            )
            port = int(server.sockets[0].getsockname()[1])
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    _Heartbeat, local_addr=(s.forward_host, port)
                )
            except OSError:
                server.close()
                await server.wait_closed()
                # An ephemeral TCP port may be taken for UDP by someone else: pick another.
                if s.forward_port != 0 or attempt == _UDP_BIND_ATTEMPTS - 1:
                    raise
                continue
            self._server, self._udp, self._port = server, udp, port
            break
        log.info(
            "forward server listening on %s:%d (tls=%s)",
            s.forward_host,
            self._port,
            self._ssl is not None,
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        conns = list(self._connections)
        for conn in conns:
            if not conn.busy:
                conn.task.cancel()
        await asyncio.gather(*(c.task for c in conns), return_exceptions=True)
        for conn in conns:
            # A task cancelled before it first ran never reached its own cleanup.
            if not conn.writer.transport.is_closing():
                conn.writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        self._server = self._udp = None

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A task of our own per connection: asyncio's client_connected_cb task reports a
        # cancelled task as an error, and stop() cancels idle connections.
        if self._stopping:
            writer.transport.abort()
            return
        s = self._settings
        host = _host(writer.get_extra_info("peername"))
        refusal = None
        if len(self._connections) >= s.forward_max_connections:
            refusal = "too_many_connections"
        elif self._per_host[host] >= s.forward_max_connections_per_peer:
            refusal = "too_many_connections_from_peer"
        if refusal is not None:
            # Refused before a byte is read: nothing to hold, nothing to parse.
            self.stats.rejected_frames[refusal] += 1
            log.warning("forward %s: refusing a connection: %s", host, refusal)
            writer.transport.abort()
            return
        conn = _Connection(writer, host)
        self._per_host[host] += 1
        conn.task = asyncio.create_task(self._run(conn, reader, writer))
        self._connections.add(conn)

    async def _run(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = Peer(_address(writer.get_extra_info("peername")), None, self._ssl is not None)
        self.stats.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            await self._serve(conn, peer, reader, writer)
        except _FrameError as exc:
            self.stats.rejected_frames[exc.reason] += 1
            log.warning("forward %s: closing: %s (%s)", peer.address, exc.reason, exc.detail)
        except _Abort:
            pass
        except TimeoutError:
            log.info("forward %s: closing idle connection", peer.address)
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("forward %s: connection lost (%s)", peer.address, type(exc).__name__)
        except Exception as exc:
            log.error(
                "forward %s: closing after internal error %s", peer.address, type(exc).__name__
            )
        finally:
            self._connections.discard(conn)
            self._per_host[conn.host] -= 1
            if self._per_host[conn.host] <= 0:
                del self._per_host[conn.host]
            self._hold(conn, 0)
            self._release()
            await _close(writer)

    async def _serve(
        self,
        conn: _Connection,
        peer: Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            await self._read_frames(conn, peer, reader, writer)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if conn.failure is None or task is None or task.uncancel():
                await self._drain(conn)
                raise
            # Cancelled by a failed delivery (_delivered) while waiting for bytes: the
            # failure is reported below, before the connection closes.
        except BaseException:
            # Deliveries already handed over finish (and are acknowledged) whatever ended
            # the reading: their records may be stored already.
            await self._drain(conn)
            raise
        failure = await self._drain(conn)
        if failure is not None:
            raise failure

    async def _read_frames(
        self,
        conn: _Connection,
        peer: Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        s = self._settings
        unpacker = _unpacker(s.forward_max_frame_bytes, s.forward_max_events_per_message)
        # The unpacker compacts its buffer while it parses, so its own max_buffer_size does
        # not bound a frame: count the bytes fed since the end of the last complete frame.
        fed = boundary = 0
        handshake: _Handshake | None = None
        if s.forward_shared_key is not None:
            handshake = _Handshake(
                s.forward_shared_key.encode(),
                s.forward_hostname.encode(),
                user_auth=self._credentials is not None,
            )
            await self._write(writer, handshake.helo())
        loop = asyncio.get_running_loop()
        frame_started = 0.0  # when the incomplete frame's first byte arrived
        limits = (s.forward_max_frame_bytes, s.forward_max_events_per_message)
        while True:
            while True:
                # Past the budget no further frame is decoded until memory is released:
                # the connection stops reading, and TCP holds its sender back.
                if not await self._room(conn, 1):
                    return
                # A large frame is decoded in a worker thread: decoding 8 MiB of msgpack
                # would hold every other connection for tens of milliseconds.
                reserved = 0
                if fed - boundary >= _OFF_LOOP_BYTES:
                    reserved = _reservation(fed - boundary, s.forward_max_events_per_message)
                    if not await self._room(conn, reserved):
                        return
                self._held += reserved
                self._decoding += bool(reserved)
                try:
                    try:
                        if reserved:
                            frame = await asyncio.to_thread(unpacker.unpack)
                        else:
                            frame = unpacker.unpack()
                    except msgpack.OutOfData:
                        break
                    except Exception as exc:
                        if handshake is not None:
                            self.stats.handshake_failures += 1
                        raise _decode_error(exc) from exc
                    size, boundary = unpacker.tell() - boundary, unpacker.tell()
                    # The deadline is per frame: the bytes after this one start the next
                    # clock (a client streaming frames back to back always has one
                    # incomplete).
                    frame_started = 0.0
                    if handshake is not None:
                        peer = await self._pingpong(handshake, frame, peer, writer)
                        handshake = None
                        continue
                    if reserved:
                        msg = await asyncio.to_thread(_parse_message, frame, *limits)
                    else:
                        msg = _parse_message(frame, *limits)
                    del frame
                finally:
                    if reserved:  # the message, if any, is charged by _dispatch instead
                        self._held -= reserved
                        self._decoding -= 1
                        self._release()
                if msg is not None and not await self._dispatch(conn, msg, size, peer, writer):
                    return
                if self._stopping:
                    return
            buffered = fed - boundary
            self._hold(conn, buffered)
            limit = s.forward_max_frame_bytes if handshake is None else _PING_MAX_BYTES
            room = limit - buffered
            if room <= 0:
                if handshake is not None:
                    self.stats.handshake_failures += 1
                raise _FrameError("frame_too_large", f"over {limit} bytes")
            want = min(room, _READ_SIZE)
            if self._held + want > s.forward_max_buffered_bytes and buffered:
                # Every connection's incomplete frames together may hold this much memory:
                # past it, the connection that wants more for a frame it has not finished
                # is closed (a well-behaved client resends its unacknowledged chunk).
                raise _FrameError("memory_budget", "incomplete frames over the server's budget")
            # Between frames a connection may idle; a frame once begun must be finished
            # within its deadline, however slowly its bytes trickle in (slowloris).
            if buffered:
                frame_started = frame_started or loop.time()
                left = frame_started + s.forward_frame_timeout_s - loop.time()
                if left <= 0:
                    raise _FrameError("frame_timeout", f"frame not complete in time ({buffered} B)")
                timeout = min(left, s.forward_idle_timeout_s)
            else:
                frame_started, timeout = 0.0, s.forward_idle_timeout_s
            try:
                conn.reading = True
                async with asyncio.timeout(timeout):
                    data = await reader.read(want)
            except TimeoutError:
                if buffered:
                    raise _FrameError(
                        "frame_timeout", f"frame not complete in time ({buffered} B)"
                    ) from None
                raise
            finally:
                conn.reading = False
            if not data:
                if buffered:
                    raise _FrameError("truncated_frame", f"closed with {buffered} bytes pending")
                return
            unpacker.feed(data)
            fed += len(data)
            del data  # the unpacker holds its copy: this one would outlive the read uncounted

    def _hold(self, conn: _Connection, buffered: int) -> None:
        self._held += buffered - conn.buffered
        conn.buffered = buffered

    def _release(self) -> None:
        self._released.set()
        self._released = asyncio.Event()

    async def _room(self, conn: _Connection, wanted: int) -> bool:
        """Wait until `wanted` more bytes fit the memory budget: for this connection's own
        oldest delivery while it has one, else for anyone's delivery or threaded decode to
        end (a decode becomes a delivery, which releases its memory in turn). With neither
        under way anywhere nothing would free memory sooner, so it goes on (incomplete
        frames have their own limit). False: stop reading (a delivery failed, or the server
        stops)."""
        budget = self._settings.forward_max_buffered_bytes
        while self._held + wanted > budget:
            if conn.inflight:
                if not await _oldest_delivered(conn):
                    return False  # _serve's drain reports it
            elif self._delivering or self._decoding:
                await self._released.wait()
            else:
                break
            if self._stopping:
                return False
        return True

    async def _pingpong(
        self, hs: _Handshake, frame: object, peer: Peer, writer: asyncio.StreamWriter
    ) -> Peer:
        try:
            ping = hs.check_ping(frame)
            producer = None
            if self._credentials is not None:
                found = await self._credentials(ping.username)
                hs.check_password(ping, found[0] if found is not None else None)
                assert found is not None  # check_password refuses an unknown user
                producer = found[1]
        except _FrameError as exc:
            self.stats.handshake_failures += 1
            await self._write(writer, _pong_failure(exc.reason))
            raise _FrameError("handshake_failed", f"{exc.reason}: {exc.detail}") from None
        await self._write(writer, hs.pong(ping))
        username = ping.username if producer is not None else None
        return Peer(peer.address, username, peer.tls, producer)

    async def _dispatch(
        self,
        conn: _Connection,
        msg: _Message,
        size: int,
        peer: Peer,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Start the message's delivery once the connection has fewer than
        `forward_pipeline_depth` in flight. The decoded message is charged against the
        memory budget from now until its delivery ends (the budget itself was waited for
        before decoding, in _room). False: a delivery failed, read no more."""
        charge = _charge(size, len(msg.entries))
        self._held += charge
        started = False
        try:
            while len(conn.inflight) >= self._settings.forward_pipeline_depth:
                if not await _oldest_delivered(conn):
                    return False  # _serve's drain reports the failure
            before = conn.inflight[-1][0] if conn.inflight else None
            task = asyncio.create_task(self._deliver(conn, msg, peer, writer, before))
            conn.inflight.append((task, charge))
            self._delivering += 1
            task.add_done_callback(lambda done: self._delivered(conn, done))
            started = True
            return True
        finally:
            if not started:  # failed or cancelled: a charge kept would shrink the budget
                self._held -= charge
                self._release()

    def _delivered(self, conn: _Connection, task: asyncio.Task[None]) -> None:
        for i, (held, charge) in enumerate(conn.inflight):
            if held is task:
                del conn.inflight[i]
                self._held -= charge
                self._delivering -= 1
                self._release()
                break
        failure = asyncio.CancelledError() if task.cancelled() else task.exception()
        if failure is not None:
            # Stop reading: later frames would only wait behind a message never acknowledged.
            if conn.failure is None:
                conn.failure = failure
                if conn.reading:
                    conn.task.cancel()
            elif isinstance(failure, _FrameError):
                log.warning("forward %s: %s (%s)", conn.host, failure.reason, failure.detail)
        elif self._stopping and not conn.inflight and conn.reading:
            conn.task.cancel()

    async def _drain(self, conn: _Connection) -> BaseException | None:
        """Wait for every delivery in flight; the first failure, for _run to report."""
        while conn.inflight:
            await _oldest_delivered(conn)
        return conn.failure

    async def _deliver(
        self,
        conn: _Connection,
        msg: _Message,
        peer: Peer,
        writer: asyncio.StreamWriter,
        before: asyncio.Task[None] | None,
    ) -> None:
        if msg.entries:
            try:
                await self._handler(msg.tag, msg.entries, peer)
            except ForwardRejected as exc:
                raise _FrameError("handler_rejected", str(exc)) from None
            except Exception as exc:
                self.stats.handler_failures += 1
                log.warning(
                    "forward %s: handler failed (%s), %d entries not acked",
                    peer.address,
                    type(exc).__name__,
                    len(msg.entries),
                )
                raise _Abort from None
            self.stats.messages += 1
            self.stats.entries += len(msg.entries)
        if before is not None:
            await asyncio.wait([before])
            if before.cancelled() or before.exception() is not None:
                raise _Abort  # acks go out in order: none after a message left unacknowledged
        if msg.chunk is not None:
            await self._write(writer, msgpack.packb({"ack": msg.chunk}))
            self.stats.acks += 1

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self._settings.forward_idle_timeout_s):
            await writer.drain()


class _Abort(Exception):
    """Close quietly: the reason was logged already."""


async def _oldest_delivered(conn: _Connection) -> bool:
    """Wait for the connection's oldest delivery to end. False: it failed or was cancelled.

    `asyncio.wait`, not `await`: cancelling the waiter must not cancel the delivery."""
    oldest = conn.inflight[0][0]
    await asyncio.wait([oldest])
    return not oldest.cancelled() and oldest.exception() is None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        writer.transport.abort()
