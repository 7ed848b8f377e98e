#!/usr/bin/env python3
"""Opens sluice's status page in headless Chromium and waits until its routes table
shows ROUTE with TUNNELS tunnels open; fails on any console error, uncaught exception
or failed load (a missing favicon included).

usage: status_page_check.py URL ROUTE TUNNELS [SCREENSHOT.png] [CHROMIUM]
Prints the routes table's row as the page shows it. Drives Chromium over the DevTools
protocol (cdp.py).
"""
import asyncio
import base64
import json
import os
import sys

from cdp import Browser

ROW = """
(() => {
  const rows = [...document.querySelectorAll('#routes tbody tr')];
  return rows.map(r => [...r.children].map(td => td.textContent));
})()
"""


async def main(url, route, tunnels, shot, chromium):
    problems = []

    def note(msg):
        method = msg.get("method", "")
        params = msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append("console: " + json.dumps(params.get("args", []))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            problems.append(f"log: {e.get('text')} {e.get('url', '')}")

    async with Browser(chromium, ["--window-size=1400,900"], note) as page:
        await page.call("Runtime.enable")
        await page.call("Log.enable")
        await page.call("Page.enable")
        await page.call("Page.navigate", url=url)
        shown = None
        for _ in range(150):
            rows = await page.evaluate(ROW) or []
            shown = next((row for row in rows if row and row[0] == route), None)
            # Columns: name, match, upstream, tunnels open, ...; rates need two
            # readings, so wait for a number there too.
            if shown and shown[3] == tunnels and shown[11] != "–":
                break
            await asyncio.sleep(0.1)
        else:
            print(f"the page never showed {route} with {tunnels} tunnels: {shown}", file=sys.stderr)
            return 1
        # A last moment for late errors (the favicon request comes after load).
        await asyncio.sleep(0.5)
        await page.evaluate("1")
        if shot:
            r = await page.call("Page.captureScreenshot", format="png")
            with open(shot, "wb") as f:
                f.write(base64.b64decode(r["result"]["data"]))
        if problems:
            print("the page logged errors:\n" + "\n".join(problems), file=sys.stderr)
            return 1
        print("page row: " + " | ".join(shown))
        return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    shot = args[3] if len(args) > 3 and args[3] else None
    chromium = args[4] if len(args) > 4 else os.environ.get("CHROMIUM", "chromium")
    sys.exit(asyncio.run(main(args[0], args[1], args[2], shot, chromium)))
