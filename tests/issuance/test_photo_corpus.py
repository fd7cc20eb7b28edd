"""The labelled photo corpus (tests/fixtures/photos/corpus.py): every case gets its verdict.

Each case is a real photograph (or a real non-photo) transformed the way a card centre meets it
-- 12 MP phone frames, EXIF orientations, MPO, JPEG quality, lighting, several faces, tiny,
16-bit, transparent, damaged -- labelled "accept" or with the reason it must be refused. The
confusion table (expected vs got) is printed by ``python -m bench.photo_detect --table``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from issuance.errors import PhotoRejected
from issuance.photos import PhotoProblem, process_photo
from issuance.settings import PhotoSettings
from tests.fixtures.photos.corpus import ACCEPT, cases

CASES = cases()


def test_the_corpus_is_large_and_covers_every_reason() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    labels = Counter(c.expected for c in CASES)
    assert labels[ACCEPT] >= 30
    wanted = {
        "several_faces", "face_too_small", "image_too_small", "not_colour", "too_dark",
        "transparent", "corrupt", "not_an_image", "too_many_pixels", "no_face",
    }  # fmt: skip
    assert wanted <= set(labels)
    assert set(labels) - {ACCEPT} <= {p.value for p in PhotoProblem}
    assert sum(c.big for c in CASES) >= 10  # 12 MP phone frames, built at test time


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case) -> None:  # type: ignore[no-untyped-def]
    data = case.data()
    settings = PhotoSettings(**case.settings)
    if case.expected == ACCEPT:
        photo = process_photo(data, settings)
        assert (photo.width, photo.height) == (settings.width, settings.height)
        assert settings.min_bytes <= len(photo.jpeg) <= settings.max_bytes
        if "MPO" in case.note or "first picture" in case.note:
            assert photo.source_format == "MPO" and "first picture" in photo.notes[0]
        if "padded" in case.note:
            assert photo.pad_colour is not None
        return
    with pytest.raises(PhotoRejected) as info:
        process_photo(data, settings)
    assert info.value.details["reason"] == case.expected, info.value.problems[0].reason
    assert info.value.problems[0].code == case.expected
