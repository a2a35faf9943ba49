"""The status page (``GET /``) in a real browser against a real agent on the private Postfix and MariaDB.

Debian's ``chromium`` driven by its ``chromium-driver`` through selenium, headless, one browser for
the module (a fresh profile; the flags keep Chromium off the closed network). Each test starts
``reconciler run`` as ``test_agent.py`` does and watches the page follow it without a reload.
Screenshots go to ``$RECONCILER_TEST_ARTIFACTS`` (default ``test-artifacts/`` at the repository's
root, gitignored): the CI artifact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mailhost import RELAY_SECRET, MailHost
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_agent import TOKEN, RunningAgent, configure

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("RECONCILER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
HOSTILE = "<img src=x onerror=alert(1)>"


def start_chromium(profile: Path) -> webdriver.Chrome:
    """Headless Chromium on a fresh profile, its console log kept, driven by Debian's chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module."""
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "chromium and chromium-driver are needed"
    try:
        driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    except WebDriverException as exc:  # a loaded machine can miss chromedriver's start-up deadline once
        print(f"chromium did not start, once more: {exc.msg}")
        driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: webdriver.Chrome, url: str) -> None:
    """Load ``url`` with an empty console log (an earlier page may have logged its agent going away)."""
    driver.get("about:blank")
    severe_console(driver)
    driver.get(url)


def shot(driver: webdriver.Chrome, name: str, *, full: bool = True) -> Path:
    """A screenshot of the whole page (not only the window) under the artifacts directory."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if full:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.execute_script("return window.innerWidth")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": max(height, 200), "deviceScaleFactor": 1, "mobile": False},
        )
    try:
        driver.save_screenshot(str(path))
    finally:
        if full:
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def until(driver: webdriver.Chrome, what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    """Wait for ``predicate`` (polled every 50 ms); on timeout, fail with the page's state."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda _: predicate())
    except TimeoutException:
        state = driver.execute_script("var b = document.getElementById('state'); return b && b.textContent")
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; the page shows state {state!r}") from None


# Read in one script run: the page swaps its live part every second, which makes element handles stale.
_TEXT = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText).join(' ')"
_CARD = """for (const el of document.querySelectorAll('section.revision')) {
  if (el.querySelector('h2').textContent.toLowerCase() === arguments[0]) return el.innerText;
} return '';"""
_COLOURS = "return Array.from(document.querySelectorAll(arguments[0])).map(e => [e.textContent, getComputedStyle(e).color])"


def text_of(driver: webdriver.Chrome, selector: str) -> str:
    return str(driver.execute_script(_TEXT, selector))


def badge(driver: webdriver.Chrome) -> str:
    return text_of(driver, "#state")


def card(driver: webdriver.Chrome, title: str) -> str:
    """The text of the revision card titled ``title`` (Head or Applied)."""
    return str(driver.execute_script(_CARD, title.lower()))


def severe_console(driver: webdriver.Chrome) -> list[str]:
    """Console errors since the last call (CSP violations and script errors land here)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - the agent's loopback port
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def secrets_of(host: MailHost) -> list[str]:
    return [RELAY_SECRET, TOKEN, host.db.reconciler_password, host.db.mailuser_password]


def test_page_follows_pushes_and_shows_failures_as_text(browser: webdriver.Chrome, mailhost: MailHost) -> None:
    """The page shows synced with the applied revision, a push within 2 s without a reload, a hostile subject as text, a bad push as failed with file and line; /status has the head's commit during its attempt."""
    host = mailhost
    configure(host)
    agent = RunningAgent(host)
    try:
        first = host.git("rev-parse", "HEAD")
        agent.wait_state("synced", 20, first)
        open_page(browser, agent.url + "/")
        assert badge(browser) == "synced"
        assert first[:12] in card(browser, "Applied") and "initial revision" in card(browser, "Applied")
        assert "Test <test@example.net>" in card(browser, "Head")
        assert severe_console(browser) == []
        browser.execute_script("window.__sameDocument = 'yes'; window.alert = function () { window.__alerted = 1; };")

        # A push appears by itself, within 2 s of the commit, in the same document.
        host.add_mailbox("page@example.net")
        pushed = host.commit("add page@example.net")
        started = time.monotonic()
        until(
            browser,
            "the pushed revision as applied",
            lambda: pushed[:12] in card(browser, "Applied") and badge(browser) == "synced",
            2.0,
        )
        seen_after = time.monotonic() - started
        assert "add page@example.net" in card(browser, "Head")
        assert browser.execute_script("return window.__sameDocument") == "yes", "the page was reloaded"
        status = agent.status()
        assert status["head_commit"]["subject"] == "add page@example.net"
        assert status["head_commit"]["author"] == "Test <test@example.net>" and status["head_commit"]["time"]
        assert "head commit: add page@example.net (Test <test@example.net>, 20" in host.cli("status").stdout
        print(f"push shown on the page {seen_after:.2f} s after the commit")

        # A commit subject holding markup is text, everywhere it is shown, and runs nothing.
        hostile = host.commit(HOSTILE)
        until(browser, "the hostile revision", lambda: hostile[:12] in card(browser, "Applied"), 5)
        assert text_of(browser, "section.revision .subject").split(" ")[:3] == HOSTILE.split(" ")
        assert HOSTILE in text_of(browser, "#history")
        assert browser.find_elements(By.CSS_SELECTOR, "img") == []
        assert browser.execute_script("return window.__alerted") is None
        with pytest.raises(NoAlertPresentException):
            _ = browser.switch_to.alert.text
        assert HOSTILE not in browser.page_source and "&lt;img src=x onerror=alert(1)&gt;" in browser.page_source
        assert severe_console(browser) == []

        # head_commit is known while the head's attempt runs, not only once it ended.
        host.edit("postfix/main.cf", lambda t: t.replace("smtpd_banner = $myhostname ESMTP", "smtpd_banner = $myhostname ESMTP p"))
        reload_rev = host.commit("a banner change: a reload")
        status = agent.wait_state("applying", 10, reload_rev)
        assert status["head_commit"]["subject"] == "a banner change: a reload"
        assert status["applied_revision"] == hostile
        until(browser, "the reload applied", lambda: reload_rev[:12] in card(browser, "Applied"), 10)

        # A revision Postfix refuses: failed, with the error naming the file and line.
        host.edit("postfix/main.cf", lambda t: t + "smtp_sender_restrictions = x\n")
        bad = host.commit("a typo in main.cf")
        until(browser, "state failed", lambda: badge(browser) == "failed", 10)
        error = text_of(browser, "#last-error")
        assert re.search(r"postfix/main\.cf:\d+: .*smtp_sender_restrictions", error), error
        assert bad[:12] in card(browser, "Head") and reload_rev[:12] in card(browser, "Applied")
        assert "rejected" in text_of(browser, "#history") or "failed" in text_of(browser, "#history")
        assert "no plan" in text_of(browser, "#pending")
        shot(browser, "status-page-failed")
        assert browser.execute_script("return window.__sameDocument") == "yes"

        # Without JavaScript the first render is the same page: state, revisions, the error.
        code, headers, body = http(agent.url + "/")
        html = body.decode()
        assert code == 200 and headers["content-security-policy"].startswith("default-src 'none'")
        assert 'badge-failed">failed' in html and bad[:12] in html and "smtp_sender_restrictions" in html
        assert HOSTILE not in html
        for value in secrets_of(host):
            assert value not in html and value not in browser.page_source
    finally:
        assert agent.stop() == 0


def test_sync_now_needs_the_token_and_no_secret_reaches_the_page(browser: webdriver.Chrome, mailhost: MailHost) -> None:
    """Drift in a file holding a secret shows masked; Sync now without the token is refused, with it reverts the drift; a stopped agent is shown."""
    host = mailhost
    (host.base / "token").write_text(TOKEN + "\n")
    configure(host, api={"token_file": str(host.base / "token")}, policy={"self_heal": False})
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20)
        open_page(browser, agent.url + "/")
        browser.execute_script("window.sessionStorage.clear()")
        assert badge(browser) == "synced"
        assert severe_console(browser) == []

        # Drift in the live relay_password (it holds a secret): reported, not reverted, masked.
        live = host.postfix.config_dir / "relay_password"
        good = live.read_bytes()
        assert RELAY_SECRET.encode() in good
        with live.open("a") as fh:
            fh.write(f"[backup.example]:587 user@example.net:{RELAY_SECRET}\n")
        until(browser, "out_of_sync with the drift", lambda: "relay_password" in text_of(browser, "#drift"), 10)
        assert badge(browser) == "out_of_sync"
        pending = text_of(browser, "#pending")
        assert "file update: relay_password" in pending
        # Masked exactly as `diff` masks it: the page's lines are those of GET /diff.
        doc = json.loads(http(agent.url + "/diff")[2])
        (change,) = [c for c in doc["changes"] if c["target"] == "relay_password"]
        lines = browser.execute_script(_COLOURS, "#pending details[id^='file-'] pre span")
        assert [text.rstrip("\n") for text, _ in lines] == change["diff"].rstrip("\n").split("\n")
        deleted = browser.execute_script(_COLOURS, "#pending span.l-del")
        assert deleted and "[backup.example]" not in str(deleted)
        plain = browser.execute_script(_COLOURS, "#pending span.l-plain")
        colours = {c for _, c in deleted} | {c for _, c in plain}
        assert len(colours) == 2, colours  # deleted lines are coloured apart from context lines
        shot(browser, "status-page-drift")
        for value in secrets_of(host):
            assert value not in browser.page_source, value[:4]
            for path in ("/", "/ui/live", "/status", "/diff"):
                assert value.encode() not in http(agent.url + path)[2], (path, value[:4])

        # Sync now without the token: the dialog is cancelled, the agent refuses (401), the drift stays.
        browser.find_element(By.ID, "sync-button").click()
        dialog = browser.find_element(By.ID, "token-dialog")
        until(browser, "the token dialog", lambda: dialog.get_attribute("open") is not None, 2)
        browser.find_element(By.ID, "token-cancel").click()
        until(browser, "the refusal", lambda: "refused" in text_of(browser, "#sync-message"), 3)
        assert "401" in text_of(browser, "#sync-message")
        time.sleep(1.2)  # a reconcile, had one been queued, would have started by now
        assert badge(browser) == "out_of_sync" and live.read_bytes() != good
        assert not any(e.get("event") == "api.sync" for e in agent.log())

        # With the token: asked once, kept in the tab's session storage (no URL, no cookie); the drift is reverted.
        browser.find_element(By.ID, "sync-button").click()
        until(browser, "the token dialog", lambda: dialog.get_attribute("open") is not None, 2)
        browser.find_element(By.ID, "token-input").send_keys(TOKEN)
        browser.find_element(By.ID, "token-ok").click()
        until(browser, "the sync queued", lambda: "queued" in text_of(browser, "#sync-message"), 3)
        until(browser, "synced after the sync", lambda: badge(browser) == "synced", 10)
        assert live.read_bytes() == good
        assert browser.execute_script("return window.sessionStorage.getItem('reconciler.api-token')") == TOKEN
        assert browser.execute_script("return document.cookie") == ""
        assert TOKEN not in browser.current_url and TOKEN not in browser.page_source
        browser.find_element(By.ID, "sync-button").click()  # the second time it is not asked again
        until(browser, "the second sync", lambda: text_of(browser, "#sync-message").count("queued") == 1, 3)
        assert dialog.get_attribute("open") is None
        assert sum(1 for e in agent.log() if e.get("event") == "api.sync") == 2
        assert [m for m in severe_console(browser) if "/sync" not in m] == []  # the 401 is the only error
        shot(browser, "status-page-synced")

        # The live part is cached by ETag; the page's own files are served with their types.
        code, headers, _ = http(agent.url + "/ui/live")
        assert code == 200 and http(agent.url + "/ui/live", {"If-None-Match": headers["etag"]})[0] == 304
        assert http(agent.url + "/static/status.js")[1]["content-type"].startswith("text/javascript")
        assert http(agent.url + "/static/../app.py")[0] == 404

        # Dark mode and a phone's width.
        light = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
        )
        dark = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert dark != light
        shot(browser, "status-page-dark")
        browser.set_window_size(390, 844)
        widths = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths  # nothing wider than the phone: long lines scroll in their box
        shot(browser, "status-page-phone")
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.set_window_size(1280, 1000)
    finally:
        code = agent.stop()
    assert code == 0
    # The agent is gone: the page says so, and keeps what it showed.
    until(browser, "the not-answering notice", lambda: "not answering" in text_of(browser, "#connection"), 5)
    assert "stale" in (browser.find_element(By.TAG_NAME, "body").get_attribute("class") or "")
    assert badge(browser) == "synced"
    shot(browser, "status-page-agent-gone", full=False)
    print(json.dumps({"artifacts": str(ARTIFACTS)}))
