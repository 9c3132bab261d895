"""Headless Chromium (Debian's chromium + chromium-driver, driven by selenium)
against a real local system. .ci/setup.d/chromium.sh installs them."""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "clients"))

from system_thread import SystemThread  # noqa: E402

ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def local_system(tmp_path_factory):
    # The browser keeps idle keep-alive connections to the SSE server (page, static
    # files), which its graceful shutdown waits out; a short grace keeps the
    # outage test quick.
    # Its own Redis (LocalSystem starts a private one): a worker of another
    # system on a shared Redis would own the fan-out partitions.
    system = SystemThread(
        log_dir=tmp_path_factory.mktemp("system-logs"),
        settings_overrides={"RTSTREAM_SSE_SHUTDOWN_GRACE_SECONDS": "0.5"},
    ).start()
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture
def browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.fail("chromium / chromedriver not installed: run .ci/setup.d/chromium.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rtstream-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def screenshot(browser, request):
    """Save a screenshot of the page under artifacts/browser/ and print its path."""

    def take(label: str = "") -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{request.node.name}{'-' + label if label else ''}.png"
        browser.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    return take
