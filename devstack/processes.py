"""Start the dev-stack servers (Adobe emulator, SMTP sink) as real subprocesses.

Tests and the demo use these context managers so that triggerflow talks to separate processes
over real sockets, exactly as it would talk to Adobe and a mail relay. Each server is started with
``--port 0 --ready-file <tmp>``; we wait for the ready file (written atomically by the server once
it listens), and on exit we send SIGTERM, then SIGKILL if it has not stopped after 5 s.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any

from devstack.emulator_client import EmulatorClient
from devstack.messages import DEMO_IMS_ORG

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


@dataclass
class RunningEmulator:
    base_url: str
    client: EmulatorClient
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class RunningSmtpSink:
    host: str
    port: int
    out_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    faults_file: Path
    # "eml" (a file per message in out_dir) or "none" (accept and count only).
    store: str = "eml"
    # JSON counters the sink rewrites every stats_interval seconds and at exit.
    stats_file: Path | None = None
    # One "<unix ts>\t<X-Triggerflow-Key or Message-ID>" line per accepted message, if asked for.
    accept_log: Path | None = None

    def stats(self) -> dict[str, Any]:
        """The sink's counters as of its last stats write (at most ``stats_interval`` old):
        ``accepted``, ``refused``, ``bytes``, ``sessions``, ``store``, ``updated_at``, ``pid``."""
        if self.stats_file is None:
            raise RuntimeError("this sink was started without a stats file")
        return json.loads(self.stats_file.read_text(encoding="utf-8"))

    def accepted(self) -> int:
        """Messages accepted so far (``stats()["accepted"]``; in eml mode also the .eml count)."""
        return int(self.stats()["accepted"])

    def wait_accepted(self, count: int, timeout: float = 10.0) -> int:
        """Wait until the sink reports at least ``count`` accepted messages; returns the count."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.accepted()
            if seen >= count:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sink accepted {seen} of {count} messages in {timeout}s")
            time.sleep(0.05)

    def accept_log_lines(self) -> list[tuple[float, str]]:
        """The accept log as (unix time accepted, key); only lines the sink has flushed."""
        if self.accept_log is None:
            raise RuntimeError("this sink was started without an accept log")
        lines = []
        if self.accept_log.exists():
            for line in self.accept_log.read_text(encoding="ascii", errors="replace").splitlines():
                stamp, _, key = line.partition("\t")
                lines.append((float(stamp), key))
        return lines

    def set_faults(self, rules: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Replace the sink's fault rules (see devstack.smtp_sink); takes effect at the next SMTP
        command. Validated here first, then written atomically (temp file + rename), so the sink
        never reads a half-written file. ``set_faults([])`` turns faults off."""
        from devstack.smtp_sink import parse_fault_rules

        items = [rules] if isinstance(rules, dict) else list(rules)
        parse_fault_rules(items)  # raises FaultRuleError on a bad rule
        tmp = self.faults_file.with_name(f".{self.faults_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(items), encoding="utf-8")
        # A nanosecond mtime of our own: file-system timestamps are coarse (a few ms), and the sink
        # detects a change by stat alone.
        stamp = time.time_ns()
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, self.faults_file)

    def clear_faults(self) -> None:
        self.set_faults([])

    def fired_faults(self) -> list[dict[str, Any]]:
        """Every fault the sink fired so far (from its log), oldest first."""
        prefix = "smtp-sink fault fired: "
        return [
            json.loads(line[len(prefix):])
            for line in _read_log(self.log_path, limit=10_000_000).splitlines()
            if line.startswith(prefix)
        ]

    def eml_paths(self) -> list[Path]:
        """Stored messages in name order (= arrival order: UTC timestamp, then sequence)."""
        return sorted(self.out_dir.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        """Stored messages parsed with ``email.policy.default``, in name order.

        Files keep the CRLF line endings of the SMTP wire; they are parsed with LF endings (the
        in-memory convention of the email package) so ``get_content()`` returns plain ``\\n`` text.
        """
        return [self.message(path.name) for path in self.eml_paths()]

    def message(self, name: str) -> EmailMessage:
        """One stored message by file name (as the sink's fault log names it), parsed as
        :meth:`messages` parses them."""
        raw = (self.out_dir / name).read_bytes().replace(b"\r\n", b"\n")
        return email.message_from_bytes(raw, policy=email.policy.default)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until at least ``count`` messages are stored (for senders that do not block on the
        SMTP reply, e.g. a DAG run), then return all messages."""
        deadline = time.monotonic() + timeout
        while len(self.eml_paths()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self.eml_paths())} of {count} messages after {timeout}s in {self.out_dir}"
                )
            time.sleep(0.05)
        return self.messages()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + existing if existing else "")
    # Server logs must reach the log file line by line, even if the process is killed.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _read_log(path: Path, limit: int = 8000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<log unavailable: {exc}>"
    return text[-limit:]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def _server_process(
    module: str, args: list[str], log_path: str | os.PathLike[str] | None, port: int = 0
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """Spawn ``python -m devstack.<module>``; yield (process, ready-file content, log path)."""
    work_dir = Path(tempfile.mkdtemp(prefix=f"triggerflow-{module}-"))
    ready_file = work_dir / "ready"
    log = Path(log_path) if log_path is not None else work_dir / f"{module}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log_fh: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in the finally below, once the process stopped
    command = [
        sys.executable, "-m", f"devstack.{module}",
        "--port", str(port), "--ready-file", str(ready_file), *args,
    ]
    process: subprocess.Popen[bytes] | None = None
    try:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready_file.exists():
            if process.poll() is not None:
                raise RuntimeError(
                    f"devstack.{module} exited with code {process.returncode} before it was ready; "
                    f"log {log}:\n{_read_log(log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"devstack.{module} not ready after {READY_TIMEOUT_S:.0f}s; "
                    f"log {log}:\n{_read_log(log)}"
                )
            time.sleep(0.02)
        yield process, ready_file.read_text(encoding="utf-8").strip(), log
    finally:
        if process is not None:
            _stop(process)
        log_fh.close()
        # Keep a caller-chosen log; the temp dir (ready file, default log) goes.
        shutil.rmtree(work_dir, ignore_errors=True)


@contextmanager
def start_emulator(
    *,
    client_id: str = "triggerflow-local",
    client_secret: str = "local-dev-secret",
    org_id: str = DEMO_IMS_ORG,
    integration_id: str = "triggerflow-int",
    registration_id: str = "triggerflow-reg",
    token_ttl: int | None = None,
    partitions: int | None = None,
    first_offset: int | None = None,
    ping_interval: float | None = None,
    stream_max_seconds: float | None = None,
    jwt_public_key_path: str | os.PathLike[str] | None = None,
    technical_account_id: str | None = None,
    metascope: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    port: int = 0,
    max_limit: int | None = None,
    read_ahead: bool | None = None,
) -> Iterator[RunningEmulator]:
    """Run ``devstack.adobe_emulator`` in a subprocess for the duration of the block.

    ``ping_interval`` / ``stream_max_seconds`` tune the Pipeline consume stream (small values keep
    tests fast); ``jwt_public_key_path`` (a PEM RSA public key) enables the legacy JWT exchange
    for ``technical_account_id`` and ``metascope``; ``max_limit`` raises the journal's page cap
    (default 1000) for benchmark readers; ``read_ahead=False`` stops it rendering the next full
    journal page in the background. ``None`` keeps the emulator's defaults.
    """
    args = [
        "--client-id", client_id,
        "--client-secret", client_secret,
        "--org-id", org_id,
        "--integration-id", integration_id,
        "--registration-id", registration_id,
    ]
    optional: list[tuple[str, object | None]] = [
        ("--token-ttl", token_ttl),
        ("--partitions", partitions),
        ("--first-offset", first_offset),
        ("--ping-interval", ping_interval),
        ("--stream-max-seconds", stream_max_seconds),
        ("--jwt-public-key", jwt_public_key_path),
        ("--technical-account-id", technical_account_id),
        ("--metascope", metascope),
        ("--max-limit", max_limit),
    ]
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    if read_ahead is False:
        args.append("--no-read-ahead")
    with _server_process("adobe_emulator", args, log_path, port) as (process, base_url, log):
        client = EmulatorClient(
            base_url,
            client_id=client_id,
            client_secret=client_secret,
            org_id=org_id,
            integration_id=integration_id,
            registration_id=registration_id,
        )
        try:
            yield RunningEmulator(base_url=base_url, client=client, process=process, log_path=log)
        finally:
            client.close()


@contextmanager
def start_smtp_sink(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    log_path: str | os.PathLike[str] | None = None,
    port: int = 0,
    faults_file: str | os.PathLike[str] | None = None,
    faults: list[dict[str, Any]] | None = None,
    store: str = "eml",
    accept_log: str | os.PathLike[str] | None = None,
    stats_file: str | os.PathLike[str] | None = None,
    stats_interval: float | None = None,
    engine: str | None = None,
) -> Iterator[RunningSmtpSink]:
    """Run ``devstack.smtp_sink`` in a subprocess writing .eml files to ``out_dir``.

    The sink always watches a faults file (``faults_file``, or a private temp file), so
    :meth:`RunningSmtpSink.set_faults` works on any sink; ``faults`` are the initial rules.
    ``store="none"`` only accepts and counts (``out_dir`` optional, nothing written there), for
    benchmarks, by default with the sink's lean SMTP engine (``engine="aiosmtpd"`` to compare);
    ``accept_log`` adds a line per accepted message. The counters are always
    available through :meth:`RunningSmtpSink.stats` (``stats_file``, or a private temp file,
    rewritten every ``stats_interval`` seconds, default 1).
    """
    if store not in ("eml", "none"):
        raise ValueError(f"store must be 'eml' or 'none', not {store!r}")
    if store == "eml" and out_dir is None:
        raise ValueError("store='eml' needs out_dir")
    out = Path(out_dir).resolve() if out_dir is not None else None
    own_dir = Path(tempfile.mkdtemp(prefix="triggerflow-smtp-"))
    if faults_file is None:
        faults_path = own_dir / "faults.json"
    else:
        faults_path = Path(faults_file).resolve()
        faults_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path = Path(stats_file).resolve() if stats_file is not None else own_dir / "stats.json"
    accept_path = Path(accept_log).resolve() if accept_log is not None else None
    try:
        if faults is not None or not faults_path.exists():
            from devstack.smtp_sink import parse_fault_rules

            parse_fault_rules(list(faults or []))
            faults_path.write_text(json.dumps(list(faults or [])), encoding="utf-8")
        args = ["--faults-file", str(faults_path), "--stats-file", str(stats_path)]
        if out is not None:
            args += ["--out", str(out)]
        if store != "eml":
            args += ["--store", store]
        if accept_path is not None:
            args += ["--accept-log", str(accept_path)]
        if stats_interval is not None:
            args += ["--stats-interval", str(stats_interval)]
        if engine is not None:
            args += ["--engine", engine]
        with _server_process("smtp_sink", args, log_path, port) as (process, address, log):
            host, _, bound = address.rpartition(":")
            yield RunningSmtpSink(
                host=host, port=int(bound), out_dir=out if out is not None else own_dir / "no-outbox",
                process=process, log_path=log, faults_file=faults_path, store=store,
                stats_file=stats_path, accept_log=accept_path,
            )
    finally:
        shutil.rmtree(own_dir, ignore_errors=True)


@contextmanager
def start_airflow(home: str | os.PathLike[str], *, env_overrides: dict[str, str] | None = None, **kwargs: Any) -> Iterator[Any]:
    """``airflow standalone`` (scheduler + LocalExecutor + API server) under ``home`` for the
    block; see :func:`devstack.airflow_stack.airflow_standalone` (imported lazily: it is heavier
    than the other servers and only some tests need it)."""
    from devstack.airflow_stack import airflow_standalone

    with airflow_standalone(Path(home), env_overrides=env_overrides or {}, **kwargs) as stack:
        yield stack
