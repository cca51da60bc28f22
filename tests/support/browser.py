"""A real browser for tests: Debian's chromium, headless, driven through
chromedriver by selenium (docs/dependencies.md). This machine's network is
closed, so every background service of chromium's that would call out is off,
and each browser gets a fresh profile directory.

Missing chromium or chromedriver skips the browser tests, except under
CI=true, where it is a failure: scripts/install-browser-test-env installs them.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SkipTest

#: An async script: the player's terminal text once xterm.js has drawn
#: everything written so far (two animation frames after its write callback).
FLUSH_PLAYER = """
const done = arguments[arguments.length - 1];
const terminal = window.teleportPlayer.terminal;
terminal.write('', () => requestAnimationFrame(() => requestAnimationFrame(
  () => done(document.querySelector('.xterm-rows').innerText))));
"""

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
)


def browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = "chromium and chromedriver are needed for the browser tests (scripts/install-browser-test-env)"
    if os.environ.get("CI") == "true":
        raise AssertionError(message)
    raise SkipTest(message)


def start_browser(testcase):
    """A headless chromium, quit at the test's end. The proxy's certificate
    is issued by the cluster's own host CA, so the browser accepts it as
    ``tsh --insecure`` does."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_binaries()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    testcase.addCleanup(shutil.rmtree, profile, True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.accept_insecure_certs = True
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    testcase.addCleanup(browser.quit)
    return browser
