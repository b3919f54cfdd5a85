"""The SMTP server's own acceptance ceiling on this machine.

Starts ``devstack.smtp_sink`` in fast mode (``--store none``: accept and count, write nothing)
and sends N realistic ~6 KB ``multipart/alternative`` messages (quoted-printable text and HTML,
the headers triggerflow sets: Message-ID, List-Unsubscribe, X-Triggerflow-Key...) from a minimal
raw ``smtplib`` loop (``sendmail`` of pre-built bytes: MAIL, RCPT, DATA per message, no
re-serialisation) over 1 session and over K parallel sessions, one client process each. Every
run is checked against the sink's own accepted count. If Postfix's ``smtp-source`` is installed
it is run as well (it is not installed here on purpose: the Debian package starts a mail server).

    python -m bench.smtp_ceiling                       # 20000 messages, sessions 1, 2, 4
    python -m bench.smtp_ceiling --messages 5000 --sessions 1,4 --json ceiling.json

From a benchmark: ``from bench.smtp_ceiling import measure_ceiling; result = measure_ceiling()``
returns a dict (``runs``: one entry per session count with ``msgs_per_s``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

DEFAULT_MESSAGES = 20_000
DEFAULT_SESSIONS = (1, 2, 4)
DEFAULT_MESSAGE_BYTES = 6_000
FROM_ADDR = "shop@triggerflow.local"
_KEY_PLACEHOLDER = b"K" * 64


def build_message(size: int = DEFAULT_MESSAGE_BYTES) -> bytes:
    """A triggerflow-like email of about ``size`` bytes (at least the unpadded ~2 KB); its
    X-Triggerflow-Key and Message-ID hold a 64-character placeholder replaced per message
    (:func:`message_bytes`)."""
    key = _KEY_PLACEHOLDER.decode()
    items = [
        ("Trail Runner 2 Running Shoes", "129.95"),
        ("Merino Wool Hiking Socks (3-pack)", "24.50"),
        ("Alpine Shell Waterproof Jacket", "249.00"),
    ]
    text_lines = ["Hi Ada,", "", "You left these in your cart:", ""]
    text_lines += [f"  - {name}  EUR {price}  https://shop.example.com/p/{i}" for i, (name, price) in enumerate(items)]
    text_lines += ["", "Complete your order: https://shop.example.com/cart", "", "-- ", "triggerflow shop"]
    text = "\n".join(text_lines) + "\n"
    rows = "".join(
        f'<tr><td style="padding:8px;border-bottom:1px solid #eee"><a href="https://shop.example.com/p/{i}">'
        f'{name}</a></td><td style="padding:8px;text-align:right">&euro;{price}</td></tr>\n'
        for i, (name, price) in enumerate(items)
    )
    html_head = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Your cart</title></head>'
        '<body style="font-family:Helvetica,Arial,sans-serif;color:#222">\n'
        '<table role="presentation" width="100%" style="max-width:600px;margin:auto">\n'
        f'<tr><td><h1 style="font-size:22px">Hi Ada,</h1><p>You left these in your cart:</p></td></tr>\n{rows}'
        '<tr><td><a href="https://shop.example.com/cart" style="display:inline-block;padding:12px 20px;'
        'background:#0a7;color:#fff;text-decoration:none;border-radius:4px">Complete your order</a></td></tr>\n'
        "</table>\n"
    )
    # A footer (like a real template's legal text), repeated to reach the requested size.
    footer = (
        '<p style="font-size:11px;color:#888">You receive this email because you shopped at '
        "shop.example.com. Unsubscribe any time.</p>\n"
    )

    def assemble(footers: int) -> bytes:
        # Headers on one line each, as triggerflow's mailer writes them (no RFC 2047 re-encoding).
        msg = EmailMessage(policy=SMTP_POLICY.clone(max_line_length=998))
        for name, value in (
            ("From", f"triggerflow shop <{FROM_ADDR}>"), ("To", "c0000001@example.test"),
            ("Subject", "Ada, you left something in your cart"), ("Date", "Tue, 01 Dec 2026 10:00:00 +0000"),
            ("Message-ID", f"<{key}@triggerflow.local>"), ("MIME-Version", "1.0"),
            ("List-Unsubscribe", f"<http://localhost:8080/unsubscribe/{key}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"), ("X-Triggerflow-Key", key),
            ("X-Triggerflow-Route", "cart_abandonment"),
        ):
            msg[name] = value
        msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
        html = html_head + footer * footers + "</body></html>\n"
        msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        return msg.as_bytes()

    raw = assemble(0)
    footers = 0
    while len(raw) < size:
        footers += max(1, (size - len(raw)) // (len(footer) + 20))
        raw = assemble(footers)
    return raw


def message_bytes(template: bytes, n: int) -> bytes:
    """The template with message ``n``'s own key (64 hex characters)."""
    return template.replace(_KEY_PLACEHOLDER, b"%064x" % n)


def _client(host: str, port: int, first: int, count: int, template: bytes, start: Any, out: Any) -> None:
    """One session: connect and EHLO, wait for the start signal, send ``count`` messages."""
    try:
        messages = [message_bytes(template, n) for n in range(first, first + count)]
        smtp = smtplib.SMTP(host, port, timeout=60)
        smtp.ehlo("bench.triggerflow.local")
        start.wait()
        t0 = time.perf_counter()
        for n, data in zip(range(first, first + count), messages):
            smtp.sendmail(FROM_ADDR, [f"c{n % 10_000_000:07d}@example.test"], data)
        t1 = time.perf_counter()
        smtp.quit()
        out.put({"count": count, "seconds": t1 - t0, "t0": t0, "t1": t1, "error": None})
    except Exception as exc:  # reported to the parent, which fails the run
        out.put({"count": 0, "seconds": 0.0, "t0": 0.0, "t1": 0.0, "error": repr(exc)})


def run_sessions(host: str, port: int, messages: int, sessions: int, template: bytes, first: int = 0) -> dict[str, Any]:
    """Send ``messages`` over ``sessions`` parallel client processes; wall time from the start
    signal to the last message accepted."""
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    start = ctx.Event()
    out = ctx.Queue()
    share, extra = divmod(messages, sessions)
    procs = []
    offset = first
    for k in range(sessions):
        count = share + (1 if k < extra else 0)
        proc = ctx.Process(target=_client, args=(host, port, offset, count, template, start, out), daemon=True)
        proc.start()
        procs.append(proc)
        offset += count
    time.sleep(0.5)  # let every client connect and EHLO
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    wall = max(r["t1"] for r in results) - t0
    return {
        "sessions": sessions,
        "messages": messages,
        "seconds": round(wall, 3),
        "msgs_per_s": round(messages / wall, 1) if wall > 0 else None,
        "per_session_msgs_per_s": [round(r["count"] / r["seconds"], 1) for r in results if r["seconds"] > 0],
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _smtp_source(host: str, port: int, messages: int, sessions: int, size: int) -> dict[str, Any] | None:
    binary = shutil.which("smtp-source") or next(
        (p for p in ("/usr/sbin/smtp-source", "/usr/lib/postfix/sbin/smtp-source") if os.path.exists(p)), None
    )
    if binary is None:
        return None
    cmd = [binary, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", FROM_ADDR,
           "-t", "c0000001@example.test", f"{host}:{port}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    return {
        "tool": binary, "sessions": sessions, "messages": messages, "seconds": round(wall, 3),
        "msgs_per_s": round(messages / wall, 1) if wall > 0 and proc.returncode == 0 else None,
        "returncode": proc.returncode, "stderr": proc.stderr[-500:],
    }


def measure_ceiling(
    messages: int = DEFAULT_MESSAGES,
    sessions: tuple[int, ...] | list[int] = DEFAULT_SESSIONS,
    *,
    message_bytes_target: int = DEFAULT_MESSAGE_BYTES,
    host: str | None = None,
    port: int | None = None,
    smtp_source: bool = True,
    verbose: bool = False,
    engine: str = "lean",
) -> dict[str, Any]:
    """Measure msgs/s the SMTP server accepts for each session count.

    Without ``host``/``port`` a fast-mode sink is started for the measurement (and stopped),
    with its ``lean`` engine (``engine="aiosmtpd"``: the aiosmtpd server the eml mode uses, only
    counting); with them, that server is measured (and its accepted count is not checked)."""
    template = build_message(message_bytes_target)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "message_bytes": len(message_bytes(template, 0)),
        "messages_per_run": messages,
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "server": None,
        "runs": [],
        "smtp_source": None,
    }

    def measure(h: str, p: int, sink: Any) -> None:
        first = 0
        for k in sessions:
            before = sink.accepted() if sink is not None else None
            cpu_before = _cpu_seconds(sink.process.pid) if sink is not None else None
            run = run_sessions(h, p, messages, k, template, first=first)
            first += messages
            if sink is not None:
                run["sink_accepted"] = sink.wait_accepted(before + messages, timeout=30) - before
                if run["sink_accepted"] != messages:
                    raise RuntimeError(f"sink accepted {run['sink_accepted']} of {messages}")
                cpu_after = _cpu_seconds(sink.process.pid)
                if cpu_before is not None and cpu_after is not None:
                    # The server's own cost: 1e6 / this = what one fully busy core could accept.
                    run["sink_cpu_us_per_msg"] = round((cpu_after - cpu_before) / messages * 1e6, 1)
            result["runs"].append(run)
            if verbose:
                cpu = run.get("sink_cpu_us_per_msg")
                cost = f"; sink CPU {cpu:.0f} us/msg (one core: ~{1e6 / cpu:,.0f} msgs/s)" if cpu else ""
                print(f"  {k} session(s): {messages} messages in {run['seconds']:.2f} s = {run['msgs_per_s']:,.0f} msgs/s{cost}", flush=True)
        if smtp_source:
            result["smtp_source"] = _smtp_source(h, p, messages, max(sessions), message_bytes_target)

    if host is not None and port is not None:
        result["server"] = f"{host}:{port}"
        measure(host, port, None)
        return result
    from devstack.processes import start_smtp_sink

    with tempfile.TemporaryDirectory(prefix="triggerflow-smtp-ceiling-") as tmp, start_smtp_sink(
        None, store="none", engine=engine, log_path=Path(tmp) / "sink.log", stats_interval=0.2
    ) as sink:
        result["server"] = f"devstack.smtp_sink --store none --engine {engine} at {sink.host}:{sink.port}"
        measure(sink.host, sink.port, sink)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help=f"per run (default {DEFAULT_MESSAGES})")
    parser.add_argument("--sessions", default=",".join(map(str, DEFAULT_SESSIONS)), help="comma-separated session counts (default 1,2,4)")
    parser.add_argument("--size", type=int, default=DEFAULT_MESSAGE_BYTES, help="message size in bytes (default 6000)")
    parser.add_argument("--host", help="measure this server instead of a fresh fast-mode sink")
    parser.add_argument("--port", type=int)
    parser.add_argument("--engine", choices=("lean", "aiosmtpd"), default="lean", help="sink engine (default lean)")
    parser.add_argument("--no-smtp-source", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the result here")
    args = parser.parse_args(argv)
    sessions = tuple(int(s) for s in args.sessions.split(",") if s.strip())
    target = f"{args.host}:{args.port}" if args.host else f"a fresh sink (--store none, {args.engine} engine)"
    print(f"SMTP acceptance ceiling of {target}: {args.messages} messages of ~{args.size} B per run, sessions {sessions}", flush=True)
    result = measure_ceiling(
        args.messages, sessions, message_bytes_target=args.size, host=args.host, port=args.port,
        smtp_source=not args.no_smtp_source, verbose=True, engine=args.engine,
    )
    if result["smtp_source"] is None and not args.no_smtp_source:
        print("  smtp-source: not installed (Postfix); skipped")
    elif result["smtp_source"]:
        s = result["smtp_source"]
        print(f"  smtp-source -s {s['sessions']}: {s['msgs_per_s']} msgs/s (exit {s['returncode']})")
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
