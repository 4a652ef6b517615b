"""Serving fixtures: a real registry (SQLite by Alembic), real tiny checkpoints, the real app."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from reloop_service.clitools import serve_argv
from reloop_service.config import Settings
from reloop_service.registry import store
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import make_engine, run_transaction, upgrade
from reloop_service.serving.app import create_app
from reloop_service.training.checkpoint import Checkpoint, checkpoint_to_bytes
from reloop_service.training.models import build_model
from tests.support.net import free_port
from tests.support.specs import SERVING_SPEC
from tests.support.wait import wait_http_ok

torch.set_num_threads(1)

TOKEN = "s3cret-admin-token"
SPEC = SERVING_SPEC


def make_checkpoint(seed: int) -> Checkpoint:
    """A tiny real DNN; different seeds give different predictions."""
    torch.manual_seed(seed)
    model = build_model("dnn", SPEC, embedding_dim=4, hidden=[8])
    return Checkpoint(
        model_name="dnn",
        model_args=model.model_args,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        spec=SPEC.to_dict(),
        loss="bce",
        loss_params={},
        seed=seed,
        first_day=date(2024, 5, 1),
        last_day=date(2024, 5, 1 + seed % 20),
        metrics={"auc": 0.5 + seed / 100, "logloss": 0.6},
    )


@dataclass
class Registry:
    """Test-side handle on the registry the app reads (the same database and artifact store)."""

    settings: Settings
    engine: Engine
    artifacts: ArtifactStore

    def add_version(self, seed: int, *, parent: int | None = None, artifact: bytes | None = None) -> int:
        data = artifact if artifact is not None else checkpoint_to_bytes(make_checkpoint(seed))
        ref = self.artifacts.put(data, f"model-{seed}.pt")
        mv = store.register_version_with_retry(
            self.engine,
            model_name="ctr",
            artifact=ref,
            actor="test",
            reason=f"seed {seed}",
            parent_version=parent,
            metrics={"auc": 0.7, "seed": seed},
            data_first_day=date(2024, 5, 1),
            data_last_day=date(2024, 5, 2),
            gate_verdict={"passed": True},
            cycle_date=date(2024, 5, 3),
        )
        return mv.version

    def production(self) -> int | None:
        def _get(session: Any) -> int | None:
            prod = store.get_production(session, model_name=self.settings.model_name)
            return prod.version.version if prod else None

        return run_transaction(self.engine, _get)

    def promote(self, version: int) -> None:
        current = self.production()
        run_transaction(
            self.engine,
            lambda s: store.promote(
                s,
                model_name=self.settings.model_name,
                version=version,
                actor="test",
                reason="test",
                expected_current=current,
            ),
        )


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "admin_token": TOKEN,
        "watch_interval_s": 0.05,
        "archive_flush_seconds": 0.2,
        "archive_flush_rows": 1000,
        "max_batch": 50,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    settings = make_settings(tmp_path)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    yield Registry(settings, engine, ArtifactStore(settings.resolved_artifacts_uri, {}))
    engine.dispose()


@pytest.fixture
def served(registry: Registry) -> Iterator[tuple[TestClient, Registry]]:
    """The app over a registry with version 1 in production, lifespan running."""
    v1 = registry.add_version(1)
    registry.promote(v1)
    app = create_app(registry.settings)
    with TestClient(app) as client:
        yield client, registry


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


# --- a real uvicorn ---------------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(settings: Settings, tmp_path: Path, *args: str, **env_extra: str) -> Server:
    """``reloop serve [args]`` in a subprocess on a free port; waits until /readyz answers 200."""
    port = free_port()
    env = {
        **os.environ,
        "RELOOP_DATA_DIR": str(settings.data_dir),
        "RELOOP_ADMIN_TOKEN": TOKEN,
        "RELOOP_WATCH_INTERVAL_S": str(settings.watch_interval_s),
        "RELOOP_ARCHIVE_FLUSH_SECONDS": str(settings.archive_flush_seconds),
        "RELOOP_ARCHIVE_FLUSH_ROWS": str(settings.archive_flush_rows),
        "RELOOP_MAX_BATCH": str(settings.max_batch),
        "RELOOP_THREADS": "1",
        **env_extra,
    }
    log_path = tmp_path / f"server-{port}.log"
    fh = log_path.open("w")
    proc = subprocess.Popen(
        serve_argv(port, *args),
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/readyz", timeout=60, proc=proc, log=log_path.read_text)
    except AssertionError:
        proc.kill()
        raise
    return Server(proc, url, log_path)
