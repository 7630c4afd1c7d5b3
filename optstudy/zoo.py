"""The optimizer zoo and the conformance table, as the book shows them.

The conformance table (``results/conformance/conformance.json``, written by
``scripts/conformance.py --all``) lists which optimizer names run through the
study's training loop. The zoo (``zoo.yml``, written by
``scripts/make_zoo.py``; results in ``results/zoo/results.sqlite``) runs every
one that passed on one cheap problem.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from . import stats
from .analysis import load_runs, markdown_table, open_store, same_lr
from .study import load_study, score

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE_TABLE = REPO_ROOT / "results" / "conformance" / "conformance.json"
ZOO_STUDY = REPO_ROOT / "zoo.yml"
ZOO_STORE = REPO_ROOT / "results" / "zoo" / "results.sqlite"
ZOO_STORE_ENV = "OPTSTUDY_ZOO_STORE"
ZOO_LEFT_OUT = REPO_ROOT / "results" / "zoo" / "left_out.json"


def load_conformance(path: str | os.PathLike = CONFORMANCE_TABLE) -> dict:
    """Read the conformance table that ``scripts/conformance.py`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"conformance table not found: {path}. Run "
            "python scripts/conformance.py --all"
        )
    return json.loads(path.read_text())


def conformance_frame(table: dict) -> pd.DataFrame:
    """Return the table's rows, one per optimizer name."""
    return pd.DataFrame(table["results"])


def package_of(reference: str) -> str:
    """Name the library of a class reference."""
    return "torch.optim" if reference.startswith("torch.optim.") else "pytorch-optimizer"


def conformance_values(table: dict) -> dict:
    """Counts and tables of the conformance page."""
    frame = conformance_frame(table)
    counts = frame["status"].value_counts()
    others = frame[frame["status"] != "pass"].sort_values("reference")
    listing = pd.DataFrame({
        "optimizer": others["reference"],
        "outcome": others["status"],
        "failed check": others["check"].fillna(""),
        "reason": others["reason"].fillna("").str.slice(0, 160),
    })
    passed = frame[frame["status"] == "pass"]
    needs = passed[passed["needs"].fillna("") != ""]
    needs_table = pd.DataFrame({"optimizer": needs["reference"],
                                "what its step needs": needs["needs"]})
    return {
        "n_checked": len(frame),
        "n_pass": int(counts.get("pass", 0)),
        "n_fail": int(counts.get("fail", 0)),
        "n_cannot": int(counts.get("cannot run", 0)),
        "n_timeout": int(counts.get("timed out", 0)),
        "n_torch": int(frame["reference"].str.startswith("torch.optim.").sum()),
        "conformance_seconds": f"{table.get('seconds', math.nan):.0f}",
        "conformance_torch": str(table.get("torch", "unknown")),
        "not_passing_md": markdown_table(listing) if len(listing)
        else "| result |\n|:--|\n| every optimizer passed |",
        "needs_md": markdown_table(needs_table) if len(needs_table)
        else "| result |\n|:--|\n| no optimizer needed more than a plain step |",
    }


def zoo_store_path() -> Path:
    """Return ``$OPTSTUDY_ZOO_STORE``, else the committed zoo store."""
    value = os.environ.get(ZOO_STORE_ENV)
    return Path(value).resolve() if value else ZOO_STORE


def zoo_table(runs: pd.DataFrame, study, target: float | None) -> pd.DataFrame:
    """Return one row per zoo optimizer: defaults, best of the sweep, cost, divergence.

    An optimizer whose every run failed or crashed has no row here; the list of
    optimizers that could not run (:func:`never_ran`) gives its error instead.
    """
    rows = []
    for name, cell in runs.groupby("optimizer", sort=False):
        if _failed_everywhere(cell):
            continue
        entry = study.optimizers.get(name)
        label = entry.label if entry else name
        default_lr = entry.lr_default if entry else math.nan
        at_default = cell[same_lr(cell["lr"], default_lr)]
        default = at_default.iloc[0] if len(at_default) else None
        best = max(cell.itertuples(), key=lambda row: (score(
            {"status": row.status, "final_valid_accuracy": row.final_valid_accuracy,
             "final_valid_loss": row.final_valid_loss}), -row.lr))
        best_ok = best.status == "completed"
        rows.append({
            "optimizer": label,
            "package": package_of(entry.reference if entry else ""),
            "default lr": default_lr,
            "test acc. at default (%)": 100 * default["final_test_accuracy"]
            if default is not None and default["status"] == "completed" else math.nan,
            "best lr": best.lr if best_ok else math.nan,
            "test acc. at best lr (%)": 100 * best.final_test_accuracy if best_ok
            else math.nan,
            "steps to target at best lr": best.target_step if best_ok else math.nan,
            "gradient evaluations": best.gradient_evaluations,
            "state (KiB)": (best.optimizer_state_bytes or 0) / 1024,
            "diverged": f"{int((cell['status'] == 'diverged').sum())} of {len(cell)}",
            "failed": int(cell["status"].isin(("failed", "crashed")).sum()),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values("test acc. at best lr (%)", ascending=False,
                             na_position="last").reset_index(drop=True)


def _failed_everywhere(cell: pd.DataFrame) -> bool:
    """Return whether every run of one optimizer failed or crashed."""
    return bool(cell["status"].isin(("failed", "crashed")).all())


def never_ran(runs: pd.DataFrame, study) -> list[dict]:
    """Return a row for each zoo entry whose every run failed or crashed, with
    the error of its first run as the reason."""
    rows = []
    for name, cell in runs.groupby("optimizer", sort=False):
        if not _failed_everywhere(cell):
            continue
        entry = study.optimizers.get(name)
        error = str(cell["error"].dropna().iloc[0]) if cell["error"].notna().any() else ""
        rows.append({
            "optimizer": entry.reference if entry else name,
            "reason": f"every run {'crashed' if (cell['status'] == 'crashed').all() else 'failed'}"
                      f" in the training loop: {error}"[:160],
        })
    return rows


def _first_reach(connection, runs: pd.DataFrame, target: float | None) -> list:
    """Return each run's step at its first validation check at the target, else NaN."""
    from .tracks import load_checks

    checks = load_checks(connection, runs["run_id"])
    grouped = dict(tuple(checks.groupby("run_id")))
    values = []
    for run_id, status in zip(runs["run_id"], runs["status"]):
        mine = grouped.get(run_id)
        if target is None or mine is None or status != "completed":
            values.append(math.nan)
        else:
            values.append(stats.first_reach(mine, target)[0])
    return values


def zoo_values(path: str | os.PathLike | None = None,
               study_path: str | os.PathLike = ZOO_STUDY) -> tuple[pd.DataFrame, dict]:
    """Return the zoo table and the zoo page's glue values."""
    path = Path(path) if path else zoo_store_path()
    connection = open_store(path)
    try:
        runs = load_runs(connection)
        study = load_study(study_path)
        target = study.targets.get("mnist")
        runs["target_step"] = _first_reach(connection, runs, target)
    finally:
        connection.close()
    table = zoo_table(runs, study, target)
    formatted = table.copy()
    for column in formatted.columns:
        if formatted[column].dtype.kind == "f":
            digits = 1 if "%" in column else (0 if "steps" in column
                                              or "KiB" in column
                                              or "evaluations" in column else None)
            formatted[column] = [
                "" if pd.isna(v) else (f"{v:.{digits}f}" if digits is not None
                                       else f"{v:g}")
                for v in formatted[column]
            ]
    profile = next(iter(study.profiles.values()))
    missing = [entry.reference for name, entry in study.optimizers.items()
               if name not in set(runs["optimizer"])]
    left_out = json.loads(ZOO_LEFT_OUT.read_text()) if ZOO_LEFT_OUT.is_file() else []
    failed_everywhere = never_ran(runs, study)
    left_rows = pd.DataFrame(
        [{"optimizer": item["reference"], "reason": item["reason"][:160]}
         for item in left_out]
        + failed_everywhere
        + [{"optimizer": reference, "reason": "in zoo.yml, not run yet"}
           for reference in missing])
    completed = runs[runs["status"] == "completed"]
    values = {
        "zoo_runs": len(runs),
        "zoo_optimizers": runs["optimizer"].nunique(),
        "zoo_completed": len(completed),
        "zoo_diverged": int((runs["status"] == "diverged").sum()),
        "zoo_failed": int(runs["status"].isin(("failed", "crashed")).sum()),
        "zoo_target": target if target is not None else math.nan,
        "zoo_train_size": profile.train_size,
        "zoo_epochs": profile.epochs,
        "zoo_hours": runs["seconds_wall"].sum() / 3600,
        "zoo_table_md": markdown_table(formatted) if len(formatted)
        else "| result |\n|:--|\n| the zoo has no runs yet |",
        "zoo_entries": len(study.optimizers),
        "zoo_missing": len(missing),
        "zoo_left_out": len(left_out),
        "zoo_never_ran": len(failed_everywhere),
        "zoo_left_out_md": markdown_table(left_rows) if len(left_rows)
        else "| result |\n|:--|\n| every optimizer name ran |",
    }
    return table, values

