"""Engine fixtures: one generated model pack per session and insightface's sample image."""

from __future__ import annotations

from pathlib import Path

import insightface
import pytest

from tests.engine.modelgen import cached_model_pack


@pytest.fixture(scope="session")
def model_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated pack (det_10g, w600k_r50, swapper/inswapper_128, manifest.json) planting
    the six faces of t1.jpg. Shared by the whole session: copy it before changing anything."""
    return cached_model_pack(tmp_path_factory.mktemp("model-pack"))


@pytest.fixture(scope="session")
def sample_image_path() -> Path:
    """insightface's bundled t1.jpg (1280x886, six faces)."""
    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    assert path.is_file(), f"insightface's sample image is missing: {path}"
    return path
