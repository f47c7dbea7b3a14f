"""GPT-2 small finetuned on WikiText-2, the LDS of kronfluence's example (``examples/wikitext``: 4,656
training and 481 validation chunks of 512 tokens, AdamW lr 3e-5, weight decay 0.01, batch 8, 3 epochs;
100 half subsets, 5 retraining seeds each; EK-FAC 0.44) and Bergson's table on the same task (EK-FAC
0.468 ± 0.015, SOURCE 0.476 ± 0.015 over 5 retraining seeds; MAGIC 0.95 when 1 % of the data is left out,
Bergson training at batch 256).

tdabench runs it as a ``pythia`` setting (any Hugging Face causal LM by ``task.model_name``): a GPU run,
sized by ``tdabench plan --suite wikitext2-gpt2`` first; until one runs, the table says so.
"""
from tdabench.api.published import Anchor, PublishedTable, register_published

GPT2 = ("task.model_name=gpt2", "task.revision=main", "task.data_config=wikitext-2-raw-v1", "task.context_length=512",
        "task.n_train=4656", "task.n_query=481", "task.epochs=3", "task.batch_size=8", "task.micro_batch=8",
        "task.lr=3e-5", "task.weight_decay=0.01")
BERGSON = "Bergson's own finetuning recipe may differ from kronfluence's, run here for both (GPU)"


@register_published
class Wikitext2Gpt2(PublishedTable):
    name = "wikitext2-gpt2"
    source = "kronfluence's WikiText-2 example and Bergson's table, GPT-2 small"
    board_sets = ("gt.retrain_seeds=5",)
    anchors = (
        Anchor("pythia", "ekfac", "EK-FAC (kronfluence)", 0.44, GPT2, uncertainty=0.005,
               note="kronfluence's README: 0.44 (two decimals) at its recipe, run here (GPU)"),
        Anchor("pythia", "ekfac", "EK-FAC (Bergson)", 0.468, GPT2, uncertainty=0.015, note=BERGSON),
        Anchor("pythia", "source", "SOURCE (Bergson)", 0.476, GPT2, uncertainty=0.015, note=BERGSON),
        Anchor("pythia", "magic", "MAGIC (Bergson)", 0.95, (*GPT2, "gt.alpha=0.99", "task.attn_implementation=eager"),
               uncertainty=0.005, note=BERGSON + "; leave 1 % out (α = 0.99); Bergson trains at batch 256"),
    )
