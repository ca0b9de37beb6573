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


def test_byte_tokenizer_takes_any_bytes():
    tok = ByteTokenizer()
    raw = b"caf\xc3\xa9 \xff\x80\xfe end"
    as_argv = raw.decode("utf-8", errors="surrogateescape")  # how Python hands argv over
    assert tok.encode(as_argv) == list(raw)
    assert tok.encode(raw) == list(raw)
    with pytest.raises(AdllmError, match="lone surrogate"):
        tok.encode("a\ud800b")  # not a byte at all


def test_hf_tokenizer_names_the_byte_position_of_non_utf8(hf_dir):
    from adaptive_dllm.models.tokenizer import encode_text

    tok = HFTokenizer(hf_dir, mask_id=3, eos_id=2, pad_id=2, bos_id=1)
    text = b"h\xc3\xa9llo \xff world".decode("utf-8", errors="surrogateescape")
    with pytest.raises(AdllmError, match="byte 0xff at byte position 7") as info:
        tok.encode(text)
    assert "\n" not in str(info.value)
    with pytest.raises(AdllmError, match=r"^notes\.txt is not valid UTF-8: byte 0xff at byte position 7"):
        encode_text(tok, text, source="notes.txt")
    assert encode_text(tok, "hello world") == tok.encode("hello world", add_special_tokens=False)


@pytest.mark.parametrize("template, words", [
    ("{% for m in messages %}{{ m['content'] }", "TemplateSyntaxError line 1"),
    ("{% if %}x{% endif %}", "TemplateSyntaxError"),
    ("{{ messages.__class__.__mro__ }}", "SecurityError"),
    ("{{ undefined_function() }}", "UndefinedError"),
])
def test_malformed_chat_template_is_one_line(hf_dir, template, words):
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    tok = HFTokenizer(hf_dir, mask_id=3, eos_id=2, pad_id=2, bos_id=1)
    with pytest.raises(AdllmError, match="chat_template in tokenizer_config.json is malformed") as info:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert words in str(info.value) and "\n" not in str(info.value)
