"""One checkpoint-signature verdict for every verifier (issue 15): a checkpoint with no
signature and a foreign signer was `missing_signature` at ingest and "signed by another
key" in the export verifier; the checks ran in different orders."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from audit.exports.chain import checkpoint_signature_ok
from audit.integrity import record as f
from audit.integrity.chain import ChainWriter, CheckpointPolicy, record_hash
from audit.integrity.events import EventAction
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.integrity.signatures import SignatureFailure, checkpoint_signature
from audit.integrity.verify import ChainVerifier


def chain(signer: Signer) -> list[dict[str, Any]]:
    sealer = Sealer(
        ChainWriter("s", "t", signer, policy=CheckpointPolicy(3, None)),
        Pseudonymizer(Keyring.generate(), "t"),
    )
    out = []
    for i in range(3):
        out += sealer.seal(AuditEvent(action=EventAction.JOB_STARTED, actor="a", job_id=str(i)))
    return [orjson.loads(r.line) for r in out]


@pytest.mark.parametrize(
    ("edit", "kind"),
    [
        ({f.SIGNATURE: None, f.CP_SIGNER: "f" * 64}, SignatureFailure.MISSING_SIGNATURE),
        ({f.SIGNATURE: None}, SignatureFailure.MISSING_SIGNATURE),
        ({f.CP_SIGNER: "f" * 64}, SignatureFailure.WRONG_KEY),
        ({f.SIGNATURE: "not base64!"}, SignatureFailure.BAD_SIGNATURE),
        ({f.SIGNATURE: "A" * 88}, SignatureFailure.BAD_SIGNATURE),
    ],
)
def test_every_verifier_names_the_same_failure(
    edit: dict[str, Any], kind: SignatureFailure
) -> None:
    signer = Signer.generate()
    records = chain(signer)
    cp = next(r for r in records if r[f.EVENT_ACTION] == "audit.checkpoint")
    for name, value in edit.items():
        if value is None:
            cp.pop(name, None)
        else:
            cp[name] = value
    cp[f.EVENT_HASH] = record_hash(cp)  # the content is consistent: only the signature fails
    problem = checkpoint_signature(
        cp.get(f.SIGNATURE), cp.get(f.CP_SIGNER), cp[f.EVENT_HASH], signer.verifier
    )
    assert problem is not None
    assert problem.kind is kind
    # The export verifier says the same.
    said = checkpoint_signature_ok(cp, signer.verifier)
    assert said is not None
    assert said.startswith(kind.value)
    # And the offline verifier.
    verifier = ChainVerifier(signer.verifier)
    failures = []
    for number, record in enumerate(records[: records.index(cp) + 1], start=1):
        failures += verifier.feed_record(number, record)
    failures += verifier.finish()
    assert kind.value in {x.kind.value for x in failures}
