#!/usr/bin/env python
"""Run a profile of the study: every missing run, stored in SQLite as it finishes.

    python scripts/run_study.py --profile default --data-dir ~/data

Rerunning the same command skips finished runs, so an interrupted study
resumes with exactly the runs that are missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from optstudy import store  # noqa: E402
from optstudy.data import DATA_ENV, DataNotFoundError  # noqa: E402
from optstudy.optimizers import OptimizerNotFoundError  # noqa: E402
from optstudy.runner import (  # noqa: E402
    DEFAULT_RUNS_DIR, SCHEDULER_ENV, ClusterSettings, export_records, run_study,
)
from optstudy.study import DEFAULT_STUDY, StudyError, expected_run_count, load_study  # noqa: E402


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(DEFAULT_STUDY),
                        help="study file (default: study.yml at the repository root)")
    parser.add_argument("--profile", default="default",
                        help="a profile of the study file: smoke, default or full in "
                        "study.yml, zoo in zoo.yml (default: default)")
    parser.add_argument("--store", default=None,
                        help=f"SQLite results store (default: ${store.STORE_ENV}, "
                        "else results/<profile>/results.sqlite)")
    parser.add_argument("--runs-dir", default=None,
                        help=f"where executed notebooks go (default: {DEFAULT_RUNS_DIR}/<profile>)")
    parser.add_argument("--data-dir", default=None,
                        help=f"data root (default: ${DATA_ENV}, else ./data); "
                        "missing datasets are downloaded there")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present), cpu or cuda (default: auto)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="workers of the local Dask cluster, one run each at a "
                        "time; CPU cores are split among them (default: 1)")
    parser.add_argument("--scheduler", default=None,
                        help=f"address of a running Dask scheduler, e.g. "
                        f"tcp://10.0.0.5:8786 (default: ${SCHEDULER_ENV}; unset: a "
                        "local cluster)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: cores // --jobs)")
    parser.add_argument("--worker-runs-dir", default=None,
                        help="scratch folder for runs on remote workers "
                        "(default: /tmp/optstudy-runs/<profile> on each worker)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds after which a run is stopped and stored as crashed")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="GiB of resident memory a run (kernel and papermill) may "
                        "use before it is killed and stored as crashed")
    parser.add_argument("--only", action="append", default=None, metavar="RUN_ID",
                        help="run only this run id, again even if stored (repeatable)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run again the runs stored as failed or crashed")
    parser.add_argument("--retry-diverged", action="store_true",
                        help="run again the runs stored as diverged (after a change "
                        "of the divergence rule)")
    parser.add_argument("--export-records", default=None, metavar="FOLDER",
                        help="afterwards, write every stored record as JSON into FOLDER")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # Dask logs every worker start and stop at INFO, which the progress bar makes
    # redundant. Its modules set levels on their own loggers at import, so every
    # logger under "distributed" and "dask" is lowered, not only the two parents.
    import distributed  # noqa: F401 - creates the loggers lowered below

    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "dask"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        study = load_study(arguments.study)
        profile = study.profile(arguments.profile)
    except (StudyError, OptimizerNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    store_path = arguments.store or (
        None if store.resolve_store_path() != store.DEFAULT_STORE
        else store.REPO_ROOT / "results" / arguments.profile / "results.sqlite"
    )
    store_path = store.resolve_store_path(store_path)
    print(f"study {study.path}, profile {profile.name}: about "
          f"{expected_run_count(study, profile)} runs; store {store_path}")

    bar = tqdm(total=expected_run_count(study, profile), unit="run", dynamic_ncols=True)

    def on_progress(outcome, done, planned, final):
        # The plan grows with edge extensions and shrinks to its final size.
        bar.total = planned if final else max(bar.total, planned)
        bar.n = done
        run = outcome.run
        bar.set_postfix_str(
            f"{run.config.dataset} {run.config.optimizer} lr={run.lr:g} "
            f"seed {run.config.seed}: {outcome.status}"
        )
        bar.refresh()

    def on_start(client):
        workers = client.scheduler_info().get("workers", {})
        bar.write(f"Dask cluster: {len(workers)} workers; dashboard: "
                  f"{client.dashboard_link}")

    started = time.perf_counter()
    try:
        counts = run_study(
            study, profile.name, store_path=store_path, runs_dir=arguments.runs_dir,
            data_dir=arguments.data_dir, device=arguments.device, jobs=arguments.jobs,
            retry_failed=arguments.retry_failed,
            retry_diverged=arguments.retry_diverged, timeout=arguments.timeout,
            memory_limit=(int(arguments.memory_limit_gb * 2**30)
                          if arguments.memory_limit_gb else None),
            only=arguments.only, on_progress=on_progress, on_start=on_start,
            cluster=ClusterSettings(
                scheduler=arguments.scheduler, jobs=arguments.jobs,
                threads=arguments.threads, worker_runs_dir=arguments.worker_runs_dir,
            ),
        )
    except (DataNotFoundError, ValueError) as error:
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: finished runs are stored; run the same command to "
              "resume with the missing ones", file=sys.stderr)
        return 130
    bar.close()
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    print(f"finished in {time.perf_counter() - started:.0f} s: {summary or 'nothing to run'}")

    if arguments.export_records:
        count = export_records(store_path, arguments.export_records)
        print(f"wrote {count} records to {arguments.export_records}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
