"""The leaderboard in a real browser: Debian's headless Chromium driven by Playwright, from file://.

Tables sort and filter, every plot loads, every link resolves, no console errors, and a method
named `<script>alert(1)</script>` shows as text. Skips when chromium or playwright is missing
(`.ci/run` installs both; never `playwright install`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from test_report import XSS, real_cpu_run, write_synthetic

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright Python package is not installed "
    "(pip install playwright; never `playwright install`)",
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from attnbench.reports import build_site

    tmp = tmp_path_factory.mktemp("browser")
    inputs = write_synthetic(tmp)
    cpu = real_cpu_run(tmp)  # a real CPU run next to the two synthetic GPUs, where the runner exists
    return build_site([*inputs, *([cpu] if cpu else [])], tmp / "site")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Page:
    """A page that records console errors, page errors, failed requests and dialogs."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"requestfailed: {r.url}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))

    def goto(self, path: Path) -> Any:
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")
        return self.page


def test_every_page_loads_with_plots_links_and_no_errors(site: Path, browser: Any) -> None:
    pages = sorted(site.parent.glob("*.html"))
    assert len(pages) >= 10
    checker = Page(browser)
    n_images = 0
    for path in pages:
        page = checker.goto(path)
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.src, e.complete, e.naturalWidth])")
        for src, complete, width in images:
            assert complete and width > 0, f"{path.name}: plot {src} did not load"
        n_images += len(images)
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            url = urlparse(href)
            if url.scheme in ("http", "https"):
                continue  # paper links; the site itself never fetches from the network
            assert url.scheme == "file", href
            assert Path(unquote(url.path)).is_file(), f"{path.name}: broken link {href}"
            if url.fragment:
                target = checker.goto(Path(unquote(url.path)))
                assert target.query_selector(f"#{url.fragment}"), f"{path.name}: missing anchor {href}"
        assert not checker.problems, f"{path.name}: {checker.problems}"
    assert n_images >= 10


def _column(page: Any, table: str, index: int) -> list[str | None]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr:not([hidden])",
        f"rows => rows.map(r => r.cells[{index}].getAttribute('data-sort'))",
    )


A100 = "table.sortable[id^='lb-nvidia-a100']"  # the synthetic device with an oom cell


def test_leaderboard_sorts(site: Path, browser: Any) -> None:
    page = Page(browser).goto(site)
    table = page.eval_on_selector(A100, "t => t.id")
    headers = page.eval_on_selector_all(f"#{table} thead th", "hs => hs.map(h => h.textContent.trim())")
    col = headers.index("latency")
    page.click(f"#{table} thead th:nth-child({col + 1})")
    asc = _column(page, table, col)
    nums = [float(x) for x in asc if x is not None]
    assert nums == sorted(nums) and len(nums) >= 2  # one row per method; toy_linear ran out of memory
    assert asc[len(nums) :] == [None] * (len(asc) - len(nums))  # status cells (oom) sort last
    page.click(f"#{table} thead th:nth-child({col + 1})")
    desc = _column(page, table, col)
    assert [float(x) for x in desc if x is not None] == sorted(nums, reverse=True)
    assert page.get_attribute(f"#{table} thead th:nth-child({col + 1})", "aria-sort") == "descending"
    name_col = headers.index("method")
    page.click(f"#{table} thead th:nth-child({name_col + 1})")
    names = [x for x in _column(page, table, name_col) if x is not None]
    assert names == sorted(names, key=str.lower)


def test_leaderboard_filters(site: Path, browser: Any) -> None:
    page = Page(browser).goto(site)
    table = page.eval_on_selector(A100, "t => t.id")
    bar = f".filters[data-table='{table}']"
    total = page.eval_on_selector_all(f"#{table} tbody.grp", "gs => gs.length")
    page.select_option(f"{bar} select.family", "linear")
    fams = page.eval_on_selector_all(f"#{table} tbody:not([hidden]) tr.best", "rs => rs.map(r => r.dataset.family)")
    assert fams == ["linear"]
    assert page.text_content(f"{bar} .count") == f"1 of {total} methods"
    page.select_option(f"{bar} select.family", "")
    page.fill(f"{bar} input", "reference")  # matches a method by any of its backends
    shown = page.eval_on_selector_all(
        f"#{table} tbody:not([hidden]) tr.best", "rs => rs.map(r => r.cells[1].textContent)"
    )
    assert shown == ["mha"]
    page.fill(f"{bar} input", "")
    assert page.eval_on_selector_all(f"#{table} tbody:not([hidden])", "gs => gs.length") == total


def _best(page: Any, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(f"#{table} tr.best", f"rs => rs.map(r => r.cells[{index}].textContent.trim())")


def test_overview_ranks_and_switches_the_sort_key(site: Path, browser: Any) -> None:
    page = Page(browser).goto(site)
    table = page.eval_on_selector("table.ranked[id^='lb-nvidia-h100']", "t => t.id")
    headers = page.eval_on_selector_all(f"#{table} thead th", "hs => hs.map(h => h.textContent.trim())")
    methods = _best(page, table, headers.index("method"))
    assert methods == ["toy_linear", XSS, "mha"]  # speedup vs dense, best first
    assert len(methods) == len(set(methods))  # one row per method
    assert [r.split()[0] for r in _best(page, table, 0)] == ["1", "2", "3"]
    bar = f".filters[data-table='{table}'] select.rankby"
    assert page.eval_on_selector(bar, "s => s.options[s.selectedIndex].textContent").startswith("speedup vs dense")
    labels = page.eval_on_selector_all(f"{bar} option", "os => os.map(o => o.textContent)")
    mqar = next(i for i, t in enumerate(labels) if t.startswith("MQAR accuracy"))
    page.select_option(bar, index=mqar)
    col = headers.index("MQAR accuracy")
    accs = [float(x) for x in _column_best(page, table, col) if x is not None]
    assert accs == sorted(accs, reverse=True) and len(accs) >= 2
    assert [r.split()[0] for r in _best(page, table, 0)] == ["1", "2", "3"]  # renumbered
    lat = next(i for i, t in enumerate(labels) if t.startswith("latency"))
    page.select_option(bar, index=lat)
    times = [float(x) for x in _column_best(page, table, headers.index("latency")) if x is not None]
    assert times == sorted(times)  # lower is better: fastest first


def _column_best(page: Any, table: str, index: int) -> list[str | None]:
    return page.eval_on_selector_all(
        f"#{table} tr.best", f"rows => rows.map(r => r.cells[{index}].getAttribute('data-sort'))"
    )


def test_expanding_a_method_shows_its_other_backends(site: Path, browser: Any) -> None:
    page = Page(browser).goto(site)
    table = page.eval_on_selector("table.ranked[id^='lb-nvidia-h100']", "t => t.id")
    group = f"#{table} tbody.grp:has(tr.best td.name a:text-is('mha'))"
    assert page.eval_on_selector(f"{group} tr.best", "r => r.cells[2].textContent") == "sdpa"
    assert page.eval_on_selector_all(f"{group} tr.alt:not([hidden])", "rs => rs.length") == 0
    page.click(f"{group} button.expand")
    assert page.get_attribute(f"{group} button.expand", "aria-expanded") == "true"
    alts = page.eval_on_selector_all(f"{group} tr.alt:not([hidden])", "rs => rs.map(r => r.cells[2].textContent)")
    assert alts == ["reference"]
    assert page.is_visible(f"{group} tr.alt")
    page.click(f"{group} button.expand")
    assert not page.is_visible(f"{group} tr.alt")


def test_download_links_resolve(site: Path, browser: Any) -> None:
    checker = Page(browser)
    page = checker.goto(site)
    hrefs = page.eval_on_selector_all(".downloads a[href]", "as => as.map(a => a.href)")
    assert any(h.endswith(".csv") for h in hrefs) and any(h.endswith(".parquet") for h in hrefs)
    link = page.query_selector_all(".downloads a[href$='.csv']")[0]
    with page.expect_download() as got:
        link.click()
    text = Path(got.value.path()).read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("#,method,backend")
    for h in hrefs + page.eval_on_selector_all("footer a[href]", "as => as.map(a => a.href)"):
        assert Path(unquote(urlparse(h).path)).is_file(), h


def test_hostile_method_name_is_text(site: Path, browser: Any) -> None:
    checker = Page(browser)
    page = checker.goto(site)
    names = page.eval_on_selector_all("td.name a", "as => as.map(a => a.textContent)")
    assert XSS in names
    assert page.eval_on_selector_all("script", "ss => ss.length") == 1  # only static/site.js
    href = page.get_attribute(f"td.name a >> text={XSS}", "href")
    method_page = checker.goto(site.parent / href)
    assert XSS in method_page.title()
    assert not checker.problems


def test_site_copy_works_from_another_folder(site: Path, browser: Any, tmp_path: Path) -> None:
    copy = tmp_path / "moved"
    shutil.copytree(site.parent, copy)  # self-contained: no absolute paths inside
    checker = Page(browser)
    page = checker.goto(copy / "devices.html")
    assert page.eval_on_selector_all("img", "els => els.every(e => e.complete && e.naturalWidth > 0)")
    assert not checker.problems
