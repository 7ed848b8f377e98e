#!/usr/bin/env python3
"""Opens sluice's echo page over https in headless Chromium, waits until the page's
own WebSocket (wss:// back through sluice) has echoed a message, and reports what
Chromium's DevTools Network events said of the page's and the WebSocket's protocol.

usage: browser_h2_check.py URL EXPECTED_TEXT SPKI_SHA256_BASE64 [CHROMIUM]

The certificate is trusted with --ignore-certificate-errors-spki-list (the base64
SHA-256 of the server certificate's SubjectPublicKeyInfo), which Chromium honours only
with --user-data-dir: it accepts that one key rather than every certificate, as
--ignore-certificate-errors would. (Chromium 156 used h2 for the WebSocket with
either; older versions are said not to pool connections with certificate errors.)
Setting SLUICE_CHROMIUM_CERT_FLAG replaces that flag (for trying others by hand).

Prints one JSON object on stdout:
  {"chromium": version, "echo": page log, "page_protocol": "h2"|...,
   "websocket": {"url", "status", "protocol", "headers"}, "events": [...]}
Exits 0 when the page shows the echo, 1 otherwise (the JSON is printed either way).
Drives Chromium over the DevTools protocol (the `websockets` package).
"""
import asyncio
import json
import os
import subprocess
import sys

from cdp import Browser

LOG = "(document.getElementById('log')||{}).textContent || ''"


async def main(url: str, expected: str, spki: str, chromium: str) -> int:
    version = subprocess.run(
        [chromium, "--version"], capture_output=True, text=True
    ).stdout.strip()
    cert_flag = os.environ.get(
        "SLUICE_CHROMIUM_CERT_FLAG", f"--ignore-certificate-errors-spki-list={spki}"
    )
    report = {"chromium": version, "cert_flag": cert_flag, "echo": "",
              "page_protocol": None, "websocket": {}, "events": []}
    ws = report["websocket"]

    def note(msg):
        """Keeps what the Network events say of the page and its WebSocket."""
        method, p = msg.get("method"), msg.get("params", {})
        if not method or not method.startswith("Network."):
            return
        if method == "Network.responseReceived" and p.get("type") == "Document":
            report["page_protocol"] = p["response"].get("protocol")
            report["events"].append(
                {"event": method, "url": p["response"].get("url"),
                 "status": p["response"].get("status"),
                 "protocol": p["response"].get("protocol")})
        elif method == "Network.webSocketCreated":
            ws["url"] = p.get("url")
            report["events"].append({"event": method, "url": p.get("url")})
        elif method == "Network.webSocketWillSendHandshakeRequest":
            ws["request_headers"] = p.get("request", {}).get("headers", {})
            report["events"].append({"event": method, **p.get("request", {})})
        elif method == "Network.webSocketHandshakeResponseReceived":
            r = p.get("response", {})
            ws["status"] = r.get("status")
            ws["status_text"] = r.get("statusText")
            ws["headers"] = r.get("headers", {})
            ws["headers_text"] = r.get("headersText")
            ws["request_headers_text"] = r.get("requestHeadersText")
            report["events"].append({"event": method, **r})
        elif method in ("Network.webSocketFrameError", "Network.loadingFailed"):
            report["events"].append({"event": method, **p})

    async with Browser(chromium, [cert_flag], note) as page:
        await page.call("Network.enable")
        await page.call("Page.navigate", url=url)
        text = ""
        for _ in range(100):
            text = await page.evaluate(LOG) or ""
            report["echo"] = text
            if f"< {expected}" in text:
                break
            await asyncio.sleep(0.1)
        # The WebSocket's protocol as the page's own resource timing sees it has no
        # entry for WebSockets; the DevTools events above are the browser's word.
        print(json.dumps(report))
        if f"< {expected}" in text:
            return 0
        print(f"no echo of {expected!r} in the page; log was {text!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    chromium = sys.argv[4] if len(sys.argv) > 4 else os.environ.get("CHROMIUM", "chromium")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], chromium)))
