"""Summarise benchmark measurements into rates, ratios, target verdicts and a table."""

from __future__ import annotations

import statistics

APPROACHES = {
    "notebook": "(1) papermill notebook",
    "direct": "(2) train() in-process",
    "idiom": "(3) torchvision + DataLoader",
}
GIB = 2**30
MIB = 2**20

# Targets, as stated for this benchmark.
MIN_SPEEDUP_OVER_IDIOM = 2.0  # (1) at least 2x faster than (3)
MAX_NOTEBOOK_OVERHEAD_PERCENT = 10.0  # (1) within 10 % of (2) ...
OVERHEAD_MIN_RUN_SECONDS = 60.0  # ... for runs of one minute or more
MIN_CEILING_PERCENT = 50.0  # (2) at least 50 % of the fp32 matmul ceiling
MAX_CIFAR_PEAK_RSS_BYTES = 2 * GIB  # a CIFAR-10 run's peak RSS under 2 GiB


def median_of(measurements: list[dict], key: str):
    values = [m[key] for m in measurements if m.get(key) is not None]
    return statistics.median(values) if values else None


def summarise_approach(measurements: list[dict], flops_per_image: float | None,
                       ceiling_gflops: float | None) -> dict | None:
    """Reduce an approach's repeats to medians and rates, or None if all failed."""
    completed = [m for m in measurements if m.get("status") == "completed"]
    if not completed:
        return None
    summary = {
        key: median_of(completed, key)
        for key in ("wall_seconds", "launch_to_first_step_seconds", "call_seconds",
                    "train_seconds", "eval_seconds", "load_seconds",
                    "data_wait_seconds", "import_seconds", "peak_rss_bytes",
                    "launch_to_call_seconds",
                    "trained_images", "steps", "final_train_loss")
    }
    summary["repeats"] = len(completed)
    images = summary["trained_images"]
    summary["train_images_per_second"] = images / summary["train_seconds"]
    summary["end_to_end_images_per_second"] = images / summary["wall_seconds"]
    if flops_per_image is not None:
        summary["train_gflops"] = (flops_per_image * images
                                   / summary["train_seconds"] / 1e9)
        if ceiling_gflops:
            summary["ceiling_percent"] = 100 * summary["train_gflops"] / ceiling_gflops
    return summary


def compute_ratios(summaries: dict) -> dict:
    """Return the side-by-side ratios, each None when one of its sides is missing."""
    notebook = summaries.get("notebook")
    direct = summaries.get("direct")
    idiom = summaries.get("idiom")
    ratios = {
        "speedup_end_to_end": None,
        "speedup_training_steps": None,
        "notebook_overhead_percent": None,
        "notebook_overhead_vs_call_percent": None,
        "direct_ceiling_percent": direct.get("ceiling_percent") if direct else None,
    }
    if notebook and idiom:
        ratios["speedup_end_to_end"] = idiom["wall_seconds"] / notebook["wall_seconds"]
        ratios["speedup_training_steps"] = (notebook["train_images_per_second"]
                                            / idiom["train_images_per_second"])
    if notebook and direct:
        ratios["notebook_overhead_percent"] = 100 * (
            notebook["wall_seconds"] / direct["wall_seconds"] - 1)
        ratios["notebook_overhead_vs_call_percent"] = 100 * (
            notebook["wall_seconds"] / direct["call_seconds"] - 1)
    return ratios


def _target(name: str, value, target_text: str, met, detail: str) -> dict:
    return {"target": name, "value": value, "requirement": target_text,
            "met": met, "detail": detail}


def judge_targets(workload_results: list[dict]) -> list[dict]:
    """Check each workload against the four targets and report the margin."""
    judged = []
    for result in workload_results:
        label = f"{result['workload']['model']}/{result['workload']['dataset']}"
        ratios = result["ratios"]
        summaries = result["summaries"]

        for key, scope in (("speedup_end_to_end", "launch to finish"),
                           ("speedup_training_steps", "training steps only")):
            value = ratios[key]
            name = f"{label}: (1) vs (3) speed-up, {scope}"
            requirement = f">= {MIN_SPEEDUP_OVER_IDIOM:g}x"
            if value is None:
                judged.append(_target(name, None, requirement, None, "not measured"))
                continue
            met = value >= MIN_SPEEDUP_OVER_IDIOM
            detail = (f"met: {value:.2f}x" if met else
                      f"missed by {MIN_SPEEDUP_OVER_IDIOM - value:.2f}x "
                      f"({value:.2f}x)")
            judged.append(_target(name, value, requirement, met, detail))

        value = ratios["notebook_overhead_percent"]
        name = f"{label}: (1) overhead over (2), launch to finish"
        requirement = (f"<= {MAX_NOTEBOOK_OVERHEAD_PERCENT:g} % for runs of "
                       f"{OVERHEAD_MIN_RUN_SECONDS:g} s or more")
        direct = summaries.get("direct")
        if value is None:
            judged.append(_target(name, None, requirement, None, "not measured"))
        elif direct["wall_seconds"] < OVERHEAD_MIN_RUN_SECONDS:
            judged.append(_target(
                name, value, requirement, None,
                f"not judged: (2) took {direct['wall_seconds']:.1f} s, under "
                f"{OVERHEAD_MIN_RUN_SECONDS:g} s ({value:+.1f} %)"))
        else:
            met = value <= MAX_NOTEBOOK_OVERHEAD_PERCENT
            detail = (f"met: {value:+.1f} %" if met else
                      f"missed by {value - MAX_NOTEBOOK_OVERHEAD_PERCENT:.1f} "
                      f"points ({value:+.1f} %)")
            judged.append(_target(name, value, requirement, met, detail))

        value = ratios["direct_ceiling_percent"]
        name = f"{label}: (2) training steps as % of the fp32 matmul ceiling"
        requirement = f">= {MIN_CEILING_PERCENT:g} %"
        if value is None:
            judged.append(_target(name, None, requirement, None, "not measured"))
        else:
            met = value >= MIN_CEILING_PERCENT
            detail = (f"met: {value:.1f} %" if met else
                      f"missed by {MIN_CEILING_PERCENT - value:.1f} points "
                      f"({value:.1f} %)")
            judged.append(_target(name, value, requirement, met, detail))

        if result["workload"]["dataset"] == "cifar10":
            notebook = summaries.get("notebook")
            name = f"{label}: (1) kernel peak RSS"
            requirement = f"< {MAX_CIFAR_PEAK_RSS_BYTES / GIB:g} GiB"
            if not notebook or notebook.get("peak_rss_bytes") is None:
                judged.append(_target(name, None, requirement, None, "not measured"))
                continue
            value = notebook["peak_rss_bytes"]
            met = value < MAX_CIFAR_PEAK_RSS_BYTES
            gap = abs(MAX_CIFAR_PEAK_RSS_BYTES - value) / GIB
            detail = (f"met: {value / GIB:.2f} GiB ({gap:.2f} GiB to spare)" if met
                      else f"missed by {gap:.2f} GiB ({value / GIB:.2f} GiB)")
            judged.append(_target(name, value, requirement, met, detail))
    return judged


def _cell(value, spec: str, width: int) -> str:
    text = "-" if value is None else format(value, spec)
    return text.rjust(width)


def format_report(record: dict) -> str:
    """Render the whole record as a plain-text report."""
    machine = record["machine"]
    settings = record["settings"]
    lines = [
        f"optstudy benchmark ({record['mode']} mode), {machine['date']}",
        f"CPU: {machine['cpu_model']}, {machine['usable_cores']} usable cores; "
        f"torch {machine['torch']} ({machine['cpu_capability']}), "
        f"{settings['threads']} thread(s); load average "
        + "/".join(f"{x:.1f}" for x in machine["load_average_1_5_15_min"]),
        f"(3) uses DataLoader num_workers={settings['num_workers']}; medians of "
        f"{settings['repeats']} repeat(s)",
    ]
    if record.get("warnings"):
        lines += [f"WARNING: {warning}" for warning in record["warnings"]]

    lines += ["", "Process start-up (fresh interpreter, launch to exit, median; "
              "peak RSS):"]
    for name, entry in record["startup"].items():
        extra = ""
        if entry.get("over_interpreter_seconds") is not None:
            extra = f"  (+{entry['over_interpreter_seconds']:.2f} s over bare python)"
        lines.append(f"  {name:<28} {entry['seconds']:6.2f} s"
                     f"{entry['peak_rss_bytes'] / MIB:8,.0f} MiB{extra}")

    ceiling = record["ceiling"]
    if ceiling.get("matmul"):
        matmul = ceiling["matmul"]
        lines += ["", (f"fp32 ceiling: {matmul['size']}x{matmul['size']} matmul, "
                       f"best {matmul['best_gflops']:.1f} GFLOP/s, median "
                       f"{matmul['median_gflops']:.1f} GFLOP/s over "
                       f"{matmul['repeats']} products, {ceiling['threads']} "
                       "thread(s)")]
    else:
        lines += ["", f"fp32 ceiling: failed ({ceiling.get('error')})"]

    header = (f"  {'approach':<31}{'wall s':>8}{'1st step s':>11}{'train s':>9}"
              f"{'train img/s':>12}{'e2e img/s':>10}{'GFLOP/s':>9}"
              f"{'% ceil':>8}{'peak RSS MiB':>13}")
    for result in record["workloads"]:
        lines += ["", result["description"], header]
        for approach, title in APPROACHES.items():
            summary = result["summaries"].get(approach)
            if summary is None:
                lines.append(f"  {title:<31}  failed: see the JSON record")
                continue
            rss = summary.get("peak_rss_bytes")
            lines.append(
                f"  {title:<31}"
                f"{_cell(summary['wall_seconds'], '.2f', 8)}"
                f"{_cell(summary['launch_to_first_step_seconds'], '.2f', 11)}"
                f"{_cell(summary['train_seconds'], '.2f', 9)}"
                f"{_cell(summary['train_images_per_second'], ',.0f', 12)}"
                f"{_cell(summary['end_to_end_images_per_second'], ',.0f', 10)}"
                f"{_cell(summary.get('train_gflops'), '.1f', 9)}"
                f"{_cell(summary.get('ceiling_percent'), '.1f', 8)}"
                f"{_cell(None if rss is None else rss / MIB, ',.0f', 13)}"
            )
        step = result.get("model_step")
        if step:
            lines.append(
                f"  {'model step only (no data)':<31}{'-':>8}{'-':>11}"
                f"{step['seconds']:9.2f}{step['images_per_second']:12,.0f}{'-':>10}"
                f"{step['gflops']:9.1f}{_cell(step.get('ceiling_percent'), '.1f', 8)}"
                f"{'-':>13}"
            )
        ratios = result["ratios"]
        lines.append(
            "  ratios: (1)/(3) speed-up "
            f"{_ratio(ratios['speedup_end_to_end'], 'x')} launch to finish, "
            f"{_ratio(ratios['speedup_training_steps'], 'x')} training steps"
        )
        lines.append(
            "          (1) vs (2) overhead "
            f"{_ratio(ratios['notebook_overhead_percent'], ' %', signed=True)} "
            "launch to finish, "
            f"{_ratio(ratios['notebook_overhead_vs_call_percent'], ' %', signed=True)}"
            " against the train() call alone"
        )
        losses = [
            _ratio(result["summaries"][a].get("final_train_loss"), "", digits=7)
            if result["summaries"].get(a) else "-"
            for a in APPROACHES
        ]
        lines.append("          final training loss (same work check): "
                     f"(1) {losses[0]}, (2) {losses[1]}, (3) {losses[2]}")
        notebook = result["summaries"].get("notebook")
        if notebook and notebook.get("call_seconds") is not None:
            before = notebook["launch_to_call_seconds"]
            after = notebook["wall_seconds"] - before - notebook["call_seconds"]
            lines.append(f"          (1) spent {before:.2f} s from launch to train(), "
                         f"{notebook['call_seconds']:.2f} s in it and {after:.2f} s "
                         "from its return to papermill's exit")
        idiom = result["summaries"].get("idiom")
        if idiom and idiom.get("data_wait_seconds") is not None:
            share = 100 * idiom["data_wait_seconds"] / idiom["train_seconds"]
            lines.append(f"          (3) waited {idiom['data_wait_seconds']:.2f} s "
                         f"({share:.0f} % of its training time) for batches")

    lines += ["", "Targets:"]
    for target in record["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "  -   "}[target["met"]]
        lines.append(f"  [{mark}] {target['target']} ({target['requirement']}): "
                     f"{target['detail']}")
    if record["mode"] == "quick":
        lines.append("  Quick mode runs a few steps, so start-up dominates: these "
                     "verdicts check the scripts, not the project.")
    return "\n".join(lines)


def _ratio(value, unit: str, signed: bool = False, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}{unit}" if signed else f"{value:.{digits}f}{unit}"
