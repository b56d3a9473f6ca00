"""Where webhooks may be sent: the defence against server-side request forgery.

Whoever manages a tenant's webhooks chooses URLs the service will POST to from inside the
network. A destination is allowed only over https (http only with FFAUDIT_WEBHOOK_ALLOW_HTTP,
for development) and only when every address its host resolves to is a public one, or is
named in the operator's allowlist (FFAUDIT_WEBHOOK_ALLOWED_DESTINATIONS: host names, IPs or
networks). The check runs at registration and again before every delivery, and the delivery
connects to the address that was checked (a DNS answer that changes in between, "rebinding",
cannot redirect it). Refusals say only "destination not allowed": the delivery log must not
tell a private service that answers from one that does not exist.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import httpx

from audit.errors import ForbiddenError
from audit.settings import AuditSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
REFUSED = "refused: destination not allowed"


class DestinationRefused(ForbiddenError):
    """A policy refusal (403), not malformed input: the URL is well formed, its destination
    is one the operator does not let webhooks reach."""

    def __init__(self) -> None:
        super().__init__(
            "destination not allowed: webhooks go to public https addresses, or to those the "
            "operator allows (FFAUDIT_WEBHOOK_ALLOWED_DESTINATIONS)"
        )


@dataclass(frozen=True, slots=True)
class Destination:
    url: httpx.URL
    address: str  # the checked address the delivery connects to


class DestinationPolicy:
    def __init__(self, settings: AuditSettings) -> None:
        self.allow_http = settings.webhook_allow_http
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in settings.webhook_allowed_destinations:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def check(self, url: str) -> Destination:
        """The destination to connect to, or DestinationRefused. Resolves the host: call it
        off the event loop."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise DestinationRefused from None
        if parsed.scheme != "https" and not (parsed.scheme == "http" and self.allow_http):
            raise DestinationRefused
        host = parsed.host.lower().rstrip(".")
        if not host:
            raise DestinationRefused
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise DestinationRefused from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise DestinationRefused
        named = host in self.hosts
        for address in addresses:
            if not (named or address.is_global or self._allowed(address)):
                raise DestinationRefused
        return Destination(parsed, str(addresses[0]))

    def _allowed(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def pinned_request(destination: Destination) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """(URL with the checked address, headers with the real Host, extensions with the TLS
    server name): the connection goes to the address that passed the check, while the
    receiver still sees its own host name in Host and in SNI (and its certificate is checked
    against that name)."""
    url = destination.url
    headers = {"host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return url.copy_with(host=destination.address), headers, extensions
