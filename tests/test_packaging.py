"""Packaging: the core library works without its extras, imports none of them, and the dependency
ranges of pyproject.toml agree with the two tested environments (constraints.txt, constraints-oldest.txt)."""

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import condlora

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("peft", "optuna", "scipy", "matplotlib", "accelerate", "sklearn", "datasets")


def run_python(code: str) -> str:
    """Run `code` in a fresh interpreter that imports this condlora and the tests' conftest; its stdout."""
    path = [str(Path(condlora.__file__).resolve().parents[1]), str(ROOT / "tests")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_loads_no_optional_package():
    out = run_python(f"""
        import json, sys
        import condlora
        print(json.dumps(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))
    """)
    assert json.loads(out.splitlines()[-1]) == []


def test_core_works_without_peft_and_export_says_how_to_get_it():
    out = run_python("""
        import json, sys, tempfile
        sys.modules["peft"] = None  # `import peft` now fails as if it were not installed
        import torch
        import condlora
        from condlora import AdapterConfig, MissingDependencyError, apply_adapter, export_peft_lora
        from condlora import load_adapter, merge_and_unload, save_adapter
        from conftest import tiny_bert
        from conftest import perturb

        ids = torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(0))
        res = {}
        for method in ("lora", "condlora"):
            model = apply_adapter(tiny_bert(), AdapterConfig(method=method, r=4, modules_to_save=["classifier"]))
            perturb(model)
            with torch.no_grad():
                expected = model(input_ids=ids).logits
            with tempfile.TemporaryDirectory() as d:
                save_adapter(model, d)
                torch.manual_seed(7)
                loaded = load_adapter(tiny_bert(), d)
                with torch.no_grad():
                    same = torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)
                    differs = not torch.allclose(tiny_bert()(input_ids=ids).logits, expected, atol=1e-4)
                    merged = torch.allclose(merge_and_unload(loaded)(input_ids=ids).logits, expected, atol=1e-5)
                try:
                    export_peft_lora(model, d)
                    error = None
                except MissingDependencyError as e:
                    error = [type(e).__name__, isinstance(e, ImportError), str(e)]
            res[method] = [same, differs, merged, error]
        print(json.dumps(res))
        assert "peft" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
    """)
    res = json.loads(out.splitlines()[-1])
    msg = "export_peft_lora needs peft: pip install 'condlora[peft]'"
    for method in ("lora", "condlora"):
        assert res[method] == [True, True, True, ["MissingDependencyError", True, msg]], method


def test_require_only_translates_the_missing_module_itself(monkeypatch):
    from condlora.errors import MissingDependencyError, require

    assert require("json", "x", "y") is json
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingDependencyError, match=r"^feature needs peft: pip install 'condlora\[extra\]'$"):
        require("peft", "feature", "extra")

    def broken(name):  # an installed package whose own import fails: not hidden behind the install hint
        raise ModuleNotFoundError("No module named 'somedep'", name="somedep")

    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="somedep"):
        require("peft", "feature", "extra")


def pins(file: Path) -> dict[str, str]:
    """name -> exact version of a constraints file (names normalized)."""
    out = {}
    for line in file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            out[req.name.lower().replace("_", "-")] = spec.version
    return out


def project_requirements() -> list[Requirement]:
    """The runtime dependencies and every extra's third-party requirements of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs if not r.startswith("condlora")]


def test_locked_versions_lie_inside_the_ranges():
    locked = pins(ROOT / "constraints.txt")
    for req in project_requirements():
        name = req.name.lower()
        assert name in locked, f"{name} is not in constraints.txt"
        assert req.specifier.contains(locked[name], prereleases=True), (name, locked[name], str(req.specifier))


def test_oldest_environment_sits_on_the_lower_bounds():
    oldest = pins(ROOT / "constraints-oldest.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for r in project["dependencies"] + project["optional-dependencies"]["peft"]:
        req = Requirement(r)
        (low,) = [s.version for s in req.specifier if s.operator == ">="]
        assert Version(Version(oldest[req.name.lower()]).public) == Version(low), (req.name, low)


def test_version_is_written_once_in_pyproject(monkeypatch, tmp_path):
    from importlib import metadata

    from condlora import _version

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert condlora.__version__ == version
    assert not [f for f in (ROOT / "src").rglob("*.py") if re.search(r"__version__\s*=\s*['\"]", f.read_text())]

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_version.metadata, "version", not_installed)
    # an uninstalled source tree: its pyproject.toml (where the module sits in one; the oldest-versions run
    # imports an installed copy, whose parents hold none, so point it at this tree's)
    if not _version.PYPROJECT.exists():
        monkeypatch.setattr(_version, "PYPROJECT", ROOT / "pyproject.toml")
    assert _version.read_version() == version
    monkeypatch.setattr(_version, "PYPROJECT", tmp_path / "pyproject.toml")
    assert _version.read_version() == "0+unknown"
