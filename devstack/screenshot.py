"""Screenshot a page of the local Airflow UI (or any page) with headless Chromium.

    python -m devstack.screenshot http://127.0.0.1:8080/dags/trigger_emails out.png \
        [--login admin:admin] [--wait 8] [--size 1400x900]

With --login it gets a JWT from the API server (POST /auth/token) and sets it as the UI's
``_token`` cookie over the DevTools protocol, so no login form is scripted. Needs Debian's
``chromium`` package (no browser download).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _capture(ws_url: str, url: str, cookie: str | None, wait: float, width: int, height: int) -> bytes:
    import websockets

    ids = itertools.count(1)
    async with websockets.connect(ws_url, max_size=64 * 1024 * 1024) as ws:

        async def call(method: str, **params: object) -> dict:
            msg_id = next(ids)
            await ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == msg_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        if cookie:
            await call("Network.enable")
            await call("Network.setCookie", name="_token", value=cookie, url=f"{urlsplit(url).scheme}://{urlsplit(url).netloc}/")
        await call("Page.enable")
        await call("Page.navigate", url=url)
        await asyncio.sleep(wait)  # the UI is a single-page app that keeps fetching after load
        shot = await call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


def screenshot(url: str, out: Path, *, login: str | None = None, wait: float = 8.0, size: str = "1400x900") -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("error: chromium not found; install Debian's 'chromium' package")
    cookie = None
    if login:
        user, _, password = login.partition(":")
        base = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        resp = requests.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=10)
        resp.raise_for_status()
        cookie = resp.json()["access_token"]
    width, height = (int(v) for v in size.split("x"))
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="triggerflow-chromium-")
    proc = subprocess.Popen(
        [browser, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                targets = requests.get(f"http://127.0.0.1:{port}/json", timeout=1).json()
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (requests.RequestException, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise SystemExit("error: chromium did not open its DevTools port") from None
                time.sleep(0.2)
        png = asyncio.run(_capture(page["webSocketDebuggerUrl"], url, cookie, wait, width, height))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--login", help="user:password for the Airflow API server")
    parser.add_argument("--wait", type=float, default=8.0)
    parser.add_argument("--size", default="1400x900")
    args = parser.parse_args(argv)
    print(screenshot(args.url, args.out, login=args.login, wait=args.wait, size=args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
