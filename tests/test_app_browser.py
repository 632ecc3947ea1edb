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


def pick_device(page, config: int, device: str) -> None:
    """Choose ``device`` in configuration ``config`` (0-based). A redraw may close the dropdown before its options
    show; retry then."""
    page.get_by_role("tab", name=f"Config {config + 1}").click()
    selector = f".st-key-w0-cfg{config}-deployment-device"
    option = page.get_by_role("option", name=re.compile(rf"^{re.escape(device)}\b"))
    for attempt in range(4):
        page.locator(selector).click()
        page.keyboard.type(device)  # filter the menu: a long device list renders only its first options
        try:
            option.wait_for(timeout=10_000)
            break
        except Exception:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")
            wait_until_idle(page)
    option.click()
    page.wait_for_function(SHOWS_VALUE, arg=[selector, device], timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)


def set_number(page, key: str, value: float) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(f"{value:g}")
    box.press("Enter")
    page.wait_for_function("([sel, v]) => document.querySelector(sel)?.value === v",
                           arg=[f".st-key-{key} input", f"{value:g}"], timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)


def run_and_wait_for(page, columns: list[str]):
    """Click the run button and return the summary table once it shows exactly ``columns`` for the current inputs
    (the page marks results of earlier inputs as such until the new ones replace them)."""
    page.get_by_role("button", name="Run comparison").click()
    header = ",".join(columns)
    page.wait_for_function(
        """(want) => !document.body.innerText.includes("The inputs changed since these results") &&
           [...document.querySelectorAll('[data-testid="stTable"]')].some(t => {
             const row = t.querySelector("tr");
             return row && t.innerText.includes("TTFT p50") &&
               [...row.querySelectorAll("th")].slice(1).map(c => c.innerText.trim()).join(",") === want; })""",
        arg=header, timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)
    assert_no_exception(page)
    return page.locator('[data-testid="stTable"]', has_text="TTFT p50")


def row_cells(table, label: str, columns: int = 2) -> list[str]:
    rows = table.locator("tr", has_text=label)
    assert rows.count() == 1, f"the summary table has no row {label!r}"
    cells = rows.first.locator("td")
    values = [cells.nth(i).inner_text().strip() for i in range(cells.count())]
    assert len(values) == columns, values
    return values


def scenario_workload(page) -> dict:
    """The workload section of the scenario YAML the page shows (and would download)."""
    import yaml

    expander = page.locator('[data-testid="stExpander"]', has_text="Scenario YAML")
    code = expander.locator('[data-testid="stCode"]')
    if not code.first.is_visible():
        expander.get_by_text("Scenario YAML").click()
    code.first.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    return yaml.safe_load(code.first.inner_text())["workload"]


def verdict_text(page) -> str:
    alert = page.locator('[data-testid="stAlert"]', has_text=re.compile("lowest cost|No configuration meets"))
    alert.first.wait_for(timeout=RESULT_TIMEOUT_MS)
    return alert.first.inner_text()


def check_overloaded_is_never_crowned(page) -> None:
    """Issue 20: with a loose TTFT target an L40S at 4 req/s met the SLO and was called the cheapest answer
    although it served under half the offered load and took 280 s for 500 requests."""
    pick_device(page, 1, "l40s")
    set_number(page, "w0-slo-ttft_s", 200)
    set_number(page, "w0-slo-tpot_s", 1)
    table = run_and_wait_for(page, ["h100-sxm vllm", "l40s vllm"])
    text = verdict_text(page)
    assert not text.startswith("l40s vllm meets"), text
    assert "l40s vllm is overloaded" in text, text
    load = row_cells(table, "offered / served")
    assert "(overloaded)" not in load[0] and load[1].endswith("(overloaded)"), load
    offered, served = (float(x) for x in load[1].split("(")[0].split("/"))
    assert served < offered / 1.5, load


def native_rate(requests: int) -> tuple[str, float]:
    """The shipped replay trace the page offers first, and its own arrival rate over its first requests."""
    from traces.catalog import list_traces
    from traces.config import TraceConfig
    from traces.replay import load_trace

    name = next(t.id for t in list_traces() if t.has_arrivals)
    arrival = load_trace(TraceConfig(name=name))["arrival_s"].to_numpy()[:requests]
    return name, (len(arrival) - 1) / (arrival[-1] - arrival[0])


def check_replay_keeps_the_trace_timing(page) -> None:
    """Issue 20: switching traffic to a replay kept the synthetic qps (4) and replayed the trace slower."""
    assert scenario_workload(page)["qps"] == 4
    page.get_by_text("replay a shipped trace").click()
    wait_until_idle(page)
    assert_no_exception(page)
    name, rate = native_rate(500)
    page.wait_for_function("(name) => document.body.innerText.includes('name: ' + name)", arg=name,
                           timeout=RESULT_TIMEOUT_MS)
    workload = scenario_workload(page)
    assert workload["arrival"] == "trace" and "qps" not in workload, workload
    table = run_and_wait_for(page, ["h100-sxm vllm", "l40s vllm"])
    for cell in row_cells(table, "offered / served"):
        offered = float(cell.split("/")[0])
        assert offered == pytest.approx(rate, abs=0.006), (cell, rate)


def shoot_new_views(page) -> None:
    """With CAPSIM_SCREENSHOTS=DIR, save the views of issue 20 (verdict and summary, the frontier and roofline tabs,
    the KV chart) as PNGs into DIR -- how docs/dashboard.md's screenshots are made. Otherwise only check they draw."""
    out = os.environ.get("CAPSIM_SCREENSHOTS")
    views = [("Frontiers", "frontiers"), ("Roofline", "roofline"), ("KV memory", "kv"), ("Latency CDFs", "cdfs")]
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.locator('[data-testid="stAlert"]').first.screenshot(path=str(Path(out) / "verdict.png"))
    for tab, stem in views:
        page.get_by_role("tab", name=tab, exact=True).click()
        wait_until_idle(page)
        panel = page.locator('[data-testid="stTabPanel"]:visible, [role="tabpanel"]:visible').last
        panel.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=RESULT_TIMEOUT_MS)
        page.wait_for_timeout(1500)  # let Vega draw (and any stale element fade back in)
        assert_no_exception(page)
        if out:
            panel.screenshot(path=str(Path(out) / f"{stem}.png"))


def check_state_survives_a_reload(page) -> None:
    """Issue 20: a reload dropped every configuration back to the defaults. The set-up lives in the URL now: after a
    reload the L40S of configuration 2, the loose SLO and the replayed trace are all still there."""
    page.wait_for_function("() => location.search.includes('setup=')", timeout=RESULT_TIMEOUT_MS)
    page.reload()
    page.get_by_role("button", name="Run comparison").wait_for(timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)
    assert_no_exception(page)
    page.get_by_role("tab", name="Config 2").click()
    # A link's set-up is loaded like a scenario file: the widgets start a new generation (w1-...).
    device = ".st-key-w1-cfg1-deployment-device"
    page.locator(device).wait_for(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function(SHOWS_VALUE, arg=[device, "l40s"], timeout=RESULT_TIMEOUT_MS)
    ttft = page.locator(".st-key-w1-slo-ttft_s input")
    assert ttft.input_value() == "200", ttft.input_value()
    assert scenario_workload(page)["arrival"] == "trace"


def check_seeds_survive_a_reload(page) -> None:
    """Issue 20 (uncertainty): the seeds-per-configuration setting is part of the link, like the set-up."""
    set_number(page, "seeds-per-config", 3)
    page.wait_for_function("() => location.search.includes('seeds=3')", timeout=RESULT_TIMEOUT_MS)
    page.reload()
    page.get_by_role("button", name="Run comparison").wait_for(timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)
    assert_no_exception(page)
    box = page.locator(".st-key-seeds-per-config input")
    assert box.input_value() == "3", box.input_value()
    assert "setup=" in page.evaluate("location.search")


def check_plugin_menus_are_not_cut_off(page) -> None:
    """Issue 20: the scheduler and router menus showed "id: description" and the sidebar cut them off. A menu's
    value must fit its box (no element inside it overflows), and the chosen plug-in is described under it."""
    overflow = """(sel) => {
      const el = document.querySelector(sel);
      if (!el) return null;
      return [el, ...el.querySelectorAll("*")].filter(n => n.clientWidth > 0 && n.scrollWidth > n.clientWidth + 1)
        .map(n => n.tagName + ":" + (n.value || n.innerText || "").slice(0, 60));
    }"""
    page.get_by_role("tab", name="Config 1").click()
    for menu in (".st-key-w0-cfg0-scheduler-name", ".st-key-w0-cfg0-router-name"):
        page.locator(menu).wait_for(timeout=RESULT_TIMEOUT_MS)
        cut = page.evaluate(overflow, menu)
        assert cut == [], f"{menu} is cut off: {cut}"
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Prefill-first" in sidebar or "prefill-first" in sidebar, "the chosen scheduler is not described"




def results_folders(base: Path) -> tuple[Path, Path]:
    """A small `capsim plan --out` folder and a two-configuration `capsim run --out` folder."""
    from typer.testing import CliRunner

    from simulator.cli import app as cli_app
    from simulator.planner import load_plan, run_plan
    from simulator.sweep import LocalExecutor
    from tests.test_app_plan import PLAN  # the tiny plan the plan tab's own tests use

    base.mkdir(parents=True, exist_ok=True)
    (base / "plan.yaml").write_text(PLAN)
    plan, candidates = load_plan(base / "plan.yaml")
    run_plan(plan, candidates, out_dir=base / "plan", executor=LocalExecutor(max_workers=1), plots=False)
    body = PLAN.split("search:")[0].replace("name: tiny-plan", "name: tiny")
    (base / "two.yaml").write_text(body + "runs:\n  - {name: h100, deployment: {device: h100-sxm}}\n"
                                   "  - {name: l4, deployment: {device: l4}}\n")
    result = CliRunner().invoke(cli_app, ["run", str(base / "two.yaml"), "--out", str(base / "run"), "--set",
                                          "workload.qps=4", "--no-plots"])
    assert result.exit_code == 0, result.output
    return base / "plan", base / "run"


def check_results_folder_views(page, tmp_path: Path) -> None:
    """The results-folder tab opens a plan folder (headline, Pareto chart) and a run folder (verdict, summary);
    with CAPSIM_SCREENSHOTS=DIR both are saved as plan.png and results-folder.png."""
    plan_dir, run_dir = results_folders(tmp_path / "folders")
    out = os.environ.get("CAPSIM_SCREENSHOTS")
    page.get_by_role("tab", name=re.compile(r"^Results folder")).click()
    box = page.locator(".st-key-plan-folder input")
    for folder, stem, marker in ((plan_dir, "plan", "Pareto"), (run_dir, "results-folder", "TTFT p50")):
        box.fill(str(folder))
        box.press("Enter")
        wait_until_idle(page)
        panel = page.locator('[role="tabpanel"]:visible').last
        panel.get_by_text(marker).first.wait_for(timeout=RESULT_TIMEOUT_MS)
        if stem == "plan":
            panel.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=RESULT_TIMEOUT_MS)
        page.wait_for_timeout(1500)
        assert_no_exception(page)
        assert page.locator('[data-testid="stAlertContentError"]:visible').count() == 0
        if out:
            panel.screenshot(path=str(Path(out) / f"{stem}.png"))


def drive(page, url: str, tmp_path: Path) -> None:
    """Load the page, put an H200 in configuration 2, run, and check the results; then the journeys of issue 20
    (an overloaded configuration under a loose SLO, a replayed trace); screenshot at the end."""
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
        page.keyboard.type("h200")  # filter the menu: a long device list renders only its first options
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

    check_plugin_menus_are_not_cut_off(page)

    check_overloaded_is_never_crowned(page)
    shoot_new_views(page)
    check_replay_keeps_the_trace_timing(page)
    check_state_survives_a_reload(page)
    check_seeds_survive_a_reload(page)
    check_results_folder_views(page, tmp_path)
