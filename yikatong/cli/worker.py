"""``ykt worker``: run the periodic jobs (:mod:`issuance.worker`) every interval until stopped
(SIGTERM or Ctrl-C end it after the current job); ``--once`` runs one round (cron)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import typer
from rich.console import Console

from yikatong.cli.db import settings

out = Console()


def worker(
    once: bool = typer.Option(False, "--once", help="run one round and exit (for cron)"),
    interval: float | None = typer.Option(
        None, "--interval", min=0.1, help="seconds between rounds (default: [worker])"
    ),
    seal: bool | None = typer.Option(
        None, "--seal/--no-seal", help="seal the audit chain each round (default: [worker])"
    ),
    unsigned: bool = typer.Option(
        False, "--unsigned", help="unsigned audit checkpoints (development without an HSM)"
    ),
) -> None:
    """Periodic jobs: lapse provisional losses, cancel overdue formal losses (where the city
    does so), expire cards, drain the notification outbox, seal the audit chain. Several
    workers may run at once."""
    from issuance.db import make_engine, make_sessionmaker
    from issuance.services.outbox import close_sink
    from issuance.worker import Worker
    from yikatong.wiring import outbox_sink

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = settings()
    do_seal = cfg.worker.seal_audit if seal is None else seal
    signer = None
    if do_seal and cfg.worker.sign_checkpoints and not unsigned:
        from yikatong.cli.audit import hsm_signer

        signer = hsm_signer()
    engine = make_engine(cfg)
    sink = outbox_sink(cfg)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        w = Worker(cfg, make_sessionmaker(engine), sink=sink, signer=signer, seal=do_seal)
        if once:
            report = w.run_round()
            out.print(f"worker round: {report.summary()}")
            if report.failed:
                raise typer.Exit(1)
            return
        out.print(
            f"worker: a round every {interval or cfg.worker.interval_seconds:g} s "
            f"(audit sealing {'on' if do_seal else 'off'}); Ctrl-C or SIGTERM stops it"
        )
        try:
            rounds = w.run(interval=interval, stop=stop)
        except KeyboardInterrupt:
            rounds = -1
        out.print("worker stopped" + (f" after {rounds} rounds" if rounds >= 0 else ""))
    finally:
        signal.signal(signal.SIGTERM, previous)
        close_sink(sink)
        engine.dispose()


TOP_LEVEL_COMMANDS = {"worker": worker}
