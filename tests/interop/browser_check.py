#!/usr/bin/env python3
"""Opens sluice's echo page in headless Chromium and waits until the page's own
WebSocket (through sluice) has echoed a message back.

usage: browser_check.py URL EXPECTED_TEXT [CHROMIUM]
Exits 0 when the page shows the echo, 1 otherwise. Drives Chromium over the DevTools
protocol (cdp.py), so it needs no browser driver download.
"""
import asyncio
import os
import sys

from cdp import Browser

LOG = "(document.getElementById('log')||{}).textContent || ''"


async def main(url: str, expected: str, chromium: str) -> int:
    async with Browser(chromium) as page:
        await page.call("Page.navigate", url=url)
        text = ""
        for _ in range(100):
            text = await page.evaluate(LOG) or ""
            if f"< {expected}" in text:
                print(f"browser saw the echo: {text.strip()!r}")
                return 0
            await asyncio.sleep(0.1)
        print(f"no echo of {expected!r} in the page; log was {text!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    chromium = sys.argv[3] if len(sys.argv) > 3 else os.environ.get("CHROMIUM", "chromium")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], chromium)))
