"""The real-ComfyUI ring: a real ComfyUI with this pack installed, driven through its server and frontend.

ComfyUI is found through ``COMFYUI_PATH`` (the full ring; CI gives it ComfyUI 0.27.0) and, for the
smoke ring of the oldest supported release, ``COMFYUI_OLDEST_PATH`` (CI: 0.8.0). Unset, the tests
are skipped with the reason printed; under ``CI=true`` a skip is a failure. The tests never touch
the ComfyUI tree they are pointed at: every server runs with its own temporary ``--base-directory``
(custom nodes, models, input, output, user), where this checkout is linked as the only custom node.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_LINK = "ComfyUI-PaFuKV"
ARTIFACTS = os.environ.get("PAFU_ARTIFACTS", os.path.join(ROOT, "artifacts"))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_OLDEST_PATH = os.environ.get("COMFYUI_OLDEST_PATH")
SKIP_REASON = ("COMFYUI_PATH is not set: to run the real-ComfyUI tests, set COMFYUI_PATH to a ComfyUI checkout "
               "(0.27 or newer, its requirements installed in this environment); it is not modified")
OLDEST_REASON = ("COMFYUI_OLDEST_PATH is not set: the smoke ring of the oldest supported ComfyUI (0.8.0) needs "
                 "a checkout of it")


RING_LOG = os.path.join(ARTIFACTS, "ring_log.txt")
PACK = "comfyui_pafukv_pack"


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
    here = os.path.dirname(os.path.abspath(__file__))
    ring = [item for item in items if str(item.fspath).startswith(here)]
    if not ring:
        return
    ci = os.environ.get("CI", "").lower() == "true"
    if not COMFYUI_PATH:
        print(f"\n[comfyui ring] skipped: {SKIP_REASON}", file=sys.stderr)
        if ci:
            raise pytest.UsageError(f"CI=true but the ComfyUI ring cannot run: {SKIP_REASON}")
        for item in ring:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        return
    oldest = [item for item in ring if "oldest" in item.keywords]
    if oldest and not COMFYUI_OLDEST_PATH:
        print(f"\n[comfyui ring] oldest-release smoke tests skipped: {OLDEST_REASON}", file=sys.stderr)
        if ci:
            raise pytest.UsageError(f"CI=true but the oldest-release smoke ring cannot run: {OLDEST_REASON}")
        for item in oldest:
            item.add_marker(pytest.mark.skip(reason=OLDEST_REASON))


def pytest_configure(config):
    config.addinivalue_line("markers", "oldest: smoke test against the oldest supported ComfyUI (COMFYUI_OLDEST_PATH)")


def comfy_root() -> str:
    return os.path.abspath(COMFYUI_PATH)


def comfy_version(root: str) -> str:
    return open(os.path.join(root, "comfyui_version.py")).read().split('"')[1]


def make_base_dir() -> str:
    """A fresh ComfyUI base directory holding only this checkout as a custom node (the user's tree
    stays as it was)."""
    base = tempfile.mkdtemp(prefix="pafu-comfy-base-")
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        os.makedirs(os.path.join(base, sub))
    os.symlink(ROOT, os.path.join(base, "custom_nodes", PACK_LINK))
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: str, port: int, log_path: str, base: str | None = None):
        self.root, self.port, self.log_path = root, port, log_path
        self.base = base or make_base_dir()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None
        self.version = comfy_version(root)

    @property
    def output_dir(self) -> str:
        return os.path.join(self.base, "output")

    def start(self, timeout: float = 300, env: dict | None = None) -> None:
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--disable-auto-launch", "--base-directory", self.base], cwd=self.root, stdout=log,
            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            start_new_session=True)
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

    def stop(self, remove_base: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if remove_base:
            shutil.rmtree(self.base, ignore_errors=True)

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


def start_server(root: str, artifacts: str, name: str, env: dict | None = None) -> Server:
    server = Server(root, free_port(), os.path.join(artifacts, f"{name}.log"))
    server.start(env=env)
    ours = [k for k in server.get("/object_info") if k.startswith("PaFu")]
    ci_line(f"ComfyUI {server.version} started in {server.startup_seconds:.0f} s on port {server.port}; "
            f"PaFu nodes found: {len(ours)}")
    server.post("/settings/Comfy.TutorialCompleted", True)
    return server


@pytest.fixture(scope="session")
def comfy(artifacts) -> Server:
    # a small cache memory ceiling, so that keep-all's refusal can be met through the server; the Hub offline
    server = start_server(comfy_root(), artifacts, "comfyui_server",
                          env={"PAFU_CACHE_LIMIT_GIB": "0.25", "HF_HUB_OFFLINE": "1"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def output_dir(comfy) -> str:
    return comfy.output_dir


@pytest.fixture(scope="session")
def heads_dir(comfy) -> str:
    path = os.path.join(comfy.base, "models", "pafu_heads")
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


@pytest.fixture(scope="session")
def pack(tmp_path_factory):
    """This pack imported in-process next to the real ComfyUI modules (its nodes by id)."""
    root = os.path.abspath(os.environ["COMFYUI_PATH"])
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True           # as `main.py --cpu`; must precede model_management
    # ComfyUI's folders in a temporary base directory: the checkout it lives in stays untouched
    comfy.cli_args.args.base_directory = str(tmp_path_factory.mktemp("comfy-base"))
    import folder_paths  # noqa: F401  (ComfyUI's model folders)
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    def run_async(coro_fn):     # a fresh thread: playwright may hold this thread's event loop
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(coro_fn())).result()

    ext = run_async(module.comfy_entrypoint)
    nodes = {cls.define_schema().node_id: cls for cls in run_async(ext.get_node_list)}
    return module, nodes


def run(node_cls, **kwargs):
    """A V3 node's execute, its outputs as a tuple."""
    return node_cls.execute(**kwargs).args


def require_core_ar():
    """The native autoregressive path exists from ComfyUI 0.27 on."""
    if not os.path.isfile(os.path.join(comfy_root(), "comfy", "ldm", "wan", "ar_model.py")):
        reason = f"ComfyUI {comfy_version(comfy_root())} has no native autoregressive video (0.27+)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}; CI's COMFYUI_PATH must be 0.27 or newer")
        pytest.skip(reason)
