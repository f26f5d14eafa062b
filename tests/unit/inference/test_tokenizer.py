"""Tokenizer views, streaming detokenization, stop sequences and chat rendering."""

from __future__ import annotations

import pathlib

import pytest

from services.inference.engine import ChatTemplate, ModelTokenizer, StopMatcher


@pytest.fixture(scope="module")
def tok(tiny_model_dir: pathlib.Path) -> ModelTokenizer:
    return ModelTokenizer.from_dir(tiny_model_dir)


def test_special_tokens_and_round_trip(tok: ModelTokenizer) -> None:
    assert tok.token_to_id("<|im_end|>") == 2
    assert tok.eos_token == "<|im_end|>"
    assert {0, 1, 2} <= tok.special_ids
    text = "Café 東京 😀 and plain words."
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode("<|im_start|>user")[0] == 1


def test_token_bytes_are_exact_even_inside_a_character(tok: ModelTokenizer) -> None:
    text = "東京😀"
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    partial = [i for i in ids if not _valid_utf8(tok.token_bytes(i))]
    assert partial, "the tiny tokenizer should split these characters across byte tokens"
    for i in partial:
        assert tok.token_text(i).startswith("bytes:\\x")
    assert tok.token_text(2) == "<|im_end|>"


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_incremental_detokenizer_never_splits_a_character(tok: ModelTokenizer) -> None:
    text = "Hello 😀 wörld, 東京 café!"
    ids = tok.encode(text)
    detok = tok.detokenizer(tok.encode("<|im_start|>assistant\n"))
    deltas = [detok.push([i]) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    emoji = tok.encode("😀")
    assert len(emoji) > 1
    d2 = tok.detokenizer()
    assert [d2.push([i]) for i in emoji[:-1]] == [""] * (len(emoji) - 1)
    assert d2.push([emoji[-1]]) == "😀"


def test_incremental_detokenizer_skips_special_tokens_and_flushes_broken_bytes(tok: ModelTokenizer) -> None:
    emoji = tok.encode("😀")
    detok = tok.detokenizer()
    assert detok.push(tok.encode("ok")) == "ok"
    assert detok.push([1]) == ""
    assert detok.push(emoji[:1]) == ""
    assert detok.flush() == tok.decode(tok.encode("ok") + emoji[:1])[2:]


@pytest.mark.parametrize(
    ("pieces", "stops", "emitted", "stopped"),
    [
        (["Hel", "lo W", "orld"], ["lo W"], "Hel", True),
        (["abc", "def"], ["xyz"], "abcdef", False),
        (["The end", "ing"], ["ending", " end"], "The", True),
        (["a<", "/s", ">b"], ["</s>"], "a", True),
        (["stop here"], ["here", "stop"], "", True),
    ],
)
def test_stop_matcher_across_boundaries(pieces: list[str], stops: list[str], emitted: str, stopped: bool) -> None:
    m = StopMatcher(stops)
    out = []
    hit = False
    for piece in pieces:
        text, hit = m.feed(piece)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    assert "".join(out) == emitted
    assert hit is stopped


def test_stop_matcher_holds_back_only_possible_prefixes() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("abc S") == ("abc ", False)
    assert m.feed("T") == ("", False)
    assert m.feed("x") == ("STx", False)
    assert m.feed("ST") == ("", False)
    assert m.flush() == "ST"


def test_chat_template_renders_chatml(tok: ModelTokenizer) -> None:
    text = tok.render_chat([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tok.render_chat(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}], add_generation_prompt=False
    )
    assert no_prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids[0] == 1 and tok.decode(ids, skip_special_tokens=False) == text


def test_chat_template_is_sandboxed_and_can_raise() -> None:
    with pytest.raises(ValueError, match=r"unsafe|access"):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render([])
    with pytest.raises(ValueError, match="no tools"):
        ChatTemplate("{% if tools %}{{ raise_exception('no tools') }}{% endif %}").render([], tools=[{"x": 1}])
    rendered = ChatTemplate("{{ bos_token }}{{ messages | tojson }}", bos_token="<s>").render([{"role": "u"}])
    assert rendered == '<s>[{"role": "u"}]'
