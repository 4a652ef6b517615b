"""Prometheus metrics of one app instance, on its own registry (tests and replicas never collide).

Archive and model-state figures are read at scrape time by a collector, so the request path pays
nothing for them; request counts, latencies and predictions are counted as they happen.

Under ``reloop serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set before the workers start) every
worker writes its counters to memory-mapped files in that folder and ``/metrics``, whichever worker
answers, sums them over all workers (prometheus_client's multiprocess mode). The state figures then
cannot be read at scrape time from the other workers, so each worker publishes them itself, after
every registry poll and at each scrape: counters as increments, the served model per worker (a
``pid`` label), queue depths summed over live workers and the database state as the worst worker's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from reloop_service.data.archive import PredictionArchive
    from reloop_service.serving.holder import ModelHolder

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _StateCollector(Collector):
    """Current model, swaps, failed loads, DB state and archive counters, read at scrape time."""

    def __init__(
        self,
        holder: Callable[[], ModelHolder | None],
        archive: Callable[[], PredictionArchive | None],
    ) -> None:
        self._holder = holder
        self._archive = archive

    def collect(self) -> Iterator[Metric]:
        holder = self._holder()
        if holder is not None:
            current = holder.current
            info = InfoMetricFamily(
                "reloop_model", "The model version this replica serves (none: no series)."
            )
            if current is not None:
                info.add_metric(
                    [],
                    {
                        "model_name": current.model_name,
                        "version": str(current.version),
                        "sha256": current.info.artifact.sha256,
                    },
                )
            yield info
            yield GaugeMetricFamily(
                "reloop_model_loaded_timestamp_seconds",
                "When the served version was loaded (Unix time).",
                value=current.loaded_at.timestamp() if current else 0,
            )
            yield CounterMetricFamily("reloop_model_swaps", "Hot swaps to a new version.", value=holder.swaps)
            yield CounterMetricFamily(
                "reloop_model_load_failures",
                "Failed model loads (old model kept).",
                value=holder.load_failures,
            )
            yield CounterMetricFamily(
                "reloop_model_forced_reloads",
                "Forced reloads (POST /v1/admin/reload, in every worker).",
                value=holder.forced_reloads,
            )
            yield GaugeMetricFamily(
                "reloop_registry_db_up",
                "1 when the last registry poll reached the database.",
                value=1 if holder.db_ok else 0,
            )
        archive = self._archive()
        if archive is not None:
            c = archive.counters
            yield GaugeMetricFamily(
                "reloop_archive_queue_depth",
                "Prediction rows buffered, not yet written.",
                value=archive.queue_depth,
            )
            yield CounterMetricFamily(
                "reloop_archive_rows_written", "Prediction rows written.", value=c.written_rows
            )
            yield CounterMetricFamily(
                "reloop_archive_parts_written", "Parquet parts written.", value=c.written_parts
            )
            yield CounterMetricFamily(
                "reloop_archive_write_errors", "Failed part writes (retried).", value=c.write_errors
            )
            yield CounterMetricFamily(
                "reloop_archive_dropped_rows",
                "Prediction rows dropped (buffer full or gave up).",
                value=c.dropped_rows,
            )
            yield CounterMetricFamily(
                "reloop_archive_overflow_rows",
                "Prediction rows dropped because the buffer was full (RELOOP_ARCHIVE_BUFFER_ROWS or _BYTES).",
                value=c.overflow_rows,
            )
            yield GaugeMetricFamily(
                "reloop_archive_buffer_bytes",
                "Bytes of prediction rows buffered, not yet written.",
                value=archive.buffered_bytes,
            )


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess folder when this process is one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class _SharedState:
    """The state figures of ``_StateCollector`` as multiprocess metrics this worker keeps current."""

    _COUNTERS = (
        ("reloop_model_swaps", "Hot swaps to a new version."),
        ("reloop_model_load_failures", "Failed model loads (old model kept)."),
        ("reloop_model_forced_reloads", "Forced reloads (POST /v1/admin/reload, in every worker)."),
        ("reloop_archive_rows_written", "Prediction rows written."),
        ("reloop_archive_parts_written", "Parquet parts written."),
        ("reloop_archive_write_errors", "Failed part writes (retried)."),
        ("reloop_archive_dropped_rows", "Prediction rows dropped (buffer full or gave up)."),
        ("reloop_archive_overflow_rows", "Prediction rows dropped because the buffer was full."),
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self.counters = {name: Counter(name, doc, registry=registry) for name, doc in self._COUNTERS}
        self.model = Gauge(
            "reloop_model_info",
            "The model version each worker serves (1; 0 for a version it no longer serves).",
            ["model_name", "version", "sha256"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.loaded_at = Gauge(
            "reloop_model_loaded_timestamp_seconds",
            "When each worker loaded the version it serves (Unix time).",
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.db_up = Gauge(
            "reloop_registry_db_up",
            "1 when every worker's last registry poll reached the database.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.queue_depth = Gauge(
            "reloop_archive_queue_depth",
            "Prediction rows buffered, not yet written (all workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.buffer_bytes = Gauge(
            "reloop_archive_buffer_bytes",
            "Bytes of prediction rows buffered, not yet written (all workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._model_labels: tuple[str, str, str] | None = None

    def _count(self, name: str, total: float) -> None:
        delta = total - self._seen.get(name, 0.0)
        if delta > 0:
            self.counters[name].inc(delta)
            self._seen[name] = total

    def publish(self, holder: ModelHolder | None, archive: PredictionArchive | None) -> None:
        with self._lock:
            if holder is not None:
                current = holder.current
                if current is not None:
                    labels = (current.model_name, str(current.version), current.info.artifact.sha256)
                    if labels != self._model_labels:
                        if self._model_labels is not None:
                            self.model.labels(*self._model_labels).set(0)
                        self.model.labels(*labels).set(1)
                        self._model_labels = labels
                    self.loaded_at.set(current.loaded_at.timestamp())
                self.db_up.set(1 if holder.db_ok else 0)
                self._count("reloop_model_swaps", holder.swaps)
                self._count("reloop_model_load_failures", holder.load_failures)
                self._count("reloop_model_forced_reloads", holder.forced_reloads)
            if archive is not None:
                c = archive.counters
                self.queue_depth.set(archive.queue_depth)
                self.buffer_bytes.set(archive.buffered_bytes)
                self._count("reloop_archive_rows_written", c.written_rows)
                self._count("reloop_archive_parts_written", c.written_parts)
                self._count("reloop_archive_write_errors", c.write_errors)
                self._count("reloop_archive_dropped_rows", c.dropped_rows)
                self._count("reloop_archive_overflow_rows", c.overflow_rows)


class ServingMetrics:
    """The metrics of one app; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "reloop_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "reloop_http_request_duration_seconds",
            "HTTP request latency by route, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "reloop_predictions",
            "Predictions served by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.unknown_features = Counter(
            "reloop_unknown_features",
            "Unknown feature names ignored (each distinct name counted once per request).",
            registry=self.registry,
        )
        # Pre-bound label children: ``labels()`` costs a lock and tuple work on every request.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._prediction_children: dict[int, Any] = {}
        self._holder: ModelHolder | None = None
        self._archive: PredictionArchive | None = None
        self._shared: _SharedState | None = None
        if self.multiprocess:
            self._shared = _SharedState(self.registry)
        else:
            self.registry.register(_StateCollector(lambda: self._holder, lambda: self._archive))

    def bind(self, *, holder: ModelHolder | None, archive: PredictionArchive | None) -> None:
        """Point the scrape-time collector at the app's model holder and archive."""
        self._holder = holder
        self._archive = archive
        if holder is not None and self._shared is not None:
            holder.after_poll = self.publish  # other workers' scrapes see this one's state

    def publish(self) -> None:
        """Multiprocess mode: write this worker's state figures where every worker's scrape reads them."""
        if self._shared is not None:
            self._shared.publish(self._holder, self._archive)

    def close(self) -> None:
        """Multiprocess mode: drop this worker's live-only series (its process is ending)."""
        if self.multiprocess:
            self.publish()
            multiprocess.mark_process_dead(os.getpid())

    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        children = self.request_children(route, method, status)
        children[0].inc()
        children[1].observe(seconds)

    def request_children(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The (requests counter, latency histogram) children of one label set (bound once)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            code = str(status)
            children = (self.requests.labels(route, method, code), self.latency.labels(route, method, code))
            self._request_children[key] = children
        return children

    def predictions_of(self, version: int) -> Any:
        """The predictions counter child of one model version (bound once per version)."""
        child = self._prediction_children.get(version)
        if child is None:
            child = self._prediction_children[version] = self.predictions.labels(str(version))
        return child

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.publish()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # every worker's files, this one's included
        return generate_latest(merged)
