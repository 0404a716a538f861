"""The package's import graph: no cycles, and no module imports from a layer above its own.

`LAYERS` is the declared order, lowest first. A module may import from its own layer and from
any layer below; the longest prefix listed decides a module's layer, `""` is the empty package
`cdiff_jax/__init__.py`. A new module that fits no entry fails `test_every_module_has_a_layer`:
add its prefix to the layer it belongs to. `python bench/import_graph.py` prints the same graph.
"""

import ast
import importlib.util
import pathlib
import sys

LAYERS = [
    # name         module prefixes under cdiff_jax (a prefix covers its sub-modules)
    (
        "foundation",
        (
            "",
            "config",
            "weights",
            "text",
            "data.images",
            "data.masks",
            "data.scribbles",
            "parallel",
            "paths",
            "progress",
            "noise",
            "optimization",
            "cameras",
        ),
    ),
    ("data", ("data", "viz")),
    ("nn", ("nn",)),
    ("modalities", ("modalities", "conditions", "data.pipeline")),  # the kinds table names encoders and parsers
    ("system", ("system", "checkpoint", "latents")),
    ("diffusion", ("diffusion",)),
    ("sampling", ("sampling", "requests")),
    ("ddgi", ("ddgi",)),  # DDGI's heads and what they read from the frozen system
    ("train", ("train",)),
    ("editing", ("editing",)),
    ("evaluation", ("evaluation",)),
    ("convert", ("convert",)),  # a tool: nothing in the package imports the converter
    ("commands", ("commands", "app")),  # the command-line programs (`cdiff ...`) and the interactive page
    ("configs", ("configs",)),  # the shipped config files (configs/, installed as cdiff_jax.configs)
]

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "import_graph.py"


def _import_graph_module():
    spec = importlib.util.spec_from_file_location("_import_graph", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ig = _import_graph_module()
GRAPH = ig.import_graph()


def test_the_graph_sees_the_package_and_imports_inside_functions():
    """The parser must find what it checks: our modules, and lazy imports as well as top-level ones."""
    assert {"cdiff_jax.config", "cdiff_jax.system", "cdiff_jax.weights.state_dict_io"} <= set(GRAPH)
    assert "cdiff_jax.config" in GRAPH["cdiff_jax.system"]


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    package = tmp_path / "cdiff_jax"
    (package / "sub").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from cdiff_jax.sub import high\n")
    (package / "sub" / "high.py").write_text("from .. import low\nfrom ..low import f\n")
    graph = ig.import_graph(tmp_path)
    assert graph["cdiff_jax.low"] == {"cdiff_jax.sub.high"}
    assert graph["cdiff_jax.sub.high"] == {"cdiff_jax.low"}
    assert ig.cycles(graph) == [["cdiff_jax.low", "cdiff_jax.sub.high"]]
    layers = [("low", ("low",)), ("high", ("sub",))]
    assert ig.upward_imports(graph, layers) == [("cdiff_jax.low", "cdiff_jax.sub.high")]


def test_weights_needs_only_numpy_and_safetensors():
    """The weight readers are a foundation: any tool may use them without pulling in JAX or a model."""
    allowed = set(sys.stdlib_module_names) | {"numpy", "ml_dtypes", "safetensors", "cdiff_jax"}
    for module, path in ig.package_modules(ig.REPO).items():
        if module.startswith("cdiff_jax.weights"):
            tree = ast.parse(path.read_text())
            roots = {name.split(".")[0] for name in ig.imported_names(tree, module, path.name == "__init__.py")}
            assert roots <= allowed, f"{module} imports {sorted(roots - allowed)}"
            assert all(t.startswith("cdiff_jax.weights") for t in GRAPH[module]), module


def test_every_module_has_a_layer():
    unlisted = sorted(m for m in GRAPH if ig.layer_of(m, LAYERS) is None)
    assert not unlisted, f"modules in no layer of tests/test_layering.py LAYERS: {unlisted}"


def test_no_import_cycles():
    assert ig.cycles(GRAPH) == []


def test_no_upward_imports():
    upward = [
        f"{a} ({LAYERS[ig.layer_of(a, LAYERS)][0]}) imports {b} ({LAYERS[ig.layer_of(b, LAYERS)][0]})"
        for a, b in ig.upward_imports(GRAPH, LAYERS)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)
