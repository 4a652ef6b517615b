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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from reloop_service.config import Settings
from reloop_service.registry.records import GateVerdict
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


def _stem(record: Mapping[str, Any]) -> str:
    name = str(record["cycle_date"]).replace(":", "")
    return f"cycle-{name}-run{record.get('run_id') or 0}-a{record.get('attempt') or 1}"


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (they become null) so every reader can parse the report."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


def render_markdown(record: Mapping[str, Any]) -> str:
    """Human-readable summary of one run record."""
    lines = [f"# Cycle {record['cycle_date']}: {record.get('status', '?')}", ""]
    period = record.get("period") or {}
    if period:
        merged = int(period.get("count") or 1)
        span = f"{period.get('start')} .. {period.get('end')} (step {period.get('step')})"
        if merged > 1:
            parts = period.get("parts") or []
            span += f"; catch-up: {merged} periods {parts[0]}..{parts[-1]} merged into this one cycle"
        lines.append(f"- period: {span}")
    ready = record.get("readiness") or {}
    if ready:
        lines.append(
            f"- readiness ({ready.get('mode')}): {'ready' if ready.get('ready') else 'not ready'} after "
            f"{ready.get('checks')} check(s): {ready.get('reason')}"
        )
    lines += [
        f"- run id: {record.get('run_id')} (attempt {record.get('attempt')}, actor {record.get('actor')})",
        f"- parent (production at start): {_fmt(record.get('parent_version'))}",
        f"- version: {_fmt(record.get('version'))}, decision: {record.get('decision') or '-'}",
    ]
    if record.get("error"):
        lines.append(f"- error: `{record['error']}`")
    ingest = record.get("ingest") or {}
    if ingest:
        quarantined = ingest.get("quarantined") or {}
        q = ", ".join(f"{k}: {v}" for k, v in sorted(quarantined.items())) or "none"
        lines += [
            "",
            "## Ingest",
            f"- rows read: {ingest.get('rows_read')}, valid: {ingest.get('rows_valid')}",
            f"- quarantined: {q}",
        ]
    cov = record.get("coverage") or {}
    if cov:
        lines += [
            "",
            "## Prior predictions",
            f"- source: {cov.get('source')}; archived: {cov.get('archived')}, "
            f"recomputed: {cov.get('recomputed')}, missing: {cov.get('missing')} of {cov.get('rows')}",
        ]
    train = record.get("train") or {}
    if train:
        lines += [
            "",
            "## Training",
            f"- loss: {train.get('loss')}{' (cold start)' if train.get('cold_start') else ''}, "
            f"train rows: {train.get('train_rows')}, holdout rows: {train.get('holdout_rows')}, "
            f"seconds: {_fmt(train.get('seconds'), 1)}",
        ]
    gate = record.get("gate") or {}
    if gate:
        cand = gate.get("candidate") or {}
        prod = gate.get("production") or {}
        lines += [
            "",
            f"## Gate: {'passed' if gate.get('passed') else 'rejected'}",
            "",
            "| metric | candidate | production |",
            "|---|---|---|",
        ]
        for key in ("auc", "logloss", "calibration"):
            lines.append(f"| {key} | {_fmt(cand.get(key))} | {_fmt(prod.get(key))} |")
        lines += ["", "| rule | passes when | threshold | value | passed |", "|---|---|---|---|---|"]
        for rule in GateVerdict.model_validate(gate).rules:
            lines.append(
                f"| {rule.name} | value {rule.comparison} threshold | {_fmt(rule.threshold)} "
                f"| {_fmt(rule.value)} | {'yes' if rule.passed else 'no'} |"
            )
        if not gate.get("rules"):
            lines.append("| (no rule applies) | - | - | yes |")
    extra = record.get("extra") or {}
    if extra:
        lines += ["", "## Extra", *(f"- {k}: {_fmt(v)}" for k, v in sorted(extra.items()))]
    return "\n".join(lines) + "\n"


def load_history(settings: Settings) -> list[dict[str, Any]]:
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
            records.append(json.loads(fs.cat_file(str(path))))
        except (OSError, ValueError) as exc:  # one unreadable report must not hide the others
            log.warning("skipping unreadable report %s: %s", path, exc)
    records.sort(key=lambda r: (str(r.get("cycle_date")), r.get("run_id") or 0, r.get("attempt") or 0))
    return records


def plot_history(records: list[dict[str, Any]]) -> bytes | None:
    """PNG of candidate and production holdout AUC and logloss per cycle date (latest run per date)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if (r.get("gate") or {}).get("candidate"):
            latest[str(r["cycle_date"])] = r
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
            value = ((latest[d].get("gate") or {}).get(who) or {}).get(key)
            out.append(float(value) if isinstance(value, int | float) else math.nan)
        return out

    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for ax, key in zip(axes, ("auc", "logloss"), strict=True):
        ax.plot(xs, series("candidate", key), marker="o", label="candidate")
        ax.plot(xs, series("production", key), marker="s", linestyle="--", label="production (parent)")
        rejected = [i for i, d in enumerate(days) if not (latest[d].get("gate") or {}).get("passed")]
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


def write_report(*, settings: Settings, record: Mapping[str, Any]) -> ReportPaths:
    """Write the run's JSON and markdown atomically, then refresh ``history.png`` and ``latest.md``."""
    fs, root = filesystem(settings.resolved_reports_uri, settings.storage_options())
    clean = _clean(dict(record))
    stem = _stem(clean)
    json_path = join(root, RUNS_DIR, f"{stem}.json")
    md_path = join(root, RUNS_DIR, f"{stem}.md")
    markdown = render_markdown(clean)
    write_atomic(fs, json_path, json.dumps(clean, indent=2, sort_keys=True, default=str).encode())
    write_atomic(fs, md_path, markdown.encode())
    write_atomic(fs, join(root, "latest.md"), markdown.encode())
    png = plot_history(load_history(settings)) if settings.report_history_plot else None
    plot_path = None
    if png is not None:
        plot_path = join(root, HISTORY_PNG)
        write_atomic(fs, plot_path, png)
    return ReportPaths(json_uri=json_path, markdown_uri=md_path, plot_uri=plot_path)
