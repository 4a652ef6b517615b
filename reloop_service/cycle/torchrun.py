"""One cycle on N ranks: the torchrun entry point, and the runner that launches it.

Every way to run a cycle ends in ``run_cycle`` and returns a ``CycleOutcome``: ``runner_for(nproc)``
is ``run_cycle`` itself for one process and ``TorchrunRunner`` for N local ranks, so the CLI, the
scheduler and backfill share one N-rank path. Under torchrun (one host with ``--nproc N``, or many
hosts with ``torchrun … -m reloop_service.cycle.torchrun cycle --date D``) rank 0 runs the cycle
with a ``DDPTrainer`` (``training.distributed``); the other ranks ``follow()`` it, training their
shard of each staged day, until rank 0 sends them its outcome. Nothing passes through module state.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from reloop_service.config import Settings
from reloop_service.cycle.run import CycleOutcome, StepHook, run_cycle
from reloop_service.data.period import Period

log = logging.getLogger(__name__)

OUTCOME_PREFIX = "RELOOP_OUTCOME "
ENTRY_MODULE = "reloop_service.cycle.torchrun"


class CycleRunner(Protocol):
    """``run_cycle``'s shape: what the CLI, the scheduler and backfill call for one date."""

    def __call__(
        self,
        *,
        settings: Settings,
        cycle_date: date | Period,
        force: bool = False,
        actor: str = "scheduler",
        stop: threading.Event | None = None,
        hook: StepHook | None = None,
    ) -> CycleOutcome: ...


def runner_for(nproc: int) -> CycleRunner:
    """``run_cycle`` in this process for one rank, ``TorchrunRunner(nproc)`` for more."""
    return run_cycle if nproc <= 1 else TorchrunRunner(nproc)


# ---------------------------------------------------------------------------------- the launcher
def torchrun_command(
    *,
    nproc: int,
    cycle_date: date | Period,
    force: bool = False,
    data_dir: Path | str | None = None,
    actor: str = "cli",
) -> list[str]:
    """The one-host ``torchrun`` command line that ``reloop cycle run --nproc N`` executes."""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        ENTRY_MODULE,
        "cycle",
        "--date",
        cycle_date.isoformat(),
        "--actor",
        actor,
        "--json",
    ]
    if isinstance(cycle_date, Period) and cycle_date.count > 1:
        argv += ["--count", str(cycle_date.count)]
    if force:
        argv.append("--force")
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return argv


class TorchrunRunner:
    """Runs one cycle on ``nproc`` local ranks through torchrun and returns rank 0's ``CycleOutcome``.

    The ranks read their settings from the environment plus ``--data-dir``, so the caller's
    ``settings`` travel as ``RELOOP_*`` variables. ``stop`` sends SIGTERM to torchrun, which passes
    it to the ranks: rank 0's cycle then ends at the next step boundary, as in one process.
    ``hook`` is not called (the steps run in another process).
    """

    def __init__(self, nproc: int) -> None:
        self.nproc = nproc

    def __call__(
        self,
        *,
        settings: Settings,
        cycle_date: date | Period,
        force: bool = False,
        actor: str = "scheduler",
        stop: threading.Event | None = None,
        hook: StepHook | None = None,
    ) -> CycleOutcome:
        argv = torchrun_command(
            nproc=self.nproc, cycle_date=cycle_date, force=force, data_dir=settings.data_dir, actor=actor
        )
        env = {**os.environ, **settings_env(settings)}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.nproc)))
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        watcher = None
        if stop is not None:
            watcher = threading.Thread(target=_forward_stop, args=(stop, proc), daemon=True)
            watcher.start()
        out, _ = proc.communicate()
        if watcher is not None:
            watcher.join()  # it sees the process gone within one poll
        outcome = None
        for line in out.splitlines():
            if line.startswith(OUTCOME_PREFIX):
                outcome = CycleOutcome.from_dict(json.loads(line.removeprefix(OUTCOME_PREFIX)))
        if outcome is None:
            return CycleOutcome(
                cycle_date=cycle_date.day if isinstance(cycle_date, Period) else cycle_date,
                status="failed",
                reason="error",
                error=f"torchrun exited with {proc.returncode} before rank 0 reported an outcome",
                world_size=self.nproc,
            )
        return outcome


def _forward_stop(stop: threading.Event, proc: subprocess.Popen[str]) -> None:
    while proc.poll() is None:
        if stop.wait(0.5):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            return


def settings_env(settings: Settings) -> dict[str, str]:
    """The caller's explicitly set settings as ``RELOOP_*`` variables for the ranks' processes."""
    env: dict[str, str] = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, dict | list | tuple):
            text = json.dumps(value, default=str)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"RELOOP_{name.upper()}"] = text
    return env


# ------------------------------------------------------------------------------ the ranks' side
def run_cycle_distributed(
    *,
    settings: Settings,
    cycle_date: date | Period,
    force: bool = False,
    actor: str = "torchrun",
    stop: threading.Event | None = None,
) -> CycleOutcome:
    """The torchrun entry point's work: rank 0 runs the cycle, the others train when it asks.

    Every rank returns rank 0's outcome, with ``world_size`` and every rank's report.
    """
    import torch

    from reloop_service.training.distributed import DDPTrainer, init_distributed, shutdown

    ctx = init_distributed()
    if settings.threads is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    trainer = DDPTrainer(
        ctx, staging_uri=settings.resolved_artifacts_uri, storage_options=settings.storage_options()
    )
    try:
        if not ctx.is_main:
            return CycleOutcome.from_dict(trainer.follow())
        outcome = CycleOutcome(
            cycle_date=cycle_date.day if isinstance(cycle_date, Period) else cycle_date,
            status="failed",
            reason="error",
            error="rank 0 stopped before the cycle ended",
            world_size=ctx.world_size,
        )
        try:
            outcome = run_cycle(
                settings=settings, cycle_date=cycle_date, force=force, actor=actor, stop=stop, trainer=trainer
            )
            outcome = replace(outcome, world_size=ctx.world_size, ranks=trainer.ranks)
        except BaseException as exc:
            outcome = replace(outcome, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if ctx.active:
                trainer.finish(outcome.to_dict())
        return outcome
    finally:
        shutdown(ctx)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``torchrun [--nnodes …] -m reloop_service.cycle.torchrun cycle --date D``."""
    import argparse

    from reloop_service.clitools import load_settings

    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY_MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    cyc = sub.add_parser(
        "cycle", help="Run one daily cycle with data-parallel training (launch with torchrun)."
    )
    cyc.add_argument("--date", required=True, help="The period's start: 2024-05-01 or 2024-05-01T13.")
    cyc.add_argument("--count", type=int, default=1, help="Periods merged into this cycle (catch-up).")
    cyc.add_argument("--force", action="store_true")
    cyc.add_argument("--actor", default="torchrun")
    cyc.add_argument("--data-dir", default=None)
    cyc.add_argument("--json", action="store_true", help="Print rank 0's outcome as one JSON line.")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s rank%(process)d %(name)s: %(message)s"
    )
    settings = load_settings(data_dir=None if args.data_dir is None else Path(args.data_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, _stopper(stop))
    period = Period.parse(args.date, settings.period_step).merged(args.count)
    outcome = run_cycle_distributed(
        settings=settings, cycle_date=period, force=args.force, actor=args.actor, stop=stop
    )
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        print(OUTCOME_PREFIX + json.dumps(outcome.to_dict(), default=str), flush=True)
    return 0 if outcome.status in ("succeeded", "skipped") else 1


def _stopper(stop: threading.Event) -> Callable[[int, Any], None]:
    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    return handler


if __name__ == "__main__":
    raise SystemExit(main())
