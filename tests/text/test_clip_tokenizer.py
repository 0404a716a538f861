"""CLIP's BPE tokenizer gives the official ids of every caption of the fixture (tokens.json), truncates as
`clip.tokenize` does, and refuses an over-long caption in one line when asked not to truncate."""

import json

import numpy as np
import pytest

from cdiff_jax.text.clip_tokenizer import clip_tokenizer, tokenize


@pytest.fixture(scope="module")
def cases(fixtures_root):
    return json.loads((fixtures_root / "clip_tiny" / "tokens.json").read_text())


def _mojibake_repaired(text: str) -> str:
    """`text` with each word that is UTF-8 read as cp1252 (`cafÃ©`) decoded back (`café`): the one repair of
    ftfy's that the tokenizer leaves out (module docstring)."""

    def repaired(word: str) -> str:
        try:
            return word.encode("cp1252").decode("utf-8")
        except UnicodeError:
            return word

    return " ".join(map(repaired, text.split(" ")))


def test_every_caption_gives_the_official_ids(cases):
    tokenizer = clip_tokenizer()
    assert (tokenizer.start_id, tokenizer.end_id) == (cases["sot_token"], cases["eot_token"])
    for case in cases["captions"] + cases["extra_tokenizer_cases"]:
        # A caption with mojibake is compared after repairing it, which is what ftfy would have done first.
        assert tokenizer.encode(_mojibake_repaired(case["text"])) == case["bpe_ids"], case["text"]
    captions = [case["text"] for case in cases["captions"]]
    np.testing.assert_array_equal(tokenize(captions, cases["context_length"]), cases["tokens"])
    assert tokenize(captions).dtype == np.int32


def test_truncation_and_refusal(cases):
    length = cases["context_length"]
    for case in cases["captions"]:
        ids = [cases["sot_token"], *case["bpe_ids"], cases["eot_token"]]
        if case["tokenize_without_truncate_raises"]:
            with pytest.raises(ValueError, match=f"{len(ids)} tokens, more than the context length {length}") as error:
                tokenize([case["text"]], length, truncate=False)
            assert "\n" not in str(error.value)
        else:
            np.testing.assert_array_equal(tokenize(case["text"], length, truncate=False)[0, : len(ids)], ids)
        # A short context keeps the first ids and ends with the end token, as clip.tokenize(truncate=True).
        short = 6
        expected = ids[: short - 1] + [cases["eot_token"]] if len(ids) > short else ids + [0] * (short - len(ids))
        np.testing.assert_array_equal(tokenize([case["text"]], short)[0], expected)
