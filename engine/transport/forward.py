"""At-least-once delivery of sealed records to the audit service (Fluentd forward protocol).

fluent-logger's FluentSender fires and forgets: Message mode, no acknowledgement, no TLS, and
a buffer it drops past 1 MiB. An audit trail needs the opposite, so ForwardDelivery keeps
what FluentSender does well (its socket set-up and timeouts, TCP_NODELAY, unix sockets, its
lock and last_error) and replaces the sending: a batch goes out as ONE PackedForward (or
Forward) message with the option `{"chunk": id, "size": n}`, and `send` returns only when
`{"ack": id}` came back, which the service sends after the records are stored. Anything else
(timeout, a closed connection, an unexpected reply) raises DeliveryError with the connection
closed; the caller keeps the records and resends them later on a new connection. Resending
is harmless: the service recognises records it already stored.

On top of the socket come TLS (an ssl.SSLContext; verification as the context says) and the
shared-key handshake of in_forward (HELO → PING → PONG, optionally with a username and
password), played exactly as audit.ingest.forward checks it; the server's PONG is verified
too, so a server without the shared key cannot pose as the service. Each entry carries an
EventTime (seconds + nanoseconds) taken from the record's own @timestamp.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import logging
import os
import secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from socket import SHUT_RDWR, gethostname
from socket import socket as _socket
from typing import Any

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.constant_time import bytes_eq
from fluent.sender import EventTime, FluentSender

from engine.errors import FFEngineError, UsageError
from engine.settings import EngineSettings

log = logging.getLogger("engine.transport.forward")

_NS = 1_000_000_000
_MAX_NS = (2**32 - 1) * _NS  # EventTime seconds are uint32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_REPLY = 1 << 20


class DeliveryError(FFEngineError):
    """A batch was not acknowledged (nothing is known about what the service stored).

    `retryable`: the connection broke in a way a fresh connection may not (a kept-alive
    connection the service closed meanwhile); timeouts, refusals and protocol errors are
    not retried at once.
    """

    http_status = 503

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class HandshakeError(DeliveryError):
    """The shared-key handshake failed; `reason` is the service's (or our) reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def sha512_hex(*parts: bytes) -> str:
    h = hashes.Hash(hashes.SHA512())
    for part in parts:
        h.update(part)
    return h.finalize().hex()


def event_time_ns(timestamp: object) -> int:
    """Nanoseconds since the epoch of a record's @timestamp (now when it has none)."""
    if isinstance(timestamp, str):
        try:
            when = datetime.fromisoformat(timestamp)
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            delta = when - _EPOCH
            ns = (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000
            return min(max(ns, 0), _MAX_NS)
    return time.time_ns()


def client_tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context: the service's certificate must chain to `ca_file` (or to
    the system's CAs) and match the host name."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the forward TLS CA file {ca_file}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def parse_address(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"forward address must be HOST:PORT, not {value!r}")
    return host, int(port)


def _chunk_id() -> str:
    # out_forward's chunk ids: base64 of 16 random bytes.
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _text(value: object) -> bytes | None:
    # in_forward hashes the bytes as sent, whether the field came as str or bin.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


class ForwardDelivery(FluentSender):  # type: ignore[misc]  # fluent-logger is untyped
    """Sends batches of sealed records and waits for their acknowledgement. Thread-safe.

    `send` raises DeliveryError (HandshakeError for a refused handshake); the connection is
    then closed and the next call opens a new one. The inherited `emit*` methods still work
    (Message mode, no ack, over the same TLS/handshake connection) but are not used here.
    """

    socket: Any  # FluentSender's: None or the connected socket (here maybe an SSLSocket)

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tag: str = "ffaudit",
        tls: ssl.SSLContext | None = None,
        tls_server_hostname: str | None = None,
        shared_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        client_hostname: str | None = None,
        timeout_s: float = 10.0,
        packed: bool = True,
        compress: bool = False,
    ) -> None:
        if not tag:
            raise UsageError("forward tag must not be empty")
        if timeout_s <= 0:
            raise UsageError("forward timeout_s must be positive")
        if (username is not None or password is not None) and shared_key is None:
            raise UsageError("forward username/password need a shared key (handshake)")
        if password is not None and username is None:
            raise UsageError("forward password given without a username")
        super().__init__(tag, host=host, port=port, timeout=timeout_s, nanosecond_precision=True)
        self.timeout_s = timeout_s
        self._tls = tls
        self._server_hostname = tls_server_hostname or host
        self._shared_key = shared_key.encode() if shared_key is not None else None
        self._username = (username or "").encode()
        self._password = (password or "").encode()
        self._client_hostname = (client_hostname or gethostname()).encode()
        self._packed = packed
        self._compress = compress
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_REPLY)
        self._keepalive = True
        self.server_hostname: str | None = None  # from the PONG, after a handshake

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> ForwardDelivery | None:
        """The delivery the FFENGINE_* settings describe; None when audit_forward is unset."""
        if settings.audit_forward is None:
            if settings.forward_tls or settings.forward_shared_key is not None:
                raise UsageError("forward TLS/shared key set but audit_forward is not")
            return None
        host, port = parse_address(settings.audit_forward)
        if settings.forward_tls_ca is not None and not settings.forward_tls:
            raise UsageError("forward_tls_ca is set but forward_tls is off")
        tls = client_tls_context(settings.forward_tls_ca) if settings.forward_tls else None
        return cls(
            host,
            port,
            tls=tls,
            shared_key=settings.forward_shared_key,
            username=settings.forward_username,
            password=settings.forward_password,
        )

    # -- public API ---------------------------------------------------------------------

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Deliver `records` as one acknowledged message; returns once they are stored."""
        if not records:
            return
        chunk = _chunk_id()
        frame = self._frame(records, chunk)
        with self.lock:
            reused = self.socket is not None
            try:
                self._attempt(frame, chunk)
            except DeliveryError as exc:
                if not (reused and exc.retryable):
                    raise
                # The service may close an idle kept-alive connection at any time; that says
                # nothing about the service, so try once more on a fresh connection.
                log.debug("forward: kept-alive connection failed (%s); reconnecting", exc)
                self._attempt(frame, chunk)

    def connect(self) -> None:
        """Connect now (TCP, TLS, handshake) unless connected: a health probe."""
        with self.lock:
            self._guard(self._reconnect)

    def close(self) -> None:
        """Close the connection; a later send opens a new one."""
        with self.lock:
            self._close()

    def abort(self) -> None:
        """Make a send in progress on another thread fail now (it holds the lock)."""
        sock = self.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also for an SSLSocket, whose own would tear
                # down its TLS state under the thread that is using it.
                _socket.shutdown(sock, SHUT_RDWR)

    # -- FluentSender hooks -------------------------------------------------------------

    def _reconnect(self) -> None:
        if self.socket is None:
            super()._reconnect()
            self._secure()

    def _secure(self) -> None:
        """TLS and the handshake on the connection FluentSender just opened."""
        try:
            if self._tls is not None:
                self.socket = self._tls.wrap_socket(
                    self.socket, server_hostname=self._server_hostname
                )
            self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_REPLY)
            self._keepalive = True
            if self._shared_key is not None:
                self._handshake(self._shared_key)
        except BaseException:
            self._close()
            raise

    def _send_data(self, bytes_: bytes) -> None:
        # FluentSender's version reads (and throws away) whatever the server sent before
        # and after sending: that would swallow acks and HELOs. Just send.
        self._reconnect()
        self.socket.settimeout(self.timeout_s)
        self.socket.sendall(bytes_)

    # -- internals (self.lock held) -------------------------------------------------------

    def _attempt(self, frame: bytes, chunk: str) -> None:
        def exchange() -> None:
            self._send_data(frame)
            reply = self._receive(time.monotonic() + self.timeout_s)
            if not isinstance(reply, dict) or reply.get("ack") != chunk:
                if isinstance(reply, list) and reply and reply[0] == "HELO":
                    raise HandshakeError(
                        "the audit service requires the shared-key handshake", "no shared key"
                    )
                raise DeliveryError(f"expected the ack of the chunk, got a {type(reply).__name__}")
            if not self._keepalive:
                self._close()

        self._guard(exchange)

    def _guard(self, action: Callable[[], None]) -> None:
        """Run `action`; on any failure close the connection and raise DeliveryError."""
        try:
            action()
        except DeliveryError as exc:
            self._fail(exc)
            raise
        except TimeoutError as exc:
            err = DeliveryError(f"no answer from the audit service within {self.timeout_s}s")
            self._fail(err)
            raise err from exc
        except ssl.SSLCertVerificationError as exc:
            err = DeliveryError(f"TLS: the audit service's certificate is refused: {exc}")
            self._fail(err)
            raise err from exc
        except (ConnectionError, ssl.SSLEOFError) as exc:
            err = DeliveryError(f"connection to the audit service lost: {exc}", retryable=True)
            self._fail(err)
            raise err from exc
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            err = DeliveryError(f"cannot deliver to the audit service: {exc}")
            self._fail(err)
            raise err from exc

    def _fail(self, exc: DeliveryError) -> None:
        self.last_error = exc
        self._close()

    def _frame(self, records: Sequence[Mapping[str, Any]], chunk: str) -> bytes:
        option: dict[str, Any] = {"chunk": chunk, "size": len(records)}
        times = [EventTime.from_unix_nano(event_time_ns(r.get("@timestamp"))) for r in records]
        if not self._packed:
            entries = [[t, r] for t, r in zip(times, records, strict=True)]
            return msgpack.packb([self.tag, entries, option])
        packer = msgpack.Packer()
        payload = b"".join(packer.pack([t, r]) for t, r in zip(times, records, strict=True))
        if self._compress:
            payload = gzip.compress(payload, compresslevel=6)
            option["compressed"] = "gzip"
        else:
            option["compressed"] = "text"
        return msgpack.packb([self.tag, payload, option])

    def _receive(self, deadline: float) -> Any:
        """The next msgpack object from the service."""
        while True:
            try:
                return self._unpacker.unpack()
            except msgpack.OutOfData:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            self.socket.settimeout(remaining)
            data = self.socket.recv(65536)
            if not data:
                raise DeliveryError("the audit service closed the connection", retryable=True)
            self._unpacker.feed(data)

    def _handshake(self, shared_key: bytes) -> None:
        deadline = time.monotonic() + self.timeout_s
        helo = self._receive(deadline)
        if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO") or not isinstance(
            helo[1], dict
        ):
            raise HandshakeError("expected HELO from the audit service", "no HELO")
        nonce, auth = _text(helo[1].get("nonce")), _text(helo[1].get("auth", ""))
        if nonce is None or auth is None:
            raise HandshakeError("HELO nonce/auth of the wrong type", "bad HELO")
        self._keepalive = helo[1].get("keepalive", True) is not False
        salt = secrets.token_hex(16).encode()  # as out_forward: 32 hex characters
        digest = sha512_hex(salt, self._client_hostname, nonce, shared_key)
        if auth:
            user = self._username
            password_digest = sha512_hex(auth, self._username, self._password)
        else:
            user, password_digest = b"", ""
        ping = ["PING", self._client_hostname.decode(), salt.decode(), digest]
        ping += [user.decode(), password_digest]
        self.socket.settimeout(max(0.001, deadline - time.monotonic()))
        self.socket.sendall(msgpack.packb(ping))
        pong = self._receive(deadline)
        if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG"):
            raise HandshakeError("expected PONG from the audit service", "no PONG")
        _, ok, reason, server_hostname, server_digest = pong
        if ok is not True:
            why = reason if isinstance(reason, str) else "refused"
            raise HandshakeError(f"the audit service refused the handshake: {why}", why)
        hostname, proof = _text(server_hostname), _text(server_digest)
        if hostname is None or proof is None:
            raise HandshakeError("PONG fields of the wrong type", "bad PONG")
        expected = sha512_hex(salt, hostname, nonce, shared_key).encode()
        if not bytes_eq(expected, proof):
            raise HandshakeError("the server does not know the shared key", "bad PONG digest")
        self.server_hostname = hostname.decode("utf-8", "replace")
