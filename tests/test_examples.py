"""Every script in examples/ runs as a user runs it (a new process) and exits 0.

The classification example trains with the Trainer and saves; a second, fresh process then reloads what
it saved and must predict the same logits (the user's path, nothing shared in memory).
"""

import os
import subprocess
import sys
from pathlib import Path

import condlora

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, out):
    """Run examples/NAME with OUTPUT_DIR `out` importing this condlora; the finished process."""
    src = str(Path(condlora.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, str(EXAMPLES / name), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)


def check(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_examples_are_all_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "trainer_classification.py", "predict_classification.py", "train_causal_lm.py"}


def test_trainer_classification_then_predict_in_a_new_process(tmp_path):
    assert "same logits" in check(run_example("trainer_classification.py", tmp_path))
    assert set(os.listdir(tmp_path / "adapter")) == {"adapter_config.json", "adapter_model.safetensors",
                                                    "training_args.bin"}
    assert "same predictions as the trained model" in check(run_example("predict_classification.py", tmp_path))


def test_train_causal_lm(tmp_path):
    assert "same tokens adapted, merged and through PEFT" in check(run_example("train_causal_lm.py", tmp_path))
