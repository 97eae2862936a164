"""The import graph of ``jaxface/`` is a one-way house (docs/architecture.md).

Every module sits in one layer of ``LAYERS`` (lowest first); a module may import from
its own layer or a lower one, never from a higher one, and the graph has no cycle.
Imports are read with ``ast`` -- module level and function-local alike -- so a lazy
import inside a function is an arrow like any other.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxface"

# Lowest first. A prefix names a module or a package (with everything below it); the
# longest matching prefix decides. ``jaxface`` itself (the package façade, which
# imports the analyzer lazily) is the roof.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core",
        (
            "jaxface.config",
            "jaxface.parallel",
            "jaxface.workdir_lock",
            "jaxface.checkpoint_checks",
            "jaxface.progress",
            "jaxface.logs",
            "jaxface.compile_cache",
            "jaxface.xla_cpu",
            "jaxface.checkpoint_weights",
        ),
    ),
    ("ops", ("jaxface.ops", "jaxface.losses")),
    ("data", ("jaxface.data",)),
    ("models", ("jaxface.models",)),
    ("evaluation", ("jaxface.evaluation",)),
    ("tasks", ("jaxface.tasks",)),
    ("train", ("jaxface.train", "jaxface.training")),
    (
        "apps",
        (
            "jaxface.analyzer",
            "jaxface.export",
            "jaxface.report",
            "jaxface.quickstart",
            "jaxface.calibration",
            "jaxface.detect_input",
            "jaxface.trained_model",
        ),
    ),
    ("cli", ("jaxface.main", "jaxface.cli")),
    ("package", ("jaxface",)),
]


def module_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every ``.py`` below ``root`` (a package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, is_package: bool, node: ast.AST, known) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")
            if not is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            parent = ".".join(base + ([node.module] if node.module else []))
        else:
            parent = node.module or ""
        # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
        names = [
            f"{parent}.{a.name}" if f"{parent}.{a.name}" in known else parent for a in node.names
        ]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in its body)."""
    files = module_files(root)
    graph = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_imported(module, path.name == "__init__.py", node, files))
    return graph


def layer_of(module: str, layers=LAYERS) -> int | None:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            root_only = p.count(".") == 0
            hit = module == p if root_only else (module == p or module.startswith(p + "."))
            if hit and len(p) > best:
                best, rank = len(p), i
    return rank


def upward_arrows(graph, layers=LAYERS) -> list[str]:
    bad = []
    for src in sorted(graph):
        for dst in sorted(graph[src]):
            a, b = layer_of(src, layers), layer_of(dst, layers)
            if a is not None and b is not None and b > a:
                bad.append(f"{src} ({layers[a][0]}) -> {dst} ({layers[b][0]})")
    return bad


def unplaced(graph, layers=LAYERS) -> list[str]:
    return sorted(m for m in graph if layer_of(m, layers) is None)


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ---------------------------------------------------------------------------------
# The checker itself catches what it should
# ---------------------------------------------------------------------------------


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_flags_a_synthetic_upward_arrow_and_cycle(tmp_path):
    pkg = _write(
        tmp_path / "jaxface",
        {
            "__init__.py": "",
            "ops/__init__.py": "",
            "ops/boxes.py": "import numpy\n",
            # a function-local upward import: ops -> tasks
            "ops/bad.py": "def f():\n    from jaxface.tasks import det\n    return det\n",
            "tasks/__init__.py": "",
            "tasks/det.py": "from jaxface.ops import boxes\nfrom . import rec\n",
            "tasks/rec.py": "from .det import x\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["jaxface.tasks.det"] == {"jaxface.ops.boxes", "jaxface.tasks.rec"}
    assert upward_arrows(graph) == ["jaxface.ops.bad (ops) -> jaxface.tasks.det (tasks)"]
    assert cycles(graph) == [["jaxface.tasks.det", "jaxface.tasks.rec"]]
    graph["jaxface.newthing"] = set()
    assert unplaced(graph) == ["jaxface.newthing"]


def test_layer_prefixes_take_the_longest_match():
    assert LAYERS[layer_of("jaxface.train")][0] == "train"
    assert LAYERS[layer_of("jaxface.evaluation.verification")][0] == "evaluation"
    assert LAYERS[layer_of("jaxface")][0] == "package"
    assert layer_of("jaxface.trainer_extras") is None  # a prefix matches whole names only


# ---------------------------------------------------------------------------------
# jaxface/ itself
# ---------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    assert unplaced(import_graph(ROOT)) == []


def test_no_import_from_a_higher_layer():
    assert upward_arrows(import_graph(ROOT)) == []


def test_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []
