"""What ingest says of a record besides its verdict: the kinds of failure it found.

A stored event's `failure`, and the `failure` of an ingest reply, is these values joined by
commas in the order they were found (`gap,fork`). They are in the database and in replies
already: they never change.

Why ingest has an enum of its own rather than members of the offline verifier's FailureKind
(audit.integrity.verify): FailureKind is the vocabulary docs/record-spec.md §7 obliges every
verifier of a file to report exactly. Ingest judges on arrival, against a chain head, and
names some findings differently, under values stored long ago: what it flags `fork` or
`after_close` the offline verifier reports as `inserted`, what it flags `late` as
`reordered`, and `broken_link` and `forged` (§7.1) have no offline kind at all. Added to
FailureKind they would give it two names for one finding and kinds no offline verifier may
report. Where both name a finding alike, the value is taken from the kernel's enums, so the
two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from audit.integrity.signatures import SignatureFailure
from audit.integrity.verify import FailureKind


class IngestFailure(StrEnum):
    # The offline verifier's kinds, for the same findings (§7 and §7.1).
    MODIFIED = FailureKind.MODIFIED.value  # content does not hash to its event.hash
    GAP = FailureKind.GAP.value  # placed after records that never arrived
    MISSING_SIGNATURE = SignatureFailure.MISSING_SIGNATURE.value
    WRONG_KEY = SignatureFailure.WRONG_KEY.value
    BAD_SIGNATURE = SignatureFailure.BAD_SIGNATURE.value
    # Ingest's own (§7.1).
    BROKEN_LINK = "broken_link"  # the next sequence, not linking to the head: evidence
    FORK = "fork"  # another provisional record claims the sequence
    FORGED = "forged"  # a verified checkpoint proves another record at the sequence
    LATE = "late"  # arrived after its gap was flagged and the chain went on
    AFTER_CLOSE = "after_close"  # placed after the stream's closing checkpoint

    @classmethod
    def of_signature(cls, kind: SignatureFailure) -> IngestFailure:
        return cls(kind.value)

    @classmethod
    def parse(cls, stored: str | None) -> Failures:
        """The kinds of a stored `failure` (ValueError for a kind ingest never wrote)."""
        return tuple(cls(kind) for kind in stored.split(",")) if stored else ()


# A record's failures in the order they were found.
Failures = tuple[IngestFailure, ...]


def joined(failures: Iterable[IngestFailure]) -> str | None:
    """The stored and returned form: each kind once, in order, comma-separated; None for
    none."""
    return ",".join(dict.fromkeys(f.value for f in failures)) or None
