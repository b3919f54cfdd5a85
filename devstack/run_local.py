"""The local stack: Airflow + the Adobe emulator + an SMTP sink, and a stream of demo triggers.

Run through ``bin/demo`` (which prepares the venv first). Everything lives under ``.local/``:

    .local/airflow/     AIRFLOW_HOME: metadata DB, logs, the store (triggerflow.db)
    .local/outbox/      every email the SMTP sink received, one .eml file each
    .local/logs/        emulator, SMTP sink and Airflow output

Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / ".local"
AIRFLOW_HOME = LOCAL / "airflow"
OUTBOX = LOCAL / "outbox"
LOGS = LOCAL / "logs"
EMULATOR_PORT = 8765  # fixed: airflow_settings.yaml points the connections here
SMTP_PORT = 1025
ADMIN_USER, ADMIN_PASSWORD = "admin", "admin"
DEMO_PROFILES = ROOT / "devstack" / "demo_profiles.csv"


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


def demo_batch(rng: random.Random, shoppers: list[str], size: int) -> list[dict]:
    """Mostly known shoppers, some unknown ones, and now and then a browse abandonment."""
    from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID, DEMO_CATALOG, trigger_message

    batch = []
    for _ in range(size):
        shopper = rng.choice(shoppers) if rng.random() < 0.85 else f"SHOP-UNKNOWN-{rng.randint(1, 999):03d}"
        trigger_id = CART_ABANDONMENT_TRIGGER_ID if rng.random() < 0.75 else BROWSE_ABANDONMENT_TRIGGER_ID
        skus = rng.sample(sorted(DEMO_CATALOG), k=rng.randint(1, 3))
        batch.append(trigger_message(trigger_id=trigger_id, shopper_id=shopper, products=skus))
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between demo trigger bursts")
    parser.add_argument("--burst", type=int, default=3, help="triggers per burst")
    parser.add_argument("--fresh", action="store_true", help="delete .local/ first (new DB, empty outbox)")
    parser.add_argument("--stop-after", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    args = parser.parse_args(argv)

    if args.fresh and LOCAL.exists():
        shutil.rmtree(LOCAL)
    for folder in (AIRFLOW_HOME, OUTBOX, LOGS):
        folder.mkdir(parents=True, exist_ok=True)
    for port, what in ((EMULATOR_PORT, "Adobe emulator"), (SMTP_PORT, "SMTP sink"), (args.api_port, "Airflow API server")):
        if not port_free(port):
            raise SystemExit(f"error: port {port} (for the {what}) is in use; stop whatever holds it and retry")
    (AIRFLOW_HOME / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))

    env = airflow_env(args.api_port)
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

        say("[6/6]", f"injecting {args.burst} demo triggers every {args.every:.0f} s")
        rng = random.Random(42)
        shoppers = [line.split(",")[6] for line in DEMO_PROFILES.read_text().splitlines()[1:] if line.strip()]
        injected = 0
        started = time.monotonic()
        next_report = 0.0
        while not args.stop_after or time.monotonic() - started < args.stop_after:
            if airflow_proc.poll() is not None:
                raise SystemExit(f"error: airflow exited with {airflow_proc.returncode}; see {airflow_log}")
            emu.client.publish(demo_batch(rng, shoppers, args.burst))
            injected += args.burst
            if time.monotonic() >= next_report:
                say("demo", f"{injected} triggers injected, {len(list(OUTBOX.glob('*.eml')))} emails in the outbox")
                next_report = time.monotonic() + 30
            time.sleep(args.every)
        say("demo", f"stopping after {args.stop_after:.0f} s: {len(smtp.eml_paths())} emails in {OUTBOX}")
    except KeyboardInterrupt:
        print("", flush=True)
        say("stop", "Ctrl-C: stopping Airflow, the emulator and the SMTP sink")
    finally:
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


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
