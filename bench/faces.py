"""Card-face rendering throughput: front + back at 300 dpi with a processed photo, and the
2-page PDF a printer receives. Run alone: ``python -m bench.faces``."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "issuance" / "sample_data" / "photos" / "resident-01.jpg"
COUNT = 40


def main() -> dict[str, Any]:
    from issuance.photos import process_photo
    from printers.faces import CardFace, render_back, render_front
    from printers.spool import card_pdf
    from yikatong.settings import PhotoSettings

    jpeg = process_photo(PHOTO.read_bytes(), PhotoSettings()).jpeg
    face = CardFace(
        "张晓明",
        "33010619900101123X",
        "A00000019",
        date(2024, 5, 3),
        jpeg,
        "杭州市人力资源和社会保障局",
        "中国工商银行",
        "杭州市西湖区",
    )
    render_front(face), render_back(face)  # warm-up: fonts loaded
    start = time.perf_counter()
    for _ in range(COUNT):
        front, back = render_front(face), render_back(face)
    render_s = (time.perf_counter() - start) / COUNT
    start = time.perf_counter()
    for _ in range(COUNT):
        card_pdf(front, back)
    pdf_s = (time.perf_counter() - start) / COUNT
    print(f"render front+back: {1 / render_s:.1f} cards/s ({render_s * 1000:.1f} ms)")
    print(f"2-page PDF: {1 / pdf_s:.1f} cards/s ({pdf_s * 1000:.1f} ms)")
    print(f"render + PDF: {1 / (render_s + pdf_s):.1f} cards/s in 1 process")
    return {
        "faces_per_s": round(1 / render_s, 1),
        "pdf_per_s": round(1 / pdf_s, 1),
        "cards_per_s_1p": round(1 / (render_s + pdf_s), 1),
    }


if __name__ == "__main__":
    main()
