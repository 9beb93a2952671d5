"""The package layout: the library imports no harness module, and the CLI keeps its commands.

(That `import condlora` loads no optional package is tested in test_packaging.py.)
"""

import subprocess
import sys


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
