"""End to end in a real headless browser: `capsim app` serves the page, Chromium drives it.

Uses the Python ``playwright`` package pointed at Debian's ``chromium`` binary (``apt-get install chromium``;
no browser download). Outside CI the test is skipped when Chromium or playwright is missing; in CI (``CI`` set)
that is a failure, because ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # a cold start in a fresh clone compiles every module first
RESULT_TIMEOUT_MS = 90_000


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs chromium and playwright)")
    pytest.skip(reason)


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CAPSIM_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(tmp_path):
    """Start `capsim app` on a free localhost port; yield its URL; stop the whole process group afterwards."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    # The `capsim` entry point, from this interpreter (the console script may not be on PATH).
    launcher = "import sys; from simulator.cli import main; sys.argv[0] = 'capsim'; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, "app", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"the dashboard did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def seconds(cell: str) -> float:
    value, unit = re.fullmatch(r"([\d.,]+) (µs|ms|s)", cell.strip()).groups()
    return float(value.replace(",", "")) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


#: Whether the widget under a CSS selector shows a value starting with a text (as text, or in its input box,
#: depending on the Streamlit version's selectbox).
SHOWS_VALUE = """([selector, text]) => {
  const el = document.querySelector(selector);
  if (!el) return false;
  const input = el.querySelector("input");
  return (input !== null && input.value.startsWith(text)) || el.innerText.includes(text);
}"""


def wait_until_idle(page) -> None:
    """Wait for Streamlit's "running" indicator to go away (the re-run a widget change started)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=RESULT_TIMEOUT_MS)


def assert_no_exception(page) -> None:
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, f"the page shows an exception: {shown.first.inner_text()[:2000]}"


def test_compare_two_configurations_in_a_browser(dashboard, tmp_path):
    executable = chromium_path()
    if executable is None:
        _missing("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright Python package is not installed (pip install 'capsim[test]')")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1500, "height": 2200})
        try:
            drive(page, dashboard, tmp_path)
        except Exception as exc:  # keep the evidence: what the page showed, and the server's log
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            body = page.locator("body").inner_text()[-2000:]
            log = (tmp_path / "server.log").read_text()[-2000:]
            pytest.fail(f"{type(exc).__name__}: {exc}\n--- page text ---\n{body}\n--- server log ---\n{log}\n"
                        f"(screenshot: {tmp_path / 'failure.png'})")
        finally:
            browser.close()


def drive(page, url: str, tmp_path: Path) -> None:
    """Load the page, put an H200 in configuration 2, run, and check the results; screenshot at the end."""
    page.goto(url)
    run = page.get_by_role("button", name="Run comparison")
    # The page is ready when its run button shows -- or it failed, if an exception shows first.
    run.or_(page.locator('[data-testid="stException"]')).first.wait_for(timeout=START_TIMEOUT_S * 1000)
    assert_no_exception(page)

    # Change a configuration: configuration 2 runs on an H200 instead of an A100. The first script run
    # may still be redrawing the sidebar when the button appears; wait for it, and retry the dropdown
    # if a redraw closed it before its options showed.
    wait_until_idle(page)
    page.get_by_role("tab", name="Config 2").click()
    option = page.get_by_role("option", name=re.compile(r"^h200\b"))
    for attempt in range(4):
        page.locator(".st-key-w0-cfg1-deployment-device").click()
        try:
            option.wait_for(timeout=10_000)
            break
        except Exception:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")
            wait_until_idle(page)
    option.click()
    page.wait_for_function(SHOWS_VALUE, arg=[".st-key-w0-cfg1-deployment-device", "h200"],
                           timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)

    started = time.monotonic()
    run.click()
    table = page.locator('[data-testid="stTable"]', has_text="TTFT p50")
    table.wait_for(timeout=RESULT_TIMEOUT_MS)
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    chart.wait_for(timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)  # the whole page, downloads included, has rendered
    elapsed = time.monotonic() - started
    page.wait_for_timeout(1000)  # let Vega finish drawing before the checks and the screenshot
    assert_no_exception(page)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0

    header = table.locator("tr").first.inner_text()
    assert "h100-sxm vllm" in header and "h200 vllm" in header and "a100" not in header
    cells = table.locator("tr", has_text="TTFT p50").first.locator("td")
    values = [seconds(cells.nth(i).inner_text()) for i in range(cells.count())]
    assert len(values) == 2 and all(1e-3 <= v <= 60 for v in values), values

    box = chart.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 150
    assert chart.locator("canvas, svg").count() > 0
    assert elapsed < 10, f"the comparison took {elapsed:.1f} s to render"

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
