"""Interop: the Node forward client (@fluent-org/logger, the Fluent project's own) delivers
sealed records to the real service as a bound producer, in each of its event modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from audit.integrity.keys import Signer
from tests.producers.test_producers import KEY, Service, sealed

PACKAGE = "@fluent-org/logger@1.0.10"
EMIT = Path(__file__).with_name("emit.js")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The client, installed once per machine from the npm registry into a cache."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed here")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ffaudit" / "node"
    installed = cache / "node_modules" / "@fluent-org" / "logger" / "package.json"
    if not installed.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(cache),
                PACKAGE,
            ],
            check=True,
            timeout=300,
        )
    return cache / "node_modules"


def emit(
    node_modules: Path,
    service: Service,
    producer: dict[str, str],
    mode: str,
    records: list[dict[str, Any]],
) -> subprocess.CompletedProcess[str]:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    return subprocess.run(
        [
            "node",
            str(EMIT),
            str(service.forward_port),
            KEY,
            producer["name"],
            producer["password"],
            mode,
        ],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(node_modules)},
        check=False,
    )


@pytest.mark.parametrize("mode", ["Message", "Forward", "PackedForward", "CompressedPackedForward"])
def test_the_node_client_delivers_as_a_bound_producer(
    node_modules: Path,
    service: Service,
    mode: str,
) -> None:
    signer = Signer.generate()
    service.register("acme", "node-cam", signer)
    producer = service.producer("acme", "node-1", ["node-*"])
    records = sealed(signer, "acme", "node-cam", 12)
    done = emit(node_modules, service, producer, mode, records)
    assert done.returncode == 0, done.stderr
    assert "acked 12" in done.stdout
    assert service.head("acme", "node-cam") == 12
    verified = service.call("POST", "/v1/verify", "acme", json={"stream": "node-cam"}).json()
    assert verified["ok"] is True


def test_the_node_client_cannot_write_outside_its_binding(
    node_modules: Path,
    service: Service,
) -> None:
    signer = Signer.generate()
    service.register("beta", "node-cam", signer)
    producer = service.producer("acme", "node-1", ["*"])
    done = emit(
        node_modules, service, producer, "PackedForward", sealed(signer, "beta", "node-cam", 3)
    )
    assert done.returncode != 0
    assert service.head("beta", "node-cam") == 0
    wrong = {**producer, "password": "not-it"}
    refused = emit(node_modules, service, wrong, "Message", sealed(signer, "beta", "node-cam", 1))
    assert "acked" not in refused.stdout  # the client gives up (it exits without an ack)
    assert service.head("beta", "node-cam") == 0
