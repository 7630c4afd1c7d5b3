"""The batch runner: expand a study into runs, execute them as Dask tasks, store results.

By default the runs go to a ``LocalCluster`` on this machine. With a scheduler
address they go to that cluster instead (``dask scheduler`` / ``dask worker``,
or dask-jobqueue on Slurm or PBS). Each task executes one papermill run on its
worker and returns the record and the executed notebook's bytes. This client
is the store's only writer: it writes each result in one SQLite transaction
as soon as its task ends, so nothing finished is held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import store
from .data import load_arrays
from .execution import NOTEBOOK, Outcome, kill_live_runs, run_task
from .study import PlannedRun, Study, plan

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_DIR = REPO_ROOT / "runs"
SCHEDULER_ENV = "OPTSTUDY_SCHEDULER"

# A task is rescheduled when its worker dies; after this many worker deaths
# the scheduler gives up on it (Dask's "allowed-failures").
WORKER_DEATHS_ALLOWED = 2
# How often the client wakes to refresh its claims and look for new work.
POLL_SECONDS = 5.0


@dataclass
class ClusterSettings:
    """Cluster choice: a local cluster of ``jobs`` workers, or a scheduler address."""

    scheduler: str | None = None
    jobs: int = 1
    threads: int | None = None  # torch threads per run; default: cores // jobs
    worker_runs_dir: str | None = None  # remote workers' scratch folder


def prepare_data(datasets, data_dir) -> None:
    """Read (and if needed download) every dataset once, before any task starts.

    Runs then only read the data, so parallel runs never race on a download.
    """
    for dataset in datasets:
        for split in ("train", "test"):
            load_arrays(dataset, split, data_dir)


def start_client(settings: ClusterSettings):
    """Connect to the scheduler, or start a local cluster sized for this machine."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.scheduler.allowed-failures": WORKER_DEATHS_ALLOWED})
    address = settings.scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        return Client(address), None
    cluster = LocalCluster(
        n_workers=settings.jobs, threads_per_worker=1, processes=True,
        dashboard_address="127.0.0.1:0", memory_limit=0,
    )
    return Client(cluster), cluster


def _store_outcome(connection, profile_name: str, outcome: Outcome,
                   runs_dir: Path) -> None:
    run = outcome.run
    notebook_path = runs_dir / run.run_id / "train.ipynb"
    if outcome.notebook_bytes is not None:
        notebook_path.parent.mkdir(parents=True, exist_ok=True)
        if outcome.notebook_path.resolve() != notebook_path.resolve():
            notebook_path.write_bytes(outcome.notebook_bytes)
    store.save_run(
        connection, run.run_id, profile_name, run.phase, run.config.to_dict(),
        outcome.status, outcome.record, outcome.error, str(notebook_path),
        outcome.seconds_wall,
    )
    level = logging.INFO if outcome.status in store.DONE_STATUSES else logging.WARNING
    log.log(level, "run %s (%s, %s, lr=%g, seed %d): %s%s", run.run_id,
            run.config.dataset, run.config.optimizer, run.lr, run.config.seed,
            outcome.status, f": {outcome.error}" if outcome.error else "")


def _worker_death_outcome(run: PlannedRun, error: Exception, runs_dir: Path) -> Outcome:
    return Outcome(
        run, "crashed", None,
        f"the run killed its Dask worker {WORKER_DEATHS_ALLOWED + 1} times "
        f"(for example by exhausting memory): {type(error).__name__}: {error}",
        runs_dir / run.run_id / "train.ipynb", 0.0,
    )


def _forget_runs(connection, profile_name, study, profile, only, retry_failed,
                 retry_diverged=False):
    if only:
        results = store.load_statuses(connection)
        known = set(results) | {run.run_id for run in plan(study, profile, results)[0]}
        unknown = [run_id for run_id in only if run_id not in known]
        if unknown:
            raise ValueError(
                f"run ids {unknown} are neither stored nor planned for profile "
                f"{profile_name!r}; list ids with: sqlite3 <store> 'SELECT run_id, "
                "status FROM runs'"
            )
        with connection:
            connection.executemany("DELETE FROM runs WHERE run_id = ?",
                                   [(run_id,) for run_id in only])
    # Diverged runs are retried after a change of the divergence rule: completed
    # runs remain valid because the rule was only ever loosened.
    statuses = (["failed", "crashed"] if retry_failed else []) + (
        ["diverged"] if retry_diverged else [])
    if statuses:
        with connection:
            connection.execute(
                f"DELETE FROM runs WHERE profile = ? AND status IN "
                f"({', '.join('?' for _ in statuses)})",
                (profile_name, *statuses),
            )


def mark_superseded(connection, profile_name: str, study: Study, profile) -> int:
    """Mark stored runs that the finished plan no longer contains; return how many.

    A change of protocol (say, a new rule for extending the grid) can leave
    runs that no longer belong to any phase. They stay in the store, with
    phase "superseded", and the analysis leaves them out.
    """
    results = store.load_statuses(connection)
    planned, final = plan(study, profile, results)
    if not final:
        return 0
    keep = {run.run_id: run.phase for run in planned}
    with connection:  # a run planned again after being superseded gets its phase back
        connection.executemany(
            "UPDATE runs SET phase = ? WHERE run_id = ? AND phase = 'superseded'",
            [(phase, run_id) for run_id, phase in keep.items()],
        )
    stale = [
        (run_id,) for (run_id,) in connection.execute(
            "SELECT run_id FROM runs WHERE profile = ? AND phase != 'superseded'",
            (profile_name,))
        if run_id not in keep
    ]
    with connection:
        connection.executemany(
            "UPDATE runs SET phase = 'superseded' WHERE run_id = ?", stale
        )
    if stale:
        log.warning("%d stored runs are no longer planned; marked superseded",
                    len(stale))
    return len(stale)


def run_study(study: Study, profile_name: str, store_path=None, runs_dir=None,
              data_dir=None, device: str = "auto", jobs: int = 1,
              retry_failed: bool = False, retry_diverged: bool = False,
              timeout: float | None = None,
              memory_limit: int | None = None, only: list[str] | None = None,
              notebook: Path = NOTEBOOK, cluster: ClusterSettings | None = None,
              on_start=None, on_progress=None) -> dict:
    """Run every missing run of a profile; return counts by status.

    ``only`` restricts the call to the given run ids, which are run again
    even when stored (to rerun one failed or crashed run alone).
    ``on_start(client)`` is called once the cluster is up (to show the
    dashboard); ``on_progress(outcome, done, planned, final)`` after each run
    is stored. Both are called from the calling thread.
    """
    profile = study.profile(profile_name)
    runs_dir = Path(runs_dir or DEFAULT_RUNS_DIR / profile_name).resolve()
    data_dir = Path(data_dir).resolve() if data_dir else None
    settings = cluster or ClusterSettings(jobs=jobs)
    connection = store.connect(store_path)
    _forget_runs(connection, profile_name, study, profile, only, retry_failed,
                 retry_diverged)
    results = store.load_statuses(connection)
    if all(run.run_id in results for run in plan(study, profile, results)[0]):
        mark_superseded(connection, profile_name, study, profile)
        connection.close()
        return {}  # nothing to run: no data needed, no cluster started
    prepare_data(profile.datasets, data_dir)

    client, local_cluster = start_client(settings)
    remote = local_cluster is None
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    slots = max(1, sum(
        worker.get("nthreads", 1)
        for worker in client.scheduler_info().get("workers", {}).values()
    ))
    threads = settings.threads or max(1, (os.cpu_count() or 1) // settings.jobs)
    work_root = (settings.worker_runs_dir if remote and settings.worker_runs_dir
                 else None)
    if remote and work_root is None:
        work_root = os.path.join("/tmp", "optstudy-runs", profile_name)
    work_root = work_root or str(runs_dir)
    log.info("cluster: %d workers, %d task slots, %d torch threads per run",
             workers, slots, threads)
    if on_start:
        on_start(client)

    owner = store.make_owner()
    counts: dict[str, int] = {}
    attempted: set[str] = set()
    in_flight = {}
    try:
        while True:
            results = store.load_statuses(connection)
            planned, final = plan(study, profile, results)
            busy_elsewhere = store.claimed_by_others(connection, owner)
            pending = [
                run for run in planned
                if run.run_id not in results and run.run_id not in attempted
                and run.run_id not in busy_elsewhere
                and (not only or run.run_id in only)
            ]
            done = sum(1 for run in planned if run.run_id in results)
            waiting_for_others = any(
                run.run_id in busy_elsewhere for run in planned
                if run.run_id not in results
            )
            if not pending and not in_flight and not waiting_for_others:
                break
            for run in pending[: max(0, slots - len(in_flight))]:
                attempted.add(run.run_id)
                if not store.claim(connection, run.run_id, owner):
                    continue
                future = client.submit(
                    run_task, run, work_root, str(data_dir) if data_dir else None,
                    device, threads, timeout, memory_limit, profile.checkpoint,
                    str(notebook), key=f"run-{run.run_id}-{owner}", pure=False,
                )
                in_flight[future] = run

            finished = _next_finished(in_flight)
            store.heartbeat(connection, owner)
            for future in finished:
                run = in_flight.pop(future)
                try:
                    outcome = future.result()
                except Exception as error:  # KilledWorker and the like
                    outcome = _worker_death_outcome(run, error, runs_dir)
                _store_outcome(connection, profile_name, outcome, runs_dir)
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
                done += 1
                if on_progress:
                    on_progress(outcome, done, len(planned), final)
                future.release()
    except BaseException:
        # Ctrl-C or a kill of the runner: finished runs are already stored, and
        # the next start runs the rest, including those in flight now.
        for future in in_flight:
            future.cancel()
        kill_live_runs()
        raise
    else:
        mark_superseded(connection, profile_name, study, profile)
    finally:
        store.release(connection, owner)
        connection.close()
        client.close()
        if local_cluster is not None:
            local_cluster.close()
    return counts


def _next_finished(in_flight) -> list:
    """Wait up to POLL_SECONDS for finished tasks; return them (maybe none)."""
    from distributed import wait

    if not in_flight:
        time.sleep(POLL_SECONDS)  # other runners hold the runs this plan needs
        return []
    try:
        finished = wait(list(in_flight), timeout=POLL_SECONDS,
                        return_when="FIRST_COMPLETED")
    except TimeoutError:
        return []
    return list(finished.done)


def export_records(store_path, folder) -> int:
    """Write every stored record as ``<run_id>.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    connection = store.connect(store_path, read_only=True)
    count = 0
    for row in connection.execute("SELECT run_id, record_json, status, error, "
                                  "config_json FROM runs"):
        record = json.loads(row["record_json"]) if row["record_json"] else {
            "config": json.loads(row["config_json"]), "status": row["status"],
            "error": row["error"],
        }
        (folder / f"{row['run_id']}.json").write_text(
            json.dumps(record, indent=1, sort_keys=True)
        )
        count += 1
    connection.close()
    return count
