"""The page in headless Chromium (Debian's `chromium`, driven by Playwright): type a
prompt, pick a mode, see per-sentence attribution; an admin opts a document out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.conftest import ADMIN_KEY, Live

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium "
                    "(apt-get install -y chromium)")
def test_page_completes_attributes_and_opts_out(live: Live) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.goto(live.url + "/")
            page.fill("#prompt", "In the beginning God created the heaven")
            page.select_option("#mode", "knnlm")
            page.fill("#max_tokens", "8")
            page.fill("#key", ADMIN_KEY)
            page.click("#go")
            page.wait_for_selector(".sentence .doc code", timeout=30_000)
            assert page.inner_text("#completion").startswith("In the beginning")
            first = page.locator(".doc code").first.inner_text()
            assert page.locator(".doc .lic").first.inner_text() in (
                "pd", "sw", "by", "copyleft", "restricted", "unknown")
            page.locator("button.optout").first.click()
            page.wait_for_function("document.getElementById('receipt').textContent.length > 0")
            assert first in page.inner_text("#receipt")
        finally:
            browser.close()
    with live.client(ADMIN_KEY) as admin:
        receipts = admin.get("/admin/optouts").json()["receipts"]
    assert [r["doc_ids"] for r in receipts] == [[first]]
