"""The model holder: one reference to the served model, swapped atomically by a watcher.

Requests read ``holder.current`` once (a plain attribute read: atomic, lock-free) and finish on
that model even if a swap happens meanwhile. The watcher polls the registry's production alias
every ``watch_interval_s``; on a change it loads the artifact (sha256 verified by the artifact
store), warms it with one prediction and only then swaps the reference. A failed load keeps the
old model, is logged and counted, and its reason is kept for ``/readyz`` and the 503 of a replica with
no model. An unreachable database changes nothing but ``db_ok``: the replica keeps serving what it has.

Several workers of one ``reloop serve --workers N`` each hold their own model and watcher; promote
and rollback reach them all through the registry. A forced reload reaches them through
``reload_signal``, a file in the workers' shared folder: ``reload_all`` rewrites it, and every
watcher that sees it change reloads at its next poll.

Health routes read only the attributes the watcher maintains (never the database, never a lock): a
poll that hangs on a frozen database leaves ``last_ok_poll`` behind, and ``registry_state()`` then says
``stale`` once it is older than ``stale_after_s``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from reloop_service.data.spec import FeatureSpec
from reloop_service.registry.entities import ModelVersion

log = logging.getLogger(__name__)

RETRY_FAILED_AFTER_S = 30.0


@dataclass(frozen=True)
class LoadedModel:
    """What a request scores with: the predictor and the version it belongs to."""

    predictor: Any  # training.predict.Predictor
    spec: FeatureSpec
    version: int
    model_name: str
    info: ModelVersion
    loaded_at: datetime
    fast: Any = None  # serving.fastforward.FastDNN when the model has a compiled forward, else None


FetchProduction = Callable[[], ModelVersion | None]
LoadPredictor = Callable[[ModelVersion], tuple[Any, FeatureSpec]]
"""Returns (predictor, feature spec) for a version; raises on a missing or corrupt artifact."""


class ModelHolder:
    """Holds the served model; see the module docstring for the swap rules."""

    def __init__(
        self,
        *,
        model_name: str,
        fetch_production: FetchProduction,
        load_predictor: LoadPredictor,
        watch_interval_s: float = 1.0,
        stale_after_s: float | None = None,
        reload_signal: Path | None = None,
    ) -> None:
        self.model_name = model_name
        self._fetch = fetch_production
        self._load = load_predictor
        self.watch_interval_s = watch_interval_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(5 * watch_interval_s, 2.0)
        self.current: LoadedModel | None = None
        self.swaps = 0
        self.load_failures = 0
        self.forced_reloads = 0  # forced polls (admin reload, here or relayed from another worker)
        self.db_ok = False
        self.db_error: str | None = None
        self.last_poll_at: datetime | None = None  # last poll that reached the registry
        self.last_ok_poll: float | None = None  # its monotonic time
        self.last_load_error: str | None = None  # full text (admin API, logs)
        self.last_load_reason: str | None = None  # short, path-free (public /readyz and 503s)
        self._failed: dict[tuple[int, str], float] = {}  # (version, sha256) -> monotonic time of failure
        self._lock = threading.Lock()  # one load at a time (watcher or admin)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reload_signal = reload_signal
        self._signal_seen = self._read_signal()
        self.after_poll: Callable[[], None] | None = None  # called by the watcher after each poll

    # --- polling ------------------------------------------------------------------------------
    def poll_once(self, *, force: bool = False) -> bool:
        """Check the production alias and swap if it moved; True when a new model was swapped in.

        ``force`` reloads even when the version is unchanged (and retries a failed load now).
        """
        with self._lock:
            if force:
                self.forced_reloads += 1
            try:
                wanted = self._fetch()
            except Exception as exc:
                if self.db_ok or self.db_error is None:
                    log.error("registry unreachable, serving the loaded model: %s", exc)
                self.db_ok = False
                self.db_error = f"{type(exc).__name__}: {exc}"
                return False
            if not self.db_ok:
                log.info("registry reachable")
            self.db_ok, self.db_error = True, None
            self.last_poll_at = datetime.now(UTC)
            self.last_ok_poll = time.monotonic()
            if wanted is None:
                return False
            current = self.current
            if not force and current is not None and current.version == wanted.version:
                return False
            key = (wanted.version, wanted.artifact.sha256)
            failed_at = self._failed.get(key)
            if not force and failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_AFTER_S:
                return False
            return self._load_and_swap(wanted)

    def prepare(self, info: ModelVersion) -> LoadedModel:
        """Load and warm ``info``'s model without serving it; raises (with the reason) when it cannot be
        served. Admin promotes call it before production moves, then ``adopt`` the result."""
        predictor, spec = self._load(info)
        warm = np.asarray(predictor.predict_records([{}]), dtype=np.float64)
        if warm.shape != (1,) or not np.isfinite(warm).all():
            raise ValueError(f"warm-up prediction is not one finite number: {warm!r}")
        model = getattr(predictor, "model", None)
        fast = None
        if model is not None:
            from reloop_service.serving.fastforward import FastDNN

            fast = FastDNN.build(model, spec)
        return LoadedModel(
            predictor=predictor,
            spec=spec,
            version=info.version,
            model_name=self.model_name,
            info=info,
            loaded_at=datetime.now(UTC),
            fast=fast,
        )

    def adopt(self, loaded: LoadedModel) -> None:
        """Serve a model ``prepare`` returned (after the registry moved to it)."""
        with self._lock:
            self._swap(loaded, started=time.perf_counter())

    def _swap(self, loaded: LoadedModel, *, started: float) -> None:
        previous = self.current
        if previous is not None and previous.version == loaded.version and previous.info == loaded.info:
            return
        self.current = loaded
        self._failed.pop((loaded.version, loaded.info.artifact.sha256), None)
        self.last_load_error = self.last_load_reason = None
        self.swaps += 1
        log.info(
            "serving %s version %d (was %s), loaded in %.0f ms",
            self.model_name,
            loaded.version,
            previous.version if previous else None,
            (time.perf_counter() - started) * 1000,
        )

    def _load_and_swap(self, info: ModelVersion) -> bool:
        started = time.perf_counter()
        try:
            loaded = self.prepare(info)
        except Exception as exc:
            self.load_failures += 1
            self._failed[(info.version, info.artifact.sha256)] = time.monotonic()
            self.last_load_error = f"version {info.version}: {type(exc).__name__}: {exc}"
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.last_load_reason = f"version {info.version}: {reason}"
            log.error(
                "loading %s version %d failed, keeping the current model: %s",
                self.model_name,
                info.version,
                exc,
            )
            return False
        self._swap(loaded, started=started)
        return True

    # --- what health routes read (no database, no lock) ------------------------------------------
    def registry_state(self) -> str:
        """``ok``, ``unreachable`` (the last poll failed) or ``stale`` (no successful poll for
        ``stale_after_s``: the database hangs, or the watcher does)."""
        last = self.last_ok_poll
        if not self.db_ok or last is None:
            return "unreachable"
        return "stale" if time.monotonic() - last > self.stale_after_s else "ok"

    def unavailable_detail(self) -> str:
        """The 503 text of a replica with no model: why, without paths or database details."""
        if self.last_load_reason is not None:
            return f"no model loaded: {self.last_load_reason}"
        return "no model loaded yet: promote a version to production"

    # --- watcher ------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll once now, then keep polling in a daemon thread."""
        self.poll_once()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.watch_interval_s):
            try:
                signal = self._read_signal()
                forced = signal != self._signal_seen
                self._signal_seen = signal
                self.poll_once(force=forced)
            except Exception:  # the watcher must never die
                log.exception("model watcher poll failed")
            if self.after_poll is not None:
                try:
                    self.after_poll()
                except Exception:
                    log.exception("model watcher after-poll hook failed")

    # --- reloads across workers ------------------------------------------------------------------
    def _read_signal(self) -> str | None:
        if self.reload_signal is None:
            return None
        try:
            return self.reload_signal.read_text()
        except OSError:
            return None

    def reload_all(self) -> bool:
        """Reload now in this worker, and tell every other worker to reload at its next poll.

        Returns what ``poll_once(force=True)`` returns here.
        """
        if self.reload_signal is not None:
            token = f"{os.getpid()}-{uuid.uuid4().hex}"
            tmp = self.reload_signal.with_name(f".{self.reload_signal.name}.{token}")
            tmp.write_text(token)
            tmp.replace(self.reload_signal)  # atomic: a reader sees the old or the new token
            self._signal_seen = token
        return self.poll_once(force=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
