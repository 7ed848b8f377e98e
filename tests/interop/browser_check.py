#!/usr/bin/env python3
"""Opens sluice's echo page in headless Chromium and waits until the page's own
WebSocket (through sluice) has echoed a message back.

usage: browser_check.py URL EXPECTED_TEXT [CHROMIUM]
Exits 0 when the page shows the echo, 1 otherwise. Drives Chromium over the DevTools
protocol (the `websockets` package), so it needs no browser driver download.
"""
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

import websockets


async def main(url: str, expected: str, chromium: str) -> int:
    profile = tempfile.mkdtemp(prefix="sluice-chromium-")
    proc = subprocess.Popen(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Chromium prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID".
        port = None
        for _ in range(200):
            line = await asyncio.to_thread(proc.stderr.readline)
            m = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = m.group(1)
                break
        if port is None:
            print("chromium did not start its DevTools endpoint", file=sys.stderr)
            return 1
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as cdp:
            ids = iter(range(1, 1_000_000))

            async def call(method, **params):
                i = next(ids)
                await cdp.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    msg = json.loads(await cdp.recv())
                    if msg.get("id") == i:
                        return msg

            await call("Page.navigate", url=url)
            for _ in range(100):
                r = await call(
                    "Runtime.evaluate",
                    expression="(document.getElementById('log')||{}).textContent || ''",
                    returnByValue=True,
                )
                text = r.get("result", {}).get("result", {}).get("value", "")
                if f"< {expected}" in text:
                    print(f"browser saw the echo: {text.strip()!r}")
                    return 0
                await asyncio.sleep(0.1)
            print(f"no echo of {expected!r} in the page; log was {text!r}", file=sys.stderr)
            return 1
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    chromium = sys.argv[3] if len(sys.argv) > 3 else os.environ.get("CHROMIUM", "chromium")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], chromium)))
