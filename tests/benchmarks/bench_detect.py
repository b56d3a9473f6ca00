"""Detector benchmark on the hand-labelled images (tests/engine/data/faces.json).

    .venv/bin/python -m tests.benchmarks.bench_detect [--repeat N] [--json]

A script, not a test. For each labelled image, at its native size and scaled so that its long
side is 640 px, and for each detector (CenterFace, the default; the Haar cascade, the last
resort): faces hidden (a padded box covers >= 80% of the labelled face), false boxes (no
overlap with any labelled face), and the median milliseconds per image over N runs after a
warm-up. Haar is the in-process baseline: the ratio line compares the two.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import cv2
import numpy as np
import orjson

from engine.pipeline import centerface
from engine.pipeline.faces import Detector, HaarDetector
from engine.pipeline.media import Image, read_image
from tests.engine.labels import Labelled, labelled_images, score


def detectors() -> dict[str, Detector]:
    pack = centerface.builtin_pack()
    assert pack is not None, "pip install -e '.[engine]' installs the CenterFace weights"
    path = pack.verify("detector").path
    return {
        "centerface": centerface.CenterFaceDetector(path, ["CPUExecutionProvider"]),
        "haar": HaarDetector(),
    }


def at(image: Image, labelled: Labelled, long_side: int | None) -> tuple[Image, Any]:
    if long_side is None:
        return image, labelled.faces
    factor = long_side / max(image.shape[:2])
    resized = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return np.asarray(resized, np.uint8), labelled.scaled(factor)


def run(repeat: int) -> list[dict[str, Any]]:
    rows = []
    found = detectors()
    for labelled in labelled_images().values():
        original = read_image(labelled.path)
        for size in (None, 640):
            image, faces = at(original, labelled, size)
            for name, detector in found.items():
                detector.detect(image)  # warm-up: onnxruntime plans each new shape once
                times, boxes = [], []
                for _ in range(repeat):
                    start = time.perf_counter()
                    boxes = [f.bbox for f in detector.detect(image)]
                    times.append(1000 * (time.perf_counter() - start))
                hidden, false = score(boxes, faces)
                rows.append(
                    {
                        "image": labelled.name,
                        "size": f"{image.shape[1]}x{image.shape[0]}",
                        "scale": "native" if size is None else "640",
                        "detector": name,
                        "faces": len(faces),
                        "hidden": hidden,
                        "false": false,
                        "ms": statistics.median(times),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run(args.repeat)
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    print(f"{'image':<22} {'size':>9}  {'detector':<10} {'hidden':>8} {'false':>5} {'ms':>7}")
    for r in rows:
        print(
            f"{r['image']:<22} {r['size']:>9}  {r['detector']:<10} "
            f"{r['hidden']:>3} / {r['faces']:<2} {r['false']:>5} {r['ms']:>7.1f}"
        )
    for scale in ("native", "640"):
        for name in ("centerface", "haar"):
            mine = [r for r in rows if r["detector"] == name and r["scale"] == scale]
            print(
                f"total at {scale:>6}, {name:<10}: {sum(r['hidden'] for r in mine)} of "
                f"{sum(r['faces'] for r in mine)} faces hidden, {sum(r['false'] for r in mine)} "
                f"false boxes, {sum(r['ms'] for r in mine):.0f} ms for {len(mine)} images"
            )
        cf, haar = (
            sum(r["ms"] for r in rows if r["detector"] == n and r["scale"] == scale)
            for n in ("centerface", "haar")
        )
        print(f"time ratio centerface / haar at {scale}: {cf / haar:.2f}")


if __name__ == "__main__":
    main()
