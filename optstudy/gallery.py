"""The run gallery: one book page per tuned run, written from the results store.

The executed run notebooks are not committed (``runs/`` is gitignored), so
each page is written from the run's stored record instead: its settings,
final metrics and learning curves drawn by :func:`optstudy.plots.plot_run`.
The pages are plain MyST Markdown with a PNG figure and execute nothing,
which keeps a gallery of a hundred runs cheap to build.

The book's extension ``book/_ext/run_gallery.py`` calls :func:`write_gallery`
before Sphinx reads the table of contents, whose globs then pick the pages
up. :func:`run_page_link` gives the link target of a run's page, for tables
that link each optimizer to its runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

from . import analysis, store

GALLERY_DIR = store.REPO_ROOT / "book" / "gallery"
# Docname prefix of the gallery pages, relative to the book's source root.
GALLERY_DOCNAME = "book/gallery"


def run_page_name(optimizer: str, seed: int) -> str:
    return f"{optimizer}-seed{int(seed)}"


def run_page_docname(dataset: str, optimizer: str, seed: int) -> str:
    """Return the Sphinx docname of a tuned run's page, e.g. ``book/gallery/mnist/adam-seed0``."""
    return f"{GALLERY_DOCNAME}/{dataset}/{run_page_name(optimizer, seed)}"


def run_page_link(dataset: str, optimizer: str, seed: int) -> str:
    """Return the Markdown link target of a tuned run's page from a page in ``book/``.

    For example ``[Adam](gallery/mnist/adam-seed0.md)`` in a table glued onto
    a results chapter. Pages exist only for tuned runs: the seed runs and the
    first-seed tuning run at the tuned learning rate. A link to any other run
    points to no page.
    """
    return f"gallery/{dataset}/{run_page_name(optimizer, seed)}.md"


def _percent(value) -> str:
    return "none" if value is None or value != value else f"{100 * value:.2f}%"


def _run_page(dataset: str, run, record: dict | None, figure_name: str | None,
              label: str) -> str:
    """Return the Markdown of one run's page."""
    name = analysis.DATASET_NAMES.get(dataset, dataset)
    target = f"gallery-{dataset}-{run_page_name(run['optimizer'], run['seed'])}"
    lines = [
        f"({target})=",
        f"# {label}, seed {int(run['seed'])}",
        "",
        f"Run `{run['run_id']}` trained on {name} with {label} "
        f"(`{run['optimizer_class']}`) at a learning rate of {run['lr']:g} and seed "
        f"{int(run['seed'])}, in the {run['phase']} phase of the study. Its status is "
        f"**{run['status']}**.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| final test accuracy | {_percent(run['final_test_accuracy'])} |",
        f"| final validation accuracy | {_percent(run['final_valid_accuracy'])} |",
        f"| optimizer steps | {'none' if run['steps'] != run['steps'] else int(run['steps'])} |",
        "",
    ]
    if run["status"] in analysis.FAILED_STATUSES:
        lines += [f"The run stored no learning curves. Its error: `{run['error']}`", ""]
    if figure_name:
        lines += [
            f"{{numref}}`fig-{target}` shows the run's learning curves.",
            "",
            f"```{{figure}} {figure_name}",
            f":name: fig-{target}",
            f":alt: Learning curves of {label} on {name}, seed {int(run['seed'])}.",
            "",
            f"Learning curves of this run. Left: cross-entropy loss in nats, the "
            f"sampled mini-batch training loss (grey) and the loss on the validation "
            f"and test sets after each epoch, against epochs. Right: validation and "
            f"test accuracy in percent after each epoch.",
            "```",
            "",
        ]
    if record and record.get("config"):
        settings = json.dumps(record["config"], indent=1, sort_keys=True)
        lines += ["The run's stored configuration:", "", "```json", settings, "```", ""]
    return "\n".join(lines)


def _dataset_page(dataset: str, rows: list[tuple[str, str, int, str]]) -> str:
    """Return the Markdown of a dataset's gallery index, one row per tuned run."""
    name = analysis.DATASET_NAMES.get(dataset, dataset)
    lines = [
        f"(gallery-{dataset})=",
        f"# Runs on {name}",
        "",
        f"Each tuned run on {name} has a page with its settings, final metrics and "
        "learning curves, read from the results store when the book was built.",
        "",
        "| optimizer | seed | learning rate | status |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, page, seed, lr, status in rows:
        lines.append(f"| [{label}]({dataset}/{page}.md) | {seed} | {lr:g} | {status} |")
    if not rows:
        lines = lines[:-2] + [f"The results store contains no tuned runs on {name}."]
    return "\n".join(lines) + "\n"


def write_gallery(store_path: str | Path | None = None,
                  folder: str | Path = GALLERY_DIR) -> list[Path]:
    """Write the gallery pages and figures of every tuned run; return the pages written.

    The folder is emptied first, so runs of an earlier store leave no pages.
    Raises StoreNotFoundError when the store is missing.
    """
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_run

    folder = Path(folder)
    context = analysis.load_context(store_path)
    tuned = analysis.tuned_runs(context.runs)
    records = dict(context.connection.execute(
        "SELECT run_id, record_json FROM runs").fetchall())
    context.connection.close()
    if folder.exists():
        shutil.rmtree(folder)
    written = []
    folder.mkdir(parents=True)
    # Every dataset of the book gets an index page, because _toc.yml lists them.
    for dataset in analysis.DATASET_NAMES:
        runs = tuned[tuned["dataset"] == dataset]
        runs = runs.assign(position=[context.order.index(o) for o in runs["optimizer"]])
        rows = []
        (folder / dataset).mkdir()
        for _, run in runs.sort_values(["position", "seed"]).iterrows():
            label = context.labels.get(run["optimizer"], run["optimizer"])
            page = run_page_name(run["optimizer"], run["seed"])
            text = records.get(run["run_id"])
            record = json.loads(text) if text else None
            figure_name = None
            if record and record.get("history"):
                figure = plot_run(record)
                figure_name = f"{page}.png"
                figure.savefig(folder / dataset / figure_name, dpi=80)
                plt.close(figure)
            path = folder / dataset / f"{page}.md"
            path.write_text(_run_page(dataset, run, record, figure_name, label))
            written.append(path)
            rows.append((label, page, int(run["seed"]), float(run["lr"]), run["status"]))
        index = folder / f"{dataset}.md"
        index.write_text(_dataset_page(dataset, rows))
        written.append(index)
    return written
