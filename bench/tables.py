"""The report as plain-text tables, for the terminal and for docs/performance.md."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.report import KIB_PER_MIB, BenchReport, Target

Cell = str | int | float
# Above this much CPU used by other processes (percent of one core, on average) a run is flagged as noisy.
NOISY_OTHERS_CPU_PERCENT = 20.0


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A Markdown table under a `title` line: readable in a terminal and pasteable into docs."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(header), *(len(row[index]) for row in cells)) for index, header in enumerate(headers)]
    lines = [f"### {title}", ""]
    lines.append("| " + " | ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(value.rjust(width) for value, width in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Cell) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def render(report: BenchReport) -> str:
    """The whole report: setup, in-process tables, end-to-end table, targets."""
    meta = report.meta
    sections = [
        f"## alexnet-serve benchmark ({'quick run: not for publishing' if meta['quick'] else 'full run'})\n\n"
        f"- machine: {meta['device_name']}, {meta['cpu']} ({meta['cpu_count']} cores), {meta['platform']}\n"
        f"- software: Python {meta['python']}, onnxruntime {meta['onnxruntime']}, Pillow {meta['pillow']}, "
        f"numpy {meta['numpy']}; providers {', '.join(meta['providers'])}\n"
        f"- server settings: {_settings_line(report)}\n"
        f"- model: {report.model.path} ({report.model.note})\n"
        f"- images: {meta['image_mix']}\n"
        f"- command: `{meta['command']}` at {meta['started_at']}, {meta['duration_s']:.0f} s; "
        f"load average {meta['load_average_before']} before, {meta['load_average_after']} after\n"
        "- CPU % columns: 100 = one core; 'others' is what other processes on the machine used meanwhile\n"
        f"- machine noise: other processes used {meta['others_cpu_percent_mean']}% of one core on average "
        f"(max {meta['others_cpu_percent_max']}%) of the {meta['cpu_count']}00% there is"
        + (
            "; **ratios between phases measured under different noise are unreliable: see the cross-checks**\n"
            if meta["others_cpu_percent_mean"] > NOISY_OTHERS_CPU_PERCENT
            else "\n"
        ),
        table(
            "Decode + preprocess, one image at a time (one core), median",
            [
                "size",
                "decode mode",
                "MP",
                "JPEG KB",
                "decode ms",
                "preprocess ms",
                "total ms",
                "CPU ms",
                "max Δp vs full",
            ],
            [
                [
                    t.size,
                    t.mode + (" (server)" if t.mode == report.decode.configured_mode else ""),
                    t.megapixels,
                    round(t.jpeg_bytes / 1000),
                    t.decode_ms,
                    t.preprocess_ms,
                    t.total_ms,
                    t.cpu_ms,
                    "(reference)" if t.max_probability_delta is None else f"{t.max_probability_delta:.1e}",
                ]
                for t in report.decode.per_size
            ],
        ),
        table(
            "Capacity in process (image mix; no HTTP)",
            ["stage", "setting", "images/s", "CPU ms/image", "others CPU %", "detail"],
            _capacity_rows(report),
        ),
        table(
            "End to end (separate-process load generator → `python -m app`)",
            [
                "server",
                "c",
                "body",
                "images/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "batch",
                "server CPU %",
                "server CPU ms/image",
                "client CPU %",
                "others CPU %",
                "outside runtime ms",
                "RSS MiB",
            ],
            [
                [
                    server.label,
                    level.concurrency,
                    level.body,
                    level.images_per_s,
                    level.latency.p50,
                    level.latency.p95,
                    level.latency.p99,
                    level.errors,
                    level.mean_batch_size,
                    level.server_cpu_percent,
                    level.server_cpu_ms_per_image,
                    level.client_cpu_percent,
                    level.others_cpu_percent,
                    level.outside_runtime_ms,
                    round(level.rss_kib / KIB_PER_MIB),
                ]
                for server in report.servers
                for level in server.levels
            ],
        ),
        _workloads_table(report),
        _targets_table("Targets (issue 12, per workload)", report.workload_targets),
        _targets_table("Targets (issue 5)", report.targets),
        _targets_table(
            "Cross-checks from CPU time per image (informational: what the ratios would be on an idle machine)",
            report.cross_checks,
        ),
    ]
    return "\n".join(sections)


def _workloads_table(report: BenchReport) -> str:
    """Issue 12's workloads: the ceiling, the best single image, and the server at c=1 and c=16."""
    rows: list[list[Cell]] = []
    for result in report.workloads:
        best = result.best_single_image
        # Each c=16 round of ours against the ceilings measured around it; the rest against the ceiling's mean.
        rounds = zip(result.comparison_levels, result.shares_of_ceiling(), strict=True)
        around = {id(level): ceiling for level, (_, ceiling) in rounds}
        ours = [*result.levels, *result.repeated_levels]
        for server, levels in (("ours", ours), ("38da6f0 defaults", result.baseline_levels)):
            for level in levels:
                ceiling = around.get(id(level), result.ceiling.images_per_s)
                rows.append(
                    [
                        result.name,
                        f"{result.images} ({result.median_megapixels} MP)",
                        server,
                        level.concurrency,
                        level.images_per_s,
                        round(level.images_per_s / ceiling, 3) if ceiling else float("nan"),
                        level.latency.p50,
                        round(level.latency.p50 - best.p50_ms, 1),
                        level.latency.p99,
                        level.errors,
                        level.server_cpu_ms_per_image,
                        level.others_cpu_percent,
                        round(level.rss_kib / KIB_PER_MIB),
                    ]
                )
    ceilings = "; ".join(
        f"{result.name} {result.ceiling.images_per_s} images/s (mean of "
        f"{', '.join(map(str, result.ceiling.rounds_images_per_s))}; {result.ceiling.cpu_ms_per_image} CPU ms/image), "
        f"best single image p50 {result.best_single_image.p50_ms} ms ({result.best_single_image.setting})"
        for result in report.workloads
    )
    skipped = "".join(f"\n- {message}" for message in report.skipped_workloads)
    return (
        table(
            "Workloads (issue 12): end to end vs the in-process ceiling "
            "(one caller per core, one session, decode+preprocess then one batch)",
            [
                "workload",
                "images",
                "server",
                "c",
                "images/s",
                "÷ ceiling",
                "p50 ms",
                "p50 − best single ms",
                "p99 ms",
                "errors",
                "server CPU ms/image",
                "others CPU %",
                "RSS MiB",
            ],
            rows,
        )
        + f"\n- ceilings and single-image references: {ceilings}{skipped}\n"
    )


def _targets_table(title: str, targets: Sequence[Target]) -> str:
    return table(
        title,
        ["target", "value", "want", "result", "how"],
        [[t.name, t.value, t.target, "PASS" if t.passed else "FAIL", t.detail] for t in targets],
    )


def _capacity_rows(report: BenchReport) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for decode in report.decode.throughput:
        rows.append(
            [
                "decode+preprocess",
                f"{decode.threads} thread(s), {report.decode.configured_mode} decode",
                decode.images_per_s,
                decode.cpu_ms_per_image,
                decode.others_cpu_percent,
                "",
            ]
        )
    for model in report.model_speed:
        rows.append(
            [
                "model alone",
                f"{model.precision} batch {model.batch_size}",
                model.images_per_s,
                model.cpu_ms_per_image,
                model.others_cpu_percent,
                f"{model.ms_per_batch} ms/batch",
            ]
        )
    for body, single in report.single_image.items():
        rows.append(
            [
                "single image",
                f"decode+preprocess+batch 1 (before c=1 {body})",
                round(1000.0 / single.summary.mean, 2),
                "",
                "",
                f"p50 {single.summary.p50:.1f} ms over the mix",
            ]
        )
    for pipeline in report.pipeline:
        first = pipeline.rounds[0]
        rows.append(
            [
                f"pipeline c={first.concurrency}",
                pipeline.setting,
                pipeline.images_per_s,
                pipeline.cpu_ms_per_image,
                pipeline.others_cpu_percent,
                f"batch {pipeline.mean_batch_size}; rounds "
                + ", ".join(f"{row.images_per_s} images/s (p50 {row.latency.p50:.0f} ms)" for row in pipeline.rounds),
            ]
        )
    return rows


def summary(report: BenchReport) -> str:
    """The headline numbers and every target in one table (what gpu_check.sh prints)."""
    meta = report.meta
    rows: list[list[Cell]] = [
        ["machine", f"{meta['device_name']} / {meta['cpu']} ({meta['cpu_count']} cores)"],
        ["providers", ", ".join(meta["providers"])],
        ["model", report.model.note],
        [
            "decode+preprocess, largest JPEG, one core",
            ", ".join(f"{mode} decode {ms} ms CPU" for mode, ms in report.decode.largest_cpu_ms.items()),
        ],
    ]
    rows += [
        [f"model alone, {row.precision} batch {row.batch_size}", f"{row.images_per_s} images/s ({row.ms_per_batch} ms)"]
        for row in report.model_speed
    ]
    rows += [
        [f"single image in process, p50 (before c=1 {body})", f"{single.summary.p50:.1f} ms"]
        for body, single in report.single_image.items()
    ]
    ratios = report.ratios
    rows.append(
        ["in-process pipeline, best", f"{ratios.pipeline_best_images_per_s} images/s ({ratios.pipeline_best_setting})"]
    )
    for server in report.servers:
        for level in server.levels:
            rows.append(
                [
                    f"end to end, {server.label}, c={level.concurrency} {level.body}",
                    f"{level.images_per_s} images/s, p50 {level.latency.p50:.1f} ms, p99 {level.latency.p99:.1f} ms, "
                    f"errors {level.errors}",
                ]
            )
    rows += [
        [f"{target.name}", f"{_cell(target.value)} ({target.target}): {'PASS' if target.passed else 'FAIL'}"]
        for target in [*report.workload_targets, *report.targets, *report.cross_checks]
    ]
    return table("Summary", ["measure", "value"], rows)


def _settings_line(report: BenchReport) -> str:
    """What differs from a plain `python -m app`: ALEXNET_* overrides and inherited allocator/thread variables."""
    plumbing = {"ALEXNET_HOST", "ALEXNET_PORT", "ALEXNET_MODEL_PATH", "ALEXNET_AUTO_EXPORT"}
    batched = report.servers[0].settings_env if report.servers else {}
    chosen = [f"{key}={value}" for key, value in batched.items() if key not in plumbing]
    chosen += [f"{key}={value}" for key, value in report.meta["inherited_env"].items()]
    return ", ".join(chosen) + " (unbatched server: the same plus ALEXNET_MAX_BATCH_SIZE=1)"
