"""The package's shape: no import circle in `bnrepro/`; reading run directories, plotting and a sweep's spec stay
light (no jax, no orbax, no ray); no module chooses a matplotlib backend at import (scripts choose Agg; notebooks keep Jupyter's inline
backend and so show their figures)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "bnrepro"
# What reading a run directory, plotting or reading a sweep's spec must not load: the trainer's stack and Ray.
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "grain", "tensorflow", "tensorflow_datasets", "ray")
LIGHT_MODULES = (
    "bnrepro.figures",
    "bnrepro.training.run_dir",
    "bnrepro.sweep",
    "bnrepro.sweep.points",
    "bnrepro.sweep.status",
    "bnrepro.sweep.summary",
)


# --- The import graph -------------------------------------------------------------------------------------------


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package in folder `root` by dotted name; a package's `__init__.py` is the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _known(name: str, modules: Iterable[str]) -> str | None:
    """`name` if it is a module of the package, else its longest prefix that is (an imported attribute's module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The package's modules that module `name` (at `path`) imports anywhere in its body: at module level, in
    functions, under `if TYPE_CHECKING`. `from P import x` imports module `P.x` if there is one, else P."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, one level up per extra dot
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in (_known(target, modules) for target in targets) if t and t != name)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle `[a, b, ..., a]` per strongly connected component of more than one module (Tarjan), or of one
    module importing itself."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        if len(component) > 1 or component[0] in graph.get(component[0], ()):
            cycles.append(_cycle_through(min(component), set(component), graph))
    return sorted(cycles)


def _cycle_through(start: str, component: set[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside `component` (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, ())):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if successor in component and successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def test_cycle_finder_finds_planted_cycles_and_nothing_else():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"c"}, "d": {"e"}, "e": {"f", "d"}, "f": set()}
    assert import_cycles(graph) == [["a", "b", "a"], ["c", "c"], ["d", "e", "d"]]


def test_import_graph_reads_every_kind_of_import(tmp_path):
    """A planted package: a circle closed by a function-level import and a relative import, a package's
    `__init__` importing its submodule, and imports of attributes, submodules and outside modules."""
    files = {
        "pkg/__init__.py": "from pkg.sub import leaf\n",
        "pkg/a.py": "import os\nfrom . import b\nfrom pkg.sub.leaf import CONSTANT\n",
        "pkg/b.py": "import json\n\ndef later():\n    from pkg.a import something\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "import pkg.sub\nCONSTANT = 1\n",
        "pkg/sub/other.py": "from .. import sub\nfrom ..sub import leaf as renamed\nimport numpy\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph == {
        "pkg": {"pkg.sub.leaf"},
        "pkg.a": {"pkg.b", "pkg.sub.leaf"},
        "pkg.b": {"pkg.a"},
        "pkg.sub": set(),
        "pkg.sub.leaf": {"pkg.sub"},
        "pkg.sub.other": {"pkg.sub", "pkg.sub.leaf"},
    }
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_no_import_circle_in_bnrepro():
    graph = import_graph(REPO / PACKAGE, PACKAGE)
    assert {"bnrepro", "bnrepro.figures", "bnrepro.layers", "bnrepro.training.run_dir"} <= set(graph)
    assert "bnrepro.batchnorm" in graph["bnrepro.layers"]  # the graph sees the package's own imports
    cycles = import_cycles(graph)
    assert not cycles, "import circles in bnrepro/:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


# --- What importing loads ---------------------------------------------------------------------------------------


def _run_python(code: str, **env: str) -> dict:
    """The JSON that `code` prints, run by this interpreter in a fresh process from the repository's root."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def heavy_modules_loaded(statement: str) -> list[str]:
    """The `HEAVY` top-level packages in `sys.modules` after running `statement` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    return [name for name in _run_python(code) if name in HEAVY]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_reading_run_directories_and_plotting_load_no_jax_or_orbax(module):
    assert heavy_modules_loaded(f"import {module}") == []


def test_a_sweep_file_reads_the_spec_without_jax_or_ray_and_the_other_names_load_their_modules():
    """`from bnrepro.sweep import Sweep, product` (a sweep file's import) loads neither jax nor ray; every other
    name the package exports imports its module when first read (`run_sweep`: the Ray engine)."""
    assert heavy_modules_loaded("from bnrepro.sweep import Sweep, product") == []
    every_name = "import bnrepro.sweep\nfor name in bnrepro.sweep.__all__:\n    getattr(bnrepro.sweep, name)"
    assert {"jax", "ray"} <= set(heavy_modules_loaded(every_name))


def test_the_command_line_imports_tensorflow_datasets_only_to_read_a_tfds_dataset():
    """Start-up: `bnrepro.main` and the loop import no tensorflow_datasets (~0.5 s) until a config reads tfds or
    ImageNet; the ImageNet pipeline imports it when it opens a split."""
    assert "tensorflow_datasets" not in heavy_modules_loaded("import bnrepro.main")
    opened = "from bnrepro.data import imagenet\ntry:\n    imagenet.open_split('train', '/nonexistent')\nexcept Exception:\n    pass"
    assert "tensorflow_datasets" in heavy_modules_loaded(opened)


def test_the_command_line_imports_grain_and_pil_only_for_an_imagenet_pipeline():
    """Start-up: the datasets held on the device need neither grain nor PIL (~0.2 s of imports with what grain
    pulls in); building an ImageNet pipeline imports grain, resizing an image PIL."""
    code = "import json, sys\n{}\nprint(json.dumps([m for m in ('grain', 'PIL') if m in sys.modules]))"
    assert _run_python(code.format("import bnrepro.main")) == []
    built = "import numpy as np\nfrom bnrepro.data import imagenet\nimagenet.eval_dataset([0], batch_size=1)"
    assert _run_python(code.format(built)) == ["grain"]
    resize = "image_decoding.crop_and_resize(np.zeros((4, 4, 3), np.uint8), image_decoding.CropBox(0, 0, 4, 4), 2)"
    resized = f"{built}\nfrom bnrepro.data import image_decoding\n{resize}"
    assert _run_python(code.format(resized)) == ["grain", "PIL"]


def test_the_heavy_module_check_sees_jax():
    assert "jax" in heavy_modules_loaded("import bnrepro.batchnorm")


# --- matplotlib backends ----------------------------------------------------------------------------------------


def _modules_importing_matplotlib() -> list[str]:
    modules = package_modules(REPO / PACKAGE, PACKAGE)
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            imported += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] == "matplotlib" for m in imported):
                found.append(name)
                break
    return found


def backend_changes(statement: str) -> dict:
    """What running `statement` does to matplotlib's backend, in a fresh interpreter started with the `svg`
    backend (MPLBACKEND, as Jupyter sets its inline backend): the backend after, and the calls of
    `matplotlib.use` and `pyplot.switch_backend` made."""
    code = textwrap.dedent(f"""
        import json
        import matplotlib
        import matplotlib.pyplot

        calls = []
        def recording(function):
            def record(*args, **kwargs):
                calls.append(f"{{function.__module__}}.{{function.__name__}}{{args}}")
                return function(*args, **kwargs)
            return record
        matplotlib.use = recording(matplotlib.use)
        matplotlib.pyplot.switch_backend = recording(matplotlib.pyplot.switch_backend)
        {statement}
        print(json.dumps({{"backend": matplotlib.get_backend(), "calls": calls}}))
    """)
    return _run_python(code, MPLBACKEND="svg")


def test_no_bnrepro_module_sets_a_matplotlib_backend():
    modules = _modules_importing_matplotlib()
    assert "bnrepro.figures" in modules
    changes = backend_changes("; ".join(f"import {m}" for m in modules))
    assert changes == {"backend": "svg", "calls": []}, f"importing {modules} changed matplotlib's backend"


def test_the_backend_check_sees_a_backend_chosen_at_import():
    changes = backend_changes('import matplotlib; matplotlib.use("Agg")')
    assert changes["backend"].lower() == "agg" and changes["calls"][0].startswith("matplotlib.use(")


def test_no_module_of_the_package_is_over_600_lines(tmp_path: Path):
    """House rule: a module of more than 600 lines does several jobs; each job gets its own module. The count
    sees a 601-line module in a package written here."""

    def over_600_lines(root: Path, package: str) -> dict[str, int]:
        lengths = {name: len(path.read_text().splitlines()) for name, path in package_modules(root, package).items()}
        return {name: count for name, count in lengths.items() if count > 600}

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.py").write_text("x = 0\n" * 601)
    (tmp_path / "short.py").write_text("x = 0\n" * 600)
    assert over_600_lines(tmp_path, "pkg") == {"pkg.sub.long": 601}
    assert over_600_lines(REPO / PACKAGE, PACKAGE) == {}
