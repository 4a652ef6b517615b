"""Drive the real loop over binned logs: score through the predict path, archive, run the cycle.

One run = one strategy x one seed in its own data folder (SQLite registry, logs, artifacts,
archive, reports). Bin k is mapped onto a cycle date (``ReplayData.dates[k]``) so the cycle
machinery runs unchanged:

1. warm-up: bins ``0 .. warmup_bins-1`` are written as ONE partition, the date of the last warm-up
   bin, and one (cold-start, BCE) cycle trains on them;
2. for every later bin k: the serving app (``create_app``, in-process through Starlette's
   TestClient: real ASGI requests, no socket) is told to reload production, scores bin k through
   ``POST /v1/predict`` (which archives what it served), the archive is flushed, bin k's click log
   is written, and ``run_cycle`` ingests it, joins the archived priors, trains, gates, registers and
   promotes. With the gate off (the default) every rule is off, so every cycle promotes.

Strategies: ``bce``, ``label_smoothing``, ``distill``, ``reloop`` (warm-started, that loss),
``full_retrain`` (``warm_start=False``: bin k's partition holds every bin up to k and the cycle
trains BCE from scratch on it) and ``lr`` (the logistic-regression model, warm-started BCE).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reloop_service.config import Settings
from reloop_service.data.period import Period
from reloop_service.data.spec import FeatureSpec
from reloop_service.data.transforms import canonical_strings
from reloop_service.training.evaluation import auc, logloss
from reloop_service.training.losses import resolve_params

if TYPE_CHECKING:
    from reloop_service.registry.records import TrainSummary
    from reloop_service.serving.harness import InProcessService

log = logging.getLogger(__name__)

BASE_DATE = date(2000, 1, 1)
STRATEGIES = ("bce", "label_smoothing", "distill", "reloop", "full_retrain", "lr")
LOSS_OF = {
    "bce": "bce",
    "label_smoothing": "label_smoothing",
    "distill": "distill",
    "reloop": "reloop",
    "full_retrain": "bce",
    "lr": "bce",
}
EXTRA_COLUMNS = ("bin", "true_ctr")
QUIET_LOGGERS = (
    "reloop_service",
    "httpx",
    "alembic",
    "apscheduler",
)

Progress = Callable[[str, int, int], None]
"""``(strategy, seed, bin)``: called after every bin of a run (warm-up included)."""


class ReplayError(RuntimeError):
    """A replay cannot run or a cycle inside it failed (the message says which bin and why)."""


@dataclass(frozen=True)
class ReplayData:
    """Rows with a ``bin`` column (and ``true_ctr`` for the simulator), their spec and bin dates."""

    name: str
    table: pa.Table
    spec: FeatureSpec
    dates: tuple[date | Period, ...]  # one period per bin: days, or hours (``--period 1h``)

    @property
    def n_bins(self) -> int:
        return len(self.dates)

    def bin_rows(self, k: int, *, upto: bool = False) -> pa.Table:
        """Rows of bin ``k`` (or of every bin up to ``k``) in file order."""
        col = self.table.column("bin")
        mask = pc.less_equal(col, k) if upto else pc.equal(col, k)
        return self.table.filter(mask)


def dates_from(n_bins: int, start: date = BASE_DATE) -> tuple[date, ...]:
    """Bin k -> ``start + k`` days (synthetic dates for weekly bins: the cycle needs one date per bin)."""
    return tuple(start + timedelta(days=k) for k in range(n_bins))


def periods_from(n_bins: int, step: timedelta, start: date = BASE_DATE) -> tuple[date | Period, ...]:
    """Bin k -> the k-th period of length ``step`` from ``start`` (days as dates, shorter as ``Period``)."""
    if step == timedelta(days=1):
        return dates_from(n_bins, start)
    first = Period.of_day(start)
    return tuple(Period(first.start + k * step, step) for k in range(n_bins))


@dataclass(frozen=True)
class SplitProtocol:
    """Which bins warm up, which choose hyper-parameters and which are reported."""

    warmup_bins: int = 4
    select_from: int = 4
    select_to: int = 10
    report_from: int = 11
    last_bin: int | None = None  # None: the data's last bin

    def end(self, data: ReplayData) -> int:
        last = data.n_bins - 1 if self.last_bin is None else min(self.last_bin, data.n_bins - 1)
        if last < self.warmup_bins:
            raise ReplayError(
                f"{data.name}: {data.n_bins} bins leave nothing to evaluate "
                f"after {self.warmup_bins} warm-up bins"
            )
        return last


@dataclass(frozen=True)
class StrategyConfig:
    """Per-strategy training knobs (the ones the selection sweeps)."""

    loss_params: dict[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    sparse_lr: float = 5e-2
    epochs: int = 1  # per cycle; for full_retrain, the passes of each from-scratch training


@dataclass(frozen=True)
class ReplayConfig:
    """Model size and training knobs shared by every run; ``strategies`` overrides per strategy."""

    model: str = "dnn"
    embedding_dim: int = 16
    mlp_hidden: tuple[int, ...] = (256, 128, 64)
    batch_size: int | None = None  # None: the recipe's, scaled to each cycle's rows
    dropout: float = 0.1
    lr_final_fraction: float = 0.1  # the recipe's linear decay of both learning rates per training
    cold_start_epochs: int = 2  # the warm-up cycle's passes (the recipe's)
    default: StrategyConfig = field(default_factory=StrategyConfig)
    strategies: dict[str, StrategyConfig] = field(default_factory=dict)
    gate: bool = False
    holdout_fraction: float = 0.1  # the gate's hash sample; trained on after the gate either way
    threads: int = 1
    max_batch: int = 1000
    cluster_by: str | None = None  # column for the bootstrap over clusters (default: user_id if any)
    period: str = "1d"  # RELOOP_CYCLE_PERIOD of the runs: one bin per period

    def for_strategy(self, strategy: str) -> StrategyConfig:
        return self.strategies.get(strategy, self.default)

    def with_strategy(self, strategy: str, cfg: StrategyConfig) -> ReplayConfig:
        return replace(self, strategies={**self.strategies, strategy: cfg})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mlp_hidden"] = list(self.mlp_hidden)
        return d


def spec_toml(spec: FeatureSpec) -> str:
    """The spec as the TOML ``load_spec`` reads (the cycle loads its first spec from a file)."""
    d = spec.to_dict()
    lines = [
        f"version = {d['version']}",
        f'label = "{d["label"]}"',
        f'impression_id = "{d["impression_id"]}"',
        f'event_time = "{d["event_time"]}"',
    ]
    for f in d["categorical"]:
        lines += ["", "[[categorical]]", f'name = "{f["name"]}"', f"buckets = {f['buckets']}"]
    for f in d["numeric"]:
        lines += ["", "[[numeric]]", f'name = "{f["name"]}"']
        if f["mean"] is not None and f["std"] is not None:
            lines += [f"mean = {f['mean']!r}", f"std = {f['std']!r}"]
    for f in d["multi"]:
        lines += [
            "",
            "[[multi]]",
            f'name = "{f["name"]}"',
            f"buckets = {f['buckets']}",
            f"max_len = {f['max_len']}",
        ]
    return "\n".join(lines) + "\n"


def run_settings(*, workdir: Path, strategy: str, seed: int, config: ReplayConfig) -> Settings:
    """Embedded settings under ``workdir`` for one run (gate rules off unless ``config.gate``)."""
    sc = config.for_strategy(strategy)
    loss = LOSS_OF[strategy]
    gate: dict[str, Any] = (
        {}
        if config.gate
        else {
            "gate_auc_floor": None,
            "gate_max_auc_drop": None,
            "gate_max_logloss_rise": None,
            "gate_min_gain_over_constant": None,
        }
    )
    full = strategy == "full_retrain"
    return Settings().rooted_at(
        workdir,
        spec_path=workdir / "spec.toml",
        model="lr" if strategy == "lr" else config.model,  # type: ignore[arg-type]
        loss=loss,  # type: ignore[arg-type]
        loss_params=dict(sc.loss_params) if loss != "bce" else {},
        embedding_dim=config.embedding_dim,
        mlp_hidden=config.mlp_hidden,
        dropout=config.dropout,
        lr_final_fraction=config.lr_final_fraction,
        learning_rate=sc.lr,
        sparse_learning_rate=sc.sparse_lr,
        epochs=sc.epochs,
        cold_start_epochs=sc.epochs if full else config.cold_start_epochs,
        batch_size=config.batch_size,
        threads=config.threads,
        seed=seed,
        warm_start=not full,
        prior_source="archive",
        holdout_fraction=config.holdout_fraction,
        # Replays run small bins; a skip would silently change what is compared.
        min_day_rows=1,
        min_positives=1,
        min_negatives=1,
        auto_promote=True,
        report_history_plot=False,  # redrawn from every run JSON each cycle: the largest overhead
        cycle_period=config.period,
        cycle_attempts=1,
        heartbeat_s=600.0,
        stale_after_s=3600.0,
        admin_token=secrets.token_urlsafe(16),
        max_batch=config.max_batch,
        watch_interval_s=3600.0,  # the replay reloads explicitly after each cycle
        archive_flush_rows=10_000_000,
        archive_flush_seconds=3600.0,
        archive_buffer_rows=10_000_000,
        **gate,
    )


def _write_log(settings: Settings, day: date | Period, rows: pa.Table) -> None:
    """One partition of click logs in the project's layout (``dt=YYYY-MM-DD[/hr=HH]/part-00000.parquet``)."""
    period = Period.coerce(day, settings.period_step)
    folder = Path(settings.resolved_logs_uri) / period.partitions()[0]
    folder.mkdir(parents=True, exist_ok=True)
    keep = [c for c in rows.column_names if c not in EXTRA_COLUMNS]
    pq.write_table(rows.select(keep), folder / "part-00000.parquet")


def _quiet() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _production(engine: Any, settings: Settings) -> Any:
    from reloop_service.registry import store
    from reloop_service.registry.db import session_scope

    with session_scope(engine, readonly=True) as session:
        prod = store.get_production(session, model_name=settings.model_name)
    if prod is None:
        raise ReplayError("no production version after the warm-up cycle")
    return prod.version


def _cycle(settings: Settings, engine: Any, day: date | Period, k: int, gate: bool) -> Any:
    """Run bin ``k``'s cycle; a skipped one (no rows that day) is returned, production unchanged."""
    from reloop_service.cycle.run import run_cycle

    outcome = run_cycle(settings=settings, cycle_date=day, actor="replay", engine=engine)
    if outcome.status == "skipped" and outcome.reason not in ("held", "succeeded"):
        log.info("bin %d (%s): cycle skipped: %s", k, day, outcome.error)
        return outcome
    if outcome.status != "succeeded":
        raise ReplayError(f"bin {k} ({day}): cycle {outcome.status}: {outcome.error or outcome.reason}")
    if not gate and outcome.decision != "promoted" and outcome.status == "succeeded":
        raise ReplayError(f"bin {k} ({day}): the gate is off but the cycle ended {outcome.decision}")
    return outcome


def run_one(
    data: ReplayData,
    *,
    strategy: str,
    seed: int,
    config: ReplayConfig,
    protocol: SplitProtocol,
    workdir: Path,
    predictions_path: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One strategy x seed through the real loop; returns its per-bin figures (see the module doc).

    The per-row predictions (impression id, bin, label, served ctr, version[, true ctr]) are written
    to ``predictions_path`` so every figure can be recomputed.
    """
    import torch

    from reloop_service.registry.db import upgrade
    from reloop_service.registry.service import open_registry
    from reloop_service.serving.harness import in_process

    if strategy not in LOSS_OF:
        raise ReplayError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    _quiet()
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    last = protocol.end(data)
    warm = protocol.warmup_bins - 1
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spec.toml").write_text(spec_toml(data.spec))
    settings = run_settings(workdir=workdir, strategy=strategy, seed=seed, config=config)
    upgrade(settings.resolved_database_url)
    engine = open_registry(settings)
    features = data.spec.feature_names
    has_truth = "true_ctr" in data.table.column_names
    cluster = config.cluster_by or (
        "user_id" if "user_id" in data.table.column_names else data.spec.impression_id
    )
    if cluster not in data.table.column_names:
        raise ReplayError(
            f"--cluster-by {cluster!r}: no such column (columns: {', '.join(data.table.column_names)})"
        )
    bins: list[dict[str, Any]] = []
    frames: list[pa.Table] = []
    cycle_seconds = score_seconds = 0.0
    try:
        t0 = time.perf_counter()
        _write_log(settings, data.dates[warm], data.bin_rows(warm, upto=True))
        _cycle(settings, engine, data.dates[warm], warm, config.gate)
        cycle_seconds += time.perf_counter() - t0
        if progress is not None:
            progress(strategy, seed, warm)
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        auth = {"Authorization": f"Bearer {token}"}
        with in_process(settings) as service:
            client = service.client
            for k in range(protocol.warmup_bins, last + 1):
                day = data.dates[k]
                rows = data.bin_rows(k)
                t0 = time.perf_counter()
                prod = _reload(client, auth, engine, settings, k)
                ids: list[Any] = []
                ctr = y = np.zeros(0)
                if rows.num_rows:
                    ids, ctr, y = _score(service, rows, data, features, prod.version, config, k)
                score_seconds += time.perf_counter() - t0

                t0 = time.perf_counter()
                logged = data.bin_rows(k, upto=True) if strategy == "full_retrain" else rows
                if logged.num_rows:  # a bin without rows is a day without a partition
                    _write_log(settings, day, logged)
                outcome = _cycle(settings, engine, day, k, config.gate)
                cycle_s = time.perf_counter() - t0
                cycle_seconds += cycle_s
                cov = outcome.record.coverage
                entry: dict[str, Any] = {
                    "bin": k,
                    "date": day.isoformat(),
                    "rows": int(rows.num_rows),
                    "clicks": int(y.sum()),
                    "auc": auc(y, ctr) if rows.num_rows else None,
                    "logloss": logloss(y, ctr) if rows.num_rows else None,
                    "mean_ctr": float(ctr.mean()) if rows.num_rows else None,
                    "model_version": int(prod.version),
                    "model_data_last_day": prod.data_last_day.isoformat() if prod.data_last_day else None,
                    "trained_version": outcome.version if outcome.status == "succeeded" else None,
                    "decision": outcome.decision if outcome.status == "succeeded" else outcome.status,
                    "skip_reason": outcome.error if outcome.status == "skipped" else None,
                    "prior_archived": cov.archived if cov else 0,
                    # every row the version learned from: training split + the holdout after the gate
                    "train_rows": _trained_rows(outcome.record.train),
                    "cycle_seconds": round(cycle_s, 3),
                    **_cost_figures(outcome.record.costs),
                }
                if rows.num_rows:
                    frame = {
                        "impression_id": pa.array(ids, pa.string()),
                        "bin": pa.array(np.full(len(ids), k, dtype=np.int64)),
                        "label": pa.array(y.astype(np.int8)),
                        "ctr": pa.array(ctr),
                        "model_version": pa.array(np.full(len(ids), prod.version, dtype=np.int64)),
                        "cluster": canonical_strings(rows.column(cluster), cluster),
                    }
                    for extra in ("true_ctr", "hour"):
                        if extra in rows.column_names:
                            frame[extra] = rows.column(extra).combine_chunks()
                    if has_truth:
                        entry["bayes_logloss"] = logloss(y, frame["true_ctr"].to_numpy(zero_copy_only=False))
                    frames.append(pa.table(frame))
                bins.append(entry)
                if progress is not None:
                    progress(strategy, seed, k)
    finally:
        engine.dispose()
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(frames), predictions_path)
    return {
        "strategy": strategy,
        "seed": seed,
        "model": settings.model,
        "loss": settings.loss,
        "loss_params": resolve_params(settings.loss, settings.loss_params),  # as trained, defaults included
        "lr": settings.learning_rate,
        "sparse_lr": settings.sparse_learning_rate,
        "epochs": settings.epochs,
        "warm_start": settings.warm_start,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "score_seconds": round(score_seconds, 3),
        "cycle_seconds": round(cycle_seconds, 3),
        "predictions": str(predictions_path),
        "bins": bins,
    }


def _cost_figures(costs: dict[str, float] | None) -> dict[str, float]:
    """A cycle's fixed cost, its training time, and each fixed part (seconds; ``cycle.run.FIXED_COSTS``)."""
    from reloop_service.cycle.run import FIXED_COSTS, TRAINING_COSTS

    if not costs:
        return {}
    out = {f"cost_{k}": round(costs[k], 4) for k in FIXED_COSTS if k in costs}
    out["fixed_seconds"] = round(sum(costs.get(k, 0.0) for k in FIXED_COSTS), 4)
    out["train_seconds"] = round(sum(costs.get(k, 0.0) for k in TRAINING_COSTS), 4)
    return out


def _trained_rows(train: TrainSummary | None) -> int:
    if train is None:
        return 0
    return int(train.train_rows or 0) + int(train.holdout_trained_rows or 0)


def _reload(client: Any, auth: dict[str, str], engine: Any, settings: Settings, k: int) -> Any:
    """Make the app serve the registry's production version; returns that version."""
    reload = client.post("/v1/admin/reload", headers=auth)
    if reload.status_code != 200 or reload.json().get("error"):
        raise ReplayError(f"bin {k}: reload failed: {reload.status_code} {reload.text[:300]}")
    prod = _production(engine, settings)
    if reload.json()["model_version"] != prod.version:
        raise ReplayError(
            f"bin {k}: serving version {reload.json()['model_version']}, production {prod.version}"
        )
    return prod


def _score(
    service: InProcessService,
    rows: pa.Table,
    data: ReplayData,
    features: tuple[str, ...],
    version: int,
    config: ReplayConfig,
    k: int,
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Score bin ``k`` through ``POST /v1/predict`` and flush the archive: (ids, served ctr, labels)."""
    from reloop_service.serving.harness import score

    impressions = rows.select([data.spec.impression_id, *features]).to_pylist()
    answered: list[dict[str, Any]] = []
    before = service.flush_archive()
    scored, served_by = score(
        service.client, impressions, features=features, max_batch=config.max_batch, collect=answered
    )
    archived = service.flush_archive() - before
    if served_by != version or archived != rows.num_rows:
        raise ReplayError(
            f"bin {k}: {scored} rows scored by version {served_by} (production {version}), "
            f"{archived} archived"
        )
    ids = rows.column(data.spec.impression_id).to_pylist()
    if [a["impression_id"] for a in answered] != ids:
        raise ReplayError(f"bin {k}: the predict path answered other impression ids than sent")
    ctr = np.array([a["ctr"] for a in answered], dtype=np.float64)
    y = np.asarray(rows.column(data.spec.label).to_numpy(zero_copy_only=False), dtype=np.float64)
    return ids, ctr, y


# ------------------------------------------------------------------------------------- many runs
@dataclass(frozen=True)
class RunSpec:
    """One run of a batch: strategy, seed, its config and where it writes."""

    strategy: str
    seed: int
    config: ReplayConfig
    workdir: Path
    predictions_path: Path
    label: str = ""


def _execute(
    data: ReplayData, run: RunSpec, protocol: SplitProtocol, keep: bool, progress: Progress | None
) -> dict[str, Any]:
    try:
        result = run_one(
            data,
            strategy=run.strategy,
            seed=run.seed,
            config=run.config,
            protocol=protocol,
            workdir=run.workdir,
            predictions_path=run.predictions_path,
            progress=progress,
        )
    finally:
        if not keep:
            shutil.rmtree(run.workdir, ignore_errors=True)
    result["label"] = run.label
    return result


def _worker(
    data: ReplayData, run: RunSpec, protocol: SplitProtocol, keep: bool, queue: Any
) -> dict[str, Any]:
    """A pool worker: one run, reporting each finished bin through the manager queue."""
    return _execute(data, run, protocol, keep, lambda _s, _seed, k: queue.put((run.label, k)))


def run_many(
    data: ReplayData,
    runs: Sequence[RunSpec],
    *,
    protocol: SplitProtocol,
    workers: int = 1,
    keep_data: bool = False,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every ``RunSpec`` (in a spawn process pool of ``workers``), with rich progress bars."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bins_per_run = protocol.end(data) - protocol.warmup_bins + 2
    results: list[dict[str, Any]] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not show_progress,
    ) as bar:
        total = bar.add_task("[bold]replay[/] cycles", total=bins_per_run * len(runs))
        tasks = {r.label: bar.add_task(f"  {r.label}", total=bins_per_run, visible=False) for r in runs}

        def tick(label: str) -> None:
            bar.update(tasks[label], advance=1, visible=True)
            bar.advance(total)

        if workers <= 1:
            for r in runs:

                def inline(_strategy: str, _seed: int, _k: int, label: str = r.label) -> None:
                    tick(label)

                results.append(_execute(data, r, protocol, keep_data, inline))
            return results
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            queue = manager.Queue()
            pending = {pool.submit(_worker, data, r, protocol, keep_data, queue) for r in runs}
            done_all: list[Any] = []
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                done_all.extend(done)
                while not queue.empty():
                    label, _k = queue.get()
                    tick(label)
            while not queue.empty():
                label, _k = queue.get()
                tick(label)
            by_label = {}
            for fut in done_all:
                res = fut.result()  # re-raises a run's error here
                by_label[res["label"]] = res
            results = [by_label[r.label] for r in runs]
    return results
