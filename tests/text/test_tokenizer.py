"""The packaged tokenizer must equal the official bert-base-uncased tokenizer, fully offline."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cdiff_jax.text import tokenizer as T

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ref(fixtures_root):
    d = np.load(fixtures_root / "text_encoder" / "io.npz")
    return [str(c) for c in d["captions"]], d["token_ids"], d["vocab_check_ids"]


def test_ids_match_reference(ref):
    captions, ids, _ = ref
    out = T.caption_tokenizer().encode(captions)
    assert out.ids.dtype == np.int32 and out.ids.shape == (len(captions), T.MAX_TOKENS)
    np.testing.assert_array_equal(out.ids, ids)


def test_truncation_flags(ref):
    captions, _, _ = ref
    tok = T.caption_tokenizer()
    untruncated = [len(r) for r in tok.bert(captions)["input_ids"]]
    expected = np.array(untruncated) > T.MAX_TOKENS
    assert expected.any() and not expected.all()  # the fixture exercises both cases
    out = tok.encode(captions)
    assert out.truncated.dtype == np.bool_
    np.testing.assert_array_equal(out.truncated, expected)


def test_vocab(ref):
    tok = T.caption_tokenizer()
    assert tok.vocab_size == T.VOCAB_SIZE == 30522
    ids = tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"])
    np.testing.assert_array_equal(ids, ref[2])


def test_lower_case_and_cache():
    tok = T.caption_tokenizer()
    assert tok is T.caption_tokenizer()
    np.testing.assert_array_equal(tok.encode(["A SMILING Man"]).ids, tok.encode(["a smiling man"]).ids)


def test_short_max_length():
    out = T.CaptionTokenizer(max_length=5).encode(["this woman is in her forties", "a man"])
    np.testing.assert_array_equal(out.ids[:, 0], 101)
    assert out.ids[0, -1] == 102 and out.ids[1, -1] == 0
    np.testing.assert_array_equal(out.truncated, [True, False])


def test_empty_caption_rejected():
    tok = T.caption_tokenizer()
    with pytest.raises(ValueError, match=r"caption 1 .*must be non-empty"):
        tok.encode(["a man", "   "])
    with pytest.raises(TypeError):
        tok.encode("a man")


def test_damaged_vocab_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        T.CaptionTokenizer(vocab_dir=tmp_path)
    lines = (T.VOCAB_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()[:200]
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_bytes((T.VOCAB_DIR / "tokenizer_config.json").read_bytes())
    with pytest.raises(RuntimeError, match="30522"):
        T.CaptionTokenizer(vocab_dir=tmp_path)


def test_offline_subprocess(ref, tmp_path):
    """A fresh process with an empty hub cache and an unreachable hub tokenizes like the reference, leaves its
    environment as it found it (HF_HUB_OFFLINE would break the user's own downloads) and prints no notices."""
    captions, ids, _ = ref
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "TRANSFORMERS_", "XDG_CACHE")) and k != "PYTHONPATH"
    }
    env.update(HOME=str(tmp_path), HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=REPO)
    code = (
        "import json, os, sys; before = dict(os.environ); "
        "from cdiff_jax.text.tokenizer import caption_tokenizer; "
        "ids = caption_tokenizer().encode(json.loads(sys.stdin.read())).ids.tolist(); "
        "assert dict(os.environ) == before, sorted(set(os.environ.items()) ^ set(before.items())); "
        "print(json.dumps(ids))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(captions),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.array(json.loads(proc.stdout.strip().splitlines()[-1])), ids)
    assert not list(tmp_path.rglob("models--*")), "something was downloaded into the hub cache"
    assert "PyTorch was not found" not in proc.stderr


def test_environment_unchanged(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    T.CaptionTokenizer()
    assert dict(os.environ) == before
