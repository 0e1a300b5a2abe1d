"""The backend registry (pgap_kernels.backends): every backend provides every op with the op's
argument class, lookups are typed and fail loudly, and pgap_kernels has no import circle."""
import ast
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import pgap_kernels as pk
from pgap_kernels import args, backends
from pgap_kernels.backends import BACKENDS, OPS, Op

PACKAGE = Path(backends.__file__).resolve().parent.parent


def test_every_op_takes_its_argument_class():
    assert {op.args_type for op in OPS} == {args.PerturbArgs, args.LowrankArgs, args.SketchArgs,
                                            args.SubspaceArgs}
    assert len({op.module for op in OPS}) == len(OPS)


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_registers_every_op(name):
    assert tuple(backends.backend_package(name).OPS) == OPS


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.module)
def test_every_backend_defines_every_op_function(name, op):
    if name == "triton":
        pytest.importorskip("triton")
    fn = backends.kernel(name, op)
    params = list(inspect.signature(fn).parameters.values())
    assert len(params) == 1, f"backends/{name}/{op.module}.py {op.function}{inspect.signature(fn)}"
    hints = typing.get_type_hints(fn)
    assert hints[params[0].name] is op.args_type, (name, op, hints)


def test_unregistered_op_fails_with_its_name():
    with pytest.raises(LookupError, match=r"'reference' does not register the op nowhere\.run"):
        backends.kernel("reference", Op("nowhere", "run", args.PerturbArgs))


def test_missing_function_fails_with_its_file():
    op = Op("perturb", "no_such_function", args.PerturbArgs)
    ref = backends.backend_package("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ref, "OPS", ref.OPS + (op,))
        with pytest.raises(LookupError, match=r"backends/reference/perturb\.py defines no function "
                                              r"no_such_function"):
            backends.kernel("reference", op)


def test_unknown_backend_name_is_refused():
    with pytest.raises(ValueError, match="backend must be one of reference, native, cuda, triton"):
        backends.kernel("refrence", backends.PERTURB)


def test_call_runs_the_backend_function():
    t = torch.zeros(5)
    backends.call("reference", backends.PERTURB, t.device,
                  args.PerturbArgs([t], None, [3], [1.0], [0], [0], 0.0, 0.0))
    with pk.use_backend("reference"):
        assert torch.equal(t, pk.gaussian(5, 3))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, modules: set) -> typing.Tuple[set, list]:
    """(pgap_kernels modules imported at module level, pgap_kernels imports inside functions)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top, nested = set(), []

    def targets(node) -> list:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{base}" if base else anchor
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]

    def visit(node, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                names = [t for t in targets(child) if t.split(".")[0] == "pgap_kernels"]
                (nested.extend if inside else top.update)(names)
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    visit(tree, False)
    return top, nested


def test_no_import_circle_and_no_function_local_imports():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph, nested = {}, {}
    for module, path in files.items():
        graph[module], inner = _imports(path, module, set(files))
        if inner:
            nested[module] = inner
    # The one lazy import of the package: the compiled module, loaded on first use so that
    # importing pgap_kernels never needs it.
    assert nested == {"pgap_kernels._native": ["pgap_kernels"]}, nested
    state = {}

    def walk(module: str, stack: list) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                walk(dep, stack + [dep])
        state[module] = "done"
    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert "pgap_kernels.selftest" in graph["pgap_kernels._dispatch"]
    assert not any(m.startswith(("pgap_kernels.perturb", "pgap_kernels.lowrank", "pgap_kernels.sketch",
                                 "pgap_kernels.subspace", "pgap_kernels._dispatch"))
                   for m in graph["pgap_kernels.selftest"])


def test_backend_packages_import_without_kernels():
    """The registry and every backend package import no kernel module (no _C, no triton)."""
    code = ("import sys, pgap_kernels.backends as b\n"
            "for n in b.BACKENDS: b.backend_package(n)\n"
            "print(sorted(m for m in sys.modules if m in ('triton', 'pgap_kernels._C')\n"
            "             or m.startswith('pgap_kernels.backends.')\n"
            "             and any(m.endswith('.' + op.module) for op in b.OPS)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
