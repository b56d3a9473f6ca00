"""C2SP signed notes, checkpoints, Ed25519 cosignatures, tlog proofs and tlog policies.

Implements c2sp.org/signed-note (signature types 0x01 Ed25519 and 0x04 cosignature/v1
only), tlog-checkpoint, tlog-cosignature (the Ed25519 form), tlog-proof@v1 and
tlog-policy. Pure functions over bytes and text; every failure is a NoteError whose
`kind` names the rule broken. The Merkle proofs themselves are audit.integrity.merkle's.

Stricter than golang.org/x/mod/sumdb/note, so that whatever parses re-encodes to the same
bytes (notes and proofs are stored verbatim; two encodings of one signature would be two
"truths"): base64 must be canonical, vkey key ids lowercase hex. And every signature by a
known key is verified, not only the first one per key (signed-note: "MUST verify").

Policy choices where tlog-policy leaves room: no key may be both a log and a witness (a
log cosigning itself is no witness); a name is a group member at most once in the whole
file (the spec's "at most once", read file-wide, so no witness counts twice); the file
is UTF-8 and ends in a newline (a policy cut short must not parse as a weaker one).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.integrity.digest import sha256
from audit.integrity.errors import FFAuditError

SIG_ED25519: Final = 0x01
SIG_COSIGNATURE_V1: Final = 0x04
# signed-note asks verifiers to cap the signature count; 100 is the Go reference's cap.
MAX_SIGNATURES: Final = 100
# tlog-cosignature caps timestamps at 2^63-1; sizes and indexes share the bound because
# the reference implementations hold them in int64.
MAX_UINT63: Final = 2**63 - 1
# An inclusion proof in a tree of at most 2^63 leaves has at most 63 hashes.
MAX_PROOF_HASHES: Final = 63
PROOF_HEADER: Final = "c2sp.org/tlog-proof@v1"
QUORUM_NONE: Final = "none"

_ED25519_SIGNATURE = 64
_TIMESTAMP = 8
# Go's unicode.IsSpace, spelled out so that a Python Unicode upgrade cannot change which
# key names are valid.
_WHITE_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_NOTE_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_POLICY_FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_THRESHOLD = re.compile(r"[1-9][0-9]{0,5}")
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}")
_POLICY_FIELD_SEP = re.compile(r"[ \t]+")
_POLICY_TOKEN_BAD = re.compile(r"[\x00-\x20\x7f]")


class NoteFailure(StrEnum):
    MALFORMED_NOTE = "malformed_note"
    MALFORMED_KEY = "malformed_key"
    MALFORMED_CHECKPOINT = "malformed_checkpoint"
    UNKNOWN_LOG = "unknown_log"  # no signature by a log key trusted for that origin
    BAD_SIGNATURE = "bad_signature"  # a known log key's signature that does not verify
    BAD_COSIGNATURE = "bad_cosignature"
    QUORUM_NOT_MET = "quorum_not_met"
    MALFORMED_PROOF = "malformed_proof"
    MALFORMED_POLICY = "malformed_policy"


class NoteError(FFAuditError):
    """A note, key, checkpoint, proof or policy failed a C2SP rule; `kind` says which.

    `name` is the key name involved (for QUORUM_NOT_MET: the quorum's policy name),
    `line` the 1-based line of a policy, `cosigners` the witnesses that did verify."""

    exit_code = 1
    http_status = 422

    def __init__(
        self,
        kind: NoteFailure,
        detail: str,
        *,
        name: str | None = None,
        line: int | None = None,
        cosigners: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.name = name
        self.line = line
        self.cosigners = cosigners


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | bytes) -> bytes | None:
    """The bytes of canonical standard base64, or None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    canonical = _b64(raw)
    return raw if canonical == (text if isinstance(text, str) else text.decode("ascii")) else None


def _encodable(text: str) -> bool:
    # A str can hold lone surrogates, which no UTF-8 note can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_key_name(name: str) -> bool:
    """signed-note's key name rule: non-empty, no Unicode space, no '+'; and nothing a
    note could not carry (control characters, lone surrogates)."""
    return (
        bool(name)
        and "+" not in name
        and _WHITE_SPACE.isdisjoint(name)
        and _NOTE_CONTROL.search(name) is None
        and _encodable(name)
    )


def _check_note_text(text: str) -> None:
    _note_str(text)
    if not text.endswith("\n"):
        raise NoteError(NoteFailure.MALFORMED_NOTE, "note text does not end with a newline")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    return sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key)[:4]


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes  # after the key id: 64 bytes (Ed25519) or timestamp + 64 (cosignature)

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise NoteError(NoteFailure.MALFORMED_NOTE, f"invalid key name {self.name!r}")
        if len(self.key_id) != 4 or not self.signature:
            raise NoteError(
                NoteFailure.MALFORMED_NOTE,
                f"signature by {self.name} needs a 4-byte key id and signature bytes",
                name=self.name,
            )

    def line(self) -> str:
        return f"\u2014 {self.name} {_b64(self.key_id + self.signature)}\n"


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith("\u2014 "):
        raise NoteError(NoteFailure.MALFORMED_NOTE, f"signature line {number} has no em dash")
    name, sep, encoded = line[2:].partition(" ")
    raw = _unb64(encoded) if sep else None
    if not valid_key_name(name) or raw is None or len(raw) < 5:
        raise NoteError(
            NoteFailure.MALFORMED_NOTE,
            f"signature line {number} is not '\u2014 <key name> <base64>'",
            name=name or None,
        )
    return NoteSignature(name, raw[:4], raw[4:])


def parse_signature_lines(data: bytes | str) -> tuple[NoteSignature, ...]:
    """Signature lines alone, as a tlog-witness add-checkpoint response carries them."""
    text = _note_str(data)
    if not text.endswith("\n"):
        raise NoteError(NoteFailure.MALFORMED_NOTE, "signature lines do not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(
            NoteFailure.MALFORMED_NOTE, f"{len(lines)} signatures, more than {MAX_SIGNATURES}"
        )
    return tuple(_parse_signature_line(line, i) for i, line in enumerate(lines, 1))


def _note_str(data: bytes | str) -> str:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError(
                NoteFailure.MALFORMED_NOTE, f"not valid UTF-8 at byte {exc.start}"
            ) from None
    else:
        text = data
    if not _encodable(text):
        raise NoteError(NoteFailure.MALFORMED_NOTE, "note holds a lone surrogate")
    if bad := _NOTE_CONTROL.search(text):
        raise NoteError(
            NoteFailure.MALFORMED_NOTE,
            f"control character U+{ord(bad.group()):04X} at offset {bad.start()}",
        )
    return text


@dataclass(frozen=True, slots=True)
class Note:
    text: str  # the signed text, final newline included
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "signatures", tuple(self.signatures))
        _check_note_text(self.text)
        if not 1 <= len(self.signatures) <= MAX_SIGNATURES:
            raise NoteError(
                NoteFailure.MALFORMED_NOTE,
                f"a note carries 1 to {MAX_SIGNATURES} signatures, not {len(self.signatures)}",
            )

    def encode(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode("utf-8")

    def with_signatures(self, *signatures: NoteSignature) -> Note:
        """This note with `signatures` appended; an existing signature by the same key
        (name and key id) is dropped, as the Go reference's Sign does."""
        new = {(s.name, s.key_id) for s in signatures}
        kept = tuple(s for s in self.signatures if (s.name, s.key_id) not in new)
        return Note(self.text, kept + signatures)


def parse_note(data: bytes | str) -> Note:
    text = _note_str(data)
    # The last blank line separates text and signatures: the text may hold blank lines.
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError(NoteFailure.MALFORMED_NOTE, "no blank line before the signatures")
    signatures = text[split + 2 :]
    if not signatures:
        raise NoteError(NoteFailure.MALFORMED_NOTE, "note has no signature lines")
    return Note(text[: split + 1], parse_signature_lines(signatures))


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    if not 0 <= timestamp <= MAX_UINT63:
        raise ValueError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")
    return b"cosignature/v1\ntime %d\n" % timestamp + checkpoint_text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    name: str
    key_id: bytes
    sig_type: int  # SIG_ED25519 or SIG_COSIGNATURE_V1
    public_key: bytes  # raw 32 bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        def bad(why: str) -> NoteError:
            return NoteError(NoteFailure.MALFORMED_KEY, f"key {self.name!r}: {why}", name=self.name)

        if not valid_key_name(self.name):
            raise bad("invalid key name")
        if self.sig_type not in (SIG_ED25519, SIG_COSIGNATURE_V1):
            raise bad(f"unsupported signature type {self.sig_type:#04x}")
        if len(self.public_key) != 32:
            raise bad(f"an Ed25519 public key has 32 bytes, not {len(self.public_key)}")
        if self.key_id != key_id(self.name, self.sig_type, self.public_key):
            raise bad(f"key id {self.key_id.hex()} is not the one of this name, type and key")
        try:
            loaded = Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError:
            raise bad("not an Ed25519 public key") from None
        object.__setattr__(self, "_key", loaded)

    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([self.sig_type]) + self.public_key)}"

    def matches(self, sig: NoteSignature) -> bool:
        return sig.name == self.name and sig.key_id == self.key_id

    def verify(self, text: str, sig: NoteSignature) -> int | None:
        """0 (Ed25519) or the cosignature's timestamp when `sig` is this key's valid
        signature over `text`; None otherwise. Test the result with `is None`: a valid
        Ed25519 signature returns 0, which is falsy."""
        if not self.matches(sig) or not _encodable(text):
            return None
        if self.sig_type == SIG_ED25519:
            signature, message, timestamp = sig.signature, text.encode("utf-8"), 0
        else:
            signature = sig.signature[_TIMESTAMP:]
            timestamp = int.from_bytes(sig.signature[:_TIMESTAMP], "big")
            if timestamp > MAX_UINT63:
                return None
            message = cosignature_message(text, timestamp)
        if len(signature) != _ED25519_SIGNATURE:
            return None
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return None
        return timestamp


def parse_vkey(vkey: str) -> NoteVerifier:
    # The key name holds no '+', so the first two split the fields; base64 may hold more.
    name, sep1, rest = vkey.partition("+")
    hex_id, sep2, encoded = rest.partition("+")
    raw = _unb64(encoded)
    if not (sep1 and sep2) or _HEX_KEY_ID.fullmatch(hex_id) is None or raw is None or not raw:
        raise NoteError(
            NoteFailure.MALFORMED_KEY,
            f"{vkey!r} is not '<name>+<8 lowercase hex>+<base64>'",
            name=name or None,
        )
    return NoteVerifier(name, bytes.fromhex(hex_id), raw[0], raw[1:])


def vkey_for(name: str, public_key: Ed25519PublicKey, sig_type: int = SIG_ED25519) -> NoteVerifier:
    raw = public_key.public_bytes_raw()
    if not valid_key_name(name):
        raise NoteError(NoteFailure.MALFORMED_KEY, f"invalid key name {name!r}", name=name)
    return NoteVerifier(name, key_id(name, sig_type, raw), sig_type, raw)


@dataclass(frozen=True)
class NoteSigner:
    """A log's Ed25519 note signer."""

    name: str
    key: Ed25519PrivateKey
    _verifier: NoteVerifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_verifier", vkey_for(self.name, self.key.public_key()))

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    def sign(self, text: str) -> NoteSignature:
        _check_note_text(text)
        return NoteSignature(self.name, self._verifier.key_id, self.key.sign(text.encode("utf-8")))


@dataclass(frozen=True)
class CosignatureSigner:
    """A witness: signs cosignature/v1 over checkpoints it has checked."""

    name: str
    key: Ed25519PrivateKey
    _verifier: NoteVerifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        verifier = vkey_for(self.name, self.key.public_key(), SIG_COSIGNATURE_V1)
        object.__setattr__(self, "_verifier", verifier)

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    def cosign(self, checkpoint_text: str, timestamp: int) -> NoteSignature:
        # The v1 message does not name the statement it makes: signing anything but a
        # checkpoint body would let that signature be read as a checkpoint cosignature.
        parse_checkpoint(checkpoint_text)
        signature = self.key.sign(cosignature_message(checkpoint_text, timestamp))
        return NoteSignature(
            self.name, self._verifier.key_id, timestamp.to_bytes(_TIMESTAMP, "big") + signature
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes  # 32 bytes
    extensions: tuple[str, ...] = ()  # extra body lines, without "\n"

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))

        def bad(why: str) -> NoteError:
            return NoteError(NoteFailure.MALFORMED_CHECKPOINT, why, name=self.origin or None)

        for label, line in (("origin", self.origin), *(("extension", e) for e in self.extensions)):
            if not line or "\n" in line or _NOTE_CONTROL.search(line) or not _encodable(line):
                raise bad(f"{label} line {line!r} is empty or holds a control character")
        if not 0 <= self.size <= MAX_UINT63:
            raise bad(f"tree size {self.size} is outside 0..2^63-1")
        if len(self.root_hash) != 32:
            raise bad(f"root hash has {len(self.root_hash)} bytes, not 32")

    def text(self) -> str:
        lines = (self.origin, str(self.size), _b64(self.root_hash), *self.extensions)
        return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    lines = text[:-1].split("\n") if text.endswith("\n") else []
    if len(lines) < 3:
        raise NoteError(
            NoteFailure.MALFORMED_CHECKPOINT, "a checkpoint is at least three lines, each ended"
        )
    origin, size, root, *extensions = lines
    if _DECIMAL.fullmatch(size) is None:
        raise NoteError(
            NoteFailure.MALFORMED_CHECKPOINT,
            f"tree size {size!r} is not a decimal without leading zeros",
            name=origin or None,
        )
    root_hash = _unb64(root)
    if root_hash is None or len(root_hash) != 32:
        raise NoteError(
            NoteFailure.MALFORMED_CHECKPOINT,
            f"root hash {root!r} is not the base64 of 32 bytes",
            name=origin or None,
        )
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> Note:
    if signer.name != checkpoint.origin:
        raise ValueError(f"log key {signer.name!r} cannot sign for origin {checkpoint.origin!r}")
    text = checkpoint.text()
    return Note(text, (signer.sign(text),))


def open_checkpoint(data: bytes, logs: Sequence[NoteVerifier]) -> tuple[Checkpoint, Note]:
    """The checkpoint in `data` and its note, once a key in `logs` named as its origin has
    signed it. Every signature by any key in `logs` must verify (signed-note: a failing
    signature by a known key rejects the note)."""
    for log in logs:
        if log.sig_type != SIG_ED25519:
            raise NoteError(
                NoteFailure.MALFORMED_KEY,
                f"log key {log.vkey()} is not an Ed25519 note key",
                name=log.name,
            )
    note = parse_note(data)
    checkpoint = parse_checkpoint(note.text)
    signed = False
    for sig in note.signatures:
        for log in logs:
            if not log.matches(sig):
                continue
            if log.verify(note.text, sig) is None:
                raise NoteError(
                    NoteFailure.BAD_SIGNATURE,
                    f"signature by log key {log.name}+{log.key_id.hex()} does not verify",
                    name=log.name,
                )
            signed = signed or log.name == checkpoint.origin
    if not signed:
        raise NoteError(
            NoteFailure.UNKNOWN_LOG,
            f"no signature by a trusted log key for origin {checkpoint.origin!r}",
            name=checkpoint.origin,
        )
    return checkpoint, note


@dataclass(frozen=True, slots=True)
class PolicyGroup:
    threshold: int  # k of the members must be satisfied
    members: tuple[str, ...]  # witness or earlier group names


def _token_ok(token: str) -> bool:
    return bool(token) and _POLICY_TOKEN_BAD.search(token) is None


class _PolicyRules:
    """tlog-policy's rules, one call per policy line, shared by parse_policy and Policy so
    that a Policy built in code obeys what a parsed one does."""

    def __init__(self) -> None:
        self.names: set[str] = set()  # witnesses and groups: one namespace
        self.members: set[str] = set()
        self.keys: set[bytes] = set()
        self.key_ids: set[tuple[str, bytes]] = set()
        self.quorum: str | None = None

    def _key(self, role: str, key: NoteVerifier, sig_type: int, url: str | None) -> None:
        if key.sig_type != sig_type:
            raise ValueError(f"{role} key {key.name} must have signature type {sig_type:#04x}")
        # Across logs and witnesses too: a log that cosigns itself is no witness.
        if key.public_key in self.keys:
            raise ValueError(f"duplicate key: {key.vkey()} is listed twice")
        if (key.name, key.key_id) in self.key_ids:
            raise ValueError(f"two keys share name and key id {key.name}+{key.key_id.hex()}")
        if url is not None and not _token_ok(url):
            raise ValueError(f"invalid URL {url!r}")
        self.keys.add(key.public_key)
        self.key_ids.add((key.name, key.key_id))

    def _new_name(self, name: str) -> None:
        if not _token_ok(name) or name == QUORUM_NONE:
            raise ValueError(f"invalid name {name!r}")
        if name in self.names:
            raise ValueError(f"name {name!r} is already defined")

    def log(self, key: NoteVerifier, url: str | None) -> None:
        self._key("log", key, SIG_ED25519, url)

    def witness(self, name: str, key: NoteVerifier, url: str | None) -> None:
        self._new_name(name)
        self._key("witness", key, SIG_COSIGNATURE_V1, url)
        self.names.add(name)

    def group(self, name: str, group: PolicyGroup) -> None:
        self._new_name(name)
        if not 1 <= group.threshold <= len(group.members):
            raise ValueError(f"group {name!r}: threshold {group.threshold} is not 1..n")
        for member in group.members:
            if member not in self.names:
                raise ValueError(f"group {name!r}: {member!r} is not defined above")
            # File-wide, not per group: no witness may count twice towards the quorum.
            if member in self.members:
                raise ValueError(f"group {name!r}: {member!r} is already a group member")
            self.members.add(member)
        self.names.add(name)

    def set_quorum(self, name: str) -> None:
        if self.quorum is not None:
            raise ValueError("a second quorum line")
        if name != QUORUM_NONE and name not in self.names:
            raise ValueError(f"quorum {name!r} is not defined above")
        self.quorum = name


@dataclass(frozen=True, slots=True)
class Policy:
    logs: tuple[NoteVerifier, ...]
    witnesses: Mapping[str, NoteVerifier]  # policy name -> cosignature verifier
    quorum: str  # QUORUM_NONE, a witness or a group
    groups: Mapping[str, PolicyGroup] = field(default_factory=dict)  # in definition order
    log_urls: Mapping[str, str] = field(default_factory=dict)  # log vkey -> URL
    witness_urls: Mapping[str, str] = field(default_factory=dict)  # witness name -> URL

    def __post_init__(self) -> None:
        object.__setattr__(self, "logs", tuple(self.logs))
        for attr in ("witnesses", "groups", "log_urls", "witness_urls"):
            object.__setattr__(self, attr, MappingProxyType(dict(getattr(self, attr))))
        rules = _PolicyRules()
        try:
            unknown = set(self.log_urls) - {log.vkey() for log in self.logs}
            if unknown := unknown | (set(self.witness_urls) - set(self.witnesses)):
                raise ValueError(f"URLs for unknown logs or witnesses: {sorted(unknown)}")
            for log in self.logs:
                rules.log(log, self.log_urls.get(log.vkey()))
            for name, key in self.witnesses.items():
                rules.witness(name, key, self.witness_urls.get(name))
            for name, group in self.groups.items():
                rules.group(name, group)
            rules.set_quorum(self.quorum)
        except ValueError as exc:
            raise NoteError(NoteFailure.MALFORMED_POLICY, str(exc)) from None

    def satisfied(self, cosigners: Set[str]) -> dict[str, bool]:
        """Which witnesses and groups `cosigners` (witness names) satisfy."""
        met = {name: name in cosigners for name in self.witnesses}
        # Groups only name earlier ones, so one pass in definition order settles them all.
        for name, group in self.groups.items():
            met[name] = sum(met[m] for m in group.members) >= group.threshold
        return met

    def quorum_met(self, cosigners: Set[str]) -> bool:
        return self.quorum == QUORUM_NONE or self.satisfied(cosigners)[self.quorum]


def parse_policy(text: str | bytes) -> Policy:
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            at = raw.count(b"\n", 0, exc.start) + 1
            raise NoteError(
                NoteFailure.MALFORMED_POLICY, f"line {at}: not UTF-8", line=at
            ) from None
    lines = text.split("\n")
    if lines[-1] != "":
        raise NoteError(
            NoteFailure.MALFORMED_POLICY,
            f"line {len(lines)}: the policy does not end with a newline",
            line=len(lines),
        )
    rules = _PolicyRules()
    logs: list[NoteVerifier] = []
    witnesses: dict[str, NoteVerifier] = {}
    groups: dict[str, PolicyGroup] = {}
    log_urls: dict[str, str] = {}
    witness_urls: dict[str, str] = {}
    for number, line in enumerate(lines[:-1], 1):
        try:
            if bad := _POLICY_FORBIDDEN.search(line):
                raise ValueError(f"control character {bad.group()!r}")
            content = line.strip(" \t")
            if not content or content.startswith("#"):
                continue
            keyword, *fields = _POLICY_FIELD_SEP.split(content)
            if keyword == "log" and len(fields) in (1, 2):
                key = parse_vkey(fields[0])
                url = fields[1] if len(fields) == 2 else None
                rules.log(key, url)
                logs.append(key)
                if url is not None:
                    log_urls[key.vkey()] = url
            elif keyword == "witness" and len(fields) in (2, 3):
                name, key = fields[0], parse_vkey(fields[1])
                url = fields[2] if len(fields) == 3 else None
                rules.witness(name, key, url)
                witnesses[name] = key
                if url is not None:
                    witness_urls[name] = url
            elif keyword == "group" and len(fields) >= 3:
                name, k, *members = fields
                if k not in ("all", "any") and _THRESHOLD.fullmatch(k) is None:
                    raise ValueError(f"group {name!r}: threshold {k!r} is not all, any or k")
                threshold = len(members) if k == "all" else 1 if k == "any" else int(k)
                group = PolicyGroup(threshold, tuple(members))
                rules.group(name, group)
                groups[name] = group
            elif keyword == "quorum" and len(fields) == 1:
                rules.set_quorum(fields[0])
            else:
                raise ValueError(f"not a log, witness, group or quorum line: {content!r}")
        except (ValueError, NoteError) as exc:
            detail = exc.detail if isinstance(exc, NoteError) else str(exc)
            raise NoteError(
                NoteFailure.MALFORMED_POLICY, f"line {number}: {detail}", line=number
            ) from None
    if rules.quorum is None:
        end = len(lines)
        raise NoteError(NoteFailure.MALFORMED_POLICY, f"line {end}: no quorum line", line=end)
    return Policy(tuple(logs), witnesses, rules.quorum, groups, log_urls, witness_urls)


def policy_text(policy: Policy) -> str:
    """The tlog-policy file of `policy`; parse_policy reads it back equal."""
    out = [f"log {log.vkey()}" + _url(policy.log_urls.get(log.vkey())) for log in policy.logs]
    for name, key in policy.witnesses.items():
        out.append(f"witness {name} {key.vkey()}" + _url(policy.witness_urls.get(name)))
    for name, group in policy.groups.items():
        n = len(group.members)
        k = "all" if group.threshold == n else "any" if group.threshold == 1 else group.threshold
        out.append(f"group {name} {k} {' '.join(group.members)}")
    out.append(f"quorum {policy.quorum}")
    return "\n".join(out) + "\n"


def _url(url: str | None) -> str:
    return "" if url is None else f" {url}"


def threshold_policy(
    logs: Iterable[NoteVerifier],
    witnesses: Mapping[str, NoteVerifier],
    k: int,
    *,
    group: str = "witnesses",
) -> Policy:
    """A policy requiring k of `witnesses` (all of them in one group); k = 0: none."""
    if k == 0:
        return Policy(tuple(logs), witnesses, QUORUM_NONE)
    return Policy(tuple(logs), witnesses, group, {group: PolicyGroup(k, tuple(witnesses))})


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    checkpoint: Checkpoint
    note: Note
    cosigners: frozenset[str]  # policy names of the witnesses whose cosignature verified
    timestamps: Mapping[str, int]  # policy name -> cosignature time (the latest, if several)


def verify_checkpoint(data: bytes, policy: Policy) -> VerifiedCheckpoint:
    """The checkpoint in `data`, signed by one of the policy's logs (open_checkpoint),
    every cosignature by a policy witness valid, and the quorum met."""
    checkpoint, note = open_checkpoint(data, policy.logs)
    by_key = {(v.name, v.key_id): (name, v) for name, v in policy.witnesses.items()}
    timestamps: dict[str, int] = {}
    for sig in note.signatures:
        if (witness := by_key.get((sig.name, sig.key_id))) is None:
            continue
        name, verifier = witness
        timestamp = verifier.verify(note.text, sig)
        if timestamp is None:
            raise NoteError(
                NoteFailure.BAD_COSIGNATURE,
                f"cosignature by witness {name} ({sig.name}+{sig.key_id.hex()}) does not verify",
                name=sig.name,
            )
        timestamps[name] = max(timestamp, timestamps.get(name, timestamp))
    cosigners = frozenset(timestamps)
    if not policy.quorum_met(cosigners):
        met = policy.satisfied(cosigners)
        short = [
            f"{g} has {sum(met[m] for m in group.members)} of {group.threshold} needed"
            for g, group in policy.groups.items()
            if not met[g]
        ]
        raise NoteError(
            NoteFailure.QUORUM_NOT_MET,
            f"quorum {policy.quorum!r} not met: {len(cosigners)} of {len(policy.witnesses)} "
            f"witnesses cosigned ({', '.join(sorted(cosigners)) or 'none'})"
            + (f"; {'; '.join(short)}" if short else ""),
            name=policy.quorum,
            cosigners=cosigners,
        )
    return VerifiedCheckpoint(checkpoint, note, cosigners, MappingProxyType(timestamps))


@dataclass(frozen=True, slots=True)
class TlogProof:
    """c2sp.org/tlog-proof@v1. Checks the structure only: the Merkle path and the
    checkpoint's signatures are verified by their owners (merkle, verify_checkpoint)."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes  # the signed note, verbatim
    extra: bytes | None = None  # unauthenticated, application data

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", tuple(self.hashes))

        def bad(why: str) -> NoteError:
            return NoteError(NoteFailure.MALFORMED_PROOF, why)

        if not 0 <= self.index <= MAX_UINT63:
            raise bad(f"index {self.index} is outside 0..2^63-1")
        if len(self.hashes) > MAX_PROOF_HASHES:
            raise bad(f"{len(self.hashes)} proof hashes, more than {MAX_PROOF_HASHES}")
        if any(len(h) != 32 for h in self.hashes):
            raise bad("a proof hash is not 32 bytes")
        try:
            checkpoint = parse_checkpoint(parse_note(self.checkpoint).text)
        except NoteError as exc:
            raise NoteError(
                NoteFailure.MALFORMED_PROOF, f"checkpoint: {exc.detail}", name=exc.name
            ) from exc
        if self.index >= checkpoint.size:
            raise bad(f"index {self.index} is not in a tree of size {checkpoint.size}")

    def encode(self) -> bytes:
        lines = [PROOF_HEADER]
        if self.extra is not None:
            lines.append(f"extra {_b64(self.extra)}")
        lines.append(f"index {self.index}")
        lines += [_b64(h) for h in self.hashes]
        return ("\n".join(lines) + "\n\n").encode("ascii") + self.checkpoint


def parse_tlog_proof(data: bytes) -> TlogProof:
    lines = iter(data.split(b"\n"))
    consumed = 0

    def line(what: str) -> bytes:
        nonlocal consumed
        value = next(lines, None)
        if value is None or consumed + len(value) >= len(data):
            raise NoteError(NoteFailure.MALFORMED_PROOF, f"proof ends before its {what}")
        consumed += len(value) + 1
        return value

    if line("header") != PROOF_HEADER.encode("ascii"):
        raise NoteError(NoteFailure.MALFORMED_PROOF, f"first line is not {PROOF_HEADER}")
    extra = None
    current = line("index line")
    if current.startswith(b"extra "):
        extra = _unb64(current[6:])
        if extra is None:
            raise NoteError(NoteFailure.MALFORMED_PROOF, "extra data is not canonical base64")
        current = line("index line")
    index = current[6:].decode("ascii", "replace") if current.startswith(b"index ") else ""
    if _DECIMAL.fullmatch(index) is None:
        raise NoteError(
            NoteFailure.MALFORMED_PROOF, "expected 'index <decimal without leading zeros>'"
        )
    hashes: list[bytes] = []
    while current := line("blank line and checkpoint"):
        digest = _unb64(current)
        if digest is None or len(digest) != 32:
            raise NoteError(
                NoteFailure.MALFORMED_PROOF,
                f"proof line {len(hashes) + 1} is not the base64 of a 32-byte hash",
            )
        hashes.append(digest)
        if len(hashes) > MAX_PROOF_HASHES:
            raise NoteError(NoteFailure.MALFORMED_PROOF, f"more than {MAX_PROOF_HASHES} hashes")
    return TlogProof(int(index), tuple(hashes), data[consumed:], extra)
