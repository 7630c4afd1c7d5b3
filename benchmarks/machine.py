"""Describe the machine a benchmark ran on, and read peak resident memory."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

from workloads import REPO_ROOT


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """Return a process's peak resident set size (``VmHWM``), in bytes.

    Linux keeps ``getrusage``'s ``ru_maxrss`` across fork and exec, so a child
    of a large parent reports at least the parent's size. ``VmHWM`` belongs to
    the running program alone. Returns None when the process has exited.
    Without /proc it falls back to this process's ``ru_maxrss``, which macOS
    reports in bytes but Linux and the BSDs in KiB.
    """
    status = Path(f"/proc/{pid}/status")
    try:
        text = status.read_text()
    except FileNotFoundError:
        if pid == "self":  # no /proc: not Linux
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return None
    except ProcessLookupError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def usable_cores() -> int:
    """Return the CPU cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or platform's guess elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_total_bytes() -> int | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def git_revision() -> dict:
    """Return the checkout's commit and whether tracked files differ from it.

    GIT_OPTIONAL_LOCKS=0 keeps ``git status`` from rewriting the index.
    """
    environment = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*arguments: str) -> str | None:
        try:
            completed = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *arguments], capture_output=True,
                text=True, env=environment, timeout=30, check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return completed.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "tracked_files_modified": None if status is None else bool(status),
    }


def describe_machine(python: str = sys.executable) -> dict:
    """Describe hardware and software, with library versions read by ``python``.

    The versions are read in a child process so that the caller need not
    import torch itself.
    """
    probe = (
        "import json, torch, torchvision; "
        "print(json.dumps({'torch': torch.__version__, "
        "'torchvision': torchvision.__version__, "
        "'torch_default_threads': torch.get_num_threads(), "
        "'mkldnn': torch.backends.mkldnn.is_available(), "
        "'cpu_capability': torch.backends.cpu.get_cpu_capability()}))"
    )
    completed = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                               check=True)
    libraries = json.loads(completed.stdout)
    load_1, load_5, load_15 = os.getloadavg()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_total_bytes": memory_total_bytes(),
        "load_average_1_5_15_min": [load_1, load_5, load_15],
        "python": platform.python_version(),
        "python_executable": python,
        "platform": platform.platform(),
        **libraries,
        "git": git_revision(),
    }
