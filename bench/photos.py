"""Photo processing throughput on 12-megapixel phone-sized JPEGs, face checks included.

The input is made at run time (not committed): the public-domain astronaut portrait from the
test fixtures, cropped to 4:3 and upscaled to 4000x3000 with a little sensor-like noise, saved
as a quality-90 JPEG (~2-3 MB), like a phone picture. Figures: photos/s with 1 and 2 worker
processes (target >= 25/s on 2 cores). Run alone: ``python -m bench.photos``.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "fixtures" / "photos" / "astronaut.jpg"
SIZE = (4000, 3000)
PER_WORKER = 40


def phone_jpeg(seed: int = 0) -> bytes:
    """A 12 MP JPEG made by upscaling a real photograph (the face ends up ~740 px wide)."""
    src = Image.open(SOURCE).convert("RGB")
    crop = src.crop((0, 0, 512, 384))
    big = crop.resize(SIZE, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    arr = np.asarray(big).astype(np.int16)
    arr += rng.integers(-3, 4, size=arr.shape, dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _worker(args: tuple[bytes, int]) -> float:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    from issuance.photos import process_photo
    from yikatong.settings import PhotoSettings

    cv2.setNumThreads(1)
    data, count = args
    settings = PhotoSettings()
    process_photo(data, settings)  # warm-up: cascades loaded
    start = time.perf_counter()
    for _ in range(count):
        process_photo(data, settings)
    return time.perf_counter() - start


def main() -> dict[str, Any]:
    data = phone_jpeg()
    print(f"input: {SIZE[0]}x{SIZE[1]} JPEG, {len(data) / 1e6:.1f} MB")
    from issuance.photos import process_photo
    from yikatong.settings import PhotoSettings

    photo = process_photo(data, PhotoSettings())
    print(f"output: {photo.width}x{photo.height} JPEG, {len(photo.jpeg)} bytes")
    results: dict[str, Any] = {"input_mb": round(len(data) / 1e6, 2)}
    for procs in (1, 2):
        # each worker times its own loop after warm-up; throughput = photos / slowest loop
        ctx = mp.get_context("spawn")
        with ctx.Pool(procs) as pool:
            loops = pool.map(_worker, [(data, PER_WORKER)] * procs)
        rate = procs * PER_WORKER / max(loops)
        each_ms = 1000 * max(loops) / PER_WORKER
        print(f"{procs} process(es): {rate:.1f} photos/s ({each_ms:.1f} ms each)")
        results[f"photos_per_s_{procs}p"] = round(rate, 1)
    results["limit"] = 25.0
    results["ratio"] = round(results["photos_per_s_2p"] / 25.0, 2)
    return results


if __name__ == "__main__":
    main()
