"""The transparency-log API on a running service: checkpoints appear by themselves, proofs
fetched with the CLI verify offline with `ffaudit verify-proof`, and the API is
tenant-scoped and role-checked like every read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from audit.integrity.keys import Signer
from audit.integrity.merkle import leaf_hash
from audit.settings import AuditSettings
from tests.apptools import app_settings, bearer, jwt_token, serving
from tests.ingest.conftest import make_records
from tests.query.test_verify_cli import ffaudit


def ingest(url: str, stream: str, n: int, tenant: str = "acme") -> list[dict[str, Any]]:
    signer = Signer.generate()
    admin = bearer(sub="root", roles=["admin"], tenant=tenant)
    httpx.post(
        f"{url}/v1/streams",
        json={"stream": stream, "tenant": tenant, "public_key_pem": signer.verifier.pem().decode()},
        headers=admin,
    ).raise_for_status()
    records = make_records(signer, n, stream=stream, tenant=tenant, every=10)
    httpx.post(
        f"{url}/v1/streams/{stream}/records",
        content=orjson.dumps(records),
        headers={**bearer(roles=["ingest"], tenant=tenant), "content-type": "application/json"},
    ).raise_for_status()
    return records


def wait_for_size(url: str, stream: str, size: int) -> str:
    """The checkpoint note once the service's own loop has signed `size` leaves."""
    deadline = time.monotonic() + 20
    while True:
        answer = httpx.get(f"{url}/v1/tlog/{stream}/checkpoint", headers=bearer())
        if answer.status_code == 200 and answer.text.split("\n")[1] == str(size):
            return answer.text
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, AuditSettings]]:
    settings = app_settings(tmp_path, tlog_checkpoint_interval_s=0.2)
    with serving(settings) as url:
        yield url, settings


def test_a_proof_from_the_api_verifies_offline(
    service: tuple[str, AuditSettings], tmp_path: Path
) -> None:
    url, _ = service
    records = ingest(url, "cam-1", 40)
    note = wait_for_size(url, "cam-1", len(records))
    assert note.startswith("ffaudit/acme/cam-1\n")
    logs = httpx.get(f"{url}/v1/tlog", headers=bearer()).json()
    # The tenant's log of the logs (the service's own stream) has its log too.
    assert any(log["stream"].startswith("ffaudit-service") for log in logs)
    (info,) = [log for log in logs if log["stream"] == "cam-1"]
    assert info["origin"] == "ffaudit/acme/cam-1"
    assert info["size"] == len(records)
    vkey = info["vkey"]
    assert vkey.startswith("ffaudit/acme/cam-1+")

    record = records[17]
    proof_file = tmp_path / "r.tlog-proof"
    got = ffaudit(
        "tlog", "proof", "--stream", "cam-1", "--sequence", str(record["event.sequence"]),
        "--out", str(proof_file), "--service", url, "--token", jwt_token(),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert proof_file.read_bytes().startswith(b"c2sp.org/tlog-proof@v1\nindex 17\n")
    # The service's own file form is byte-for-byte what the CLI assembled.
    served = httpx.get(f"{url}/v1/tlog/cam-1/proof/{record['event.sequence']}", headers=bearer())
    assert served.content == proof_file.read_bytes()

    record_file = tmp_path / "record.json"
    record_file.write_bytes(orjson.dumps(record))
    state = tmp_path / "state.json"
    ok = ffaudit(
        "verify-proof", str(proof_file), "--record", str(record_file), "--log-key", vkey,
        "--origin", "ffaudit/acme/cam-1", "--state", str(state),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: leaf 17 of ffaudit/acme/cam-1" in ok.stdout
    assert orjson.loads(state.read_bytes())["logs"]["ffaudit/acme/cam-1"]["size"] == len(records)

    # An edited record is not what the log holds.
    record_file.write_bytes(orjson.dumps({**record, "event.outcome": "failure"}))
    edited = ffaudit(
        "verify-proof", str(proof_file), "--record", str(record_file), "--log-key", vkey
    )
    assert edited.returncode == 1
    assert "not_included" in edited.stdout
    # Another log's key (a log that does not exist, same name) is not trusted.
    other = Signer.generate()
    from audit.integrity.notes import vkey_for

    stranger = vkey_for("ffaudit/acme/cam-1", other.verifier.key).vkey()
    wrong_key = ffaudit(
        "verify-proof", str(proof_file), "--event-hash", record["event.hash"], "--log-key", stranger
    )
    assert wrong_key.returncode == 1
    assert "checkpoint" in wrong_key.stdout

    # The state file catches a log that shows another history at the same size.
    records_b = ingest(url, "cam-2", 5)
    wait_for_size(url, "cam-2", len(records_b))
    got = ffaudit(
        "tlog", "proof", "--stream", "cam-2", "--sequence", "1", "--out", str(tmp_path / "b"),
        "--service", url, "--token", jwt_token(),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    doc = orjson.loads(state.read_bytes())
    doc["logs"]["ffaudit/acme/cam-1"]["root"] = "A" * 43 + "="
    state.write_bytes(orjson.dumps(doc))
    record_file.write_bytes(orjson.dumps(record))
    forked = ffaudit(
        "verify-proof", str(proof_file), "--record", str(record_file), "--log-key", vkey,
        "--state", str(state),
    )  # fmt: skip
    assert forked.returncode == 1
    assert "forked" in forked.stdout


def test_consistency_and_tiles_over_http(service: tuple[str, AuditSettings]) -> None:
    url, _ = service
    records = ingest(url, "cam-1", 12)
    wait_for_size(url, "cam-1", len(records))
    proof = httpx.get(
        f"{url}/v1/tlog/cam-1/consistency", params={"old": 3, "new": len(records)}, headers=bearer()
    )
    assert proof.status_code == 200, proof.text
    assert proof.json()["new_size"] == len(records)
    tile = httpx.get(f"{url}/v1/tlog/cam-1/tile/0/000.p/{len(records)}", headers=bearer())
    assert tile.status_code == 200
    assert tile.content[:32] == leaf_hash(bytes.fromhex(records[0]["event.hash"]))
    assert tile.headers["cache-control"] == "no-cache"
    entries = httpx.get(f"{url}/v1/tlog/cam-1/tile/entries/000.p/{len(records)}", headers=bearer())
    assert entries.status_code == 200
    assert entries.content[:2] == b"\x00\x20"
    for bad in ("0/001.p/0", "0/01", "x/000", "0/000.p/256"):
        answer = httpx.get(f"{url}/v1/tlog/cam-1/tile/{bad}", headers=bearer())
        assert answer.status_code in (400, 422), (bad, answer.status_code)
    assert httpx.get(f"{url}/v1/tlog/cam-1/tile/0/001", headers=bearer()).status_code == 404
    too_far = httpx.get(
        f"{url}/v1/tlog/cam-1/consistency", params={"old": 3, "new": 10_000}, headers=bearer()
    )
    assert too_far.status_code == 422


def test_logs_are_tenant_scoped_and_role_checked(service: tuple[str, AuditSettings]) -> None:
    url, _ = service
    records = ingest(url, "cam-1", 5)
    wait_for_size(url, "cam-1", len(records))
    other = bearer(tenant="other")
    for path in ("checkpoint", "inclusion?sequence=1", "proof/1", "tile/0/000.p/1"):
        answer = httpx.get(f"{url}/v1/tlog/cam-1/{path}", headers=other)
        assert answer.status_code == 404, (path, answer.status_code)
    assert all(
        log["stream"] != "cam-1" for log in httpx.get(f"{url}/v1/tlog", headers=other).json()
    )
    subject = bearer(roles=["subject"], sub="user-1")
    assert httpx.get(f"{url}/v1/tlog/cam-1/checkpoint", headers=subject).status_code == 403
    engineer = bearer(roles=["engineer"])
    assert httpx.get(f"{url}/v1/tlog/cam-1/checkpoint", headers=engineer).status_code == 200
    assert httpx.post(f"{url}/v1/tlog/cam-1/checkpoint", headers=engineer).status_code == 403
    assert httpx.get(f"{url}/v1/tlog/cam-1/checkpoint").status_code == 401
    signed = httpx.post(f"{url}/v1/tlog/cam-1/checkpoint", headers=bearer())
    assert signed.status_code == 200
