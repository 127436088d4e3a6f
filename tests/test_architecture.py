"""The hub package's layers (docs/architecture.md, "Layers"): which room may import which.

Imports are read with ``ast`` from the source, so the rule holds for every module whether a
test imports it or not. Each module is then imported alone in a fresh interpreter: an import
circle fails there even when the order of a test run hides it.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "server_monitor")

# layer -> the layers it may import (besides itself). "" is the package root: server_monitor/cli.py
# and __main__.py (the command line) may import everything; __init__.py holds only __version__.
ALLOWED = {
    "core": set(),
    "storage": {"core"},
    "auth": {"core"},
    "serving": {"core", "storage", "auth"},
    "jobs": {"core", "storage", "auth", "serving"},
    "": {"core", "storage", "auth", "serving", "jobs"},
}
LAYERS = sorted(name for name in ALLOWED if name)

# Imports inside a function, each deferring a heavy dependency on purpose (file, module) -> why.
# Every one also says why in a comment starting with "# Deferred" just above it.
DEFERRED = {
    ("server_monitor/cli.py", "uvicorn"): "only `serve` runs the ASGI server",
    ("server_monitor/serving/asgi.py", "datasette.app"): "the fleet publisher imports asgi, never builds Datasette",
    ("server_monitor/serving/asgi.py", "datasette.utils"): "with datasette.app, same reason",
    ("server_monitor/serving/analyst.py", "datasette.utils"): "the fleet publisher imports it through asgi, same reason",
}
# Top-level code outside the package whose in-function imports are held to the same rule.
OUTSIDE = ["ingest.py"] + sorted(os.path.join("plugins", name) for name in os.listdir(os.path.join(ROOT, "plugins"))
                                 if name.endswith(".py"))


def package_files():
    """Paths (relative to the repository root) of every module of ``server_monitor``."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        found += [os.path.relpath(os.path.join(folder, name), ROOT) for name in files if name.endswith(".py")]
    return sorted(found)


def module_name(path):
    """``server_monitor/serving/hub.py`` -> ``server_monitor.serving.hub`` (``__init__`` dropped)."""
    parts = path[:-3].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module):
    """The layer of an absolute ``server_monitor`` module name ("" for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def imports(path):
    """``[(absolute module, lineno, inside_function)]`` for every import statement of ``path``.

    ``from ..core import config`` in ``server_monitor/jobs/alerts.py`` gives
    ``server_monitor.core.config`` when ``config`` is a module, else ``server_monitor.core``.
    """
    with open(os.path.join(ROOT, path), encoding="utf-8") as fp:
        tree = ast.parse(fp.read(), path)
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - child.level + 1]
                    base = ".".join(base + ([child.module] if child.module else []))
                else:
                    base = child.module
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    as_file = os.path.join(ROOT, *candidate.split(".")) + ".py"
                    found.append((candidate if os.path.exists(as_file) else base, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def test_item1_every_layer_has_its_folder():
    """The folders are the layers of docs/architecture.md: no module left flat beside cli.py."""
    folders = sorted(name for name in os.listdir(PACKAGE)
                     if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")))
    assert folders == LAYERS
    flat = sorted(name for name in os.listdir(PACKAGE) if name.endswith(".py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py"]


# The agent modules the hub imports: the text rule both sides clean and check strings with
# (issue 22 item 6, docs/security.md N2), and the rule that reduces hwmon readings to one per chip
# (issue 26 item 7: the agent sends it, the hub stores any agent's readings by it). They live in the
# agent's package because the zipapp must carry them; they import nothing but the standard library.
SHARED_WITH_AGENT = {"monitor_agent.textrule", "monitor_agent.temperatures"}


@pytest.mark.parametrize("path", package_files())
def test_item1_imports_follow_the_layers(path):
    """A module imports only its own layer and the layers below it (ALLOWED), never the
    top-level ``ingest.py``, the plugins or the agent (but for :data:`SHARED_WITH_AGENT`)."""
    here = layer_of(module_name(path))
    for module, lineno, _ in imports(path):
        top = module.split(".")[0]
        if module in SHARED_WITH_AGENT:
            continue
        assert top not in ("ingest", "plugins", "monitor_agent", "agent"), f"{path}:{lineno} imports {module}"
        if top != "server_monitor":
            continue
        there = layer_of(module)
        if module == "server_monitor" or there == here:
            continue
        assert there in ALLOWED[here], f"{path}:{lineno}: layer {here or 'root'!r} may not import {module} ({there!r})"


@pytest.mark.parametrize("path", package_files() + OUTSIDE)
def test_item1_no_imports_inside_functions_but_the_deferred(path):
    """Imports sit at the top of the module; the few that defer a heavy dependency are listed in
    DEFERRED and say why in a ``# Deferred`` comment."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as fp:
        lines = fp.read().splitlines()
    for module, lineno, in_function in imports(path):
        if not in_function:
            continue
        assert (path, module) in DEFERRED, f"{path}:{lineno}: import of {module} inside a function"
        above = [line.strip() for line in lines[max(0, lineno - 5):lineno - 1]]
        assert any(line.startswith("# Deferred") for line in above), f"{path}:{lineno}: no '# Deferred' comment"


def test_item1_the_agent_never_imports_the_hub():
    """The zipapp ships ``monitor_agent/`` alone: it must not need ``server_monitor``."""
    agent = ["agent.py"] + sorted(os.path.join("monitor_agent", name)
                                  for name in os.listdir(os.path.join(ROOT, "monitor_agent")) if name.endswith(".py"))
    for path in agent:
        for module, lineno, _ in imports(path):
            assert module.split(".")[0] != "server_monitor", f"{path}:{lineno} imports {module}"


def test_item1_no_import_circle():
    """The modules' imports (in functions too) form no circle, e.g. the former
    ``fleet -> queries -> hub -> leader -> fleet_share -> fleet``."""
    graph = {}
    for path in package_files():
        name = module_name(path)
        graph[name] = {module for module, _, _ in imports(path)
                       if module.startswith("server_monitor.") and module != name}
    state = {}

    def walk(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != "open", "import circle: " + " -> ".join(trail + [nxt])
            if nxt not in state:
                walk(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])


@pytest.mark.parametrize("module", [module_name(p) for p in package_files() if not p.endswith("__main__.py")])
def test_item1_every_module_imports_alone(module):
    """``python -c "import <module>"`` in a fresh interpreter: no import circle, whatever the order."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_item1_command_line_entry_points():
    """``python -m server_monitor`` and the ``server-monitor`` console script still start."""
    result = subprocess.run([sys.executable, "-m", "server_monitor", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "serve" in result.stdout, result.stderr[-2000:]
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fp:
        assert 'server-monitor = "server_monitor.cli:main"' in fp.read()


def test_the_shared_text_rule_imports_only_the_standard_library():
    """What the hub takes from the agent's package stays a leaf: no agent machinery comes along."""
    for module in SHARED_WITH_AGENT:
        path = os.path.join(os.path.dirname(PACKAGE), *module.split(".")) + ".py"
        for imported, lineno, _ in imports(path):
            assert imported.split(".")[0] in sys.stdlib_module_names, f"{path}:{lineno} imports {imported}"
