"""The local stack: Airflow + the Adobe emulator + an SMTP sink, and a stream of demo triggers.

Run through ``bin/demo`` (which prepares the venv first). Everything lives under ``.local/``:

    .local/airflow/     AIRFLOW_HOME: metadata DB, logs, the store (triggerflow.db)
    .local/outbox/      every email the SMTP sink received, one .eml file each
    .local/logs/        emulator, SMTP sink and Airflow output
    .local/demo_routing.yaml   include/routing.yaml with a demo-sized dedup window (see below)

The demo keeps emails arriving for as long as it runs: its triggers go round the 200 demo customers
(devstack/demo_profiles.csv) in turn, naming products of the demo catalogue (devstack/demo_catalog.csv,
loaded with the profiles: the shipped routes show products from it), and the demo routing's dedup
window is shorter than one round, so a customer's next trigger is a new email. The rules still
show: a few triggers repeat a recent one (``duplicate``), some customers opted out
(``suppressed``), some shoppers are unknown (``unmatched``) and a few triggers carry no shopper id
(``quarantined``). The progress line counts what was decided since the demo started.

Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import requests
import yaml

from devstack.messages import DEMO_CATALOG_CSV
from devstack.signals import Stopped, ignore_stop_signals, stop_on_signals

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / ".local"
AIRFLOW_HOME = LOCAL / "airflow"
OUTBOX = LOCAL / "outbox"
LOGS = LOCAL / "logs"
EMULATOR_PORT = 8765  # fixed: airflow_settings.yaml points the connections here
SMTP_PORT = 1025
ADMIN_USER, ADMIN_PASSWORD = "admin", "admin"
DEMO_PROFILES = ROOT / "devstack" / "demo_profiles.csv"
# every SKU the demo triggers name: the shipped routes show products from the catalogue, and a
# trigger whose SKUs it does not know gets no email
DEMO_CATALOG_FILE = DEMO_CATALOG_CSV
DEMO_ROUTING = LOCAL / "demo_routing.yaml"
# Shares of the demo's triggers that show the rules at work (the rest are new emails).
REPEAT_SHARE = 0.05  # the same trigger for a customer who just got it: duplicate
UNKNOWN_SHARE = 0.12  # a shopper id no profile has: unmatched
NO_SHOPPER_SHARE = 0.03  # no shopper id at all: quarantined (the route's identity is missing)
CART_SHARE = 0.75  # the rest are browse abandonments


def say(step: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {step:<8} {text}", flush=True)


def airflow_env(api_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # The demo DAG should start running without a click; production keeps the default.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(AIRFLOW_HOME / "passwords.json"),
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            # Pick up DAG edits quickly while developing.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "15",
            "GX_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    # trigger_maintenance's `airflow db clean` reads the metadata URL from connection
    # airflow_metadata (Airflow 3 hides sql_alchemy_conn from tasks); this variable wins over the
    # Astro-local entry of airflow_settings.yaml.
    metadata_url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}"
    env["AIRFLOW_CONN_AIRFLOW_METADATA"] = json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": metadata_url}})
    return env


def run_step(step: str, what: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
    say(step, what)
    started = time.monotonic()
    with log.open("ab") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"error: {what} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    say(step, f"done in {time.monotonic() - started:.1f} s")


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            raise SystemExit(f"error: airflow exited with {proc.returncode}; last lines of {log}:\n" + "\n".join(tail))
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise SystemExit(f"error: {url} did not answer within {timeout:.0f} s; see {log}")


class DemoKind(StrEnum):
    """What a demo trigger is made to show."""

    NEW = "new"  # the next customer in turn: a new email (or suppressed, if they opted out)
    REPEAT = "repeat"  # the same trigger for a customer who just got it: duplicate
    UNKNOWN = "unknown"  # a shopper id no profile has: unmatched
    NO_SHOPPER = "no-shopper"  # no shopper id at all: quarantined


@dataclass
class DemoTriggers:
    """The demo's trigger stream: customers in turn (shuffled once), so no customer repeats within a
    round, plus a few repeats, unknown shoppers and triggers without a shopper id."""

    shoppers: list[str]
    rng: random.Random
    #: how many of each kind were made
    made: collections.Counter[DemoKind] = field(default_factory=collections.Counter)
    _order: list[str] = field(default_factory=list)
    _turn: int = 0
    # (shopper, trigger id) of the latest new triggers: what a repeat repeats
    _recent: collections.deque[tuple[str, str]] = field(default_factory=lambda: collections.deque(maxlen=20))

    def batch(self, size: int, *, at_ms: int | None = None) -> list[dict[str, Any]]:
        return [message for _, message in self.kinds_and_messages(size, at_ms=at_ms)]

    def kinds_and_messages(self, size: int, *, at_ms: int | None = None) -> list[tuple[DemoKind, dict[str, Any]]]:
        """``size`` triggers with their kind; ``at_ms`` is their trigger time (default now)."""
        from devstack.messages import (
            BROWSE_ABANDONMENT_TRIGGER_ID,
            CART_ABANDONMENT_TRIGGER_ID,
            DEMO_CATALOG,
            trigger_message,
        )

        messages = []
        for _ in range(size):
            roll = self.rng.random()
            trigger_id = CART_ABANDONMENT_TRIGGER_ID if self.rng.random() < CART_SHARE else BROWSE_ABANDONMENT_TRIGGER_ID
            shopper: str | None
            if roll < REPEAT_SHARE and self._recent:
                kind = DemoKind.REPEAT
                shopper, trigger_id = self.rng.choice(list(self._recent))
            elif roll < REPEAT_SHARE + UNKNOWN_SHARE:
                kind, shopper = DemoKind.UNKNOWN, f"SHOP-UNKNOWN-{self.rng.randint(1, 999):03d}"
            elif roll < REPEAT_SHARE + UNKNOWN_SHARE + NO_SHOPPER_SHARE:
                kind, shopper = DemoKind.NO_SHOPPER, None
            else:
                kind, shopper = DemoKind.NEW, self._next_customer()
                self._recent.append((shopper, trigger_id))
            self.made[kind] += 1
            skus = self.rng.sample(sorted(DEMO_CATALOG), k=self.rng.randint(1, 3))
            message = trigger_message(trigger_id=trigger_id, shopper_id=shopper, products=skus, triggered_at_ms=at_ms)
            messages.append((kind, message))
        return messages

    def _next_customer(self) -> str:
        # One shuffled order, kept for every round: reshuffling would let a customer at the end of
        # one round come first in the next, back to back, inside the dedup window.
        if not self._order:
            self._order = self.rng.sample(self.shoppers, k=len(self.shoppers))
        customer = self._order[self._turn % len(self._order)]
        self._turn += 1
        return customer


def demo_shoppers(path: Path = DEMO_PROFILES) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["shopper_id"] for row in csv.DictReader(fh) if row.get("shopper_id")]


def demo_dedup_window_s(customers: int, triggers_per_s: float) -> int:
    """A dedup window shorter than one round of the customers (half of it, between 1 and 10 minutes),
    so a customer's next trigger in turn is a new email and a deliberate repeat is a duplicate."""
    known_per_s = max(triggers_per_s * (1 - UNKNOWN_SHARE - NO_SHOPPER_SHARE - REPEAT_SHARE), 1e-9)
    return int(max(60, min(600, customers / known_per_s / 2)))


def write_demo_routing(target: Path, dedup_window_s: int, source: Path | None = None) -> Path:
    """include/routing.yaml (the shipped routes, unchanged) with ``defaults.rules.dedup_window`` set for
    the demo; checked by the real loader before Airflow starts."""
    from include.triggerflow import DEFAULT_ROUTING_FILE
    from include.triggerflow.config import load_routing

    document = yaml.safe_load((source or DEFAULT_ROUTING_FILE).read_text(encoding="utf-8"))
    rules = document.setdefault("defaults", {}).setdefault("rules", {})
    rules["dedup_window"] = f"{dedup_window_s}s"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        "# Written by devstack/run_local.py for bin/demo: include/routing.yaml with a dedup window shorter\n"
        "# than one round of the demo customers, so the demo keeps sending. Do not edit; edit routing.yaml.\n"
        + yaml.safe_dump(document, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    load_routing(target)  # a mistake here must stop the demo now, not fail every run later
    return target


#: What the progress line reports, in this order.
PROGRESS_KEYS = ("sent", "duplicate", "suppressed", "unmatched", "quarantined", "waiting")


def demo_progress(engine: Any, since: datetime) -> dict[str, int]:
    """What the pipeline decided since ``since``: emails sent, decisions that sent nothing, events
    quarantined, and emails still waiting in the ledger (pending, deferred, ambiguous...)."""
    from sqlalchemy import func, select

    from include.triggerflow.store.schema import decision, quarantine, send

    with engine.connect() as conn:
        decisions = dict(
            conn.execute(
                select(decision.c.decision, func.count()).where(decision.c.decided_at >= since).group_by(decision.c.decision)
            ).all()
        )
        states = dict(
            conn.execute(select(send.c.state, func.count()).where(send.c.created_at >= since).group_by(send.c.state)).all()
        )
        quarantined = conn.execute(
            select(func.count()).select_from(quarantine).where(quarantine.c.quarantined_at >= since)
        ).scalar_one()
    return {
        "sent": int(states.get("sent", 0)),
        "duplicate": int(decisions.get("duplicate", 0)),
        "suppressed": sum(int(n) for k, n in decisions.items() if str(k).startswith("suppressed")),
        "unmatched": int(decisions.get("unmatched", 0)),
        "quarantined": int(quarantined or 0),
        "waiting": sum(int(n) for k, n in states.items() if k not in ("sent", "failed")),
    }


def progress_line(injected: int, progress: dict[str, int], outbox: int) -> str:
    decided = ", ".join(f"{key} {progress.get(key, 0)}" for key in PROGRESS_KEYS)
    return f"{injected} triggers injected; decided since start: {decided}; {outbox} emails in the outbox"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between demo trigger bursts")
    parser.add_argument("--burst", type=int, default=3, help="triggers per burst")
    parser.add_argument("--fresh", action="store_true", help="delete .local/ first (new DB, empty outbox)")
    parser.add_argument("--stop-after", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    args = parser.parse_args(argv)
    stop_on_signals()

    if args.fresh and LOCAL.exists():
        shutil.rmtree(LOCAL)
    for folder in (AIRFLOW_HOME, OUTBOX, LOGS):
        folder.mkdir(parents=True, exist_ok=True)
    for port, what in ((EMULATOR_PORT, "Adobe emulator"), (SMTP_PORT, "SMTP sink"), (args.api_port, "Airflow API server")):
        if not port_free(port):
            raise SystemExit(f"error: port {port} (for the {what}) is in use; stop whatever holds it and retry")
    (AIRFLOW_HOME / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))

    shoppers = demo_shoppers()
    window_s = demo_dedup_window_s(len(shoppers), args.burst / max(args.every, 0.1))
    env = airflow_env(args.api_port)
    env["TRIGGERFLOW_ROUTING_FILE"] = str(write_demo_routing(DEMO_ROUTING, window_s))
    os.environ.update({k: env[k] for k in ("AIRFLOW_HOME", "PYTHONPATH")})
    py = sys.executable
    setup_log = LOGS / "setup.log"
    run_step("[1/6]", "preparing the Airflow metadata DB (SQLite)", [py, "-m", "airflow", "db", "migrate"], env, setup_log)
    run_step("[2/6]", "applying airflow_settings.yaml (connections, pools)", [py, "-m", "devstack.apply_settings", "airflow_settings.yaml"], env, setup_log)
    store_url = f"sqlite:///{AIRFLOW_HOME / 'triggerflow.db'}"
    run_step(
        "[3/6]",
        "creating the store and loading demo profiles",
        [py, "-m", "include.triggerflow.cli", "--db-url", store_url, "load-profiles", str(DEMO_PROFILES)],
        env,
        setup_log,
    )
    run_step(
        "[3/6]",
        "loading the demo product catalogue",
        [py, "-m", "include.triggerflow.cli", "--db-url", store_url, "catalog", "load", str(DEMO_CATALOG_FILE)],
        env,
        setup_log,
    )

    from devstack.processes import start_emulator, start_smtp_sink

    stack = contextlib.ExitStack()
    airflow_proc: subprocess.Popen | None = None
    try:
        say("[4/6]", f"starting the Adobe emulator on :{EMULATOR_PORT} and the SMTP sink on :{SMTP_PORT}")
        # Pipeline offsets from a clock, so a restarted emulator never re-issues offsets the store
        # already landed (journal positions are clock-based in the emulator itself).
        emu = stack.enter_context(
            start_emulator(port=EMULATOR_PORT, log_path=LOGS / "emulator.log", first_offset=int(time.time() - 1.7e9) * 1000)
        )
        smtp = stack.enter_context(start_smtp_sink(OUTBOX, port=SMTP_PORT, log_path=LOGS / "smtp.log"))

        say("[5/6]", "starting Airflow (airflow standalone: api-server, scheduler, dag-processor, triggerer)")
        airflow_log = LOGS / "airflow.log"
        airflow_proc = subprocess.Popen(
            [py, "-m", "airflow", "standalone"],
            cwd=ROOT,
            env=env,
            stdout=airflow_log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so Ctrl-C handling stops all of it
        )
        ui = f"http://127.0.0.1:{args.api_port}"
        wait_http(f"{ui}/api/v2/monitor/health", 180, airflow_proc, airflow_log)
        print(
            "\n"
            f"  Airflow UI      {ui}   (login {ADMIN_USER} / {ADMIN_PASSWORD})\n"
            f"  DAG             {ui}/dags/trigger_emails  (runs every minute, unpaused)\n"
            f"  Emails arrive   {OUTBOX}/*.eml\n"
            f"  Logs            {LOGS}/\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )

        say(
            "[6/6]",
            f"injecting {args.burst} demo triggers every {args.every:.0f} s, round {len(shoppers)} customers "
            f"(demo dedup window {window_s} s: {DEMO_ROUTING.relative_to(ROOT)})",
        )
        from include.triggerflow.store.engines import get_engine

        store = get_engine(store_url)
        triggers = DemoTriggers(shoppers, random.Random(42))
        since = datetime.now(UTC)
        injected = 0
        started = time.monotonic()
        next_report = time.monotonic() + 30  # the first run needs a minute: nothing to report before
        while not args.stop_after or time.monotonic() - started < args.stop_after:
            if airflow_proc.poll() is not None:
                raise SystemExit(f"error: airflow exited with {airflow_proc.returncode}; see {airflow_log}")
            emu.client.publish(triggers.batch(args.burst))
            injected += args.burst
            if time.monotonic() >= next_report:
                say("demo", progress_line(injected, _progress_or_empty(store, since), len(smtp.eml_paths())))
                next_report = time.monotonic() + 30
            time.sleep(args.every)
        say("demo", progress_line(injected, _progress_or_empty(store, since), len(smtp.eml_paths())))
        say("demo", f"stopping after {args.stop_after:.0f} s: {len(smtp.eml_paths())} emails in {OUTBOX}")
    except KeyboardInterrupt as stop:
        print("", flush=True)
        why = stop.args[0] if isinstance(stop, Stopped) else "Ctrl-C"
        say("stop", f"{why}: stopping Airflow, the emulator and the SMTP sink")
    finally:
        ignore_stop_signals()
        if airflow_proc is not None and airflow_proc.poll() is None:
            import psutil

            # Airflow's components and task processes do not all stay in the standalone process
            # group (seen: a scheduler outliving it), so every descendant is stopped by pid too.
            descendants: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                descendants = psutil.Process(airflow_proc.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(airflow_proc.pid, signal.SIGTERM)
            try:
                airflow_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(airflow_proc.pid, signal.SIGKILL)
            alive = [p for p in descendants if _running(p)]
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            _, still = psutil.wait_procs(alive, timeout=10)
            for proc in still:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        stack.close()
        say("stop", "everything stopped")
    return 0


def _progress_or_empty(engine: Any, since: datetime) -> dict[str, int]:
    """The progress counts; while a task holds SQLite's write lock or the store is still being
    created, an empty line is better than a demo that stops."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return demo_progress(engine, since)
    except SQLAlchemyError:
        return {}


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
