"""The status page in a real headless browser (Debian's chromium driven by Playwright).

CI installs chromium (``.ci/run``); where it is missing the test says so and skips.
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os

import httpx
import pytest

from conftest import TOKEN, missing, needed_module
from kgclient import message

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
"""How long the page may take to show a change (it refreshes every 2 s; CI is busy)."""

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def chromium() -> None:
    if not os.path.exists(CHROMIUM):
        missing(f"chromium at {CHROMIUM}", "apt-get install chromium; .ci/run does")


def test_status_page_and_data_need_the_token(start_server) -> None:
    server = start_server("--default-launcher", "local")
    page = httpx.get(server.url + "/status")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<script" in page.text and "src=" not in page.text  # no external assets
    assert httpx.get(server.url + "/").text == page.text
    assert httpx.get(server.url + "/api/status").status_code == 401
    status = server.client.get("/api/status").json()
    assert status["kernels"] == [] and status["capacity"] == {}
    assert "local" in status["gateway"]["launchers"] and status["gateway"]["uptime"] >= 0


async def test_status_page_in_a_browser(start_server, tmp_path) -> None:
    async_api = needed_module("playwright.async_api")
    expect = async_api.expect

    server = start_server("--default-launcher", "local")
    gateway = server.client
    ada = gateway.start_kernel(env={"KERNEL_USERNAME": "ada", "KERNEL_MEMORY": "512Mi"})
    anon = gateway.start_kernel()

    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 720})
            await page.goto(f"{server.url}/status?token={TOKEN}")
            assert "token" not in page.url  # taken off the URL, kept in sessionStorage

            ada_row = page.locator(f'#kernels tr[data-kernel-id="{ada["id"]}"]')
            anon_row = page.locator(f'#kernels tr[data-kernel-id="{anon["id"]}"]')
            await expect(ada_row.locator("td.user")).to_have_text("ada", timeout=WAIT_MS)
            await expect(ada_row.locator(".state")).to_have_text("idle")
            await expect(ada_row.locator("td.memory")).to_have_text("512 MiB")
            await expect(ada_row.locator("td.host")).to_have_text("localhost")
            await expect(anon_row.locator("td.user")).to_have_text("\u2013")  # an en dash: no user
            await expect(anon_row.locator("td.kernelspec")).to_have_text("python3")
            await expect(page.locator("#kernel-count")).to_have_text("2")

            # Keep one kernel busy (waiting for input) with a client attached: its row shows it.
            ws = await gateway.connect(anon["id"])
            try:
                request = message(
                    "execute_request",
                    {"code": "name = input('name? ')", "silent": False, "allow_stdin": True},
                )
                await ws.send(request)
                while (asked := await ws.recv())["header"]["msg_type"] != "input_request":
                    pass
                await expect(anon_row.locator(".state")).to_have_text("busy", timeout=WAIT_MS)
                await expect(anon_row.locator("td.connections")).to_have_text("1")
                await page.screenshot(path=str(tmp_path / "status-busy.png"), full_page=True)

                answer = message("input_reply", {"value": "lovelace"}, channel="stdin")
                answer["parent_header"] = asked["header"]
                await ws.send(answer)
                await expect(anon_row.locator(".state")).to_have_text("idle", timeout=WAIT_MS)
            finally:
                await ws.close()
            await expect(anon_row.locator("td.connections")).to_have_text("0", timeout=WAIT_MS)

            gateway.shutdown_kernel(ada["id"])
            await expect(ada_row).to_have_count(0, timeout=WAIT_MS)
            await expect(anon_row).to_have_count(1)
            await expect(page.locator("#kernel-count")).to_have_text("1")

            # A reload (no ?token= any more) still shows the data: the tab kept the token.
            await page.reload()
            await expect(anon_row.locator("td.kernelspec")).to_have_text("python3", timeout=WAIT_MS)
            await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

            # A fresh tab without the token is asked for it, and shows no data.
            other = await (await browser.new_context()).new_page()
            await other.goto(f"{server.url}/status")
            await expect(other.locator("#login")).to_be_visible(timeout=WAIT_MS)
            await expect(other.locator("#kernels tbody tr")).to_have_count(0)
        finally:
            await browser.close()
    assert TOKEN not in server.output()
