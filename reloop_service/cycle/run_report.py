"""Cycle reports: one JSON and one markdown file per run, and a PNG of the quality history.

Reports live under ``settings.resolved_reports_uri`` (a local folder or an fsspec URI)::

    <reports>/runs/cycle-YYYY-MM-DD-run<ID>-a<ATTEMPT>.json   the run record (machine-readable)
    <reports>/runs/cycle-YYYY-MM-DD-run<ID>-a<ATTEMPT>.md     the same, for people
    <reports>/history.png                                      AUC and logloss per cycle
    <reports>/latest.md                                        a copy of the latest run's markdown

The history plot is rebuilt from the run JSONs themselves, so it needs no database and shows
exactly what was reported: the candidate's and production's holdout AUC and logloss per cycle.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
from dataclasses import dataclass
from typing import Any

from reloop_service.config import Settings
from reloop_service.registry.records import CycleRecord, GateVerdict
from reloop_service.storage import filesystem, join, write_atomic

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
HISTORY_PNG = "history.png"


@dataclass(frozen=True)
class ReportPaths:
    """Where one run's report went."""

    json_uri: str
    markdown_uri: str
    plot_uri: str | None


def _stem(record: CycleRecord) -> str:
    name = str(record.cycle_date).replace(":", "")
    return f"cycle-{name}-run{record.run_id or 0}-a{record.attempt or 1}"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


def render_markdown(record: CycleRecord) -> str:
    """Human-readable summary of one run record."""
    lines = [f"# Cycle {record.cycle_date}: {record.status or '?'}", ""]
    period = record.period
    if period:
        span = f"{period.start} .. {period.end} (step {period.step})"
        if period.count > 1 and period.parts:
            span += (
                f"; catch-up: {period.count} periods {period.parts[0]}..{period.parts[-1]} "
                "merged into this one cycle"
            )
        lines.append(f"- period: {span}")
    ready = record.readiness
    if ready:
        lines.append(
            f"- readiness ({ready.mode}): {'ready' if ready.ready else 'not ready'} after "
            f"{ready.checks} check(s): {ready.reason}"
        )
    lines += [
        f"- run id: {record.run_id} (attempt {record.attempt}, actor {record.actor})",
        f"- parent (production at start): {_fmt(record.parent_version)}",
        f"- version: {_fmt(record.version)}, decision: {record.decision or '-'}",
    ]
    if record.error:
        lines.append(f"- error: `{record.error}`")
    ingest = record.ingest
    if ingest:
        q = ", ".join(f"{k}: {v}" for k, v in sorted(ingest.quarantined.items())) or "none"
        lines += [
            "",
            "## Ingest",
            f"- rows read: {ingest.rows_read}, valid: {ingest.rows_valid}",
            f"- quarantined: {q}",
        ]
    cov = record.coverage
    if cov:
        lines += [
            "",
            "## Prior predictions",
            f"- source: {cov.source}; archived: {cov.archived}, "
            f"recomputed: {cov.recomputed}, missing: {cov.missing} of {cov.rows}",
        ]
    train = record.train
    if train:
        lines += [
            "",
            "## Training",
            f"- loss: {train.loss}{' (cold start)' if train.cold_start else ''}, "
            f"train rows: {train.train_rows}, holdout rows: {train.holdout_rows}, "
            f"seconds: {_fmt(train.seconds, 1)}",
        ]
    gate = record.gate
    if gate:
        cand = gate.candidate.model_dump()
        prod = gate.production.model_dump() if gate.production else {}
        lines += [
            "",
            f"## Gate: {'passed' if gate.passed else 'rejected'}",
            "",
            "| metric | candidate | production |",
            "|---|---|---|",
        ]
        for key in ("auc", "logloss", "calibration"):
            lines.append(f"| {key} | {_fmt(cand.get(key))} | {_fmt(prod.get(key))} |")
        lines += ["", "| rule | passes when | threshold | value | passed |", "|---|---|---|---|---|"]
        for rule in gate.rules:
            lines.append(
                f"| {rule.name} | value {rule.comparison} threshold | {_fmt(rule.threshold)} "
                f"| {_fmt(rule.value)} | {'yes' if rule.passed else 'no'} |"
            )
        if not gate.rules:
            lines.append("| (no rule applies) | - | - | yes |")
    if record.extra:
        lines += ["", "## Extra", *(f"- {k}: {_fmt(v)}" for k, v in sorted(record.extra.items()))]
    return "\n".join(lines) + "\n"


def load_history(settings: Settings) -> list[CycleRecord]:
    """Every run record under the reports folder, oldest cycle first (ties: run id, attempt)."""
    fs, root = filesystem(settings.resolved_reports_uri, settings.storage_options())
    folder = join(root, RUNS_DIR)
    if not fs.exists(folder):
        return []
    records = []
    for path in fs.ls(folder, detail=False):
        name = posixpath.basename(str(path))
        if not (name.startswith("cycle-") and name.endswith(".json")):
            continue
        try:
            records.append(CycleRecord.model_validate_json(fs.cat_file(str(path))))
        except (OSError, ValueError) as exc:  # one unreadable report must not hide the others
            log.warning("skipping unreadable report %s: %s", path, exc)
    records.sort(key=lambda r: (str(r.cycle_date), r.run_id or 0, r.attempt or 0))
    return records


def plot_history(records: list[CycleRecord]) -> bytes | None:
    """PNG of candidate and production holdout AUC and logloss per cycle date (latest run per date)."""
    latest: dict[str, GateVerdict] = {}
    for r in records:
        if r.gate is not None:
            latest[str(r.cycle_date)] = r.gate
    if not latest:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = sorted(latest)
    xs = list(range(len(days)))

    def series(who: str, key: str) -> list[float]:
        out = []
        for d in days:
            metrics = latest[d].candidate if who == "candidate" else latest[d].production
            value = getattr(metrics, key) if metrics is not None else None
            out.append(float(value) if isinstance(value, int | float) else math.nan)
        return out

    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for ax, key in zip(axes, ("auc", "logloss"), strict=True):
        ax.plot(xs, series("candidate", key), marker="o", label="candidate")
        ax.plot(xs, series("production", key), marker="s", linestyle="--", label="production (parent)")
        rejected = [i for i, d in enumerate(days) if not latest[d].passed]
        if rejected:
            ys = series("candidate", key)
            ax.scatter(rejected, [ys[i] for i in rejected], color="red", zorder=3, label="rejected")
        ax.set_ylabel(f"holdout {key}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1].set_xticks(xs)
    axes[-1].set_xticklabels(days, rotation=30, ha="right", fontsize=8)
    axes[0].set_title("reloop cycles: holdout quality per day")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def plot_due(record: CycleRecord) -> bool:
    """Redraw ``history.png`` after a daily cycle, and after a sub-daily one only at the day's last period.

    The redraw reads every run's JSON and draws with matplotlib: about 0.35 s, and growing with the
    history, which dominated an hourly cycle's fixed cost (docs/benchmarks.md, Hourly cycles).
    """
    period = record.period
    end = str(period.end or "") if period is not None else ""
    if period is None or period.step == "1d" or not end:
        return True
    return end[11:19] == "00:00:00"  # the period ends at midnight UTC: the day is complete


def write_report(*, settings: Settings, record: CycleRecord) -> ReportPaths:
    """Write the run's JSON and markdown atomically, then refresh ``history.png`` and ``latest.md``."""
    fs, root = filesystem(settings.resolved_reports_uri, settings.storage_options())
    stem = _stem(record)
    json_path = join(root, RUNS_DIR, f"{stem}.json")
    md_path = join(root, RUNS_DIR, f"{stem}.md")
    markdown = render_markdown(record)
    write_atomic(fs, json_path, json.dumps(record.to_json(), indent=2, sort_keys=True).encode())
    write_atomic(fs, md_path, markdown.encode())
    write_atomic(fs, join(root, "latest.md"), markdown.encode())
    png = plot_history(load_history(settings)) if settings.report_history_plot and plot_due(record) else None
    plot_path = None
    if png is not None:
        plot_path = join(root, HISTORY_PNG)
        write_atomic(fs, plot_path, png)
    return ReportPaths(json_uri=json_path, markdown_uri=md_path, plot_uri=plot_path)
