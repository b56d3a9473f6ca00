"""No raw PII value from the input appears anywhere in the sealed output bytes."""

from __future__ import annotations

import ipaddress
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.ratelimit import SessionRateLimiter
from audit.integrity.seal import AuditEvent, Sealer

from .conftest import T0

# Raw values are long and carry characters that never occur in hex, so a hit in the output
# can only be a leak, not a coincidence inside a pseudonym.
word = (
    st.text(string.ascii_letters + string.digits + "-_. ", min_size=4, max_size=20)
    .filter(lambda s: s.strip() == s)
    .map(lambda s: "Zq" + s)
)  # "zq" occurs in no field name and in no hex string
ipv4 = st.ip_addresses(v=4).filter(lambda ip: ip.packed[0] not in (0, 127)).map(str)
ipv6 = (
    st.ip_addresses(v=6)
    .filter(lambda ip: ":" in ip.compressed.strip(":"))
    .map(lambda ip: ip.exploded)
)
email = st.builds(
    lambda a, b: f"{a}@{b}.example",
    word.filter(lambda w: " " not in w),
    st.text(string.ascii_lowercase, min_size=3, max_size=8),
)


@st.composite
def pii_events(draw: st.DrawFn) -> tuple[AuditEvent, list[str]]:
    actor = draw(st.one_of(word, email))
    ip = draw(st.one_of(ipv4, ipv6))
    session = "sess-" + draw(word)
    path = "/srv/uploads/" + draw(word) + ".png"
    other_email = draw(email)
    message = draw(
        st.sampled_from(
            [
                "cannot open {path} for {actor} from {ip}",
                "{actor} ({email}) exceeded quota in session {session}",
                "write failed: {path}",
            ]
        )
    ).format(path=path, actor=actor, ip=ip, email=other_email, session=session)
    event = AuditEvent(
        action=EventAction.JOB_FAILED,
        outcome=Outcome.FAILURE,
        timestamp=T0,
        actor=actor,
        client_ip=ip,
        session=session,
        target=path,
        job_id="job-1",
        error_type="IOError",
        error_message=message,
        metadata={
            "output_path": path.replace("uploads", "out"),
            "client_ip": ip,
            "nested": {"note": f"retry for {actor}", "contact_email": other_email},
            "history": [f"from {ip}", other_email],
        },
    )
    raw = [actor, ip, session, path, path.replace("uploads", "out"), other_email]
    if ":" in ip:
        raw.append(ipaddress.ip_address(ip).compressed)
    return event, raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pii_events(), min_size=1, max_size=8))
def test_no_raw_pii_in_output(batch: list[tuple[AuditEvent, list[str]]]) -> None:
    sealer = Sealer(
        ChainWriter("s", "t", Signer.generate(), policy=CheckpointPolicy(3, None)),
        Pseudonymizer(Keyring.generate(), "t"),
        SessionRateLimiter(rate=1, burst=1),  # summaries carry session pseudonyms too
    )
    out = b""
    for event, _ in batch:
        out += b"".join(r.line + b"\n" for r in sealer.seal(event))
    out += b"".join(r.line + b"\n" for r in sealer.close())
    for _, raw in batch:
        for value in raw:
            assert value.encode() not in out, value
            assert value.lower().encode() not in out.lower(), value
