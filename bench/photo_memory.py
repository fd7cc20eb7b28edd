"""Peak memory of the photo pipeline on the worst inputs under the pixel limit.

Each input is processed by :func:`issuance.photos.process_photo` in a fresh process (spawned,
so its peak RSS, ``VmHWM`` in ``/proc/self/status``, is that one photo's alone, on top of the
interpreter with NumPy, OpenCV and Pillow loaded -- the baseline, reported beside it). Inputs,
made at run time from the corpus's real portrait (``tests/fixtures/photos/corpus.py``; nothing
large is committed):

* the issue's case, a 16-bit greyscale PNG at the pixel limit (``[photos] max_input_pixels``,
  the square just under it: 7,071 x 7,071 at the default 50,000,000), which used to be copied
  to float64 (1.5 GB at 7,700 x 7,700);
* an 8-bit RGB PNG at the limit, the largest decode a PNG can need (decoded whole);
* a JPEG at the limit whose face is small (about 300 px), so that the card photo needs the
  picture at full scale (no DCT reduction);
* a 12 MP phone JPEG (DCT-scaled decode);
* every 12 MP case of the labelled corpus (the worst of them is reported).

Target: about 300 MB for any input under the limit. Run alone: ``python -m bench.photo_memory``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 300


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(path: str, queue: Any) -> None:
    import cv2

    from issuance.errors import PhotoRejected
    from issuance.photos import process_photo
    from issuance.settings import PhotoSettings

    cv2.setNumThreads(1)
    base = _vm_hwm_mib()
    data = Path(path).read_bytes()
    start = time.perf_counter()
    try:
        verdict = "accept" if process_photo(data, PhotoSettings()) else "?"
    except PhotoRejected as exc:
        verdict = str(exc.details["reason"])
    queue.put((base, _vm_hwm_mib(), time.perf_counter() - start, verdict, len(data)))


def measure(path: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(path), queue))
    proc.start()
    base, peak, seconds, verdict, size = queue.get(timeout=600)
    proc.join()
    return {
        "baseline_mib": round(base, 1),
        "peak_mib": round(peak, 1),
        "seconds": round(seconds, 2),
        "verdict": verdict,
        "file_mb": round(size / 1e6, 1),
    }


def _inputs(tmp: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from issuance.settings import PhotoSettings
    from tests.fixtures.photos.corpus import ASTRONAUT_FACE, astronaut, cases, jpeg, phone, place

    side = math.isqrt(PhotoSettings().max_input_pixels)  # the square at the pixel limit
    out: dict[str, Path] = {}
    big = place(astronaut(), ASTRONAUT_FACE, (side, side), 1400)
    grey = np.asarray(big.convert("L")).astype(np.uint16) * 257
    out["png16-grey-at-limit"] = tmp / "grey16.png"
    Image.fromarray(grey).save(out["png16-grey-at-limit"], compress_level=1)
    del grey
    out["png-rgb-at-limit"] = tmp / "rgb.png"
    big.save(out["png-rgb-at-limit"], compress_level=1)
    del big
    out["jpeg-small-face-at-limit"] = tmp / "small-face.jpg"
    out["jpeg-small-face-at-limit"].write_bytes(
        jpeg(place(astronaut(), ASTRONAUT_FACE, (side, side), 300), 90)
    )
    print(f"inputs at the pixel limit: {side} x {side} = {side * side:,} pixels", flush=True)
    out["jpeg-12mp"] = tmp / "phone.jpg"
    out["jpeg-12mp"].write_bytes(jpeg(phone(600), 90))
    for case in cases():
        if case.big:
            out[f"corpus:{case.name}"] = tmp / f"{case.name}.bin"
            out[f"corpus:{case.name}"].write_bytes(case.data())
    return out


def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ykt-photo-memory-") as tmp:
        inputs = _inputs(Path(tmp))
        worst_corpus = ("", 0.0)
        for name, path in inputs.items():
            r = measure(path)
            print(
                f"{name:40} {r['file_mb']:6.1f} MB file: peak {r['peak_mib']:6.1f} MiB "
                f"(baseline {r['baseline_mib']:.1f}), {r['seconds']:.2f} s, {r['verdict']}",
                flush=True,
            )
            if name.startswith("corpus:"):
                if r["peak_mib"] > worst_corpus[1]:
                    worst_corpus = (name, r["peak_mib"])
            else:
                results[f"{name.replace('-', '_')}_peak_mib"] = r["peak_mib"]
            results["baseline_mib"] = r["baseline_mib"]
    results["corpus_worst"] = worst_corpus[0]
    results["corpus_worst_peak_mib"] = worst_corpus[1]
    results["worst_peak_mib"] = max(v for k, v in results.items() if k.endswith("_peak_mib"))
    results["limit"] = LIMIT_MIB
    print(f"worst peak {results['worst_peak_mib']} MiB (target about {LIMIT_MIB} MiB)")
    return results


if __name__ == "__main__":
    main()
