"""Headless Chromium driven over the DevTools protocol (the `websockets` package), for
the browser checks in this directory: no browser driver download.

    async with Browser(chromium, extra_flags) as page:
        await page.call("Page.navigate", url=url)

`Page.call` sends one command and returns its answer; every event that arrives
meanwhile goes to the `on_event` callback given to `Browser`.
"""
import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import urllib.request

import websockets


class Page:
    def __init__(self, socket, on_event):
        self._socket = socket
        self._on_event = on_event
        self._ids = iter(range(1, 1_000_000))

    async def call(self, method, **params):
        i = next(self._ids)
        await self._socket.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await self._socket.recv())
            if msg.get("id") == i:
                return msg
            self._on_event(msg)

    async def evaluate(self, expression):
        """The value of a JavaScript expression in the page."""
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("result", {}).get("value")


class Browser:
    """Starts Chromium with a throw-away profile; yields its first page."""

    def __init__(self, chromium, flags=(), on_event=lambda msg: None):
        self.chromium = chromium
        self.flags = list(flags)
        self.on_event = on_event

    async def __aenter__(self):
        self.profile = tempfile.mkdtemp(prefix="sluice-chromium-")
        self.proc = subprocess.Popen(
            [
                self.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                *self.flags, "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Chromium prints "DevTools listening on ws://127.0.0.1:PORT/devtools/...".
            port = None
            for _ in range(200):
                line = await asyncio.to_thread(self.proc.stderr.readline)
                m = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
                if m:
                    port = m.group(1)
                    break
            if port is None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            target = next(t for t in targets if t["type"] == "page")
            self.socket = await websockets.connect(
                target["webSocketDebuggerUrl"], max_size=None
            )
        except BaseException:
            self._stop()
            raise
        return Page(self.socket, self.on_event)

    async def __aexit__(self, *exc):
        await self.socket.close()
        self._stop()

    def _stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
