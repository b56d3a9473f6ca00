"""Bearer tokens (JWT, PyJWT): who is calling, for which tenant, with which roles.

HS256 with a shared secret is for development; production uses RS256 or EdDSA with the
identity provider's PEM public key or a JWKS document. `exp`, `nbf`, `iss` and `aud` are
always checked; the accepted algorithms are fixed by the configured key type, so `alg:
none` and algorithm-confusion tokens (an HS256 token "signed" with an RSA public key)
are refused. The tenant always comes from the token, never from a request parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import jwt
from jwt import PyJWKSet

from audit.errors import AuthenticationError, ForbiddenError, UsageError
from audit.settings import AuditSettings

# Tenants name Elasticsearch indices (audit.streams.schemas has the same rule for streams'
# registrations); a subject is any printable text (no control characters, no surrounding
# space), as identity providers issue them.
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_SUBJECT = re.compile(r"[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]{0,254}[^\x00-\x1f\x7f\s])?")
_STREAM_PATTERN = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\*?")


class Role(StrEnum):
    AUDITOR = "auditor"  # reads the tenant's records
    SECURITY = "security"  # alerts and reads
    ENGINEER = "engineer"  # job timelines and failures (PII stays pseudonymised)
    SUBJECT = "subject"  # only records whose actor is the caller
    ADMIN = "admin"  # keys, streams, retention, holds: needs a second factor
    INGEST = "ingest"  # service accounts of engines


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant: str
    roles: frozenset[Role]
    amr: frozenset[str]
    # The `streams` claim of an ingest token: names, or prefixes ending in `*`, of its
    # tenant's streams that it may write; None (no claim) for all of them.
    streams: tuple[str, ...] | None = None
    # When the token stops being valid (`exp`): the console's session ends with it.
    expires_at: datetime | None = None

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))


class TokenVerifier:
    def __init__(self, settings: AuditSettings) -> None:
        self._settings = settings
        self._keys: list[tuple[Any, list[str]]] = []
        if settings.jwt_hs256_secret:
            if len(settings.jwt_hs256_secret) < 32:
                raise UsageError("FFAUDIT_JWT_HS256_SECRET must be at least 32 characters")
            self._keys.append((settings.jwt_hs256_secret, ["HS256"]))
        if settings.jwt_public_key_file:
            pem = settings.jwt_public_key_file.read_bytes()
            self._keys.append((pem, _asymmetric_algorithms(pem)))
        if settings.jwks_file:
            for key in PyJWKSet.from_json(settings.jwks_file.read_text()).keys:
                algorithm = key.algorithm_name
                if algorithm in ("RS256", "EdDSA", "ES256"):
                    self._keys.append((key.key, [algorithm]))

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def verify(self, token: str) -> Principal:
        if not self._keys:
            raise AuthenticationError("no token verification key is configured")
        last: Exception | None = None
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    issuer=self._settings.jwt_issuer,
                    audience=self._settings.jwt_audience,
                    options={"require": ["exp", "nbf", "iss", "aud", "sub"]},
                )
            except jwt.InvalidSignatureError as exc:
                last = exc  # maybe another configured key signed it
                continue
            except jwt.PyJWTError as exc:
                raise AuthenticationError(f"invalid token: {exc}") from None
            return self._principal(claims)
        raise AuthenticationError(f"invalid token: {last or 'no key verifies it'}")

    def _principal(self, claims: dict[str, Any]) -> Principal:
        """The claims, validated once here: nothing after authentication meets a tenant or
        subject that could not name an index, a stream or a pseudonym (a 500 otherwise)."""
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise AuthenticationError("the token names no tenant")
        if not _TENANT.fullmatch(tenant):
            raise AuthenticationError(
                "invalid token: `tenant` must be 1-63 chars of a-z, 0-9, '_' or '-'"
            )
        subject = claims["sub"]
        if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
            raise AuthenticationError(
                "invalid token: `sub` must be a non-empty string of at most 256 printable "
                "characters"
            )
        raw_roles = claims.get("roles", [])
        if not isinstance(raw_roles, list):
            raise AuthenticationError("`roles` must be a list")
        roles = frozenset(Role(r) for r in raw_roles if r in Role.__members__.values())
        amr = claims.get("amr", [])
        streams = claims.get("streams")
        if streams is not None and (
            not isinstance(streams, list)
            or not 1 <= len(streams) <= 256
            or not all(isinstance(p, str) and _STREAM_PATTERN.fullmatch(p) for p in streams)
        ):
            raise AuthenticationError(
                "invalid token: `streams` must list 1-256 stream names, or prefixes ending in '*'"
            )
        return Principal(
            subject=subject,
            tenant=tenant,
            roles=roles,
            amr=frozenset(str(m) for m in amr) if isinstance(amr, list) else frozenset(),
            streams=tuple(streams) if streams is not None else None,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC)
            if isinstance(claims.get("exp"), int | float)
            else None,
        )


def require(principal: Principal, settings: AuditSettings, *roles: Role) -> Principal:
    """The principal, if it holds one of `roles` (admin only with a second factor)."""
    if not principal.has(*roles):
        wanted = ", ".join(r.value for r in roles)
        raise ForbiddenError(f"this needs one of the roles: {wanted}")
    # Admin grants access only with a second factor, wherever it is one of the roles
    # allowed: an admin token signed in with a password alone counts only for its other
    # roles (the brief: administrators need two-factor authentication for the full log).
    grants = {r for r in roles if principal.has(r)}
    if grants == {Role.ADMIN} and not principal.amr.intersection(settings.admin_mfa_methods):
        raise ForbiddenError("administrators must sign in with a second factor (amr)")
    return principal


class ReadScope(StrEnum):
    TENANT = "tenant"  # every record of the tenant
    OWN = "own"  # only the caller's own records (what the subject role grants)


def read_scope(principal: Principal, settings: AuditSettings, *full: Role) -> ReadScope:
    """What a read route shows `principal`, as a function of its whole role set: the tenant
    through a role of `full` that grants it (admin only with a second factor); else, through
    `subject`, the caller's own records; else nothing (ForbiddenError). A role the route does
    not accept never widens what another role grants."""
    mfa = bool(principal.amr.intersection(settings.admin_mfa_methods))
    granting = {r for r in full if principal.has(r) and (r is not Role.ADMIN or mfa)}
    if granting:
        return ReadScope.TENANT
    if principal.has(Role.SUBJECT):
        return ReadScope.OWN
    wanted = ", ".join(r.value for r in (*full, Role.SUBJECT))
    if principal.has(Role.ADMIN) and Role.ADMIN in full:
        raise ForbiddenError("administrators must sign in with a second factor (amr)")
    raise ForbiddenError(f"this needs one of the roles: {wanted}")


def _asymmetric_algorithms(pem: bytes) -> list[str]:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem)
    if isinstance(key, RSAPublicKey):
        return ["RS256"]
    if isinstance(key, Ed25519PublicKey):
        return ["EdDSA"]
    if isinstance(key, EllipticCurvePublicKey):
        return ["ES256"]
    raise UsageError("FFAUDIT_JWT_PUBLIC_KEY_FILE must hold an RSA, Ed25519 or EC public key")
