"""Results outlive the code: tables and figures are made from run records alone.

- the import layers of README "Architecture" hold (a test of every import edge, function-
  local ones included, so the layering cannot rot);
- ``mtrl_bench.analysis`` rebuilds the committed tables byte for byte in a process where
  torch, gin, the method registry and the configuration code cannot be imported;
- a run of a method that is not installed is tabled, labelled and ordered from its record;
- ``upgrade-records`` adds the fields tables read to older records, once, and nothing else.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from synthetic_runs import build

from mtrl_bench.identity import cell_id
from mtrl_bench.runs.rundir import run_dir, scan_runs

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mtrl_bench"

#: README "Architecture", bottom to top: a module imports its own layer or lower ones;
#: analysis and core are side by side and never import each other
LAYERS = {
    "foundation": 0, "record": 1, "analysis": 2, "core": 2, "planning": 3, "running": 4,
    "interface": 5,
}
SIBLINGS_APART = {("analysis", "core"), ("core", "analysis")}
#: what analysis may import from outside the package: the standard library and these
ANALYSIS_THIRD_PARTY = {"numpy", "scipy", "pandas", "tabulate", "matplotlib", "cycler"}


def layer(module: str) -> str:
    """The layer of ``module`` (dotted, without the ``mtrl_bench.`` prefix)."""
    if module in ("", "errors", "io", "identity", "suites", "provenance", "configs"):
        return "foundation"
    if module in ("config", "bindings", "plan", "request"):
        return "planning"
    if module == "runs.rundir":
        return "record"
    top = module.split(".")[0]
    if top == "analysis":
        return "analysis"
    if top in ("training", "data", "evaluation", "method", "methods"):
        return "core"
    if top == "runs":
        return "running"
    if module in ("cli", "__main__"):
        return "interface"
    raise AssertionError(f"mtrl_bench.{module} has no layer: add it to README Architecture "
                         "and to this test")


def imports(path: Path, module: str) -> list[str]:
    """Every module ``path`` imports, anywhere in it (absolute, dotted)."""
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.append(name)
            if node.module is None or name in ("mtrl_bench", "mtrl_bench.analysis"):
                found += [f"{name}.{alias.name}" for alias in node.names
                          if (PACKAGE / Path(*f"{name}.{alias.name}".split(".")[1:])
                              ).with_suffix(".py").exists()]
    return found


def package_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix("__init__")
            .rstrip("."): p for p in PACKAGE.rglob("*.py")}


def test_every_import_edge_keeps_to_the_layers():
    problems = []
    for module, path in package_modules().items():
        source = layer(module)
        for target in imports(path, f"mtrl_bench.{module}" if module else "mtrl_bench"):
            if target == "mtrl_bench" or target.startswith("mtrl_bench."):
                dest = layer(target.removeprefix("mtrl_bench").lstrip("."))
                if LAYERS[dest] > LAYERS[source] or (source, dest) in SIBLINGS_APART:
                    problems.append(f"{module} ({source}) imports {target} ({dest})")
            elif source == "analysis":
                top = target.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ANALYSIS_THIRD_PARTY:
                    problems.append(f"{module} (analysis) imports {target}")
    assert not problems, "\n".join(problems)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, function-local imports included."""
    modules = package_modules()
    graph = {}
    for module, path in modules.items():
        deps = set()
        for target in imports(path, f"mtrl_bench.{module}" if module else "mtrl_bench"):
            if target == "mtrl_bench" or target.startswith("mtrl_bench."):
                name = target.removeprefix("mtrl_bench").lstrip(".")
                while name and name not in modules:  # a name imported from a module
                    name = name.rpartition(".")[0]
                if name != module:
                    deps.add(name)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_even_through_function_local_imports():
    """Function-local imports keep the command line fast (torch loads only where needed);
    none of them hides a cycle."""
    assert cycles(import_graph()) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_layering_test_finds_a_planted_edge(tmp_path):
    planted = tmp_path / "cells.py"
    planted.write_text("def f():\n    from mtrl_bench.config import plan_run\n"
                       "    from ..method import get_method_class\n")
    found = imports(planted, "mtrl_bench.analysis.cells")
    assert "mtrl_bench.config" in found and "mtrl_bench.method" in found
    assert layer("config") == "planning" and layer("method") == "core"


#: a process where analysis finds none of the code that makes runs
BLOCKED_IMPORTS = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("torch", "gin", "methods", "mtrl_bench.methods", "mtrl_bench.method",
               "mtrl_bench.config", "mtrl_bench.training", "mtrl_bench.evaluation",
               "mtrl_bench.data", "mtrl_bench.runs.runner", "mtrl_bench.runs.sweep")

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} may not be imported here")
            return None

    sys.meta_path.insert(0, Blocked())
""")


def analyse_without_registry(runs: Path, out: Path, plots: bool = False) -> None:
    script = BLOCKED_IMPORTS + textwrap.dedent(f"""
        from pathlib import Path
        from mtrl_bench.analysis.grid import TableOptions
        from mtrl_bench.analysis.tables import build_tables
        build_tables(Path({str(runs)!r}), Path({str(out)!r}) / "tables", TableOptions())
        if {plots!r}:
            from mtrl_bench.analysis.plots import build_plots
            build_plots(Path({str(runs)!r}), Path({str(out)!r}) / "figures")
        assert not [m for m in sys.modules if m == "torch" or m == "gin"
                    or m.startswith("mtrl_bench.method")]
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=out)


def committed_runs(dest: Path) -> Path:
    """A copy of the run files committed to the repository (no run in progress here)."""
    listed = subprocess.run(["git", "ls-files", "-z", "results/runs"], cwd=REPO,
                            capture_output=True, check=False)
    files = [f for f in listed.stdout.decode().split("\0") if f] if listed.returncode == 0 \
        else [str(p.relative_to(REPO)) for p in (REPO / "results/runs").rglob("*")
              if p.is_file()]
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return dest / "results" / "runs"


def test_committed_tables_rebuild_byte_for_byte_from_run_records_alone(tmp_path):
    runs = committed_runs(tmp_path)
    analyse_without_registry(runs, tmp_path)
    committed = sorted(p.name for p in (REPO / "results/tables").iterdir())
    rebuilt = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert rebuilt == committed
    different = [name for name in committed if (tmp_path / "tables" / name).read_bytes()
                 != (REPO / "results/tables" / name).read_bytes()]
    assert not different, f"rebuilt tables differ from the committed ones: {different}"


def _as_uninstalled(run_path: Path, runs: Path, method: str, role: dict, **params) -> Path:
    """A copy of a synthetic run as if made by ``method``, a package not installed here."""
    meta = json.loads((run_path / "meta.json").read_text())
    identity = meta["identity"]
    identity["method"] = {**identity["method"], "name": method, **params}
    meta.update(method=method, identity=identity, cell=cell_id(identity), role=role,
                default_method_identity={**meta["default_method_identity"], "name": method})
    dest = run_dir(runs.parent, meta["suite"], meta["quality"], method, meta["cell"],
                   meta["seed"])
    shutil.copytree(run_path, dest)
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def test_a_method_not_installed_is_tabled_from_its_record(tmp_path):
    runs = tmp_path / "results" / "runs"
    build(runs)
    made = [r for r in scan_runs(runs) if r.method == "socodt-fixed" and r.status == "finished"]
    assert made
    baseline = {"role": "baseline", "ablation_of": None, "components": None, "order": None}
    ablation = {"role": "ablation", "ablation_of": "socodt", "components": "Z", "order": None}
    for run in made:
        _as_uninstalled(run.path, runs, "zeta-dt", baseline)
        _as_uninstalled(run.path, runs, "zeta-dt", baseline, q1=0.01)
        _as_uninstalled(run.path, runs, "eta-dt", ablation)
    analyse_without_registry(runs, tmp_path, plots=True)
    table1 = pd.read_csv(tmp_path / "tables" / "table1.csv")
    rows = list(dict.fromkeys(table1["row"]))
    # labelled from its record; a baseline without an order after those with one
    assert rows[:6] == ["promptdt", "mtdt", "harmodt-f", "harmodt-m", "zeta-dt",
                        "zeta-dt [q1=0.01]"]
    table4 = pd.read_csv(tmp_path / "tables" / "table4.csv")
    assert set(table4.loc[table4["row"] == "eta-dt", "components"]) == {"Z"}
    ablations = list(dict.fromkeys(table4["row"]))
    assert ablations.index("socodt-fixed") < ablations.index("eta-dt") < ablations.index("socodt")
    assert (tmp_path / "figures" / "index.md").exists()


def test_upgrade_records_adds_missing_fields_once(tmp_path):
    from mtrl_bench.cli import main

    runs = tmp_path / "results" / "runs"
    build(runs)
    finished = [r for r in scan_runs(runs) if r.status == "finished"]
    before = {}
    for run in finished:
        meta = json.loads((run.path / "meta.json").read_text())
        del meta["default_method_identity"]
        del meta["role"]["order"]
        (run.path / "meta.json").write_text(json.dumps(meta))
        before[run.path] = meta
    assert main(["upgrade-records", "--runs", str(runs), "--dry-run"]) == 0
    assert json.loads((finished[0].path / "meta.json").read_text()) == before[finished[0].path]
    assert main(["upgrade-records", "--runs", str(runs)]) == 0
    for run in finished:
        meta = json.loads((run.path / "meta.json").read_text())
        added = {k: v for k, v in meta.items() if k not in before[run.path]}
        assert set(added) == {"default_method_identity", "record_upgrades"}
        assert meta["default_method_identity"]["name"] == run.method
        assert isinstance(meta["role"]["order"], int)
        assert meta["record_upgrades"][0]["added"] == ["role.order", "default_method_identity"]
        unchanged = {k: v for k, v in meta.items() if k in before[run.path] and k != "role"}
        assert unchanged == {k: v for k, v in before[run.path].items() if k != "role"}
    first = (finished[0].path / "meta.json").read_text()
    assert main(["upgrade-records", "--runs", str(runs)]) == 0
    assert (finished[0].path / "meta.json").read_text() == first  # nothing twice


@pytest.mark.parametrize("module", ["mtrl_bench.analysis.tables", "mtrl_bench.analysis.plots"])
def test_analysis_imports_with_the_code_that_makes_runs_blocked(module):
    subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS + f"import {module}"], check=True)
