"""``reloop demo``: the whole closed loop on embedded defaults, in a few minutes.

Nothing but the package: a SQLite registry, local folders and a real uvicorn on 127.0.0.1. For each
simulated day the ``ClickSimulator`` (ground-truth CTR) plays the users:

1. the day's impressions are scored through the real prediction API over HTTP, which archives
   them (day 1 is a cold start: no model is in production, so nothing is scored or archived);
2. clicks are drawn from the true CTR and written as the day's click-log Parquet;
3. the archive is flushed and the daily cycle runs for the day (claim, ingest, priors from the
   archive, warm-started training, gate, register and promote, report);
4. the API is told to reload (admin route), so the next day is scored by the new version.

With ``period="1h"`` (``reloop demo --period 1h``) each simulated day is cut into its hours: each hour
is scored, written as ``dt=YYYY-MM-DD/hr=HH`` with a ``_SUCCESS`` marker, and trained by its own cycle
(``RELOOP_CYCLE_PERIOD=1h``), so two days are 48 cycles.

A table row per cycle shows the version, rows, prior coverage, candidate and production holdout
AUC and logloss, the Bayes-optimal logloss of the true CTR on the same holdout, and the verdict.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from reloop_service.config import DAY, Settings
from reloop_service.data.ingest import parse_event_time
from reloop_service.data.period import Period

log = logging.getLogger(__name__)

MARKER = ".reloop-demo"
DEMO_START = date(2024, 1, 1)


class DemoError(RuntimeError):
    """The demo cannot start or run (the message says what to do)."""


@dataclass
class DemoDay:
    """One simulated day's figures (a row of the table)."""

    day: date
    scored: int
    archived: int
    outcome: Any
    bayes_logloss: float | None
    period: Period | None = None  # the cycle's period when it is not the whole day

    @property
    def name(self) -> str:
        return self.period.name if self.period is not None else self.day.isoformat()


@dataclass
class DemoResult:
    """What the demo did: per-day figures, where the data and reports are, the API's address."""

    data_dir: Path
    days: list[DemoDay] = field(default_factory=list)
    base_url: str | None = None
    admin_token: str | None = None


def prepare_data_dir(path: Path) -> Path:
    """A fresh demo folder: wipe one the demo made before, refuse a non-empty folder it did not make."""
    path = path.expanduser().resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise DemoError(
                f"{path} is not empty and was not made by `reloop demo`; pass --data-dir with a new folder"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `reloop demo`; the next demo run wipes this folder\n")
    return path


def demo_settings(
    *,
    data_dir: Path,
    loss: str,
    seed: int,
    port: int,
    token: str,
    base: Settings | None = None,
    period: str = "1d",
) -> Settings:
    """The user's settings (the training recipe and the gate included) with every location under the
    demo folder, so the demo shows what ``Settings()`` trains, and never touches a real registry.

    Sub-daily periods hold a few hundred rows at night (20,000 impressions a day): unless
    ``RELOOP_HOLDOUT_FRACTION`` is set, the gate holds out 30% so its holdout has clicks to judge by
    (at 10% a 260-row hour's 26-row holdout often has none, and the hour is skipped).
    """
    base = base or Settings()
    sub_daily = Settings(cycle_period=period).period_step < timedelta(days=1)
    holdout = 0.3 if sub_daily and "holdout_fraction" not in base.model_fields_set else base.holdout_fraction
    return base.rooted_at(
        data_dir,
        spec_path=None,
        loss=loss,
        seed=seed,
        api_host="127.0.0.1",
        api_port=port,
        admin_token=token,
        watch_interval_s=0.5,
        archive_flush_seconds=1.0,
        cycle_attempts=1,
        heartbeat_s=5.0,
        cycle_period=period,
        holdout_fraction=holdout,
        # The simulator writes each period's _SUCCESS marker once its file is complete.
        readiness="either",
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, int | float) and np.isfinite(value):
        return f"{value:.{digits}f}"
    return "-"


def day_table(rows: list[DemoDay]) -> Table:
    """The per-day table the demo prints."""
    table = Table(title="reloop demo: one cycle per simulated period", show_lines=False)
    for col, justify in (
        ("period", "left"),
        ("version", "right"),
        ("rows", "right"),
        ("priors archived/recomputed", "left"),
        ("AUC cand", "right"),
        ("AUC prod", "right"),
        ("logloss cand", "right"),
        ("logloss prod", "right"),
        ("logloss Bayes", "right"),
        ("gate", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        o = r.outcome
        cov, gate = o.record.coverage, o.record.gate
        cand = gate.candidate if gate else None
        prod = gate.production if gate else None
        n = cov.rows if cov else 0
        coverage = (
            f"{cov.archived / n:.0%} / {cov.recomputed / n:.0%}"
            if cov and n and cov.source != "cold_start"
            else "cold start: BCE"
        )
        if o.status != "succeeded":
            verdict = f"[red]{o.status}[/]: {o.error or o.reason}"
        elif o.decision == "promoted":
            verdict = "[green]promoted[/]"
        elif o.decision == "rejected":
            verdict = f"[yellow]rejected[/]: {', '.join(gate.failed_rules if gate else [])}"
        else:
            verdict = str(o.decision)
        table.add_row(
            r.name,
            f"v{o.version}" if o.version else "-",
            str(n or "-"),
            coverage,
            _fmt(cand.auc if cand else None),
            _fmt(prod.auc if prod else None),
            _fmt(cand.logloss if cand else None),
            _fmt(prod.logloss if prod else None),
            _fmt(r.bayes_logloss),
            verdict,
        )
    return table


def run_demo(
    *,
    days: int = 7,
    impressions: int = 20_000,
    loss: str = "reloop",
    seed: int = 0,
    serve: bool = True,
    port: int | None = None,
    data_dir: Path | None = None,
    console: Console | None = None,
    period: str = "1d",
) -> DemoResult:
    """Run the closed loop for ``days`` simulated days, one cycle per ``period``; see the module docstring."""
    import httpx

    from reloop_service.cycle.run import make_cycle_trigger
    from reloop_service.data.simulator import ClickSimulator, SimulatorConfig
    from reloop_service.registry.db import upgrade

    out = console or Console()
    if not out.is_terminal:  # captured output: room for the whole table
        out.width = max(out.width, 140)
    for noisy in ("httpx", "reloop_service.training.trainer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    base = Settings()
    folder = prepare_data_dir(data_dir if data_dir is not None else base.data_dir / "demo")
    token = base.admin_token.get_secret_value() if base.admin_token else secrets.token_urlsafe(24)
    want_port = port if port is not None else base.api_port
    if serve and not _port_free(want_port):
        raise DemoError(f"port {want_port} on 127.0.0.1 is in use: stop what runs there or pass --port")
    settings = demo_settings(
        data_dir=folder,
        loss=loss,
        seed=seed,
        port=want_port if serve else 0,
        token=token,
        base=base,
        period=period,
    )
    step = settings.period_step
    if settings.threads is None:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
    cycles = days * (timedelta(days=1) // step)
    out.print(
        f"[bold]reloop demo[/]: {days} days x {impressions} impressions, loss {loss}, seed {seed}, "
        f"one cycle per {settings.cycle_period} ({cycles} cycles)"
    )
    out.print(f"data: {folder}")
    upgrade(settings.resolved_database_url)
    out.print("reloop db upgrade: registry schema at head")

    from reloop_service.serving.harness import HarnessError, LocalServer

    server = LocalServer(settings, settings.api_port, cycle_trigger=make_cycle_trigger(settings))
    try:
        bound = server.start()
    except HarnessError as exc:
        raise DemoError(str(exc)) from None
    base_url = f"http://127.0.0.1:{bound}"
    out.print(f"API: {base_url} (uvicorn, prediction archive on)")
    result = DemoResult(data_dir=folder, base_url=base_url, admin_token=token)
    sim = ClickSimulator(seed, start=DEMO_START, config=SimulatorConfig(impressions_per_day=impressions))
    features = sim.spec.feature_names
    auth = {"Authorization": f"Bearer {token}"}
    archive = _Archived()
    try:
        with httpx.Client(base_url=base_url, timeout=60.0) as client:
            for i in range(days):
                day = DEMO_START + timedelta(days=i)
                table = sim.impressions_table(day)
                rows = sim.impressions(day)
                ctr = sim.true_ctr(table)
                labels = sim.draw_clicks(ctr, day)
                hours = parse_event_time(table.column("event_time")).cast(pa.int64()).to_numpy()
                for part in (Period.of_day(day),) if step == DAY else _periods_of(day, step):
                    lo, hi = int(part.start.timestamp() * 1e6), int(part.end.timestamp() * 1e6)
                    keep = (hours >= lo) & (hours < hi)
                    result.days.append(
                        _demo_cycle(
                            out,
                            client,
                            server,
                            archive,
                            sim,
                            settings,
                            part,
                            table.filter(pa.array(keep)),
                            [r for r, k in zip(rows, keep, strict=True) if k],
                            ctr[keep],
                            labels[keep],
                            features,
                        )
                    )
                    reload = client.post("/v1/admin/reload", headers=auth)
                    if reload.status_code != 200:
                        raise DemoError(
                            f"POST /v1/admin/reload answered {reload.status_code}: {reload.text[:200]}"
                        )
                    if step == DAY:
                        out.print(day_table(result.days[-1:]))
        out.print(day_table(result.days))
        reports = Path(settings.resolved_reports_uri)
        out.print(f"reports: {reports / 'latest.md'} and the history plot {reports / 'history.png'}")
    except BaseException:
        server.stop()
        raise
    serve_again = serve_command(folder)
    if not serve:
        server.stop()
        result.base_url = None
        out.print("Serve this demo's registry again with:")
        out.print(
            f"  RELOOP_ADMIN_TOKEN={token} {serve_again}", soft_wrap=True, highlight=False, markup=False
        )
        return result
    first = sim.impressions(DEMO_START + timedelta(days=days), 1)[0]
    example = {"items": [{"features": {k: first.get(k) for k in features}}]}
    import json

    out.print("\n[bold]The API keeps serving[/] the production model (Ctrl-C to stop):")
    out.print(
        f"  curl -s {base_url}/v1/predict -H 'Content-Type: application/json' -d '{json.dumps(example)}'",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    out.print(
        f"  curl -s {base_url}/v1/admin/cycles -H 'Authorization: Bearer {token}'",
        soft_wrap=True,
        markup=False,
    )
    out.print(f"admin token: {token}", markup=False)
    out.print("After Ctrl-C, serve this demo's registry again with:")
    out.print(f"  RELOOP_ADMIN_TOKEN={token} {serve_again}", soft_wrap=True, highlight=False, markup=False)
    server.wait()
    return result


@dataclass
class _Archived:
    """Rows the server's archive had written before this period (to report each period's own)."""

    written: int = 0


def _periods_of(day: date, step: timedelta) -> tuple[Period, ...]:
    """The periods of length ``step`` that make up ``day``."""
    first = Period(datetime(day.year, day.month, day.day, tzinfo=UTC), step)
    return first.merged(timedelta(days=1) // step).parts()


def _demo_cycle(
    out: Console,
    client: Any,
    server: Any,
    archive: _Archived,
    sim: Any,
    settings: Settings,
    period: Period,
    table: pa.Table,
    rows: list[dict[str, Any]],
    ctr: np.ndarray,
    labels: np.ndarray,
    features: tuple[str, ...],
) -> DemoDay:
    """One period: score its impressions through the API, write its log (and marker), run its cycle."""
    from reloop_service.cycle.run import run_cycle
    from reloop_service.data.simulator import bayes_logloss
    from reloop_service.serving.harness import score

    ready = client.get("/readyz").status_code == 200
    scored, served_by = (0, None)
    if ready:
        scored, served_by = score(client, rows, features=features, max_batch=settings.max_batch)
    archived = server.flush_archive() - archive.written
    archive.written += archived
    if period.is_daily:
        sim.write_day(settings.resolved_logs_uri, period.day, table, labels=labels)
    else:
        sim.write_period(settings.resolved_logs_uri, period, table, labels=labels)
    truth = dict(zip(table.column("impression_id").to_pylist(), ctr.tolist(), strict=True))
    bayes: dict[str, float] = {}

    def holdout_bayes(prepared: Any) -> dict[str, float]:
        hold = prepared.holdout()
        ids = hold.column(prepared.spec.impression_id).to_pylist()
        y = np.asarray(hold.column(prepared.spec.label).to_numpy(zero_copy_only=False), dtype=float)
        p = np.array([truth[x] for x in ids], dtype=float)
        bayes["value"] = bayes_logloss(p, y)
        return {"bayes_logloss_holdout": bayes["value"], "true_ctr_mean": float(np.mean(p))}

    who = f"version {served_by}" if served_by else "nobody (cold start: no model yet)"
    if period.is_daily:
        out.print(f"{period}: {scored} impressions scored by {who}; {archived} archived; clicks written")
    outcome = run_cycle(settings=settings, cycle_date=period, actor="demo", extra=holdout_bayes)
    if outcome.status == "failed":
        out.print(f"[red]cycle {period} failed:[/] {outcome.error}")
    elif not period.is_daily:
        gate = outcome.record.gate
        verdict = outcome.decision or f"{outcome.status} ({outcome.reason})"
        auc = f"auc {gate.candidate.auc:.4f}" if gate and gate.candidate.auc is not None else ""
        out.print(
            f"{period}: {scored} scored by {who}, {len(rows)} rows -> v{outcome.version or '-'} "
            f"{verdict} {auc}",
            highlight=False,
        )
    return DemoDay(
        day=period.day,
        scored=scored,
        archived=archived,
        outcome=outcome,
        bayes_logloss=bayes.get("value"),
        period=None if period.is_daily else period,
    )


def serve_command(folder: Path) -> str:
    """The exact command that serves the demo's registry (it lives in its own folder, not the default)."""
    import shlex

    return f"RELOOP_DATA_DIR={shlex.quote(str(folder))} reloop serve"


__all__ = ["DemoError", "DemoResult", "day_table", "run_demo", "serve_command"]
