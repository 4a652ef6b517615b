"""Real ``reloop cycle run`` processes: a kill -9 mid-training, a take-over, the sweep of what the crash left,
``reloop gc``, and concurrent forced runs of one date."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import date
from pathlib import Path

from . import faultkit as fk

DAY1, DAY2 = date(2024, 3, 1), date(2024, 3, 2)
EXIT_HELD = 3


def _versions(reg: fk.Registry) -> list[int]:
    from reloop_service.registry import store
    from reloop_service.registry.db import session_scope

    with session_scope(reg.engine, readonly=True) as session:
        return sorted(v.version for v in store.list_versions(session, model_name="ctr", limit=1000))


def test_kill_9_mid_training_then_rerun_takes_over_and_sweeps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'registry.db'}"
    reg = fk.Registry(url, tmp_path / "data")
    try:
        fk.write_days(tmp_path, [DAY1, DAY2])
        env = fk.cycle_env(tmp_path, url)
        first = fk.reloop("cycle", "run", "--date", DAY1.isoformat(), env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert reg.production() == 1

        # a long training (many epochs), killed with SIGKILL once the step before training has logged
        log = tmp_path / "killed.log"
        proc = fk.spawn(
            "cycle", "run", "--date", DAY2.isoformat(), env={**env, "RELOOP_EPOCHS": "2000"}, log=log
        )
        try:
            fk.wait_for(lambda: "priors:" in log.read_text(), timeout=60, what="the cycle to reach training")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert "trained dnn" not in log.read_text()  # it died mid-training
        work = tmp_path / "data" / "work"
        left = [p.name for p in work.iterdir()]
        assert len(left) == 1 and left[0].startswith("cycle-2024-03-02-run2-a1-")  # the crash's leftovers
        assert _versions(reg) == [1] and reg.production() == 1  # registry unchanged

        # the next run: held while the dead owner's heartbeat is fresh (exit 3, nothing ran), then takes over
        def rerun() -> subprocess.CompletedProcess[str] | None:
            done = fk.reloop("cycle", "run", "--date", DAY2.isoformat(), env=env)
            if done.returncode == EXIT_HELD:
                assert "skipped (held" in done.stdout, done.stdout
                return None
            return done

        done = fk.wait_for(rerun, timeout=90, what="a rerun that takes over", every=0.5)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded version 2" in done.stdout
        # the dead attempt's folder goes at the next sweep: the cycle's own (once it calls
        # cycle.gc.sweep_quietly before each run) or `reloop gc`, and either says what it removed
        swept_by_cycle = not (work / left[0]).exists()
        if swept_by_cycle:
            assert "stale work folder" in done.stderr and left[0] in done.stderr
        assert _versions(reg) == [1, 2] and reg.production() == 2
        from reloop_service.registry import cycle_runs
        from reloop_service.registry.db import session_scope

        with session_scope(reg.engine, readonly=True) as session:
            run = cycle_runs.get_cycle_run(session, model_name="ctr", cycle_date=DAY2)
        assert run.status.value == "succeeded" and run.attempt == 2

        # `reloop gc`: an artifact no version references (a registration that died after writing it) goes
        # once it is older than the grace period; a young one (a registration in flight) stays
        orphan_old = reg.artifacts.put(b"orphan of a failed registration", "ctr/orphan-old.ckpt")
        orphan_new = reg.artifacts.put(b"artifact of a registration in flight", "ctr/in-flight.ckpt")
        past = time.time() - 7200
        os.utime(orphan_old.uri, (past, past))
        dry = fk.reloop("gc", "--dry-run", "--json", env=env)
        assert dry.returncode == 0 and json.loads(dry.stdout)["artifacts"]["removed"] == [orphan_old.uri]
        assert Path(orphan_old.uri).exists()
        gc = fk.reloop("gc", "--json", env=env)
        assert gc.returncode == 0, gc.stderr
        report = json.loads(gc.stdout)
        assert report["workdirs"]["removed"] == ([] if swept_by_cycle else [str(work / left[0])])
        assert list(work.iterdir()) == []
        assert report["artifacts"]["removed"] == [orphan_old.uri]
        assert report["artifacts"]["kept_referenced"] == 2 and report["artifacts"]["kept_young"] == 1
        assert not Path(orphan_old.uri).exists() and Path(orphan_new.uri).exists()
        for version in (1, 2):  # what versions reference is intact
            assert reg.artifact_path(version).exists()
    finally:
        reg.close()


def test_concurrent_forced_runs_produce_exactly_one_run(db_url: str, tmp_path: Path) -> None:
    """Three forced runs of one date at once. Whichever claims first is frozen (SIGSTOP) as soon as it has
    claimed, so the other two certainly try while it runs, however slowly they start on a loaded machine;
    they must be held (exit 3). Then it is resumed (SIGCONT) and is the only run."""
    reg = fk.Registry(db_url, tmp_path / "data")
    try:
        fk.write_days(tmp_path, [DAY1])
        # no heartbeat while it is frozen: it must not hold a database lock then
        env = fk.cycle_env(tmp_path, db_url, stale_after_s=120, heartbeat_s=60)
        args = ("cycle", "run", "--date", DAY1.isoformat(), "--force")
        logs = [tmp_path / f"run{i}.log" for i in range(3)]
        procs = [fk.spawn(*args, env=env, log=log) for log in logs]

        def claimed() -> int | None:
            return next((i for i, log in enumerate(logs) if "started by cli" in log.read_text()), None)

        winner = fk.wait_for(lambda: (i := claimed()) is not None and (i,), timeout=120, what="a claim")[0]
        os.kill(procs[winner].pid, signal.SIGSTOP)
        try:
            others = [p.wait(timeout=180) for i, p in enumerate(procs) if i != winner]
        finally:
            os.kill(procs[winner].pid, signal.SIGCONT)
        texts = [log.read_text() for log in logs]
        assert others == [EXIT_HELD, EXIT_HELD], texts
        assert procs[winner].wait(timeout=180) == 0, texts[winner]
        assert sum("succeeded version 1" in text for text in (log.read_text() for log in logs)) == 1
        assert _versions(reg) == [1] and reg.production() == 1
    finally:
        reg.close()


def test_cli_and_api_triggers_racing_produce_exactly_one_run(tmp_path: Path) -> None:
    """Two CLI runs and an admin-API trigger of one new date at once: exactly one trains; the others are
    held (exit 3, or 409) or, arriving after it finished, find the date done (exit 0, nothing run)."""
    url = f"sqlite:///{tmp_path / 'data' / 'registry.db'}"
    reg = fk.Registry(url, tmp_path / "data")
    try:
        fk.write_days(tmp_path, [DAY1])
        env = fk.cycle_env(tmp_path, url, epochs=40)
        with fk.serving(env, tmp_path, ready=False) as server:  # no model yet: /readyz is 503
            args = ("cycle", "run", "--date", DAY1.isoformat())
            logs = [tmp_path / f"cli{i}.log" for i in range(2)]
            procs = [fk.spawn(*args, env=env, log=log) for log in logs]
            api = server.post("/v1/admin/cycles", json={"date": DAY1.isoformat()}, headers=fk.AUTH)
            codes = [p.wait(timeout=180) for p in procs]
            texts = [log.read_text() for log in logs]
            assert api.status_code in (202, 409), api.text
            assert set(codes) <= {0, EXIT_HELD}, texts
            ran = sum("succeeded version 1" in text for text in texts) + (api.status_code == 202)
            assert ran == 1, (api.text, codes, texts)

            def finished() -> bool:
                from reloop_service.registry import cycle_runs
                from reloop_service.registry.db import session_scope

                with session_scope(reg.engine, readonly=True) as session:
                    run = cycle_runs.get_cycle_run(session, model_name="ctr", cycle_date=DAY1)
                return run.status.value == "succeeded" and run.attempt == 1

            fk.wait_for(finished, timeout=120, what="the one run to succeed", every=0.2)
        assert _versions(reg) == [1] and reg.production() == 1
    finally:
        reg.close()
