"""``tdabench report``: the static site, from real run records of a tiny task, checked as HTML always and
in a headless Chromium (selenium + the system's chromium and chromedriver) where one is installed."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tdabench import cli
from tdabench.report.leaderboard import leaderboard, table_rows
from tdabench.report.site_html import main_regime

SMALL = ["gt.num_subsets=10", "task.n_train=40", "task.optimizer=gd", "task.steps=100", "task.lr=1.0"]
SECOND_REGIME = "α=0.8 K=10 R=1"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Records on a small regression task, 2 seeds: random, gradsim and gradsim normalised at α = 0.5,
    gradsim and random at α = 0.8 (a second regime); one record's code digest altered, so its row is stale."""
    root = tmp_path_factory.mktemp("results")
    base = ["run", "--task", "regression", "--seeds", "2", "--serial", "--results-dir", str(root)]
    sets = [x for s in SMALL for x in ("--set", s)]
    assert cli.main(base + ["--method", "random,gradsim"] + sets) == 0
    assert cli.main(base + ["--method", "gradsim", "--set", "gradsim.normalize=true"] + sets) == 0
    assert cli.main(base + ["--method", "gradsim,random", "--set", "gt.alpha=0.8"] + sets) == 0
    path = next(p for p in sorted((root / "runs").glob("regression/random/*/seed1.json"))
                if json.loads(p.read_text())["ground_truth"]["alpha"] == 0.8)
    record = json.loads(path.read_text())
    record["code"] = {"tdabench.methods.random": "changed"}
    path.write_text(json.dumps(record))
    return root


@pytest.fixture(scope="module")
def site(results) -> Path:
    pytest.importorskip("plotly", reason="the site needs plotly: pip install 'tdabench[site]'")
    out = results / "site"
    assert cli.main(["report", "--results-dir", str(results), "--output", str(out)]) == 0
    return out / "index.html"


@pytest.fixture(scope="module")
def board(results) -> list[dict]:
    """The leaderboard's own rows (``tdabench leaderboard --format json``)."""
    return json.loads(leaderboard(results, fmt="json"))


class Rows(HTMLParser):
    """The text of the first cells of each ``<tbody>`` row, and every ``src`` and ``href``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[tuple[str, str]] = []
        self._body = self._cell = False
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        self.links += [(tag, v or "") for k, v in attrs if k in ("src", "href")]
        if tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.rows.append([])
        elif tag == "td" and self._body:
            self._cell = True
            self.rows[-1].append("")
        elif tag == "details":
            self._depth += 1

    def handle_endtag(self, tag):
        self._body = self._body and tag != "tbody"
        self._cell = self._cell and tag != "td"
        self._depth -= tag == "details"

    def handle_data(self, data):
        if self._cell and not self._depth:
            self.rows[-1][-1] += data


def test_site_rows_are_the_leaderboards(results, board):
    from tdabench.report.site import boards, load_entries

    rows = boards(load_entries(results))
    assert list(rows) == ["regression"]
    for row in rows["regression"]:
        assert [e.record.seed for e in row.pop("entries")] == [0, 1]
    assert json.dumps(rows["regression"], indent=1, default=lambda x: None) == json.dumps(board, indent=1,
                                                                                          default=lambda x: None)


def test_site_html_shows_every_row_and_fetches_nothing(site, board):
    text = site.read_text()
    parser = Rows()
    parser.feed(text)
    assert len(parser.rows) == len(board) == 5
    expected = table_rows(board)
    for cells, want in zip(parser.rows, expected):   # rank, task, ground truth, method (* and stale), settings
        assert [c.strip() for c in cells[:5]] == list(want[:5])
    assert sum("(stale)" in cells[3] for cells in parser.rows) == sum(r["stale"] for r in board) == 1
    assert text.count('class="stale') == 1
    for tag, url in parser.links:
        assert not re.match(r"\s*(https?:)?//", url), f"<{tag}> points to the network: {url}"
    scripts = [url for tag, url in parser.links if tag == "script"]
    assert scripts == ["plotly.min.js"] and (site.parent / "plotly.min.js").stat().st_size > 1_000_000
    records = [url for tag, url in parser.links if tag == "a" and url.endswith(".json")]
    assert len(records) == 10 and all((site.parent / url).resolve().is_file() for url in records)
    assert "seeds: 0, 1" in text and "config: normalize=True" in text     # the plots' hover text
    assert "<dt>commit</dt>" in text and "<dt>device</dt>" in text          # the environment, in details


def test_report_without_records_fails_with_a_fix(tmp_path, capsys):
    assert cli.main(["report", "--results-dir", str(tmp_path)]) == 2
    assert "tdabench run" in capsys.readouterr().err


def _browser_or_skip() -> None:
    from tdabench.report.site_browser import unavailable

    reason = unavailable()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")


def _visible_rows(driver):
    from selenium.webdriver.common.by import By

    return [r for r in driver.find_elements(By.CSS_SELECTOR, "table.board tbody tr") if r.is_displayed()]


def _column(driver, title: str) -> tuple[int, list[float]]:
    """The index of the column headed ``title`` and its sort keys in the visible rows, top to bottom."""
    from selenium.webdriver.common.by import By

    heads = [th.text.strip() for th in driver.find_elements(By.CSS_SELECTOR, "table.board thead th")]
    i = heads.index(title)
    return i, [float(r.find_elements(By.TAG_NAME, "td")[i].get_attribute("data-sort")) for r in _visible_rows(driver)]


def test_site_in_a_headless_browser(site, board, tmp_path):
    _browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tdabench.report.site_browser import browser, open_page

    with browser(1400, 1400) as driver:
        assert open_page(driver, site) == 2                    # the cost plot and the per-query plot
        for plot in driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"):
            assert plot.find_elements(By.CSS_SELECTOR, "svg.main-svg")
        tables = driver.find_elements(By.CSS_SELECTOR, "table.board")
        assert len(tables) == 1 and len(tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")) == len(board)
        main = main_regime(board)                               # it opens on the main regime, the others a click away
        assert main and main != SECOND_REGIME
        assert len(_visible_rows(driver)) == sum(r["ground_truth"] == main for r in board) == len(board) - 2

        regime = Select(driver.find_element(By.CSS_SELECTOR, "select[data-key=regime]"))
        regime.select_by_value(SECOND_REGIME)
        assert len(_visible_rows(driver)) == sum(r["ground_truth"] == SECOND_REGIME for r in board) == 2
        regime.select_by_value("")
        assert len(_visible_rows(driver)) == len(board)

        i, before = _column(driver, "LDS")
        header = driver.find_elements(By.CSS_SELECTOR, "table.board thead th")[i]
        header.click()
        _, after = _column(driver, "LDS")
        assert header.get_attribute("aria-sort") == "ascending" and after == sorted(before) != before
        header.click()
        assert _column(driver, "LDS")[1] == sorted(before, reverse=True)

        _check_hover(driver)
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, severe
        png = tmp_path / "site.png"
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(png))
    _check_screenshot(png)
    if os.environ.get("TDABENCH_ARTIFACTS"):
        folder = Path(os.environ["TDABENCH_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder / "site.png")


def _check_hover(driver) -> None:
    """Hovering a point of the cost plot shows its method, configuration and seeds."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    plot = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")[0]
    driver.execute_script("arguments[0].scrollIntoView()", plot)
    point = plot.find_elements(By.CSS_SELECTOR, "g.points path")[0]
    text = ""
    for _ in range(25):
        ActionChains(driver).move_to_element(point).perform()
        text = plot.find_element(By.CSS_SELECTOR, ".hoverlayer").text
        if "seeds" in text:
            break
        time.sleep(0.2)
    assert "config:" in text and "seeds: 0, 1" in text and "ground truth" in text, text


def _check_screenshot(png: Path) -> None:
    """A PNG of more than 20 KB that is not one blank colour."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    assert max(n for n, _ in colours) < 0.95 * sum(n for n, _ in colours)


def test_a_regime_without_a_noise_ceiling_says_why():
    """A reference-order regime has no retraining noise (more seeds are refused there), so it must not
    be told to raise gt.retrain_seeds; an independent regime with one seed must."""
    from tdabench.engine.records import ceiling_note
    from tdabench.report.site_html import ceilings

    reference = ceiling_note({"kind": "subsets", "retrain_seeds": 1, "order": "reference"})
    single = ceiling_note({"kind": "subsets", "retrain_seeds": 1})
    assert "no retraining noise" in reference and "retrain_seeds" not in reference
    assert "gt.retrain_seeds ≥ 2" in single
    html = ceilings([{"ground_truth": "α=0.5 K=200 R=1 ref-order", "metric": "lds", "ceiling": None, "ceiling_note": reference},
                     {"ground_truth": "α=0.5 K=200 R=2", "metric": "lds", "ceiling": 0.868, "ceiling_note": ""}])
    assert "no retraining noise" in html and "<b>0.868</b>" in html and "retrain_seeds" not in html


def test_the_board_opens_on_the_main_regime_not_its_checkpoints():
    rows = [{"ground_truth": g} for g in ["α=0.5 K=100 R=2 C=5 @1"] * 4 + ["α=0.5 K=200 R=2"] * 3
            + ["α=0.99 K=200 R=2"] * 2 + ["α=0.5 K=100 R=2 C=5 @5"] * 4]
    assert main_regime(rows) == "α=0.5 K=200 R=2"
    assert main_regime([{"ground_truth": "α=0.5 K=100 R=1"}] * 3) == ""     # one regime: nothing to choose
