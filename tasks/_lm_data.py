"""Loading and text preparation shared by the language tasks (pythia, tinylm): pretrained models and
tokenizers from a local directory / the Hugging Face cache / the Hub, documents from local files or
``datasets``, and packing into fixed-length sequences.  Heavy libraries are imported lazily."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import torch
from torch import Tensor

INSTALL = "pip install 'tdabench[lm]' (transformers, tokenizers, datasets)"
DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json")        # a datasets save_to_disk directory
#: The data files of a Hub dataset repository copied to a directory (``huggingface-cli download NAME
#: --repo-type dataset --local-dir DIR``, or a git clone): ``datasets`` reads them by path, offline.
REPO_DATA = ("*.parquet", "*.arrow")


def is_dataset_dir(path: Path) -> bool:
    """True for a directory ``datasets`` reads (save_to_disk output, or a Hub dataset repository's files)."""
    return path.is_dir() and (any((path / m).exists() for m in DATASET_MARKERS)
                              or any(next(path.rglob(p), None) is not None for p in REPO_DATA))


class MissingResource(FileNotFoundError):
    """A model, tokenizer or text that is neither local, cached, nor reachable; says how to provide it."""


# ----- loading: local directory, Hugging Face cache, or the Hub -------------------------------------
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection (a quick probe instead of 30 s of retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _missing(what: str, name: str, revision: str, field: str, fetch: str) -> MissingResource:
    return MissingResource(
        f"{what} {name!r} (revision {revision or 'main'}) is not a local directory, not in the Hugging Face "
        f"cache, and the Hub cannot be reached. Either set task.{field}=/path/to/dir, or on a machine with "
        f"network run `{fetch}` and copy its Hugging Face cache (~/.cache/huggingface, or $HF_HOME) here.")


def load_pretrained(loader: Callable[..., Any], name: str, revision: str, what: str, field: str, fetch: str,
                    **kwargs: Any) -> Any:
    """``loader`` (a ``from_pretrained``) on a local directory, else the cache, else the Hub."""
    path = Path(name).expanduser()
    if path.is_dir():
        return loader(str(path), **kwargs)
    if name.startswith((".", "/", "~")) or path.exists():
        raise MissingResource(f"{what} directory {name!r} does not exist (task.{field}); "
                              "give a directory written by save_pretrained, or a Hub id")
    rev = revision or None
    try:
        return loader(name, revision=rev, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise _missing(what, name, revision, field, fetch)
    try:
        return loader(name, revision=rev, **kwargs)
    except OSError as err:
        raise _missing(what, name, revision, field, fetch) from err


# ----- text: local files or a datasets dataset ------------------------------------------------------
def local_documents(path: Path, field: str) -> list[str]:
    """Documents of a .txt file (one), a .jsonl file (one per line) or a directory of those."""
    if path.is_dir():
        return [d for f in sorted(path.rglob("*")) if f.suffix in (".txt", ".jsonl") for d in local_documents(f, field)]
    if path.suffix == ".jsonl":
        return [json.loads(line)[field] for line in path.read_text().splitlines() if line.strip()]
    return [path.read_text()]


def dataset_documents(name: str, config: str, split: str, field: str) -> Sequence[str]:
    """The ``field`` column of a ``datasets`` dataset: a save_to_disk directory, or a name (cache/Hub)."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"text from a datasets name needs the datasets package: {INSTALL}") from None
    if Path(name).is_dir() and any((Path(name) / m).exists() for m in DATASET_MARKERS):
        ds = datasets.load_from_disk(name)
        return (ds[split] if isinstance(ds, datasets.DatasetDict) else ds)[field]
    if Path(name).is_dir():               # a Hub repository's files: its README's configs name the files
        return datasets.load_dataset(name, config or None, split=split)[field]
    offline = not _hub_reachable()
    before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE or offline   # use the cache, do not retry
    try:
        return datasets.load_dataset(name, config or None, split=split)[field]
    except Exception as err:
        fetch = f"python -c \"import datasets; datasets.load_dataset('{name}', {config or None!r}, split='{split}')\""
        raise MissingResource(
            f"text {name!r} ({config or 'default'}, split {split}) could not be loaded ({type(err).__name__}: "
            f"{str(err)[:200]}). Set task.data to a local directory of .txt/.jsonl files, a .jsonl file or a "
            f"save_to_disk directory, or on a machine with network run `{fetch}` and copy its cache "
            f"(~/.cache/huggingface) here.") from err
    finally:
        datasets.config.HF_HUB_OFFLINE = before


def fingerprint(path: Path) -> str:
    """Content hash of a local file or of every file under a directory (of a save_to_disk directory,
    its JSON metadata only: they hold the datasets content fingerprint)."""
    h = hashlib.sha256()
    pattern = "*.json" if any((path / m).exists() for m in DATASET_MARKERS) else "*"
    for f in sorted(p for p in ([path] if path.is_file() else path.rglob(pattern)) if p.is_file()):
        h.update(str(f.relative_to(path if path.is_dir() else path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ----- tokenizing and packing -----------------------------------------------------------------------
def token_stream(tokenizer: Any, docs: Sequence[str], needed: int, start: int = 0,
                 chunk: int = 256) -> tuple[Tensor, int]:
    """Token ids of ``docs[start:]``, each followed by EOS, concatenated until at least ``needed``
    tokens (or the documents run out); shape ``[≥needed]``, and the index after the last document used."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token, which separates documents when packing; set task.tokenizer "
                         "to a tokenizer that has one (its tokenizer_config.json names eos_token)")
    tokens: list[int] = []
    end = start
    while len(tokens) < needed and end < len(docs):
        texts = [docs[i] for i in range(end, min(end + chunk, len(docs)))]
        for text, ids in zip(texts, tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]):
            tokens += ids + [eos] if text.strip() else []            # blank documents are skipped
            end += 1
            if len(tokens) >= needed:
                break
    return torch.tensor(tokens, dtype=torch.long), end


def pack(stream: Tensor, n: int, context: int, what: str) -> Tensor:
    """The first ``n·context`` tokens of ``stream`` as ``[n, context]``; too little text fails with the fix."""
    if stream.numel() < n * context:
        raise ValueError(f"the {what} text holds {stream.numel()} tokens, {n} sequences of {context} need "
                         f"{n * context}: give more text or lower task.n_{what} / task.context_length")
    return stream[: n * context].reshape(n, context)


class Shuffled(Sequence[str]):
    """``docs`` in a seeded random order, read lazily (a large dataset is read only as far as needed)."""

    def __init__(self, docs: Sequence[str], seed: int) -> None:
        self.docs = docs
        self.order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self.docs[self.order[i]]
