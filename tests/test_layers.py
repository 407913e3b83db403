"""The package's import graph: no cycle, and no module imports one from a layer above its own.

The layers follow the data flow, bottom to top:

0. foundations: errors, data-dir paths, file names, file safety, logging, sd_notify;
1. storage: the database (``imgindex.db``, the only SQL) and the library's write lock;
2. files, pixels and vectors without a library: disks, walking roots, decoding, perceptual
   hashes, the models and the embedding service's client and wire format, k-means, FAISS files;
3. the library: opening one, its FAISS cache, its reads;
4. work over one library, a command's each: clusters and their views, ingesting, duplicates,
   the map, export, the report, check, similar-photo queries and their socket client;
5. the daemon's parts: the query server, the file watcher, the daemon's settings, the
   embedding service;
6. the daemon; 7. the CLI; 8. ``python -m imgindex``.

A module may import from its own layer or any below it. Imports inside functions count (they
are lazy, not absent); imports under ``if TYPE_CHECKING:`` do not (they never run). Importing
``imgindex.a.b`` is an edge to ``imgindex.a.b`` only: the package ``__init__`` that Python runs
first is not counted. A new module must be given a layer here.

No module reaches into another object's private attributes (``x._name`` where ``x`` is not
``self`` or ``cls``) or imports another module's private names, except where
``REACHING_IN_ALLOWED`` says why.
"""

from __future__ import annotations

import ast
import fnmatch
import graphlib
import itertools
from pathlib import Path

#: The package's source in this checkout (an installed copy also holds the Alembic migrations,
#: shipped as ``imgindex._migrations``, which are scripts Alembic loads, not modules we import).
PACKAGE = Path(__file__).resolve().parents[1] / "imgindex"

#: Bottom to top: (name, module patterns). ``imgindex.cache`` (the FAISS cache, when it has a
#: module of its own) belongs with the library.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundations",
        [
            "imgindex",
            "imgindex.errors",
            "imgindex.paths",
            "imgindex.names",
            "imgindex.fsafe",
            "imgindex.logs",
            "imgindex.notify",
            "imgindex.hosts",
        ],
    ),
    ("storage", ["imgindex.db", "imgindex.db.*", "imgindex.store"]),
    (
        "files, pixels, vectors",
        [
            "imgindex.diskspace",
            "imgindex.scan",
            "imgindex.decode",
            "imgindex.phash",
            "imgindex.models",
            "imgindex.models.*",
            "imgindex.cluster",
            "imgindex.vindex",
            "imgindex.embedwire",
            "imgindex.embedclient",
        ],
    ),
    ("library", ["imgindex.library", "imgindex.cache"]),
    (
        "work over a library",
        [
            "imgindex.clusterstore",
            "imgindex.organize",
            "imgindex.views",
            "imgindex.ingest",
            "imgindex.raypass",
            "imgindex.duplicates",
            "imgindex.quarantine",
            "imgindex.atlas",
            "imgindex.export",
            "imgindex.report",
            "imgindex.check",
            "imgindex.client",
            "imgindex.query",
        ],
    ),
    (
        "daemon parts",
        [
            "imgindex.service",
            "imgindex.watch",
            "imgindex.settings",
            "imgindex.embedserver",
            "imgindex.httpbody",
            "imgindex.web",
            "imgindex.web.*",
        ],
    ),
    ("daemon", ["imgindex.daemon"]),
    ("cli", ["imgindex.cli"]),
    ("entry point", ["imgindex.__main__"]),
]

#: (module, receiver) -> why that module may read the receiver's private attributes.
REACHING_IN_ALLOWED = {
    ("imgindex.cluster", "km"): "scikit-learn's MiniBatchKMeans: resuming a fit has no public API",
    ("imgindex.library", "lib"): "Library's classmethods set up the instance they build",
    ("imgindex.models.efficientnet", "net"): "the third-party EfficientNet's classifier layer",
}

Edges = dict[tuple[str, str], str]  # (importer, imported) -> where, "path:line"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> Edges:
    """Each import of one package module by another, with the first place it is written."""
    mods = modules()
    edges: Edges = {}
    for name, path in mods.items():
        for target, line in _imports(name, path, set(mods)):
            if target != name:
                where = f"{path.relative_to(PACKAGE.parent)}:{line}"
                edges.setdefault((name, target), where)
    return edges


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(package module, line) for each import in the file, ``TYPE_CHECKING`` blocks left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(_deepest(a.name, known), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in known else _deepest(base, known), node.lineno))
    return [(m, line) for m, line in out if m]


def _deepest(dotted: str, known: set[str]) -> str:
    """The longest prefix of ``dotted`` that is a package module ("" when none is)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return ""


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except the bodies of ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo += child.orelse
            else:
                todo.append(child)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the layer whose patterns match ``module``; None when none does."""
    hits = [
        i for i, (_, pats) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(module, p) for p in pats)
    ]
    assert len(hits) <= 1, f"{module} is in more than one layer: {[LAYERS[i][0] for i in hits]}"
    return hits[0] if hits else None


def cycles(edges: Edges) -> list[list[str]]:
    """Import cycles, each as its modules in order; each found cycle's last edge is set aside
    to look for the next, so every cycle shows up in at least one."""
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    found = []
    while len(found) < 50:
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as exc:
            cycle = exc.args[1]  # [a, b, ..., a], each node depending on the next
            found.append(cycle[::-1])
            graph[cycle[1]].discard(cycle[0])
        else:
            break
    return found


def describe(cycle: list[str], edges: Edges) -> str:
    steps = [cycle[0]]
    for src, dst in itertools.pairwise(cycle):
        steps.append(f"-> {dst} ({edges[src, dst]})")
    return " ".join(steps)


def test_every_module_has_one_layer():
    unplaced = [m for m in modules() if layer_of(m) is None]
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"


def test_the_package_has_no_import_cycle():
    edges = import_graph()
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges) for c in found)


def test_no_module_imports_one_from_a_higher_layer():
    broken = []
    for (src, dst), where in sorted(import_graph().items()):
        low, high = layer_of(src), layer_of(dst)
        if low is not None and high is not None and high > low:
            broken.append(
                f"{where}: {src} (layer {low}, {LAYERS[low][0]}) imports {dst} "
                f"(layer {high}, {LAYERS[high][0]})"
            )
    assert not broken, "imports from a higher layer:\n" + "\n".join(broken)


def test_the_graph_sees_what_the_package_imports():
    """The walk itself: lazy imports count, ``TYPE_CHECKING`` ones and stdlib ones do not."""
    edges = import_graph()
    assert ("imgindex.__main__", "imgindex.cli") in edges
    assert ("imgindex.cli", "imgindex.daemon") in edges  # inside the `daemon` command
    assert ("imgindex.models", "imgindex.models.thumbnail") in edges  # inside load_embedder
    assert not any(dst in ("imgindex.typing", "") for _, dst in edges)
    assert all(src.startswith("imgindex") and dst.startswith("imgindex") for src, dst in edges)


def test_no_module_reaches_into_private_attributes():
    """The daemon once took the ingestor's ``_embedder``; owners now pass things in."""
    found = []
    for name, path in modules().items():
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                receiver = ast.unparse(node.value)
                if receiver not in ("self", "cls") and (name, receiver) not in REACHING_IN_ALLOWED:
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgindex"):
                private = [a.name for a in node.names if _private(a.name)]
                found += [f"{where}:{node.lineno}: imports {node.module}.{n}" for n in private]
    assert not found, "private attributes used from outside:\n" + "\n".join(found)


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")
