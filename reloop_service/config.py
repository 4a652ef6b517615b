"""One typed settings object for every process (API, scheduler, CLI), read from ``RELOOP_*``.

Embedded defaults put everything under one data directory so a new user needs nothing else;
at scale the URIs point at PostgreSQL and S3-compatible storage.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PriorSource = Literal["archive", "recompute", "archive_then_recompute"]
ArchiveFeatures = Literal["hashed", "json"]
Readiness = Literal["marker", "delay", "either"]

DAY = timedelta(days=1)
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``1d`` (a bare number is seconds) -> ``timedelta``; ``ValueError`` else."""
    match = _DURATION.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a duration (expected e.g. 30m, 1h, 1d)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


def format_duration(value: timedelta) -> str:
    """The shortest of ``1d``, ``2h``, ``30m``, ``45s`` that says ``value`` exactly."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_period_step(text: str) -> timedelta:
    """A cycle period: a whole number of minutes that divides a day (``1d``, ``1h``, ``15m``...)."""
    step = parse_duration(text)
    if step <= timedelta(0) or step % timedelta(minutes=1) or DAY % step:
        raise ValueError(f"{text!r}: a cycle period must divide a day in whole minutes (1d, 6h, 1h, 15m)")
    return step


class Settings(BaseSettings):
    """All knobs of reloop-service. Secrets are ``SecretStr`` so they never print in logs or reprs."""

    model_config = SettingsConfigDict(env_prefix="RELOOP_", env_nested_delimiter="__", extra="ignore")

    # --- locations -------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("reloop-data"), description="Root for every embedded default.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite file.")
    logs_uri: str | None = Field(default=None, description="Click-log dataset root (path or fsspec URI).")
    artifacts_uri: str | None = Field(default=None, description="Where checkpoints are stored.")
    archive_uri: str | None = Field(default=None, description="Prediction archive root.")
    reports_uri: str | None = Field(default=None, description="Cycle reports root.")
    spec_path: Path | None = Field(default=None, description="Feature spec TOML; default: the demo spec.")

    # --- S3-compatible storage (credentials from the environment, never logged) ------------------
    s3_endpoint_url: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"

    # --- model and training ----------------------------------------------------------------------
    model_name: str = "ctr"
    model: Literal["dnn", "deepfm", "dcnv2", "lr"] = "dnn"
    loss: Literal["bce", "label_smoothing", "distill", "reloop"] = "reloop"
    loss_params: dict[str, float] = Field(default_factory=dict)
    # The training recipe (training/recipe.py): one set of defaults for the cycle, `reloop train`, the
    # demo and the replay, chosen on the replays' selection bins (docs/benchmarks.md, Model quality).
    embedding_dim: int = Field(default=16, ge=1)
    mlp_hidden: tuple[int, ...] = (256, 128, 64)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="MLP dropout while training.")
    learning_rate: float = Field(default=1e-3, gt=0.0, description="Adam learning rate of the MLP.")
    sparse_learning_rate: float | None = Field(
        default=None, gt=0.0, description="Embedding rows' Adam learning rate; default: the recipe's."
    )
    lr_final_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Warm-started trainings decay both learning rates linearly to this fraction (1: none).",
    )
    epochs: int = Field(default=1, ge=1, description="Passes over a day when warm-starting.")
    cold_start_epochs: int = Field(default=2, ge=1, description="Passes when training from scratch.")
    cold_start_settle_epochs: int = Field(
        default=1,
        ge=0,
        description="After those passes, passes over the embedding tables alone at a tenth of their rate.",
    )
    settle_epochs: int = Field(
        default=1,
        ge=0,
        description="The same settle passes after a warm-started day's passes (and its holdout pass).",
    )
    batch_size: int | None = Field(
        default=None, ge=1, description="Rows per step; default: scaled to the day (recipe.auto_batch_size)."
    )
    shuffle_buffer_rows: int = Field(
        default=1_000_000, ge=1, description="Rows permuted together (a full shuffle of any smaller day)."
    )
    threads: int | None = Field(default=None, description="torch intra-op threads; default: all cores.")
    seed: int = 0

    # --- cycle -----------------------------------------------------------------------------------
    holdout_fraction: float = Field(
        default=0.1,
        gt=0.0,
        lt=1.0,
        description="Share of a day's rows (by impression-id hash) the gate scores.",
    )
    train_on_holdout: bool = Field(
        default=True, description="After the gate passes, train the candidate on the holdout rows too."
    )
    min_day_rows: int = Field(default=100, ge=1, description="Fewer valid rows: the cycle is skipped.")
    min_positives: int = Field(default=5, ge=1, description="Fewer clicks in a day: the cycle is skipped.")
    min_negatives: int = Field(default=5, ge=1, description="Fewer non-clicks: the cycle is skipped.")
    collision_warn_fraction: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Flag a field when this share of its values share a bucket."
    )
    gate_min_gain_over_constant: float | None = Field(
        default=0.0,
        description="Refuse a candidate whose holdout logloss is not this much below the constant "
        "predictor's (the training CTR); none turns the rule off (the replay does).",
    )
    prior_source: PriorSource = "archive_then_recompute"
    gate_auc_floor: float | None = None
    gate_max_auc_drop: float | None = 0.01
    gate_max_logloss_rise: float | None = 0.01
    auto_promote: bool = True
    cycle_attempts: int = Field(default=2, ge=1)
    cycle_backoff_s: float = Field(default=5.0, ge=0.0)
    heartbeat_s: float = Field(default=10.0, gt=0.0)
    stale_after_s: float = Field(default=120.0, gt=0.0)
    nproc: int = Field(default=1, ge=1)
    report_history_plot: bool = Field(
        default=True, description="Redraw reports/history.png after every cycle (the replay turns it off)."
    )
    warm_start: bool = Field(
        default=True, description="False: each cycle trains from scratch (BCE), as the replay's full_retrain."
    )
    cycle_period: str = Field(
        default="1d", description="Length of one cycle: 1d, 1h or any divisor of a day (data/period.py)."
    )
    readiness: Readiness = Field(
        default="delay",
        description="When an ended period may train: its partitions carry _SUCCESS (marker), label_delay "
        "has passed since it ended (delay), or whichever comes first (either).",
    )
    label_delay: str = Field(default="0s", description="Wait this long after a period ends (late clicks).")
    readiness_attempts: int = Field(
        default=3, ge=1, description="Readiness checks before a period is skipped as not ready."
    )
    readiness_backoff_s: float = Field(
        default=30.0, ge=0.0, description="First wait between readiness checks (doubles each time)."
    )

    # --- scheduler -------------------------------------------------------------------------------
    schedule_time: time = time(2, 0)
    timezone: str = "UTC"
    misfire_grace_s: int = 6 * 3600
    max_catchup_days: int = 7
    max_catchup_periods: int | None = Field(
        default=None,
        ge=1,
        description="At most this many cycles per catch-up: the oldest missing periods are merged into one "
        "cycle (none: every missing period runs alone).",
    )
    scheduler_host: str = Field(default="127.0.0.1", description="Bind address of the scheduler's /metrics.")
    scheduler_port: int = Field(default=9109, ge=0, le=65535, description="/metrics + /healthz; 0: off.")

    # --- alerts ----------------------------------------------------------------------------------
    alert_webhook_url: SecretStr | None = Field(
        default=None, description="POST a JSON event on a failed, rejected or skipped cycle and a rollback."
    )
    alert_timeout_s: float = Field(default=5.0, gt=0.0)
    alert_attempts: int = Field(default=4, ge=1)

    # --- serving ---------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    admin_token: SecretStr | None = Field(default=None, description="Admin API bearer token; none = closed.")
    max_batch: int = Field(default=1000, ge=1, description="Items per predict request (422 above).")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Predict body size (413 above, before it is read whole).",
    )
    max_item_keys: int = Field(default=256, ge=1, description="Feature keys per predict item (422 above).")
    max_string_length: int = Field(
        default=1024,
        ge=1,
        description="Characters per feature name, string value or list element (422 above).",
    )
    max_list_length: int = Field(
        default=256, ge=1, description="Elements per list feature value (422 above)."
    )
    watch_interval_s: float = Field(default=1.0, gt=0.0)
    replica_id: str | None = Field(default=None, description="Distinguishes archive parts of replicas.")
    archive_enabled: bool = True
    archive_flush_rows: int = Field(default=50_000, ge=1)
    archive_flush_seconds: float = Field(default=5.0, gt=0.0)
    archive_buffer_rows: int = Field(default=500_000, ge=1)
    archive_buffer_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Bytes of buffered predictions (features, ids) kept in memory; beyond, rows are dropped "
        "and counted.",
    )
    archive_block_ms: float = Field(default=50.0, ge=0.0)
    archive_features: ArchiveFeatures = Field(
        default="hashed",
        description="How the archive keeps each prediction's features: 'hashed' (the SipHash of each "
        "categorical value and the numbers as sent, as columns: no per-row work) or 'json' (the values as "
        "sent, one JSON object a row: ~1.5 µs more server CPU a prediction).",
    )
    registry_stale_after_s: float | None = Field(
        default=None,
        gt=0.0,
        description="/readyz says database 'stale' when no registry poll succeeded for this long; "
        "default 5 watch intervals (at least 2 s).",
    )
    admin_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        description="Deadline of one admin request's database work: a write not committed by then is rolled "
        "back (never applied later) and the request answers 503.",
    )
    cycle_future_days: int = Field(
        default=1, ge=0, description="The admin API refuses cycle dates more than this many days ahead (UTC)."
    )

    # --- registry database -------------------------------------------------------------------------
    db_connect_timeout_s: float = Field(
        default=5.0, gt=0.0, description="Give up opening a PostgreSQL connection after this long."
    )
    db_statement_timeout_s: float = Field(
        default=60.0,
        gt=0.0,
        description="PostgreSQL statement_timeout of every registry connection "
        "(the server cancels longer statements).",
    )
    db_pool_timeout_s: float = Field(
        default=5.0, gt=0.0, description="Wait at most this long for a free pooled connection."
    )

    # --- garbage collection ----------------------------------------------------------------------
    gc_grace_s: float = Field(
        default=3600.0,
        ge=0.0,
        description="`reloop gc` and the cycle's sweep leave unreferenced artifacts younger than this alone "
        "(a registration in flight writes its artifact before its row).",
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("cycle_period")
    @classmethod
    def _period(cls, value: str) -> str:
        return format_duration(parse_period_step(value))

    @field_validator("label_delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        return format_duration(parse_duration(value))

    @property
    def period_step(self) -> timedelta:
        """``cycle_period`` as a ``timedelta``."""
        return parse_period_step(self.cycle_period)

    @property
    def label_delay_td(self) -> timedelta:
        return parse_duration(self.label_delay)

    # --- derived locations -----------------------------------------------------------------------
    def _under(self, explicit: str | None, name: str) -> str:
        return explicit if explicit else str((self.data_dir / name).resolve())

    @cached_property
    def resolved_database_url(self) -> str:
        """SQLite file under the data dir unless ``RELOOP_DATABASE_URL`` says otherwise."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def resolved_logs_uri(self) -> str:
        return self._under(self.logs_uri, "logs")

    @property
    def resolved_artifacts_uri(self) -> str:
        return self._under(self.artifacts_uri, "artifacts")

    @property
    def resolved_archive_uri(self) -> str:
        return self._under(self.archive_uri, "archive")

    @property
    def resolved_reports_uri(self) -> str:
        return self._under(self.reports_uri, "reports")

    def rooted_at(self, folder: Path | str, **overrides: Any) -> Settings:
        """These settings with the registry, logs, artifacts, archive and reports all under ``folder``.

        Explicit locations are dropped (they default under the data dir); ``overrides`` win. The demo,
        the replay and the tests root a whole installation in a folder of their own this way.
        """
        values = self.model_dump()
        values.update(
            data_dir=Path(folder),
            database_url=None,
            logs_uri=None,
            artifacts_uri=None,
            archive_uri=None,
            reports_uri=None,
        )
        values.update(overrides)
        return type(self)(**values)

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for ``s3://`` URIs; empty when no S3 settings are given."""
        opts: dict[str, Any] = {}
        client: dict[str, Any] = {"region_name": self.s3_region}
        if self.s3_endpoint_url:
            client["endpoint_url"] = self.s3_endpoint_url
        if self.s3_access_key_id is not None:
            opts["key"] = self.s3_access_key_id.get_secret_value()
        if self.s3_secret_access_key is not None:
            opts["secret"] = self.s3_secret_access_key.get_secret_value()
        opts["client_kwargs"] = client
        return opts
