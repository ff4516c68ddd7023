#!/usr/bin/env python3
"""Loads the chat page of a running `tpi-run serve` in headless Chromium,
sends one message the way a person would (type, press Send), waits for the
streamed answer to finish and checks it equals --expected (the API's own
answer to the same conversation, computed by the caller).

Drives Chromium through the DevTools protocol with `websocket-client`.
Prints one JSON line: the answer and how many different lengths the answer
bubble was seen at while streaming. Exit status 0 when the answer matches.

usage: chat_page_check.py BASE_URL MESSAGE EXPECTED_JSON [CHROMIUM]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class Page:
    """One page target over the DevTools protocol."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")


def main() -> int:
    base_url, message, expected_json = sys.argv[1:4]
    chromium = sys.argv[4] if len(sys.argv) > 4 else shutil.which("chromium") or "chromium"
    expected = json.loads(expected_json)
    profile = tempfile.mkdtemp(prefix="tpi-chromium-")
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-allow-origins=*", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if time.time() > deadline or browser.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(open(port_file).read().split("\n")[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Page.navigate", url=base_url)
        deadline = time.time() + 30
        while page.eval("document.readyState + ':' + !!document.getElementById('input')") != "complete:true":
            if time.time() > deadline:
                raise RuntimeError("the page did not load")
            time.sleep(0.05)
        page.eval(f"document.getElementById('input').value = {json.dumps(message)};"
                  "document.getElementById('send').click(); true")
        lengths = set()
        deadline = time.time() + 120
        while True:
            state = page.eval("""(() => {
                const a = document.querySelector('.msg.assistant, .msg.error');
                return a ? {done: a.dataset.done, cls: a.className, text: a.textContent} : null;
            })()""")
            if state:
                lengths.add(len(state["text"]))
                if state["done"] == "true":
                    break
            if time.time() > deadline:
                raise RuntimeError(f"no finished answer: {state}")
            time.sleep(0.005)
        user = page.eval("document.querySelector('.msg.user').textContent")
        print(json.dumps({"answer": state["text"], "class": state["cls"], "user": user,
                          "lengths_seen": len(lengths)}))
        if state["cls"] != "msg assistant" or state["text"] != expected or user != message:
            print(f"expected {expected!r}", file=sys.stderr)
            return 1
        return 0
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
