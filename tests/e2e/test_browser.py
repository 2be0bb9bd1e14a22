"""The whole app in headless Chromium: upload a zip, train a tiny run, review with keys (skip included) and a
click, re-rank, export; then a second run on the same images starts with those decisions.

Runs the real server (`streamlit run app.py`) and the real engine worker. Needs Debian's chromium at
/usr/bin/chromium (driven by the `playwright` package, no downloaded browsers). Without it the test is
skipped, unless CLEAN_REQUIRE_BROWSER is set (CI), where a missing browser is a failure.
Screenshots of every page land in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TRAIN_TIMEOUT_MS = 300_000


def require_browser() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CLEAN_REQUIRE_BROWSER"):
        pytest.fail(f"{CHROMIUM} is missing but CLEAN_REQUIRE_BROWSER is set: install Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); set CLEAN_REQUIRE_BROWSER to make "
                "this a failure")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_zip() -> bytes:
    """3 classes x 12 tiny PNGs; two images of each class sit in the wrong folder (label noise)."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    names = list(colours)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, name in enumerate(names):
            for i in range(12):
                folder = names[(k + 1) % 3] if i < 2 else name
                r, g, b = colours[name]
                img = Image.new("RGB", (16, 16), (r, g, (b + 7 * i) % 256))
                data = io.BytesIO()
                img.save(data, format="PNG")
                z.writestr(f"colours/{folder}/{name}_{i:02d}.png", data.getvalue())
    return buf.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    workspace = tmp_path / "workspace"
    port = free_port()
    env = {**os.environ, "CLEAN_WORKSPACE": str(workspace)}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        yield url, workspace
    finally:
        sys.path.insert(0, str(REPO))
        from engine.runs import jobs

        busy = jobs.active_run(workspace) if workspace.exists() else None
        if busy is not None:
            jobs.stop(busy, grace_s=5)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def shot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the viewport grows to its height first."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]')?.scrollHeight || 0")
    page.set_viewport_size({"width": viewport["width"], "height": min(max(int(height), viewport["height"]), 8000)})
    page.wait_for_timeout(500)  # charts re-layout to the new size
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(viewport)


def go(page, title: str, attempts: int = 3) -> None:
    """Open a page from the sidebar navigation and wait for its title.

    A click that lands while the current page is rerunning (the Train page refreshes itself while a run
    finishes) can be dropped by the browser session, so the click is repeated, up to `attempts` times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    heading = page.get_by_role("heading", name=title, level=1)
    for attempt in range(attempts):
        page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
        try:
            heading.wait_for(timeout=20_000)
            return
        except PlaywrightTimeoutError:
            if attempt == attempts - 1:
                raise


def lasso(page, area) -> None:
    """Draw a lasso over most of a Plotly chart's plotting area (its dragmode is lasso)."""
    box = area.bounding_box()
    assert box is not None, "the map has no plotting area"
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    corners = [(0.03, 0.03), (0.97, 0.03), (0.97, 0.97), (0.03, 0.97), (0.03, 0.04)]
    page.mouse.move(x0 + w * corners[0][0], y0 + h * corners[0][1])
    page.mouse.down()
    for fx, fy in corners[1:]:
        page.mouse.move(x0 + w * fx, y0 + h * fy, steps=12)
    page.mouse.up()


def test_upload_train_review_export(server, tmp_path):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    url, workspace = server
    zip_path = tmp_path / "colours.zip"
    zip_path.write_bytes(tiny_zip())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(30_000)
        try:
            # A deep link as the very first request still gets the app's navigation (not the pages/ fallback).
            page.goto(f"{url}/review")
            page.get_by_role("heading", name="Review", level=1).wait_for()
            expect(page.get_by_test_id("stSidebarNav").get_by_text("Fine-tune", exact=True)).to_be_visible()
            expect(page.get_by_text("No run selected — start one on Train.")).to_be_visible()

            # ---- Data: a text file is refused with the reason on the page, then the zip is taken
            go(page, "Data")
            page.get_by_text("Upload a .zip", exact=True).click()
            notes = tmp_path / "notes.txt"
            notes.write_text("not a dataset")
            page.locator("input[type=file]").set_input_files(str(notes))
            expect(page.get_by_text("'notes.txt' is not a .zip file")).to_be_visible(timeout=30_000)
            expect(page.locator("input[type=file]")).to_have_count(1)  # a fresh uploader replaced the refused one
            page.locator("input[type=file]").set_input_files(str(zip_path))
            expect(page.get_by_test_id("stMetricValue").first).to_have_text("36", timeout=60_000)
            expect(page.get_by_text("Examples per class", exact=True)).to_be_visible()
            shot(page, "1_data")

            # ---- Train: a tiny run
            go(page, "Train")
            page.get_by_role("spinbutton", name="Pre-training epochs", exact=True).fill("1")
            page.get_by_role("spinbutton", name="Classifier epochs", exact=True).fill("1")
            page.get_by_role("spinbutton", name="Batch size", exact=True).fill("8")
            page.get_by_role("button", name="Start").click()
            expect(page.get_by_text("Finished:")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
            run_id = page.url.split("run=")[1].split("&")[0]
            shot(page, "2_train")

            # ---- Inspect: lasso points on the map and send them to Review
            go(page, "Inspect")
            umap = page.locator(".stPlotlyChart").nth(2)
            umap.scroll_into_view_if_needed()
            lasso(page, umap.locator(".nsewdrag").first)
            review_button = page.locator(".st-key-review_umap button")  # appears once points are selected
            review_button.wait_for(timeout=20_000)
            picked = int(re.search(r"Review these (\d+) images", review_button.inner_text()).group(1))
            assert picked >= 3
            shot(page, "3_inspect")
            review_button.click()

            # ---- Review (the lassoed images): decisions with the keyboard (skip too) and a click, then re-rank
            page.get_by_role("heading", name="Review", level=1).wait_for()
            expect(page.get_by_text(f"Picked on Inspect: {picked} images picked on the map")).to_be_visible()
            page.locator(".st-key-card_0").wait_for()
            first = page.locator(".st-key-card_0 strong").first.inner_text()
            second = page.locator(".st-key-card_1 strong").first.inner_text()
            expect(page.locator(".st-key-card_0")).to_contain_text("Why: loss ≥")  # the evidence line
            page.get_by_role("heading", name="Review", level=1).click()  # keyboard focus on the page, not an input
            page.keyboard.press("k")
            expect(page.locator(".st-key-card_0")).to_contain_text("kept", timeout=20_000)
            page.keyboard.press("u")  # undo: the focus comes back to the first card ...
            expect(page.locator(".st-key-card_0")).to_contain_text("not reviewed", timeout=20_000)
            page.keyboard.press("k")  # ... so the key decides it again, not the next card
            expect(page.locator(".st-key-card_0")).to_contain_text("kept", timeout=20_000)
            expect(page.locator(".st-key-card_1")).to_contain_text("not reviewed")
            page.keyboard.press("s")  # unsure about the second: it goes to the end of the queue
            expect(page.get_by_text("Skipped (unsure, shown again at the end) 1 image.")).to_be_visible(timeout=20_000)
            expect(page.locator(".st-key-card_1 strong").first).not_to_have_text(second)
            third = page.locator(".st-key-card_1 strong").first.inner_text()
            page.locator(".st-key-card_1").get_by_role("button", name="Discard", exact=True).click()
            expect(page.locator(".st-key-card_1")).to_contain_text("discarded", timeout=20_000)
            # Streamlit draws a tertiary button with a tooltip twice (the second copy sizes the container)
            page.locator(".st-key-rerank_now button").first.click()  # the head refitted with the two decisions
            expect(page.get_by_text(re.compile(r"re-ranked with 2 decisions"))).to_be_visible(timeout=180_000)
            shot(page, "4_review")

            go(page, "Fine-tune")
            expect(page.get_by_text("Human decisions used")).to_be_visible()
            shot(page, "5_finetune")

            # ---- Export: the CSV download carries both decisions
            go(page, "Export")
            with page.expect_download() as info:
                page.get_by_role("button", name="labels.csv").click()
            saved = tmp_path / "labels.csv"
            info.value.save_as(saved)
            shot(page, "6_export")

            # ---- back to Train: a new run uses the uploaded data, not the bundled sample ...
            go(page, "Train")
            expect(page.get_by_text(re.compile(r"Dataset: .*colours"))).to_be_visible()
            shot(page, "7_train_after")
            page.get_by_role("spinbutton", name="Pre-training epochs", exact=True).fill("1")
            page.get_by_role("spinbutton", name="Classifier epochs", exact=True).fill("1")
            page.get_by_role("spinbutton", name="Batch size", exact=True).fill("8")
            page.get_by_role("button", name="Start").click()
            page.wait_for_url(lambda u: "run=" in u and f"run={run_id}" not in u)  # the new run is the current one
            new_id = re.search(r"run=([^&]+)", page.url).group(1)
            # the new run's own status line: "Finished:" alone may still be the first run's, before the rerun
            expect(page.get_by_text(f"Run {new_id} — done")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)

            # ---- ... and starts with the decisions made on these images in the first run
            go(page, "Review")
            expect(page.get_by_text("This run started with 3 decisions remembered from earlier runs")).to_be_visible()
            shot(page, "8_review_second_run")
            go(page, "Export")
            with page.expect_download() as info:
                page.get_by_role("button", name="labels.csv").click()
            saved_second = tmp_path / "labels_second.csv"
            info.value.save_as(saved_second)
        finally:
            browser.close()

    for export in (saved, saved_second):  # the second run's export carries the first run's decisions
        labels = pd.read_csv(export, keep_default_na=False)
        assert len(labels) == 36
        by_name = {Path(p).name: row for p, row in zip(labels["path"], labels.to_dict("records"), strict=True)}
        assert by_name[first]["status"] == "kept" and by_name[first]["label"] == by_name[first]["original_label"]
        assert by_name[third]["status"] == "discarded" and by_name[third]["label"] == ""
        assert by_name[second]["status"] in ("unchanged", "auto-relabeled", "needs-review")  # skipped: as if not reviewed
    assert (workspace / "runs" / run_id / "decisions.sqlite").exists()
    assert (workspace / "runs" / run_id / "rerank.csv").exists()
    assert (workspace / "memory.sqlite").exists()
    assert len([p for p in (workspace / "runs").iterdir() if p.is_dir()]) == 2
    for name in ("1_data", "2_train", "3_inspect", "4_review", "5_finetune", "6_export"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
