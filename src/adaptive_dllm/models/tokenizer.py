"""Tokenizers: a checkpoint's ``tokenizer.json`` (+ chat template) or the bundled byte tokenizer.

Both expose the same small interface: ``encode``, ``decode``, ``apply_chat_template`` and the
special ids ``eos_id``, ``pad_id``, ``mask_id``, ``bos_id``.

Text that came from bytes which are not UTF-8 (a prompt in ``argv``, standard input, a
``--text`` file) reaches the tokenizers as ``str`` with each such byte kept as a lone surrogate
(Python's ``surrogateescape``). The byte tokenizer turns them back into the exact bytes; a
``tokenizer.json`` tokenizer reads UTF-8 only and refuses them with the byte position
(:func:`check_text`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from adaptive_dllm.errors import AdllmError, CheckpointError


class Tokenizer(Protocol):
    eos_id: int | None
    pad_id: int | None
    mask_id: int | None
    bos_id: int | None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; then end-of-text and mask.

    Decoding drops special ids and replaces invalid UTF-8 (a diffusion model can emit any byte).
    """

    n_bytes = 256

    def __init__(self) -> None:
        self.eos_id = 256
        self.pad_id = 256
        self.mask_id = 257
        self.bos_id = None

    @property
    def vocab_size(self) -> int:
        return 258

    def encode(self, text: str | bytes, *, add_special_tokens: bool = True) -> list[int]:
        if isinstance(text, bytes):
            return list(text)
        try:
            return list(text.encode("utf-8", errors="surrogateescape"))
        except UnicodeEncodeError as err:  # a surrogate that never was a byte, e.g. "\ud800"
            raise AdllmError(f"text holds the lone surrogate {text[err.start]!r} at character "
                             f"{err.start}; it is neither UTF-8 nor a raw byte") from None

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        data = bytes(i for i in ids if 0 <= i < self.n_bytes)
        return data.decode("utf-8", errors="replace")

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        raise AdllmError("the bundled byte-level model has no chat template; drop --chat")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` read with the ``tokenizers`` library.

    The chat template (``tokenizer_config.json`` ``chat_template``) is rendered with Jinja2 in a
    sandbox, as Hugging Face does.
    """

    def __init__(self, directory: Path, *, mask_id: int | None, eos_id: int | None,
                 pad_id: int | None, bos_id: int | None) -> None:
        from tokenizers import Tokenizer as _Tok

        try:
            self._tok = _Tok.from_file(str(directory / "tokenizer.json"))
        except Exception as err:  # the tokenizers library raises a bare Exception
            raise CheckpointError(f"cannot read {directory / 'tokenizer.json'}: {err}") from err
        cfg_path = directory / "tokenizer_config.json"
        self._cfg: dict[str, Any] = {}
        if cfg_path.is_file():
            try:
                self._cfg = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from err
        self.mask_id, self.eos_id, self.pad_id, self.bos_id = mask_id, eos_id, pad_id, bos_id
        self._special = {i for i in (mask_id, eos_id, pad_id, bos_id) if i is not None}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        check_text(text)
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def _token_str(self, key: str) -> str:
        value = self._cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return value or ""

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        template = self._cfg.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template:
            raise AdllmError("this checkpoint's tokenizer_config.json has no chat_template; drop --chat")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise AdllmError(f"chat template: {message}")

        from jinja2 import TemplateError

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(template).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._token_str("bos_token"),
                eos_token=self._token_str("eos_token"),
            )
        except TemplateError as err:  # syntax errors, undefined names, sandbox violations
            line = f" line {err.lineno}" if getattr(err, "lineno", None) else ""
            message = " ".join(str(err.message or err).split())
            raise AdllmError(f"the chat_template in tokenizer_config.json is malformed "
                             f"({type(err).__name__}{line}: {message}); fix it or drop --chat"
                             ) from None


def check_text(text: str, *, source: str = "text") -> None:
    """Raise :class:`AdllmError` when ``text`` holds a byte that was not UTF-8 (a lone
    surrogate from ``surrogateescape``), naming its byte position in ``source``."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            offset = len(text[:i].encode("utf-8", errors="surrogateescape"))
            raw = ord(ch) - 0xDC00 if "\udc80" <= ch <= "\udcff" else None
            byte = f"byte 0x{raw:02x}" if raw is not None else f"character {ch!r}"
            raise AdllmError(f"{source} is not valid UTF-8: {byte} at byte position {offset}; "
                             "this tokenizer reads UTF-8 text only (fix the encoding, e.g. with "
                             "iconv; the byte-level bundled model takes any bytes)")


def encode_text(tokenizer: Tokenizer, text: str, *, source: str = "text") -> list[int]:
    """``tokenizer.encode(text, add_special_tokens=False)``, naming ``source`` when a
    non-byte-level tokenizer meets bytes that are not UTF-8."""
    if not isinstance(tokenizer, ByteTokenizer):
        check_text(text, source=source)
    return tokenizer.encode(text, add_special_tokens=False)
