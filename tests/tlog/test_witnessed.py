"""The service with two real witnesses (`ffaudit witness serve`'s app) and a 2-of-2 policy:
checkpoints get cosigned by themselves, proofs verify offline only with the quorum, and a
witness that is down delays cosigning but never ingest."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from audit.db.session import upgrade
from audit.integrity.keys import Signer, keygen
from audit.integrity.notes import CosignatureSigner, parse_note, vkey_for
from audit.witness.app import create_app as create_witness
from audit.witness.settings import WitnessSettings
from tests.apptools import app_settings, bearer, jwt_token, running, serving
from tests.ingest.conftest import make_records
from tests.query.test_verify_cli import ffaudit
from tests.witness.conftest import free_port

ORIGIN = "ffaudit/acme/cam-1"


def witness(tmp_path: Path, name: str, *log_vkeys: str) -> tuple[WitnessSettings, str]:
    directory = tmp_path / name
    directory.mkdir()
    signer = Signer.generate()
    (directory / "key").write_bytes(signer.pem())
    (directory / "logs").write_text("".join(f"log {vkey}\n" for vkey in log_vkeys))
    url = f"sqlite:///{directory}/state.db"
    upgrade(url)
    settings = WitnessSettings(
        name=f"witness.example/{name}",
        key_file=directory / "key",
        logs_file=directory / "logs",
        database_url=url,
    )
    return settings, CosignatureSigner(settings.name or name, signer.key).verifier.vkey()


@contextlib.contextmanager
def witness_on(settings: WitnessSettings, port: int) -> Iterator[str]:
    """The witness app on `port` (fixed: the policy names its URL)."""
    with running(create_witness(settings), port=port) as url:
        yield url


def signed_size(url: str, *, cosigned: bool) -> int:
    answer = httpx.get(
        f"{url}/v1/tlog/cam-1/checkpoint", params={"cosigned": cosigned}, headers=bearer()
    )
    return int(answer.text.split("\n")[1]) if answer.status_code == 200 else 0


def send(url: str, records: list[dict[str, Any]]) -> None:
    httpx.post(
        f"{url}/v1/streams/cam-1/records",
        content=orjson.dumps(records),
        headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
    ).raise_for_status()


def wait(predicate: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_checkpoints_are_cosigned_by_the_quorum_and_a_down_witness_delays_only_that(
    tmp_path: Path,
) -> None:
    keys = keygen(tmp_path / "service-keys")
    log_vkey = vkey_for(ORIGIN, keys.signer.verifier.key).vkey()
    other_vkey = vkey_for("ffaudit/acme/cam-2", keys.signer.verifier.key).vkey()
    w1, w1_vkey = witness(tmp_path, "w1", log_vkey, other_vkey)
    w2, w2_vkey = witness(tmp_path, "w2", log_vkey, other_vkey)
    p1, p2 = free_port(), free_port()
    policy = tmp_path / "policy"
    # Witnesses and quorum only: each log's key is the service key under its origin.
    policy.write_text(
        f"witness w1 {w1_vkey} http://127.0.0.1:{p1}\n"
        f"witness w2 {w2_vkey} http://127.0.0.1:{p2}\n"
        "group both all w1 w2\n"
        "quorum both\n"
    )
    settings = app_settings(
        tmp_path, tlog_checkpoint_interval_s=0.2, tlog_policy_file=policy, tlog_witness_timeout_s=2
    )
    signer = Signer.generate()
    records = make_records(signer, 60, every=10, close=False)
    with serving(settings) as url, witness_on(w1, p1):
        httpx.post(
            f"{url}/v1/streams",
            json={
                "stream": "cam-1",
                "tenant": "acme",
                "public_key_pem": signer.verifier.pem().decode(),
            },
            headers=bearer(sub="root", roles=["admin"]),
        ).raise_for_status()
        first, rest = records[:30], records[30:]
        with witness_on(w2, p2):
            send(url, first)
            wait(lambda: signed_size(url, cosigned=True) == len(first), "a cosigned checkpoint")
            note = parse_note(httpx.get(f"{url}/v1/tlog/cam-1/checkpoint", headers=bearer()).text)
            assert {s.name for s in note.signatures} == {ORIGIN, w1.name, w2.name}

            proof = tmp_path / "p.tlog-proof"
            got = ffaudit(
                "tlog", "proof", "--stream", "cam-1", "--sequence", "7", "--out", str(proof),
                "--service", url, "--token", jwt_token(),
            )  # fmt: skip
            assert got.returncode == 0, got.stderr
            record = tmp_path / "r.json"
            record.write_bytes(orjson.dumps(records[6]))
            ok = ffaudit(
                "verify-proof", str(proof), "--record", str(record), "--policy", str(policy)
            )
            assert ok.returncode == 1, ok.stdout + ok.stderr  # no log key given
            pub = tmp_path / "service.pub"
            pub.write_bytes(keys.signer.verifier.pem())
            ok = ffaudit(
                "verify-proof", str(proof), "--record", str(record), "--policy", str(policy),
                "--pubkey", str(pub), "--origin", ORIGIN,
            )  # fmt: skip
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert "cosigned by: w1, w2" in ok.stdout
            # A second stream's log is cosigned under the same policy.
            other = Signer.generate()
            httpx.post(
                f"{url}/v1/streams",
                json={
                    "stream": "cam-2",
                    "tenant": "acme",
                    "public_key_pem": other.verifier.pem().decode(),
                },
                headers=bearer(sub="root", roles=["admin"]),
            ).raise_for_status()
            httpx.post(
                f"{url}/v1/streams/cam-2/records",
                content=orjson.dumps(make_records(other, 5, stream="cam-2")),
                headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
            ).raise_for_status()
            wait(
                lambda: (
                    httpx.get(
                        f"{url}/v1/tlog/cam-2/checkpoint",
                        params={"cosigned": True},
                        headers=bearer(),
                    ).status_code
                    == 200
                ),
                "the second stream cosigned",
            )

            # A policy that also wants a third witness is not met by this proof.
            w3 = CosignatureSigner("witness.example/w3", Signer.generate().key).verifier.vkey()
            stricter = tmp_path / "stricter"
            stricter.write_text(
                policy.read_text().replace(
                    "group both all w1 w2", f"witness w3 {w3}\ngroup both all w1 w2 w3"
                )
            )
            refused = ffaudit(
                "verify-proof", str(proof), "--record", str(record), "--policy", str(stricter),
                "--pubkey", str(pub),
            )  # fmt: skip
            assert refused.returncode == 1
            assert "quorum_not_met" in refused.stdout

        # Witness 2 is down: ingest is acknowledged and checkpoints are signed as before;
        # only cosigning waits.
        send(url, rest)
        wait(lambda: signed_size(url, cosigned=False) == len(records), "a signed checkpoint")
        time.sleep(1.0)  # several checkpointer ticks with one witness of two
        assert signed_size(url, cosigned=True) == len(first)
        with witness_on(w2, p2):
            wait(lambda: signed_size(url, cosigned=True) == len(records), "cosigned again")
