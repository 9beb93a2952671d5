"""Load what trainer_classification.py saved, in a new process, and check it predicts the same.

    python examples/predict_classification.py [OUTPUT_DIR]
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from condlora import load_adapter
from condlora.serialization import read_config

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "out/classification")
base = read_config(OUT / "adapter").base_model_name_or_path  # the model the adapter was trained on
tokenizer = AutoTokenizer.from_pretrained(base)
model = load_adapter(AutoModelForSequenceClassification.from_pretrained(base), OUT / "adapter").eval()

expected = json.loads((OUT / "predictions.json").read_text())
with torch.no_grad():
    logits = model(**tokenizer(expected["texts"], padding=True, return_tensors="pt")).logits
torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=0, atol=1e-6)
for text, label in zip(expected["texts"], logits.argmax(-1).tolist(), strict=True):
    print(f"{label}  {text}")
print("same predictions as the trained model")
