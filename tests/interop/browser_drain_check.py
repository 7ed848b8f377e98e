#!/usr/bin/env python3
"""Opens WebSockets from headless Chromium through sluice, then reports the Close
codes the browser's own WebSocket objects see while sluice drains.

usage: browser_drain_check.py PAGE_URL WS_URL COUNT [CHROMIUM]
Navigates to PAGE_URL, opens COUNT WebSockets to WS_URL from the page, echoes one
message on each, prints "OPEN" (the test then sends sluice SIGTERM), and waits up to
30 s for every socket's close event; prints "CLOSED code,code,..." (wasClean
included as "code:clean") and exits 0, or exits 1 on a timeout or a failed echo.
"""
import asyncio
import json
import os
import sys

from cdp import Browser

OPEN = """
window.codes = []; window.echoed = 0;
for (let i = 0; i < %d; i++) {
  const ws = new WebSocket(%s);
  ws.onopen = () => ws.send('hello ' + i);
  ws.onmessage = () => { window.echoed += 1; };
  ws.onclose = (e) => window.codes.push(e.code + ':' + (e.wasClean ? 'clean' : 'unclean'));
}
true
"""


async def main(page_url: str, ws_url: str, count: int, chromium: str) -> int:
    async with Browser(chromium) as page:
        await page.call("Page.navigate", url=page_url)
        await asyncio.sleep(0.5)
        await page.evaluate(OPEN % (count, json.dumps(ws_url)))
        for _ in range(200):
            if await page.evaluate("window.echoed") == count:
                break
            await asyncio.sleep(0.05)
        else:
            print(f"only {await page.evaluate('window.echoed')} of {count} echoed", file=sys.stderr)
            return 1
        print("OPEN", flush=True)
        for _ in range(600):
            codes = await page.evaluate("window.codes") or []
            if len(codes) == count:
                print("CLOSED " + ",".join(codes), flush=True)
                return 0
            await asyncio.sleep(0.05)
        print(f"closes seen: {await page.evaluate('window.codes')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    chromium = sys.argv[4] if len(sys.argv) > 4 else os.environ.get("CHROMIUM", "chromium")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), chromium)))
