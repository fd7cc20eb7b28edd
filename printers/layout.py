"""The card-face layout as data: where everything goes on an ID-1 card, in millimetres.

ID-1 is 85.60 x 53.98 mm (ISO/IEC 7810). The arrangement follows the public pictures of the
national social security card (LD/T 32.1 describes the face; its text is not public): issuer mark
and the title "社会保障卡" across the top, the bank's mark top right, the photo on the right, the
holder's name, social security number, card number and issue month on the left; the chip sits
on the front left under the title (left blank here: it is a contact plate, not printed). The back
carries the holder notes, the issuer's contact and the validity. Marks are drawn as simple
vector shapes (no trademarked logo is reproduced).

Everything here is frozen data; :mod:`printers.faces` draws it. Convert with :meth:`Box.px`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: ISO/IEC 7810 ID-1 size.
CARD_WIDTH_MM = 85.60
CARD_HEIGHT_MM = 53.98
MM_PER_INCH = 25.4


def mm_to_px(mm: float, dpi: int) -> int:
    return round(mm * dpi / MM_PER_INCH)


def card_size_px(dpi: int) -> tuple[int, int]:
    """Card size in pixels at ``dpi`` (300 dpi -> 1011 x 638)."""
    return mm_to_px(CARD_WIDTH_MM, dpi), mm_to_px(CARD_HEIGHT_MM, dpi)


@dataclass(frozen=True)
class Box:
    """A rectangle in millimetres from the card's top-left corner."""

    x: float
    y: float
    w: float
    h: float

    def px(self, dpi: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels."""
        return (
            mm_to_px(self.x, dpi),
            mm_to_px(self.y, dpi),
            mm_to_px(self.x + self.w, dpi),
            mm_to_px(self.y + self.h, dpi),
        )


@dataclass(frozen=True)
class TextField:
    """A line of text: label (may be empty) and value, baseline-free box, font size in points."""

    box: Box
    label: str
    size_pt: float
    bold: bool = False
    #: Characters of spacing between label and value, in mm.
    label_width_mm: float = 0.0


@dataclass(frozen=True)
class FrontLayout:
    issuer_mark: Box = Box(3.5, 3.0, 7.0, 7.0)
    issuer_name: TextField = TextField(Box(11.5, 3.2, 50.0, 3.6), "", 6.5)
    title: TextField = TextField(Box(11.5, 6.4, 40.0, 5.2), "社会保障卡", 12.5, bold=True)
    bank_mark: Box = Box(70.0, 3.0, 12.0, 7.0)
    bank_name: TextField = TextField(Box(58.0, 10.6, 24.5, 2.8), "", 5.5)
    #: Chip contact plate position (ISO/IEC 7816-2), not printed: kept clear of text.
    chip: Box = Box(10.25, 19.23, 11.0, 9.0)
    photo: Box = Box(62.0, 15.5, 20.0, 24.6)
    name: TextField = TextField(Box(25.0, 17.0, 35.0, 4.2), "姓名", 8.5, label_width_mm=9.0)
    ssn: TextField = TextField(Box(3.5, 31.0, 57.0, 4.0), "社会保障号码", 7.5, label_width_mm=19.5)
    card_number: TextField = TextField(
        Box(3.5, 36.5, 57.0, 4.0), "社会保障卡号", 7.5, label_width_mm=19.5
    )
    issue_date: TextField = TextField(
        Box(3.5, 42.0, 57.0, 4.0), "发卡日期", 7.5, label_width_mm=19.5
    )
    region: TextField = TextField(Box(3.5, 48.0, 57.0, 3.2), "", 5.5)
    #: Band colour along the top (RGB).
    band_colour: tuple[int, int, int] = (196, 30, 58)
    band: Box = Box(0.0, 0.0, CARD_WIDTH_MM, 13.8)
    background: tuple[int, int, int] = (246, 247, 250)
    #: A mark across the face (the temporary card's "临时卡 TEMPORARY"); None: none.
    stamp: TextField | None = None
    stamp_colour: tuple[int, int, int] = (196, 30, 58)
    #: The validity printed on the front (the temporary card's, "有效期至", where the region
    #: line would be); None: back only.
    validity: TextField | None = None
    #: False: no bank mark and bank name (a card without the financial application).
    bank: bool = True


@dataclass(frozen=True)
class BackLayout:
    title: TextField = TextField(Box(4.0, 3.5, 77.6, 4.5), "持卡人须知", 8.5, bold=True)
    notes: tuple[str, ...] = (
        "1. 本卡是持卡人享受社会保障和公共就业服务权益的电子凭证，具有信息记录、",
        "   信息查询、业务办理等功能。",
        "2. 本卡仅限持卡人本人使用，请妥善保管，不得转借他人。",
        "3. 如有遗失，请立即拨打服务电话或到服务网点办理挂失。",
        "4. 本卡金融功能使用须遵守发卡银行的有关规定。",
    )
    notes_box: Box = Box(4.0, 9.5, 77.6, 22.0)
    notes_size_pt: float = 5.6
    contact: TextField = TextField(Box(4.0, 34.0, 56.0, 3.4), "服务电话：12333", 6.0)
    issuer: TextField = TextField(Box(4.0, 38.5, 56.0, 3.4), "发卡机构：", 6.0)
    validity: TextField = TextField(Box(4.0, 43.0, 56.0, 3.4), "有效期限：", 6.0)
    signature: Box = Box(4.0, 47.5, 40.0, 4.5)
    #: The face code (QR code of what is printed, read back by the quality check:
    #: :mod:`printers.facecode`); None = no face code.
    face_code: Box | None = Box(63.0, 32.5, 19.0, 19.0)
    background: tuple[int, int, int] = (250, 250, 250)


@dataclass(frozen=True)
class CardLayout:
    front: FrontLayout = field(default_factory=FrontLayout)
    back: BackLayout = field(default_factory=BackLayout)
    width_mm: float = CARD_WIDTH_MM
    height_mm: float = CARD_HEIGHT_MM


DEFAULT_LAYOUT = CardLayout()

#: The temporary card (issued at the counter, medical insurance only, card category "2" on the
#: chip): a face that cannot be taken for the social security card: its own title, an orange
#: band, "临时卡 TEMPORARY" across the face, the validity on the front, no bank mark (no
#: financial application), and notes on the deposit and the hand-back.
TEMPORARY_LAYOUT = CardLayout(
    front=FrontLayout(
        title=TextField(Box(11.5, 6.4, 46.0, 5.2), "临时社会保障卡", 12.5, bold=True),
        band_colour=(214, 110, 20),
        stamp=TextField(Box(25.0, 22.0, 35.0, 7.0), "临时卡 TEMPORARY", 11.0, bold=True),
        stamp_colour=(214, 110, 20),
        issue_date=TextField(Box(3.5, 42.0, 57.0, 4.0), "发卡日期", 7.5, label_width_mm=19.5),
        validity=TextField(Box(3.5, 47.0, 57.0, 4.0), "有效期至", 7.5, label_width_mm=19.5),
        bank=False,
    ),
    back=BackLayout(
        title=TextField(Box(4.0, 3.5, 77.6, 4.5), "临时卡须知", 8.5, bold=True),
        notes=(
            "1. 本卡为临时社会保障卡，仅具有医疗保险功能，不具有金融功能。",
            "2. 本卡在有效期内使用，过期自动失效。",
            "3. 领取正式社会保障卡时请交回本卡，凭收据退还押金。",
            "4. 本卡仅限持卡人本人使用，如有遗失请立即办理挂失。",
        ),
    ),
)


def is_temporary_profile(profile_name: str) -> bool:
    """A temporary card's profile (``cardspec.profile``: ``ssc{2,3}-<alg>-tmp[-tN]``)."""
    return "-tmp" in profile_name


#: The face layout of each card profile family (profile name prefix -> layout): the layout is
#: defined with the card profile (``cardspec.profile``: ``ssc2-*`` second generation, ``ssc3-*``
#: third). CHOICE: both generations share the national face design; a city with its own design
#: registers it here under its profile's name.
PROFILE_LAYOUTS: dict[str, CardLayout] = {"ssc2": DEFAULT_LAYOUT, "ssc3": DEFAULT_LAYOUT}


def layout_for_profile(profile_name: str) -> CardLayout:
    """The face layout of cards of ``profile_name`` (longest registered prefix wins; the
    default layout for an unknown profile family; :data:`TEMPORARY_LAYOUT` for a temporary
    card's profile)."""
    if is_temporary_profile(profile_name):
        return TEMPORARY_LAYOUT
    best = ""
    for prefix in PROFILE_LAYOUTS:
        if profile_name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return PROFILE_LAYOUTS[best] if best else DEFAULT_LAYOUT
