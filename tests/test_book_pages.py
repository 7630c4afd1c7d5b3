"""Check pages of the built book that the book tests do not cover: execution status."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def executed_pages() -> list[str]:
    """Return the pages under book/ that contain code cells, as docnames."""
    return sorted(
        f"book/{path.stem}" for path in (REPO_ROOT / "book").glob("*.md")
        if "{code-cell}" in path.read_text()
    )


def execution_rows(page: Path) -> dict[str, list[str]]:
    """Return the execution table's cells after the page name, keyed by docname."""
    html = page.read_text()
    rows = {}
    for row in re.findall(r"<tr class=\"row-[a-z]+\">(.*?)</tr>", html, re.S):
        name = re.search(r'<span class="doc">([^<]+)</span>', row)
        if name:
            cells = re.findall(r"<td><p>(?:<abbr[^>]*>)?([^<]*)", row)
            rows[name.group(1)] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def status_rows(built_book):
    result, html = built_book
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return execution_rows(html / "book" / "execution.html")


def test_execution_page_lists_every_notebook(status_rows):
    assert len(executed_pages()) >= 8
    for docname in executed_pages():
        assert docname in status_rows, f"{docname} is missing from the execution table"


@pytest.mark.parametrize("docname", executed_pages())
def test_execution_page_run_time(status_rows, docname):
    modified, method, run_time, status = status_rows[docname]
    assert method == "force"
    assert float(run_time) > 0
    assert status == "✅"


def test_gallery_page_per_tuned_run(built_book, book_store):
    from optstudy import analysis, gallery

    result, html = built_book
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    connection = analysis.open_store(book_store)
    tuned = analysis.tuned_runs(analysis.load_runs(connection))
    connection.close()
    assert len(tuned) > 0
    for _, run in tuned.iterrows():
        docname = gallery.run_page_docname(run["dataset"], run["optimizer"], run["seed"])
        assert (html / f"{docname}.html").is_file(), f"no gallery page {docname}"


def test_landscapes_chapter_animation(built_book):
    result, html = built_book
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = (html / "book" / "landscapes.html").read_text()
    sources = re.findall(r'<img[^>]+src="([^"]+\.gif)"', page)
    assert len(sources) == 1
    assert (html / "book" / sources[0]).resolve().read_bytes()[:6] == b"GIF89a"
