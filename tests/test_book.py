"""Build the Jupyter Book from a results store and check the published pages.

The build executes every page, so it needs a store with real runs. The
``book_store`` fixture (in conftest.py) takes it from ``$OPTSTUDY_TEST_STORE``
when set, and otherwise runs the smoke profile of the study (about a minute of
training on two cores, with the data under ``$OPTSTUDY_DATA``). A full build
takes a few minutes on two cores.
"""

from __future__ import annotations

import math
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_TIMEOUT, JUPYTER_BOOK, REPO_ROOT, build_book

CHAPTERS = [
    "index",
    "introduction",
    "optimizers",
    "method",
    "results_mnist",
    "results_fashion_mnist",
    "results_cifar10",
    "conclusions",
    "adding_an_optimizer",
    "reproducibility",
]


def build_log(result: subprocess.CompletedProcess) -> str:
    return (result.stdout[-4000:] + "\n" + result.stderr[-4000:]).strip()


def pasted_texts(page: Path) -> list[str]:
    """Return the texts that glue roles inserted into a page, in order."""
    return re.findall(r'<span class="pasted-text">([^<]*)</span>', page.read_text())


def reference_best_mean(path: Path, dataset: str) -> float:
    """Compute the best mean test accuracy of tuned runs with plain SQL and Python.

    This is an independent reference for the analysis module. The tuned rate
    is the rate of the ``seed`` phase runs. Before they exist, it is the rate
    of the completed first-seed tuning run with the highest validation
    accuracy (then lowest validation loss, then lowest rate). The tuned runs
    are all runs at that rate, whatever phase planned them first (the
    out-of-the-box track shares runs with the tuned one).
    """
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = connection.execute(
        "SELECT optimizer, phase, lr, seed, status, final_valid_accuracy, "
        "final_valid_loss, final_test_accuracy FROM runs WHERE dataset = ?",
        (dataset,),
    ).fetchall()
    connection.close()

    means = []
    for optimizer in {row[0] for row in rows}:
        cell = [row for row in rows if row[0] == optimizer]
        tuning = [row for row in cell if row[1] in ("grid", "extension")]
        seed_rates = {row[2] for row in cell if row[1] == "seed"}
        if len(seed_rates) == 1:
            rate = seed_rates.pop()
        else:
            completed = [row for row in tuning if row[4] == "completed"]
            if not completed:
                continue
            rate = max(completed, key=lambda row: (row[5], -row[6], -row[2]))[2]
        accuracies = [
            row[7] for row in cell
            if math.isclose(row[2], rate, rel_tol=1e-6) and row[4] == "completed"
            and row[1] != "superseded"
        ]
        if accuracies:
            means.append(sum(accuracies) / len(accuracies))
    return max(means)


def test_book_build_succeeds(built_book):
    result, _ = built_book
    assert result.returncode == 0, build_log(result)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_book_chapter_html_exists(built_book, chapter):
    result, html = built_book
    assert result.returncode == 0, build_log(result)
    assert (html / "book" / f"{chapter}.html").is_file()


def test_book_glued_accuracy_matches_store(built_book, book_store):
    result, html = built_book
    assert result.returncode == 0, build_log(result)
    expected = f"{100 * reference_best_mean(book_store, 'mnist'):.2f}%"
    assert expected in pasted_texts(html / "book" / "results_mnist.html")


def test_book_glued_run_count_matches_store(built_book, book_store):
    result, html = built_book
    assert result.returncode == 0, build_log(result)
    connection = sqlite3.connect(f"file:{book_store}?mode=ro", uri=True)
    (count,) = connection.execute("SELECT COUNT(*) FROM runs").fetchone()
    connection.close()
    page = (html / "book" / "method.html").read_text()
    assert f'The store holds <span class="pasted-text">{count}</span> runs' in page


def test_book_missing_store_fails(tmp_path):
    missing = tmp_path / "absent.sqlite"
    result = build_book(missing, tmp_path / "book")
    assert result.returncode != 0
    assert "results store not found" in result.stdout + result.stderr
    assert not missing.exists()


def build_minimal_book(tmp_path: Path, cell: str, timeout: int = 300):
    """Build a one-page book with this project's configuration and ``cell`` in the page."""
    import shutil

    root = tmp_path / "minibook"
    (root / "book").mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "book" / "_ext", root / "book" / "_ext")
    config = (REPO_ROOT / "_config.yml").read_text()
    config = re.sub(r"(\n\s*timeout:\s*)\d+", rf"\g<1>{timeout}", config, count=1)
    (root / "_config.yml").write_text(config)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/index\n"
                                   "chapters:\n  - file: book/broken\n")
    (root / "book" / "index.md").write_text("# Index\n\nA one-page book.\n")
    header = ("---\njupytext:\n  text_representation:\n    format_name: myst\n"
              "kernelspec:\n  display_name: Python 3\n  name: python3\n---\n\n")
    (root / "book" / "broken.md").write_text(
        header + "# Broken page\n\nThe next cell fails.\n\n"
        f"```{{code-cell}} ipython3\n{cell}\n```\n"
    )
    command = [str(JUPYTER_BOOK), "build", str(root), "-W", "-n", "--keep-going"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)


def plain(result) -> str:
    """Return the build's output without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


def test_book_cell_error_fails_build(tmp_path):
    result = build_minimal_book(tmp_path, 'raise RuntimeError("injected failure")')
    output = plain(result)
    assert result.returncode != 0
    assert "book/broken.md" in output
    assert 'raise RuntimeError("injected failure")' in output
    assert "CellExecutionError" in output


def test_book_cell_timeout_fails_build(tmp_path):
    result = build_minimal_book(tmp_path, "import time\ntime.sleep(60)", timeout=5)
    output = plain(result)
    assert result.returncode != 0
    assert "book/broken.md" in output
    assert "CellTimeoutError" in output or "timed out" in output
