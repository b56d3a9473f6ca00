"""`ffaudit verify-proof --policy FILE` with a policy file that is not a C2SP tlog-policy:
a usage error (exit 2, docs/record-spec.md §14.6) naming the file, never "not proven"
(exit 1, which says the proof failed) nor a traceback. The proof and record are the
published vectors (docs/vectors/tlog), which verify under their own policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.query.test_verify_cli import ffaudit

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors" / "tlog"
PROOF = VECTORS / "cam-1-3.tlog-proof"
EVENT_HASH = "434edd34f646fb2a26ed6dc4348f17770157da9843daa6511c5ac4575af06aba"


def verify_proof(policy: Path, *extra: str) -> tuple[int, str, str]:
    got = ffaudit(
        "verify-proof", str(PROOF), "--event-hash", EVENT_HASH, "--policy", str(policy), *extra
    )
    return got.returncode, got.stdout, got.stderr


def test_the_vector_proof_verifies_under_its_policy() -> None:
    code, out, err = verify_proof(VECTORS / "log.policy")
    assert code == 0, out + err
    assert out.startswith("OK: leaf")


@pytest.mark.parametrize(
    ("content", "line"),
    [
        pytest.param(b"witness w1 not-a-vkey\nquorum w1\n", 1, id="bad-vkey"),
        pytest.param(b"quorum none", 1, id="no-final-newline"),
        pytest.param(b"# policy\n\xff\xfe\n", 2, id="not-utf8"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_malformed_policy_is_a_usage_error(
    tmp_path: Path, content: bytes, line: int, as_json: bool
) -> None:
    policy = tmp_path / "bad.policy"
    policy.write_bytes(content)
    code, out, err = verify_proof(policy, *(["--json"] if as_json else []))
    assert code == 2, (code, out, err)
    assert out == ""  # no verdict: nothing was verified
    assert "Traceback" not in err
    assert str(policy) in err
    assert f"line {line}" in err
