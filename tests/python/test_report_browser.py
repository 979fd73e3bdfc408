"""`analyze report` pages in a real browser: headless Chromium (Debian's, driven by selenium
through /usr/bin/chromedriver, no network) loads the report of a real short run and of a small
folder of runs, and checks:

- no JavaScript errors (the page's own error log and the browser console);
- every figure is rendered, with as many traces as its data has, recounted here from the
  Parquet tables with polars (not from the page);
- log axes where loss (or another quantity spanning decades) is drawn;
- hovering a point of the training-loss curve with the mouse shows that batch's value from
  train_log.parquet;
- a screenshot is not blank;
- on the sweep page, choosing another colour option recolours the curves;
- a modular-addition run's page draws the four losses of grokking.parquet on a log axis, the
  Gini coefficient and the sum of squared weights, and shades the phases.

Needs `apt-get install chromium chromium-driver fonts-dejavu-core`, `pip install selenium
pillow` and the debug `train` and `analyze` binaries ($DIGITLAB_TARGET_DIR/debug, by default
target/debug). Where Chromium or selenium is missing the tests are skipped, saying why.
"""

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("DIGITLAB_TARGET_DIR", ROOT / "target"))
TRAIN = TARGET / "debug" / "train"
ANALYZE = TARGET / "debug" / "analyze"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TINY = ["--n-digits", "3", "--n-heads", "1", "--steps", "300", "--snapshot-every", "50"]


def missing_browser():
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "python selenium is not installed (pip install selenium)"
    try:
        import PIL  # noqa: F401
    except ImportError:
        return "python pillow is not installed (pip install pillow)"
    return None


def skip_if_no_browser():
    reason = missing_browser()
    if reason:
        # Said on stderr too, so a run without -rs still shows that nothing was checked.
        print(f"SKIPPED browser test: {reason}", file=sys.stderr)
        pytest.skip(reason)


def run(cmd):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A real short run (tens digit, d_model 16) and a folder of three runs, reported."""
    skip_if_no_browser()
    for binary in (TRAIN, ANALYZE):
        assert binary.exists(), f"{binary} missing: run `cargo build --bin train --bin analyze` first"
    base = tmp_path_factory.mktemp("report")
    single = base / "single"
    run([TRAIN, "-q", *TINY, "--digit", "1", "--d-model", "16", single])
    run([ANALYZE, "report", single, "-q", "--contexts", "5"])
    sweep = base / "sweep"
    sweep.mkdir()
    for d_model, seed in [(8, 0), (16, 0), (16, 1)]:
        run([TRAIN, "-q", *TINY, "--digit", "0", "--d-model", str(d_model), "--seed", str(seed),
             sweep / f"d{d_model}-s{seed}"])
    run([ANALYZE, "report", sweep, "-q", "--contexts", "5"])
    return single, sweep


@pytest.fixture(scope="module")
def driver():
    skip_if_no_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1300,1000"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield d
    d.quit()


def load(driver, page):
    driver.get(page.resolve().as_uri())
    deadline = time.time() + 60
    while time.time() < deadline:
        if driver.execute_script("return window.reportStatus && window.reportStatus.done === true"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{page} did not finish drawing: {driver.execute_script('return window.reportStatus')}")


def assert_no_js_errors(driver):
    assert driver.execute_script("return window.reportErrors") == []
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def figures(driver):
    """Per figure id: the trace count plotly drew, traces drawn in the SVG, axis types."""
    return driver.execute_script("""
        const out = {};
        for (const gd of document.querySelectorAll('div.figure')) {
          const visible = gd._fullData.filter(t => t.visible === true);
          out[gd.id] = {
            traces: gd.data.length,
            full: gd._fullData.length,
            svg: !!gd.querySelector('svg.main-svg'),
            scatter_visible: visible.filter(t => t.type === 'scatter').length,
            scatter_drawn: gd.querySelectorAll('.scatterlayer g.trace').length,
            x: gd._fullLayout.xaxis.type, y: gd._fullLayout.yaxis.type,
          };
        }
        return out;""")


def assert_screenshot_not_blank(driver):
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "screenshot is blank or nearly so"
    white = max(count for count, color in colors if color == (255, 255, 255)) if any(
        c == (255, 255, 255) for _, c in colors) else 0
    assert white < 0.97 * image.width * image.height


def table(run_dir, name):
    return pl.read_parquet(run_dir / "analysis" / f"{name}.parquet")


def test_run_page_renders_every_figure_with_its_traces(reports, driver):
    single, _ = reports
    load(driver, single / "report.html")
    assert_no_js_errors(driver)
    figs = figures(driver)
    assert figs, "no figures on the page"
    for fid, f in figs.items():
        assert f["svg"], f"{fid} not drawn"
        assert f["full"] == f["traces"], fid
        assert f["scatter_drawn"] == f["scatter_visible"], (fid, f)

    log = pl.read_parquet(single / "train_log.parquet")
    spikes = table(single, "spikes")
    assert figs["loss"]["traces"] == 2 + (1 if spikes.height > 0 else 0)
    loss = table(single, "loss")
    for metric in ["loss", "accuracy"]:
        kinds = (loss.filter((pl.col("metric") == metric) & (pl.col("carry_kind") != "all")
                             & pl.col("value").is_finite())["carry_kind"].unique())
        assert figs[f"carry_kind_{metric}"]["traces"] == len(kinds)
    for stat in ["grad_norm", "weight_norm", "update_norm"]:
        columns = [c for c in log.columns if c.startswith(f"{stat}/")]
        assert figs[f"{stat}s"]["traces"] == len(columns) + (1 if stat == "grad_norm" else 0)
    freqs = table(single, "key_frequencies").filter(pl.col("digit") == 1)["frequency"].unique()
    assert figs["key_frequencies_d1"]["traces"] == len(freqs)
    for carry in ["0", "1"]:
        assert figs[f"naive_lens_d1_carry{carry}"]["traces"] == 1

    for fid in ["loss", "carry_kind_loss", "pair_split_d1", "excluded_loss_d1", "grad_norms",
                "weight_norms", "update_norms"]:
        assert figs[fid]["y"] == "log", fid
    assert figs["carry_kind_accuracy"]["y"] == "linear"
    assert_screenshot_not_blank(driver)


def test_hovering_the_loss_curve_shows_the_logged_value(reports, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    single, _ = reports
    load(driver, single / "report.html")
    log = pl.read_parquet(single / "train_log.parquet")
    logged = dict(zip(log["batch"].to_list(), log["loss_digit_1"].to_list()))
    gd = driver.find_element(By.ID, "loss")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", gd)
    # Batch 137 is between snapshots, so no eval-loss point is near it.
    target = 137
    pos = driver.execute_script("""
        const gd = arguments[0], batch = arguments[1];
        const t = gd._fullData[0], i = t.x.indexOf(batch);
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const r = gd.getBoundingClientRect();
        return {i: i, x: xa._offset + xa.c2p(t.x[i]), y: ya._offset + ya.c2p(t.y[i]),
                w: r.width, h: r.height, name: t.name};""", gd, target)
    assert pos["i"] >= 0, "batch 137 is not on the training-loss curve"
    ActionChains(driver).move_to_element_with_offset(
        gd, int(pos["x"] - pos["w"] / 2), int(pos["y"] - pos["h"] / 2)).perform()
    text = ""
    deadline = time.time() + 10
    while time.time() < deadline and "batch" not in text:
        text = driver.execute_script(
            "return Array.from(arguments[0].querySelectorAll('.hoverlayer .hovertext'))"
            ".map(e => e.textContent).join(' | ')", gd)
        time.sleep(0.1)
    m = re.search(r"batch (\d+)loss ([-0-9.e+]+)", text)
    assert m, f"no hover label with a batch and a loss: {text!r}"
    assert "training loss" in text, text
    batch, shown = int(m.group(1)), float(m.group(2))
    assert abs(batch - target) <= 3, (batch, text)
    expected = logged[batch]
    assert math.isclose(shown, expected, rel_tol=1e-5), (shown, expected, text)


def test_sweep_page_overlays_every_run_and_recolours_on_demand(reports, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, sweep = reports
    load(driver, sweep / "report.html")
    assert_no_js_errors(driver)
    figs = figures(driver)
    runs = [p for p in sweep.iterdir() if (p / "train_log.parquet").exists()]
    assert figs["sweep_loss"]["traces"] == len(runs)
    assert figs["sweep_loss"]["scatter_drawn"] == len(runs)
    assert figs["sweep_loss"]["y"] == "log"
    # Leaves ln 10: per head count, every run as a point and the median as a line.
    phases = pl.concat([table(r, "phases").filter(pl.col("source") == "eval") for r in runs])
    left = phases.filter(pl.col("leaves_ln10_batch").is_not_null() & (pl.col("leaves_ln10_batch") > 0))
    if left.height > 0:
        assert figs["leaves_ln10"]["traces"] == 2
        assert figs["leaves_ln10"]["x"] == "log" and figs["leaves_ln10"]["y"] == "log"
    else:
        assert "leaves_ln10" not in figs
    # d_model and seed vary: the final-loss heatmap is over them.
    assert figs["final_loss"]["traces"] == 1

    def colors():
        return driver.execute_script(
            "return document.getElementById('sweep_loss')._fullData.map(t => t.line.color)")

    Select(driver.find_element(By.ID, "color-by")).select_by_visible_text("d_model")
    by_width = colors()
    assert len(set(by_width)) == 2  # d_model 8 and 16
    Select(driver.find_element(By.ID, "color-by")).select_by_visible_text("run")
    assert len(set(colors())) == len(runs)
    assert_no_js_errors(driver)
    assert_screenshot_not_blank(driver)


@pytest.fixture(scope="module")
def modp_report(tmp_path_factory):
    """A real short modular-addition run (p 23, 300 epochs), reported."""
    skip_if_no_browser()
    for binary in (TRAIN, ANALYZE):
        assert binary.exists(), f"{binary} missing: run `cargo build --bin train --bin analyze` first"
    run_dir = tmp_path_factory.mktemp("report-modp") / "m23"
    run([TRAIN, "-q", "--task", "modp", "--p", "23", "--train-fraction", "0.5", "--d-model", "32",
         "--steps", "300", "--snapshot-every", "50", run_dir])
    run([ANALYZE, "report", run_dir, "-q"])
    return run_dir


def test_modp_page_draws_the_grokking_measures_with_the_phases(modp_report, driver):
    load(driver, modp_report / "report.html")
    assert_no_js_errors(driver)
    figs = figures(driver)
    for fid, f in figs.items():
        assert f["svg"], f"{fid} not drawn"
        assert f["scatter_drawn"] == f["scatter_visible"], (fid, f)
    grokking = table(modp_report, "grokking")
    losses = ["train_loss", "test_loss", "excluded_loss", "restricted_loss"]
    drawable = grokking.filter(pl.col("metric").is_in(losses) & (pl.col("value") > 0))
    assert figs["grokking"]["traces"] == drawable["metric"].n_unique() == 4
    assert figs["grokking"]["y"] == "log"
    for fid in ["embedding_gini", "sum_squared_weights"]:
        assert figs[fid]["traces"] == 1 and figs[fid]["y"] == "linear", fid
    freqs = table(modp_report, "key_frequencies")["frequency"].unique()
    assert figs["key_frequencies_d0"]["traces"] == len(freqs)
    # One shaded band per phase that started, as grokking_phases.parquet dates them.
    started = table(modp_report, "grokking_phases")["start_batch"].drop_nulls().len()
    rects = driver.execute_script("""
        return document.getElementById('grokking')._fullLayout.shapes
          .filter(s => s.type === 'rect').length;""")
    assert rects == started > 0
    assert "loss" not in figs, "no digit loss figure on a modular-addition page"
    assert_screenshot_not_blank(driver)
