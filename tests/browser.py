"""A headless Chromium page driven over the DevTools protocol (a websocket on 127.0.0.1), for the serving tests.

Only what the tests need: open a URL, run JavaScript, wait for a condition, set a file input, take a screenshot. The
browser starts with networking off except for 127.0.0.1 (`--host-resolver-rules`), so a page cannot reach anything
else, and in its own throwaway profile.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import time

BINARIES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class ChromiumPage:
    def __init__(self, binary: str, profile_dir: str, timeout: float = 30.0):
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile_dir}",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            url = self._devtools_url(timeout)
            self._closing = contextlib.ExitStack()
            self.socket = self._closing.enter_context(connect(url, max_size=None, open_timeout=timeout))
            self._ids = itertools.count(1)
            target = self._send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.command("Page.enable")
        except BaseException:
            self.process.kill()
            raise

    def _devtools_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        lines = []
        for line in self.process.stderr:  # Chromium prints the browser's websocket address on start
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                return match.group(1)
            lines.append(line)
            if time.monotonic() > deadline:
                break
        raise RuntimeError("Chromium did not start:\n" + "".join(lines[-20:]))

    def _send(self, method: str, session: str | None = None, **params):
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        while True:  # skip events until our reply
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def command(self, method: str, **params):
        """A DevTools command on the page."""
        return self._send(method, session=self.session, **params)

    def goto(self, url: str) -> None:
        self.command("Page.navigate", url=url)

    def js(self, expression: str):
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        """The first truthy value of `expression`, polled; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"after {timeout} s: {expression}")

    def set_file(self, selector: str, path: str) -> None:
        root = self.command("DOM.getDocument")["root"]["nodeId"]
        node = self.command("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise LookupError(selector)
        self.command("DOM.setFileInputFiles", files=[path], nodeId=node)

    def screenshot(self, path) -> None:
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(self.command("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self._closing.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
