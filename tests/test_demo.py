"""The README's main job: `ffaudit demo` on embedded defaults, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from tests.engine.labels import labelled_images


def assert_every_face_blurred(output: Path) -> None:
    labelled = labelled_images()["t1.jpg"]
    original = cv2.imread(str(labelled.path), cv2.IMREAD_GRAYSCALE)
    result = cv2.imread(str(output), cv2.IMREAD_GRAYSCALE)
    assert original is not None
    assert result is not None, f"no readable image at {output}"
    assert result.shape == original.shape
    for x1, y1, x2, y2 in labelled.faces:
        region = np.s_[int(y1) : int(y2), int(x1) : int(x2)]
        before = cv2.Laplacian(original[region], cv2.CV_64F).var()
        after = cv2.Laplacian(result[region], cv2.CV_64F).var()
        assert after < 0.05 * before, f"face at {(x1, y1, x2, y2)} keeps its detail"


def test_demo_runs_end_to_end_and_its_trail_verifies(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "audit", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "FFAUDIT_DATABASE_URL": "sqlite:///unused.db"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 faces hidden by centerface" in result.stdout
    assert "needs human review" not in result.stdout
    assert "OK: every hash, link and signature verifies" in result.stdout
    assert "ffaudit demo --keep" in result.stdout
    assert_every_face_blurred(workdir / "t1-anonymized.jpg")
    # The engine's own NDJSON copy verifies with the stand-alone tool as well.
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "audit",
            "verify",
            "--strict",
            "--pubkey",
            str(workdir / "engine" / "keys" / "signing.pub"),
            str(workdir / "records.ndjson"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout
    # No raw identity in any record the demo produced.
    assert os.environ.get("USER", "root") + "@demo" not in (workdir / "records.ndjson").read_text()


def test_the_demo_names_the_engines_system_actor_as_the_engine_does() -> None:
    # The service does not import the engine (import-linter): the demo keeps its own copy.
    from audit.cli.demo import ENGINE_SYSTEM_ACTOR
    from engine.pipeline.engine import SYSTEM_ACTOR

    assert ENGINE_SYSTEM_ACTOR == SYSTEM_ACTOR
