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
