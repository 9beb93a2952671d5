"""Two checks quoted in docs/results.md: MiniLM's zero-shot STS-B similarity, and its query/value spectra."""
import torch
from scipy.stats import pearsonr
from transformers import AutoModel, AutoTokenizer

from condlora.runner.glue import load_glue
from condlora.runner.models import resolve_model_path

path = resolve_model_path("minilm")
tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
test = load_glue("stsb", "../shared/data/glue").test
pairs, labels = test.texts[:300], test.labels[:300]


def mean_pooled(sentences):
    batch = tok(sentences, padding=True, truncation=True, max_length=96, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


cos = torch.nn.functional.cosine_similarity(mean_pooled([a for a, _ in pairs]), mean_pooled([b for _, b in pairs]))
print(f"zero-shot STS-B Pearson, first 300 dev pairs: {pearsonr(cos.numpy(), labels)[0]:.3f}")
for name, module in model.named_modules():
    if name.endswith(("query", "value")):
        s = torch.linalg.svdvals(module.weight.detach())
        print(f"{name}: sigma_max {s[0]:.2f}, condition number {s[0] / s[-1]:.0f}")
