"""Architecture rules that keep the pack easy to see: the core never imports ComfyUI."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the checkout's root (nothing this test process imported leaks in)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_core_imports_no_comfyui_module():
    code = ("import sys, pafu_core, pafu_lab.distill, pafu_lab.demo, pafu_lab.world.train, pafu_lab.world.evaluate;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'server', "
            "'nodes', 'latent_preview')]; print(bad); sys.exit(1 if bad else 0)")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_entry_point_imports_outside_comfyui():
    """ComfyUI imports the pack's __init__; outside ComfyUI it must not fail either."""
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('pack', '__init__.py', "
            "submodule_search_locations=['.']); m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; "
            "spec.loader.exec_module(m); print(m.WEB_DIRECTORY)")
    proc = run_python(code)
    assert proc.returncode == 0 and "./web" in proc.stdout, proc.stderr


def test_entry_point_loads_as_a_plain_module_too():
    """pytest (or a checkout folder like `ComfyUI-PaFuKV`, no valid package name) may load it bare."""
    code = ("import importlib.util; spec = importlib.util.spec_from_file_location('bare', '__init__.py');"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.WEB_DIRECTORY)")
    proc = run_python(code)
    assert proc.returncode == 0 and "./web" in proc.stdout, proc.stderr


def test_example_wan_config_parses_into_a_distillation_config():
    from pafu_lab.distill import _parse
    cfg = _parse(["--config", os.path.join(ROOT, "configs", "distill_wan21_1.3b.json")])
    assert cfg.targets == "future_student" and cfg.sse_source == "student" and cfg.rescore
    assert cfg.latent_size == (60, 104) and cfg.feature_tokens > 0 and cfg.device == "cuda"


def test_registry_metadata_and_requirements_agree():
    import base64
    import io
    import tomllib

    from PIL import Image
    meta = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    deps = meta["project"]["dependencies"]
    reqs = [line.strip() for line in open(os.path.join(ROOT, "requirements.txt"))
            if line.strip() and not line.startswith("#")]
    assert sorted(deps) == sorted(reqs) and not any(r.startswith("torch") for r in reqs)
    icon = meta["tool"]["comfy"]["Icon"]
    assert icon.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(icon.split(",", 1)[1]))).size == (64, 64)


RESEARCH = ("distill", "teacher", "demo", "video", "memory", "charts", "train", "evaluate", "oracles", "clips",
            "metrics")


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file: lazy imports count), from the source."""
    import ast
    graph = {}
    for pkg in ("pafu_core", "pafu_lab", "nodes"):
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                module = rel.removesuffix(".__init__")
                package = module if name == "__init__.py" else module.rpartition(".")[0]
                deps = set()
                for node in ast.walk(ast.parse(open(os.path.join(folder, name)).read())):
                    targets = []
                    if isinstance(node, ast.ImportFrom):
                        base = node.module or ""
                        if node.level:
                            parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                            base = ".".join(parent + ([base] if base else []))
                        targets = [base] + [f"{base}.{a.name}" for a in node.names]
                    elif isinstance(node, ast.Import):
                        targets = [a.name for a in node.names]
                    deps |= {t for t in targets if t.split(".")[0] in ("pafu_core", "pafu_lab", "nodes")}
                graph[module] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_two_modules_import_each_other_directly_or_in_a_circle():
    graph = import_graph()
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if d.startswith(m + ".") or m.startswith(d + "."):
                continue                                   # a package and its own submodules
            if state.get(d) == "open":
                raise AssertionError(" -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_runtime_never_reaches_the_research():
    """The nodes' import closure (and pafu_core's) holds no training, distillation, evaluation, oracle, demo
    or benchmark-chart module: those live in pafu_lab, which imports the runtime, never the reverse."""
    graph = import_graph()
    seen, todo = set(), [m for m in graph if m.split(".")[0] in ("nodes", "pafu_core")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    assert not [m for m in seen if m.startswith("pafu_lab")], sorted(m for m in seen if m.startswith("pafu_lab"))
    shipped = [m for m in seen if not m.startswith("pafu_core.distill")]     # the distillation the node runs
    assert not [m for m in shipped if m.rpartition(".")[2] in RESEARCH], sorted(shipped)
    code = ("import sys, pkgutil, importlib, pafu_core; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(pafu_core.__path__, 'pafu_core.')]; "
            "bad = [m for m in sys.modules if m.startswith('pafu_lab')]; print(bad); sys.exit(1 if bad else 0)")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_loading_the_pack_loads_no_distillation_module():
    """The shipped distillation is imported only when its node runs: nothing at module level of the nodes or
    of the rest of the runtime reaches ``pafu_core.distill`` (loading the pack stays as light as before)."""
    import ast
    top_level: dict[str, set[str]] = {}
    graph = import_graph()
    for m in graph:
        path = os.path.join(ROOT, *m.split(".")) + ".py"
        if not os.path.isfile(path):
            path = os.path.join(ROOT, *m.split("."), "__init__.py")
        body = ast.parse(open(path).read()).body
        names = set()
        for node in body:                                  # module level only: lazy imports are the point
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = m if path.endswith("__init__.py") else m.rpartition(".")[0]
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names |= {base} | {f"{base}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        top_level[m] = {d for d in names if d in graph and d != m}
    seen, todo = set(), [m for m in graph if m.split(".")[0] == "nodes" or
                         (m.startswith("pafu_core") and not m.startswith("pafu_core.distill"))]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += top_level[m]
    assert not [m for m in seen if m.startswith("pafu_core.distill")], sorted(seen)
    runtime = sorted(m for m in graph if m.startswith("pafu_core") and not m.startswith("pafu_core.distill"))
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {runtime!r}]; "
            "bad = [m for m in sys.modules if m.startswith('pafu_core.distill')]; print(bad); sys.exit(1 if bad else 0)")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runtime_requirements_are_exactly_what_the_runtime_imports():
    """requirements.txt (what ComfyUI users install) lists the third-party packages that pafu_core and the
    nodes import, and nothing the demo or the research alone needs (those: requirements-demo.txt)."""
    import ast
    import re
    provided = {"torch", "comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "latent_preview",
                "comfyui_version", "typing_extensions"}      # ComfyUI (and what it installs) and its torch
    distribution = {"PIL": "pillow"}
    imported = set()
    for pkg in ("pafu_core", "nodes"):
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in (f for f in files if f.endswith(".py")):
                for node in ast.walk(ast.parse(open(os.path.join(folder, name)).read())):
                    if isinstance(node, ast.Import):
                        imported |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and not node.level:
                        imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in provided
                   and m not in ("pafu_core", "nodes")}
    reqs = {re.split(r"[<>=!~ ]", line.strip())[0].lower() for line in open(os.path.join(ROOT, "requirements.txt"))
            if line.strip() and not line.startswith("#")}
    assert {distribution.get(m, m).lower() for m in third_party} == reqs, (sorted(third_party), sorted(reqs))


def _project_files(packages=("pafu_core", "pafu_lab", "nodes", "benchmarks", "tools")):
    for pkg in packages:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(folder, name), ROOT)


def test_runtime_modules_stay_short():
    """One concept per module: no pafu_core module over 400 lines."""
    long = {f: n for f in _project_files(("pafu_core",)) if (n := len(open(os.path.join(ROOT, f)).readlines())) > 400}
    assert not long, long


def test_no_module_reaches_into_another_modules_private_names():
    """A ``_name`` is its own module's: no other project module imports it or reads it off an object (the
    cache's public protocol is what native.py, the sampler and the policies use)."""
    import ast
    defined: dict[str, set[str]] = {}         # private name -> the files that define it
    used: list[tuple[str, str, int]] = []
    for f in _project_files():
        tree = ast.parse(open(os.path.join(ROOT, f)).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                defined.setdefault(node.name, set()).add(f)
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    if isinstance(getattr(node, "ctx", None), ast.Store):
                        defined.setdefault(node.attr, set()).add(f)
                else:
                    used.append((node.attr, f, node.lineno))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] != "__future__":
                for alias in node.names:
                    if alias.name.startswith("_") and (node.level or node.module.split(".")[0] in
                                                       ("pafu_core", "pafu_lab", "nodes")):
                        used.append((alias.name, f, node.lineno))
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id.startswith("_"):
                        defined.setdefault(t.id, set()).add(f)
    reach = [(name, f, line) for name, f, line in used if name in defined and f not in defined[name]]
    assert not reach, reach
