"""Tokenizers: the checkpoint's tokenizer.json with its chat template, and the byte tokenizer."""

import json

import pytest

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models.tokenizer import ByteTokenizer, HFTokenizer


def test_byte_tokenizer_roundtrip_and_specials():
    tok = ByteTokenizer()
    text = "ROMEO:\nBut soft! — what light"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids + [tok.eos_id, tok.mask_id]) == text
    assert tok.decode([0xFF, 65]) == "\ufffdA"  # invalid UTF-8 never raises
    with pytest.raises(AdllmError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.fixture
def hf_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "<bos>", "<eos>", "<mask>"])
    tok.train_from_iterator(["hello world, the quick brown fox"] * 10, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": template, "bos_token": "<bos>", "eos_token": {"content": "<eos>"}})
    )
    return tmp_path


def test_hf_tokenizer_encode_decode_and_chat(hf_dir):
    tok = HFTokenizer(hf_dir, mask_id=3, eos_id=2, pad_id=2, bos_id=1)
    ids = tok.encode("hello world")
    assert ids and tok.decode(ids).replace(" ", "") == "helloworld"
    assert tok.decode(ids + [2, 3]) == tok.decode(ids)  # specials are dropped
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<bos><user>hi<eos><assistant>"
    no_prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert no_prompt == "<bos><user>hi<eos>"


def test_hf_tokenizer_without_template(hf_dir):
    (hf_dir / "tokenizer_config.json").write_text("{}")
    tok = HFTokenizer(hf_dir, mask_id=3, eos_id=2, pad_id=2, bos_id=1)
    with pytest.raises(AdllmError, match="no chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_broken_tokenizer_file(hf_dir):
    from adaptive_dllm.errors import CheckpointError

    (hf_dir / "tokenizer.json").write_text("garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        HFTokenizer(hf_dir, mask_id=3, eos_id=2, pad_id=2, bos_id=1)
