"""The e-card page as a person sees it: Debian's Chromium (Playwright) opens the signed link a
clerk hands out, the page's own script fetches a new code every period, and the screenshot is
scanned by an independent decoder (zxing-cpp) and verified through the API. A provisional loss
without the holder's authorisation leaves the page without a code and says why. Screenshots go
to ``$YKT_CONSOLE_SCREENSHOTS`` (default: the test's tmp dir), 1366×768 and phone-sized.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import ApiEnv
from playwright.sync_api import Browser, Page, sync_playwright
from qr_scan import scan_qr

from devstack.dbserver import free_port
from issuance import services
from issuance.models import Channel
from issuance.services import ecard_token
from issuance.settings import EcardSettings
from yikatong.settings import Settings, load_settings

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PERIOD = 10  # the shortest [ecard] code_seconds: the test sees the code change
pytestmark = [pytest.mark.slow, pytest.mark.softhsm]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = load_settings(environ={"YKT_DATA_DIR": str(tmp_path)})
    return base.model_copy(update={"ecard": EcardSettings(code_seconds=PERIOD)})


@pytest.fixture
def browser() -> Iterator[Browser]:
    """One browser per test (Playwright's sync API must not outlive the test)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def served(api_env: ApiEnv) -> Iterator[str]:
    """The app of ``api_env`` over HTTP (uvicorn in a thread)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(api_env.client.app, host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = os.environ.get("YKT_CONSOLE_SCREENSHOTS")
    path = Path(where) if where else tmp_path / "shots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scan_screenshot(png: bytes) -> str:
    found = scan_qr(png)
    assert len(found) == 1, f"{len(found)} QR codes on the screen"
    return found[0]


def _wait_for_code(p: Page, previous: str | None = None) -> None:
    """The code image has loaded (and, with ``previous``, is another image than that)."""
    p.wait_for_function(
        "([prev]) => { const i = document.getElementById('ecard-code');"
        " return i && !i.closest('figure').hidden && i.complete && i.naturalWidth > 0"
        " && (prev === null || i.currentSrc !== prev); }",
        arg=[previous],
        timeout=(PERIOD + 10) * 1000,
    )


def test_the_resident_page_shows_a_refreshing_code_that_scans_and_verifies(
    api_env: ApiEnv, browser: Browser, served: str, shots: Path
) -> None:
    env = api_env
    card = env.new_card()
    r = env.client.post("/v1/ecards", json={"card_number": card.card_number},
                        headers=env.auth("clerk"))  # fmt: skip
    ecard_id = r.json()["ecard_id"]
    link = env.client.post(f"/v1/ecards/{ecard_id}/links", headers=env.auth("clerk")).json()
    assert link["path"].startswith("/console/ecard/r/")

    ctx = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN",
                              base_url=served, device_scale_factor=2)  # fmt: skip
    errors: list[str] = []
    p = ctx.new_page()
    p.on("console", lambda m: errors.append(m.text) if m.type == "error"
         and not m.text.startswith("Failed to load resource") else None)  # fmt: skip
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        p.goto(link["path"])
        assert p.get_by_role("heading", name="电子社保卡").is_visible()
        assert card.person.name in p.content()
        _wait_for_code(p)
        first_src = p.eval_on_selector("#ecard-code", "i => i.currentSrc")
        shot1 = p.screenshot(path=str(shots / "ecard-page-phone.png"), full_page=True)
        first = scan_screenshot(shot1)
        assert first.startswith(ecard_token.PREFIX)

        # the page fetches a new code by itself after one period
        _wait_for_code(p, first_src)
        shot2 = p.screenshot(path=str(shots / "ecard-page-phone-next.png"), full_page=True)
        second = scan_screenshot(shot2)
        assert second != first

        for text in (first, second):
            v = env.client.post("/v1/ecard/verifications", json={"code": text},
                                headers=env.auth("hospital")).json()  # fmt: skip
            assert v["valid"] is True and v["card_number"] == card.card_number, v
        # the first screenshot shown again: refused
        again = env.client.post("/v1/ecard/verifications", json={"code": first},
                                headers=env.auth("hospital")).json()  # fmt: skip
        assert again["reason"] == "code_reused"

        # reported lost by phone, the holder has not authorised the e-card: no code
        with env.session() as s:  # type: ignore[attr-defined]
            phone = env.actors["clerk"].via(Channel.PHONE)
            services.report_loss(s, env.settings, card.id, phone, identity_checked=True)
        # the open page: its next fetch is refused, the script hides the code and says why
        refused = p.locator("#ecard-refused")
        refused.wait_for(state="visible", timeout=(PERIOD + 10) * 1000)
        assert p.locator("#ecard-code").is_hidden()
        p.screenshot(path=str(shots / "ecard-page-lost-live.png"), full_page=True)
        # opened again: the page says it at once
        p.reload()
        refused.wait_for(state="visible", timeout=10_000)
        assert "挂失" in refused.inner_text()
        assert p.locator("#ecard-code").count() == 0  # no code on the page
        p.screenshot(path=str(shots / "ecard-page-lost.png"), full_page=True)

        # a link that is not genuine opens nothing
        gone = p.goto(link["path"][:-4] + "AAAA")
        assert gone is not None and gone.status == 404
    finally:
        ctx.close()
    assert errors == []  # no CSP violation, no script error
