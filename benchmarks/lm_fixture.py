"""A stand-in for Pythia-14M with its exact shapes, for measuring cost where the Hub cannot be
reached (a GPU machine without network): a randomly initialised GPT-NeoX with Pythia-14M's published
dimensions (6 layers, width 128, 4 heads, MLP 512, 2,048 positions, rotary on 25 % of each head,
50,304-row embedding and untied output layer: 14.07 M parameters), a word-level tokenizer with one
id per embedding row, and a JSON-lines file of Zipf-distributed random words long enough to fill
the task's sequences.  Time and memory depend on these shapes only, never on the weights' values;
LDS on this text means nothing.

    python benchmarks/lm_fixture.py --out /tmp/p14 [--tokens 4600000]
    tdabench run --task pythia --set task.model_name=/tmp/p14/model --set task.data=/tmp/p14/text.jsonl --set task.query_split= ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# Pythia-14M's config.json (EleutherAI/pythia-14m): what decides every shape.
PYTHIA_14M = dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=6,
                  max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000, vocab_size=50304,
                  use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5, hidden_act="gelu")
EOS = "<|endoftext|>"


def tokenizer(vocab_size: int):
    """Whitespace-split words w0 … w{V−2} plus the end-of-text token: exactly ``vocab_size`` ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 1)} | {EOS: vocab_size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def write_text(path: Path, vocab_size: int, tokens: int, doc_words: int = 2000, seed: int = 0) -> None:
    """``tokens`` words in documents of ``doc_words``, ranks drawn from a Zipf law (as words in text are)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(-(-tokens // doc_words)):
            ids = np.minimum(rng.zipf(1.2, doc_words), vocab_size - 1) - 1
            f.write(json.dumps({"text": " ".join(f"w{i}" for i in ids)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=4_600_000, help="words of text (default: 4,352 sequences of 1,024 and spare)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(args.seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_14M, eos_token_id=PYTHIA_14M["vocab_size"] - 1))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out / "model")
    tokenizer(PYTHIA_14M["vocab_size"]).save_pretrained(args.out / "model")
    write_text(args.out / "text.jsonl", PYTHIA_14M["vocab_size"], args.tokens, seed=args.seed)
    print(f"wrote {args.out / 'model'} ({sum(p.numel() for p in model.parameters()):,} parameters) and "
          f"{args.out / 'text.jsonl'} ({args.tokens:,} words)")


if __name__ == "__main__":
    main()
