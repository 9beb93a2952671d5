"""The package layout: `import condlora` stays light, and the CLI keeps its commands."""

import subprocess
import sys

HEAVY = ("peft", "optuna", "scipy", "matplotlib", "accelerate", "sklearn", "datasets")


def test_import_condlora_imports_no_experiment_dependency():
    code = (f"import sys, condlora; heavy = {HEAVY!r}; "
            "print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_library_modules_do_not_import_the_harness():
    code = ("import sys, condlora; "
            "print(','.join(m for m in sys.modules if m.startswith(('condlora.runner', 'condlora.study', "
            "'condlora.bench', 'condlora.analyze', 'condlora.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_python_m_condlora_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "condlora", "-h"], capture_output=True, text=True, check=True)
    for command in ("train", "study", "analyze", "bench", "export"):
        assert command in out.stdout
