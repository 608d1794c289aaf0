"""A Hub-compatible server on 127.0.0.1 for the read-path tests: olah (a self-hosted Hugging Face mirror) serving
git repositories from a folder, offline (it never contacts huggingface.co).

`LocalHub(root)` lays repositories out as olah reads them (`root/mirrors/{models,datasets}/<org>/<name>`, each a git
repository whose last commit is the pushed folder), starts olah, and gives the `HF_ENDPOINT` to load them through.

One difference from the Hub is bridged here: olah 0.5.4, offline, answers a request for a file its local mirror does
not have (`/resolve/`), or for the listing of a folder it does not have (`/api/.../tree/<rev>/<folder>`), with 401
`RepoNotFound` (it falls through to asking huggingface.co, which offline mode forbids), where the Hub answers 404
`EntryNotFound`. transformers probes optional files (`adapter_config.json`, `processor_config.json`, the tokenizer's
`additional_chat_templates/`, ...) and stops at `RepoNotFound`, so a small middleware turns that answer into the Hub's
404 for repositories the mirror has. Nothing else of olah's answers is changed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_FOLDERS = {"model": "models", "dataset": "datasets", "space": "spaces"}

_LAUNCHER = r"""
import os, re, sys

from fastapi.responses import Response
import olah.server

MIRRORS = sys.argv.pop(1)
RESOLVE = re.compile(r"^/(?:(datasets|spaces|models)/)?([^/]+)/([^/]+)/resolve/[^/]+/.+$")
TREE = re.compile(r"^/api/(datasets|spaces|models)/([^/]+)/([^/]+)/tree/[^/]+/.+$")


@olah.server.app.middleware("http")
async def missing_mirror_file_is_entry_not_found(request, call_next):
    response = await call_next(request)
    match = RESOLVE.match(request.url.path) or TREE.match(request.url.path)
    if response.status_code == 401 and match:
        kind, org, name = match.group(1) or "models", match.group(2), match.group(3)
        if os.path.isdir(os.path.join(MIRRORS, kind, org, name)):
            return Response(status_code=404, headers={"x-error-code": "EntryNotFound",
                                                      "x-error-message": "Entry not found"})
    return response


olah.server.cli()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalHub:
    def __init__(self, root):
        self.root = str(root)
        self.mirrors = os.path.join(self.root, "mirrors")
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = None

    def add_repo(self, repo_id: str, folder: str, repo_type: str = "model") -> str:
        """Commit a copy of `folder` as the repository `repo_id` (what an upload of that folder would hold)."""
        path = os.path.join(self.mirrors, REPO_FOLDERS[repo_type], *repo_id.split("/"))
        shutil.copytree(folder, path)
        git = ["git", "-c", "user.name=capt-tests", "-c", "user.email=tests@capt.invalid", "-c", "init.defaultBranch=main"]
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", f"upload {repo_id}"]):
            subprocess.run(git + args, cwd=path, check=True, capture_output=True)
        return path

    def start(self, timeout: float = 60.0) -> str:
        config = os.path.join(self.root, "olah.toml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(
                f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nrepos-path = "{self.root}/cache"\n'
                f'mirrors-path = ["{self.mirrors}"]\nmirror-netloc = "127.0.0.1:{self.port}"\n'
                f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\n\n[accessibility]\noffline = true\n'
            )
        self.log = open(os.path.join(self.root, "olah.log"), "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, self.mirrors, "--config", config, "--log-path", f"{self.root}/logs"],
            cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/api/whoami-v2", timeout=2)
                return self.endpoint
            except urllib.error.HTTPError:  # any HTTP answer: it is up
                return self.endpoint
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError("olah did not start:\n" + self.log.read()[-3000:])
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.log.close()


def serve_uploads(monkeypatch, hub: LocalHub) -> list[dict]:
    """Make `HfApi` uploads land in `hub`: `upload_folder` commits exactly the files it would send (its
    `allow_patterns` applied) as the repository; `create_repo` is recorded; `hf_hub_download` answers as a new, empty
    repository does (EntryNotFound). Returns the list the calls are recorded in. Pushing stays at the HfApi
    boundary: only the transfer itself is replaced, by a local commit the read tests then load over HTTP."""
    import fnmatch
    import inspect
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    calls = []
    signatures = {name: inspect.signature(getattr(HfApi, name)) for name in ("create_repo", "upload_folder")}

    def create_repo(api, *args, **kwargs):
        bound = signatures["create_repo"].bind(api, *args, **kwargs).arguments
        calls.append({"method": "create_repo", "repo_id": bound["repo_id"], "repo_type": bound.get("repo_type")})
        return f"{hub.endpoint}/{bound['repo_id']}"

    def upload_folder(api, *args, **kwargs):
        bound = signatures["upload_folder"].bind(api, *args, **kwargs).arguments
        root, patterns = bound["folder_path"], bound.get("allow_patterns")
        patterns = [patterns] if isinstance(patterns, str) else patterns
        sent = tempfile.mkdtemp(dir=hub.root)
        files = []
        for parent, _, names in os.walk(root):
            for name in names:
                relative = os.path.relpath(os.path.join(parent, name), root).replace(os.sep, "/")
                if patterns is None or any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
                    os.makedirs(os.path.dirname(os.path.join(sent, relative)), exist_ok=True)
                    shutil.copy2(os.path.join(root, relative), os.path.join(sent, relative))
                    files.append(relative)
        hub.add_repo(bound["repo_id"], sent, bound.get("repo_type") or "model")
        calls.append({"method": "upload_folder", "repo_id": bound["repo_id"], "files": sorted(files)})
        return f"{hub.endpoint}/{bound['repo_id']}/commit/main"

    def hf_hub_download(api, repo_id, filename, **kwargs):
        raise EntryNotFoundError(f"{filename} not in {repo_id}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "hf_hub_download", hf_hub_download)
    return calls


def run_with_endpoint(hub: LocalHub, code: str, cache_dir, timeout: float = 300) -> str:
    """Run `code` in a fresh Python process whose Hub is `hub` (`HF_ENDPOINT`, online, an empty cache); returns
    its stdout. huggingface_hub reads the endpoint when imported, hence the separate process. Only the repository
    is added to its path: an earlier test's remote-code module cache on this process's `sys.path` would shadow the
    child's `transformers_modules`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_") and key != "PYTHONPATH"}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(cache_dir), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_XET="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout
