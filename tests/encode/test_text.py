"""The BERT text encoder reproduces sentence-transformers' own ``encode`` (mean pooling +
normalisation of all-MiniLM-L6-v2) and an independent CLS pooling; bad model paths are clear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.encode.fit import EncodeSettings
from kg_ops.encode.text import TextEncoder, TextModelError, resolve_model_path, text_encoder_params

TEXTS = ["Tool for parsing JSON", "  padded text with spaces  ",
         "A much longer description of a Debian package that pulls in many libraries " * 8,
         "x", "Kernel firmware"]


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return TextEncoder(text_encoder_params(EncodeSettings()), threads=1, batch_size=2)


def test_matches_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    assert encoder.params["pooling"] == "mean" and encoder.params["normalize"]
    assert encoder.params["max_length"] == 256 and encoder.dim == 384
    st = SentenceTransformer(str(resolve_model_path(None)), device="cpu")
    expect = st.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(TEXTS), expect, atol=1e-5)


def test_cls_pooling_and_short_max_length(encoder):
    params = text_encoder_params(EncodeSettings(pooling="cls", max_length=8, normalize=False))
    enc = TextEncoder(params, threads=1, batch_size=3)
    tok = enc.tokenizer([t.strip() for t in TEXTS], padding=True, truncation=True, max_length=8,
                        return_tensors="pt")
    with torch.inference_mode():
        expect = enc.model(**tok).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(enc.encode(TEXTS), expect, atol=1e-5)
    assert enc.encode([]).shape == (0, 384)


def test_bad_model_settings_are_clear(tmp_path):
    with pytest.raises(TextModelError, match="not a local Hugging Face model directory"):
        text_encoder_params(EncodeSettings(text_model=str(tmp_path)))
    with pytest.raises(TextModelError, match=r"--max-length 9999: must be in \[1, 512\]"):
        text_encoder_params(EncodeSettings(max_length=9999))
    params = dict(text_encoder_params(EncodeSettings()), model_sha256="0" * 64)
    with pytest.raises(TextModelError, match="sha256 mismatch"):
        TextEncoder(params)


def test_token_budget_bounds_each_forward_pass(encoder):
    """With ``batch_tokens`` every forward pass holds at most that many tokens (or one text),
    and the vectors are those of the unbounded encoder (float noise only)."""
    bounded = TextEncoder(encoder.params, threads=1, batch_size=64, batch_tokens=24)
    shapes = []
    hook = bounded.model.register_forward_hook(
        lambda _m, _args, kwargs, _out: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True)
    try:
        got = bounded.encode(TEXTS * 3)
    finally:
        hook.remove()
    assert sum(r for r, _ in shapes) == len(TEXTS) * 3
    assert all(r * w <= 24 or r == 1 for r, w in shapes) and len(shapes) > 3
    unbounded = TextEncoder(encoder.params, threads=1, batch_size=64, batch_tokens=None)
    np.testing.assert_allclose(got, unbounded.encode(TEXTS * 3), atol=2e-6)
