"""Builders and multi-process workers shared by the registry tests.

Spawned worker processes import the workers as ``tests.registry.registry_tools`` (they inherit the
parent's ``sys.path``, which holds the repository root).
"""

from __future__ import annotations

import hashlib
from datetime import date
from multiprocessing.synchronize import Barrier
from typing import Any

from sqlalchemy import Engine

from reloop_service.registry import cycle_runs, store
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import make_engine, run_transaction, session_scope
from reloop_service.registry.entities import ArtifactRef, ModelVersion
from reloop_service.registry.errors import PromotionConflictError, RegistryError


def fake_ref(seed: str) -> ArtifactRef:
    """An artifact reference with a real sha256 of ``seed`` (the store only checks its shape)."""
    data = seed.encode()
    return ArtifactRef(uri=f"/artifacts/{seed}.ckpt", sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def real_ref(artifacts: ArtifactStore, seed: int) -> ArtifactRef:
    """A real, loadable tiny checkpoint stored in ``artifacts`` (promote and rollback load it first)."""
    import torch

    from reloop_service.data.spec import default_spec
    from reloop_service.training.checkpoint import Checkpoint, checkpoint_to_bytes
    from reloop_service.training.models import build_model

    torch.manual_seed(seed)
    spec = default_spec()
    spec = spec.with_numeric_stats({f.name: (0.0, 1.0) for f in spec.numeric})
    model = build_model("dnn", spec, embedding_dim=2, hidden=[4])
    ckpt = Checkpoint(
        model_name="dnn",
        model_args=model.model_args,
        state_dict=model.state_dict(),
        spec=spec.to_dict(),
        loss="bce",
        loss_params={},
        seed=seed,
    )
    return artifacts.put(checkpoint_to_bytes(ckpt), f"model-{seed}.pt")


def register(
    engine: Engine, *, parent: int | None = None, artifacts: ArtifactStore | None = None, **kwargs: Any
) -> ModelVersion:
    """Register one version in its own transaction (a real artifact when ``artifacts`` is given)."""
    with session_scope(engine) as session:
        count = len(store.list_versions(session, model_name="ctr", limit=10_000))
        ref = real_ref(artifacts, count + 1) if artifacts is not None else fake_ref(f"v{count + 1}")
        return store.register_version(
            session, artifact=ref, actor="test", parent_version=parent, **{"model_name": "ctr", **kwargs}
        )


def production_version(engine: Engine) -> int | None:
    with session_scope(engine, readonly=True) as session:
        production = store.get_production(session, model_name="ctr")
        return production.version.version if production else None


def promote(engine: Engine, version: int, *, reason: str = "test") -> None:
    current = production_version(engine)
    with session_scope(engine) as session:
        store.promote(
            session, model_name="ctr", version=version, actor="test", reason=reason, expected_current=current
        )


def promote_rounds(
    url: str, versions: tuple[int, ...], rounds: int, barrier: Barrier, name: str
) -> list[str]:
    """Each round: read production, wait for the other process, promote one of ``versions`` with a CAS."""
    engine = make_engine(url)
    outcomes: list[str] = []
    try:
        for _ in range(rounds):
            with session_scope(engine, readonly=True) as session:
                seen = store.get_production(session, model_name="ctr")
            current = seen.version.version if seen else None
            target = next(v for v in versions if v != current)
            barrier.wait(timeout=60)
            try:
                with session_scope(engine) as session:
                    store.promote(
                        session,
                        model_name="ctr",
                        version=target,
                        actor=name,
                        reason="race",
                        expected_current=current,
                    )
                outcomes.append(f"won:{target}")
            except PromotionConflictError:
                outcomes.append("conflict")
            barrier.wait(timeout=60)
    finally:
        engine.dispose()
    return outcomes


def promote_unconditionally(
    url: str, versions: tuple[int, ...], rounds: int, barrier: Barrier, name: str
) -> list[str]:
    """Each round: wait for the other process, then promote the next of ``versions`` without an expectation
    (what the admin API does for a body without ``expected_current``), each in its own retried transaction."""
    engine = make_engine(url)
    outcomes: list[str] = []
    try:
        for i in range(rounds):
            target = versions[i % len(versions)]
            barrier.wait(timeout=60)
            try:
                production = run_transaction(
                    engine,
                    lambda session, target=target: store.promote(
                        session,
                        model_name="ctr",
                        version=target,
                        actor=name,
                        reason="race",
                        expected_current=None,
                        unconditional=True,
                    ),
                )
                outcomes.append(f"ok:{production.version.version}")
            except RegistryError as err:
                outcomes.append(f"{type(err).__name__}: {err}")
    finally:
        engine.dispose()
    return outcomes


def register_many(url: str, count: int, barrier: Barrier, name: str) -> list[int]:
    """Register ``count`` versions as fast as possible, retrying taken numbers in fresh transactions."""
    engine = make_engine(url)
    numbers: list[int] = []
    try:
        barrier.wait(timeout=60)
        for i in range(count):
            version = store.register_version_with_retry(
                engine, model_name="ctr", artifact=fake_ref(f"{name}-{i}"), actor=name, reason="race"
            )
            numbers.append(version.version)
    finally:
        engine.dispose()
    return numbers


def claim_rounds(url: str, days: list[date], barrier: Barrier, name: str) -> list[tuple[str, bool, str]]:
    """For each day, wait for the other process, then try to claim it."""
    engine = make_engine(url)
    results: list[tuple[str, bool, str]] = []
    try:
        for day in days:
            barrier.wait(timeout=60)
            with session_scope(engine) as session:
                claim = cycle_runs.claim_cycle(
                    session, model_name="ctr", cycle_date=day, owner=name, stale_after_s=300
                )
            results.append((day.isoformat(), claim.acquired, claim.reason))
    finally:
        engine.dispose()
    return results


def _child(target: Any, args: tuple[Any, ...], barrier: Barrier, name: str, results: Any) -> None:
    try:
        results.put((name, "ok", target(*args, barrier, name)))
    except BaseException as err:
        barrier.abort()
        results.put((name, "error", repr(err)))


def run_pair(target: Any, args_a: tuple[Any, ...], args_b: tuple[Any, ...]) -> tuple[Any, Any]:
    """Run ``target(*args, barrier, name)`` in two forked processes and return both results.

    ``fork`` keeps the start cheap (no re-import); each child opens its own engine from the URL and never
    touches the parent's pooled connections.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(target, args, barrier, name, results))
        for name, args in (("proc-a", args_a), ("proc-b", args_b))
    ]
    for proc in procs:
        proc.start()
    try:
        got = dict((name, (state, value)) for name, state, value in (results.get(timeout=240) for _ in procs))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    for name, (state, value) in got.items():
        assert state == "ok", f"{name} failed: {value}"
    return got["proc-a"][1], got["proc-b"][1]
