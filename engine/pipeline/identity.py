"""The identity cache: one source identity, one embedding, across jobs and shots.

Keyed by the source image's SHA-256 and face index, so a re-upload of the same file reuses
the embedding computed the first time (consistent identity across a series of shots).
Records carry the embedding's fingerprint, never the embedding: a 512-d ArcFace vector is
biometric data.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes

from engine.pipeline.faces import Face


def fingerprint(embedding: np.ndarray) -> str:
    """Hex SHA-256 of the float32 embedding bytes, truncated to 128 bits."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(np.ascontiguousarray(embedding, dtype=np.float32).tobytes())
    return digest.finalize().hex()[:32]


@dataclass(frozen=True, slots=True)
class Identity:
    face: Face
    fingerprint: str
    cached: bool


class IdentityCache:
    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, int], Face] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source_sha256: str, index: int) -> Face | None:
        with self._lock:
            face = self._items.get((source_sha256, index))
            if face is not None:
                self._items.move_to_end((source_sha256, index))
            return face

    def put(self, source_sha256: str, index: int, face: Face) -> None:
        with self._lock:
            self._items[(source_sha256, index)] = face
            self._items.move_to_end((source_sha256, index))
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Erase every cached embedding (features are erased when the engine stops)."""
        with self._lock:
            self._items.clear()
