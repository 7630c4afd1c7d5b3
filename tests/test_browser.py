"""Open the built book in headless Chromium and check what a reader gets.

The book is the one build that the book tests use (the ``built_book`` fixture
in conftest.py), served from 127.0.0.1 by Python's http.server. Chromium is
Debian's ``chromium`` package at /usr/bin/chromium, driven by Playwright; a
missing browser fails these tests, because CI installs it (.ci/run).
Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import fnmatch
import functools
import http.server
import re
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest
import yaml

from conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Headless mode without a sandbox (the tests run as root), and no background
# traffic (component updates, sync, QUIC), which has nowhere to go on a
# machine without a network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
# Folders of the built site that hold assets rather than pages.
ASSET_FOLDERS = {"_static", "_sources", "_downloads", "_images", "_sphinx_design_static"}
# Milliseconds Playwright waits for a page or an element before failing.
TIMEOUT_MS = 30_000
SQLITE_HEADER = b"SQLite format 3\x00"
META_REFRESH = re.compile(r'<meta http-equiv="refresh" content="\d+;\s*url=([^"]+)"', re.I)
# Hosts outside the site that the built pages load from. Pages with formulas
# load MathJax from this CDN, which the tests block because the machine may
# have no network; a new external dependency fails test_browser_external_hosts.
EXPECTED_EXTERNAL_HOSTS = {"cdn.jsdelivr.net"}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def site(built_book):
    """Serve the built HTML on a free loopback port; return (base URL, folder)."""
    result, html = built_book
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    handler = functools.partial(QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", html
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.is_file(), (
        f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageVisit:
    """A browser page that records console errors, page errors and failed requests.

    Requests that leave the site's server are blocked and recorded in
    ``external``, and the errors their blocking causes are not counted.
    """

    def __init__(self, browser, base_url: str, html: Path):
        self.base_url = base_url
        self.html = html
        self.host = urlparse(base_url).netloc
        self.context = browser.new_context(accept_downloads=True)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.external: set[str] = set()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("requestfailed", self._request_failed)

    def _is_external(self, url: str) -> bool:
        return urlparse(url).netloc not in ("", self.host)

    def _route(self, route):
        url = route.request.url
        if self._is_external(url) and not url.startswith("data:"):
            self.external.add(url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    def _console(self, message):
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource") and self._is_external(
                message.location.get("url", "")):
            return
        self.errors.append(f"console error: {message.text} ({message.location})")

    def _request_failed(self, request):
        if request.url in self.external:
            return
        self.errors.append(f"request failed: {request.url} ({request.failure})")

    def open(self, path: str):
        """Load a page of the site by its path and wait until it has loaded.

        A page that redirects with a meta refresh (the site's root index.html)
        is followed to its target, so the caller never evaluates a page that
        is navigating away.
        """
        self.errors.clear()
        url = urljoin(self.base_url, path)
        response = self.page.goto(url, wait_until="load")
        # Chromium drops the body of a page that redirected, so read the file.
        source = self.html / urlparse(url).path.lstrip("/")
        if source.is_file():
            match = META_REFRESH.search(source.read_text())
            if match:
                self.page.wait_for_url(urljoin(url, match.group(1)), wait_until="load")
        return response

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, site):
    base_url, html = site
    opened = PageVisit(browser, base_url, html)
    yield opened
    opened.close()


def site_pages(html: Path) -> list[str]:
    """Return the path of every HTML page of the built site, relative to its root."""
    pages = []
    for path in sorted(html.rglob("*.html")):
        relative = path.relative_to(html)
        if relative.parts[0] not in ASSET_FOLDERS:
            pages.append(relative.as_posix())
    return pages


def toc_entries(toc_path: Path = REPO_ROOT / "_toc.yml") -> tuple[list[str], list[str]]:
    """Return the documents and the glob patterns that ``_toc.yml`` lists, root first."""
    toc = yaml.safe_load(toc_path.read_text())
    files, globs = [toc["root"]], []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            if "glob" in entry:
                globs.append(entry["glob"])
            walk(entry.get("sections"))
            for part in entry.get("parts") or []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts") or []:
        walk(part.get("chapters"))
    return files, globs


def expected_chapters(html: Path) -> list[str]:
    """Return the page paths of every document in the table of contents."""
    files, globs = toc_entries()
    pages = [f"{name}.html" for name in files]
    built = site_pages(html)
    for pattern in globs:
        pages += [page for page in built if fnmatch.fnmatch(page, f"{pattern}.html")]
    return pages


def navigation_links(page, current_url: str) -> set[str]:
    """Return the site-local pages linked from the sidebar navigation of the open page."""
    hrefs = page.eval_on_selector_all(
        "nav.bd-docs-nav a[href]", "links => links.map(link => link.getAttribute('href'))"
    )
    links = set()
    for href in hrefs:
        url = urldefrag(urljoin(current_url, href)).url
        if urlparse(url).netloc == urlparse(current_url).netloc:
            links.add(url)
    return links


def test_browser_pages_load_without_errors(visit, site):
    _, html = site
    pages = site_pages(html)
    assert len(pages) > 10
    for path in pages:
        response = visit.open(path)
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
        assert visit.errors == [], f"{path}: {visit.errors}"


def test_browser_external_hosts(visit, site):
    _, html = site
    for path in site_pages(html):
        visit.open(path)
    hosts = {urlparse(url).netloc for url in visit.external}
    assert hosts <= EXPECTED_EXTERNAL_HOSTS, f"unexpected external requests: {visit.external}"


def test_browser_images_have_width(visit, site):
    _, html = site
    checked = 0
    for path in site_pages(html):
        visit.open(path)
        images = visit.page.eval_on_selector_all(
            "img", "images => images.map(image => [image.currentSrc || image.src, "
            "image.complete, image.naturalWidth])"
        )
        for source, complete, width in images:
            assert complete, f"{path}: image {source} did not finish loading"
            assert width > 0, f"{path}: image {source} has natural width 0"
            checked += 1
    assert checked > 0, "the site shows no images at all"


def test_browser_navigation_reaches_chapters(visit, site):
    base_url, html = site
    start = urljoin(base_url, "index.html")
    reached, queue = set(), [start]
    while queue:
        url = queue.pop()
        if url in reached:
            continue
        visit.open(url)
        reached.add(url)
        current = visit.page.url  # differs from url after a redirect
        reached.add(current)
        queue.extend(navigation_links(visit.page, current) - reached)
    reached_paths = {urlparse(url).path.lstrip("/") for url in reached}
    for chapter in expected_chapters(html):
        assert chapter in reached_paths, f"{chapter} is not reachable from the navigation"


def test_browser_search_finds_optimizer(visit):
    visit.open("search.html?q=Adam")
    # Sphinx's searchtools.js writes "Search finished, found N page(s)" once
    # every result is listed.
    visit.page.locator(".search-summary", has_text="Search finished").wait_for()
    results = visit.page.locator("ul.search li")
    assert results.count() > 0
    assert "results_" in " ".join(
        visit.page.eval_on_selector_all("ul.search li a", "links => links.map(a => a.href)"))


@pytest.mark.parametrize("chapter,dataset", [
    ("results_mnist", "mnist"),
    ("results_fashion_mnist", "fashion_mnist"),
    ("results_cifar10", "cifar10"),
])
def test_browser_csv_downloads_have_header(visit, chapter, dataset):
    visit.open(f"book/{chapter}.html")
    links = visit.page.locator("a.download")
    names = links.all_inner_texts()
    assert f"{dataset}_runs.csv" in names
    assert f"{dataset}_epochs.csv" in names
    for index in range(links.count()):
        with visit.page.expect_download() as info:
            links.nth(index).click()
        text = Path(info.value.path()).read_text()
        header = text.splitlines()[0]
        assert header.startswith("run_id,"), f"{names[index]}: header {header!r}"
        assert "dataset" in header.split(","), f"{names[index]}: header {header!r}"


def test_browser_store_download_is_sqlite(visit):
    visit.open("book/reproducibility.html")
    link = visit.page.locator("a.download", has_text="results.sqlite")
    with visit.page.expect_download() as info:
        link.click()
    assert Path(info.value.path()).read_bytes()[:16] == SQLITE_HEADER


def test_browser_study_file_download(visit):
    visit.open("book/reproducibility.html")
    link = visit.page.locator("a.download", has_text="study.yml")
    with visit.page.expect_download() as info:
        link.click()
    study = yaml.safe_load(Path(info.value.path()).read_text())
    assert "optimizers" in study
    assert "profiles" in study


@pytest.mark.parametrize("path,name", [
    ("index.html", "home.png"),
    ("book/results_mnist.html", "results_mnist.png"),
])
def test_browser_screenshot_saved(visit, path, name):
    ARTIFACTS.mkdir(exist_ok=True)
    visit.open(path)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    visit.page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
