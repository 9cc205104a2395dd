"""The real-ComfyUI ring: the vendored upstream ComfyUI with this pack installed.

ComfyUI is found through ``COMFYUI_PATH``; unset, every test here is skipped with the reason printed.
Under ``CI=true`` a skip is turned into a failure (CI must run this ring). ``.ci/run`` extracts the
vendored ComfyUI 0.8.0, installs its requirements and sets ``COMFYUI_PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_LINK = "ComfyUI-PaFuKV"
ARTIFACTS = os.environ.get("PAFU_ARTIFACTS", os.path.join(ROOT, "artifacts"))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
SKIP_REASON = ("COMFYUI_PATH is not set: the real-ComfyUI ring needs a ComfyUI checkout "
               "(.ci/run extracts the vendored 0.8.0 and sets it)")


RING_LOG = os.path.join(ARTIFACTS, "ring_log.txt")


def ci_line(message: str) -> None:
    """A line for the CI log, repeated in pytest's terminal summary (which output capture never hides).
    Kept in a file: test modules and this conftest may be separate module instances."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(RING_LOG, "a") as fh:
        fh.write(message + "\n")


def pytest_sessionstart(session):
    if os.path.exists(RING_LOG):
        os.remove(RING_LOG)


def pytest_terminal_summary(terminalreporter):
    if os.path.exists(RING_LOG):
        terminalreporter.section("real ComfyUI ring")
        with open(RING_LOG) as fh:
            for line in fh:
                terminalreporter.write_line(line.rstrip())


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    ring = [item for item in items if str(item.fspath).startswith(here)]
    if not ring:
        return
    print(f"\n[comfyui ring] skipped: {SKIP_REASON}", file=sys.stderr)
    if os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError(f"CI=true but the ComfyUI ring cannot run: {SKIP_REASON}")
    for item in ring:
        item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def comfy_root() -> str:
    return os.path.abspath(COMFYUI_PATH)


def install_pack(root: str) -> str:
    """Link this checkout into ComfyUI's custom_nodes (as a user who clones it there would have it)."""
    link = os.path.join(root, "custom_nodes", PACK_LINK)
    if os.path.islink(link):
        if os.path.realpath(link) != os.path.realpath(ROOT):
            os.unlink(link)
            os.symlink(ROOT, link)
    elif not os.path.exists(link):
        os.symlink(ROOT, link)
    elif os.path.realpath(link) != os.path.realpath(ROOT):
        raise RuntimeError(f"{link} exists and is not this checkout")
    return link


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: str, port: int, log_path: str):
        self.root, self.port, self.log_path = root, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self, timeout: float = 300) -> None:
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--disable-auto-launch"], cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.get("/object_info/PaFuARChunkSampler")
                self.startup_seconds = time.time() - t0
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.load(r)

    def post(self, path: str, body) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            text = e.read()
        return json.loads(text) if text.strip() else {}

    def log(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def wait_history(self, prompt_id: str, timeout: float = 900) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error") or entry["status"]["completed"]:
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run_prompt(self, prompt: dict, timeout: float = 900) -> dict:
        resp = self.post("/prompt", {"prompt": prompt})
        if "prompt_id" not in resp:
            raise AssertionError(f"prompt refused: {resp}")
        return self.wait_history(resp["prompt_id"], timeout)


@pytest.fixture(scope="session")
def artifacts() -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def comfy(artifacts) -> Server:
    root = comfy_root()
    install_pack(root)
    server = Server(root, free_port(), os.path.join(artifacts, "comfyui_server.log"))
    server.start()
    version = open(os.path.join(root, "comfyui_version.py")).read().split('"')[1]
    ours = [k for k in server.get("/object_info") if k.startswith("PaFu")]
    ci_line(f"ComfyUI {version} started in {server.startup_seconds:.0f} s on port {server.port}; "
            f"PaFu nodes found: {len(ours)}")
    server.post("/settings/Comfy.TutorialCompleted", True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def output_dir() -> str:
    return os.path.join(comfy_root(), "output")


@pytest.fixture(scope="session")
def heads_dir() -> str:
    path = os.path.join(comfy_root(), "models", "pafu_heads")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync", "--no-first-run",
                                    "--disable-quic"])
        yield b
        b.close()
