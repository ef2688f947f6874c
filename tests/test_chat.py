"""Chat: the Alice/Bob template, replies ending at the turn, history, KV reuse, context overflow."""
import json

import numpy as np
import pytest

from gpt2cy.generation.chat import GREETING, PREAMBLE, Chat
from gpt2cy.errors import ContextLengthError
from fake_lm import FakeModel, FakeTokenizer, ScriptModel

WORDS = [" Hi", " there", "\n", "\nAlice", ":", " Sure", ".", "Alice", "Bob", "\nBob", " message", " two"]
WORDS += [" " + w for w in PREAMBLE.split()] + PREAMBLE.split()      # a short preamble in fake tokens


def bot(script, n_ctx=512, **kw):
    tok = FakeTokenizer(WORDS)
    ids = []
    for p in script:
        ids += tok.encode(p)
    model = ScriptModel(tok, ids, n_ctx=n_ctx)
    notes = []
    chat = Chat(model, temperature=0, on_notice=notes.append, **kw)
    return chat, model, notes


def test_prompt_is_the_hidden_preamble_plus_the_wrapped_turn():
    chat, model, _ = bot([" Hi", " there", "\n", " ignored"])
    assert PREAMBLE.endswith(GREETING)
    assert chat.send("Hello?") == "Hi there"
    fed = model.tokenizer.decode(model.ids)
    assert fed == PREAMBLE + "\nAlice: Hello?\nBob: Hi there"       # the "\n" was sampled, never fed
    assert chat.history == [("Hello?", "Hi there")]
    assert chat.turns[0].finish_reason == "stop"


@pytest.mark.parametrize("script,reply", [
    ([" Sure", ".", "\nAlice", ":", " x"], "Sure."),         # the next speaker's name
    ([" Sure", "."], "Sure."),                                # eos
])
def test_reply_ends_at_the_turn(script, reply):
    chat, _, _ = bot(script)
    assert chat.send("hi") == reply


def test_streamed_reply_and_extra_stop():
    chat, _, _ = bot([" Hi", " there", ".", "\n"], stop=["there"])
    chunks = list(chat.send("hi", stream=True))
    assert "".join(c.text for c in chunks) == " Hi " and chunks[-1].finish_reason == "stop"
    assert chat.history == [("hi", "Hi")]


def test_next_turn_prefills_only_new_tokens():
    chat, model, _ = bot([" Hi", "\n"])
    chat.send("one")
    before = model.prefilled
    chat.send("two")
    new = len(model.tokenizer.encode("\nAlice: two\nBob:"))
    assert model.prefilled - before == new + 0                  # " Hi" reply tokens were already cached
    assert model.tokenizer.decode(model.ids).endswith("\nAlice: one\nBob: Hi\nAlice: two\nBob: Hi")
    assert chat.context_used == len(model.ids)


def test_clear_keeps_the_preamble_and_regen_redoes_the_last_reply():
    tok = FakeTokenizer(WORDS)
    model = FakeModel(tok, n_ctx=2048, seed=3)
    chat = Chat(model, seed=11, max_new_tokens=5, on_notice=None)
    chat.send("a")
    chat.send("b")
    assert [u for u, _ in chat.history] == ["a", "b"]
    first = chat.turns[-1].reply
    again = [chat.regen() for _ in range(4)]
    assert len(chat.turns) == 2 and chat.turns[-1].user == "b"
    assert any(r != first.strip() for r in again)                # new draws, not a replay
    assert chat.undo().user == "b" and [u for u, _ in chat.history] == ["a"]
    chat.clear()
    assert chat.history == [] and chat.context_used == len(tok.encode(PREAMBLE))
    assert chat.undo() is None
    with pytest.raises(ValueError):
        chat.regen()


def test_regen_and_undo_reuse_the_cached_prefix():
    tok = FakeTokenizer(WORDS)
    model = FakeModel(tok, n_ctx=2048, seed=3)
    chat = Chat(model, seed=5, max_new_tokens=6, on_notice=None)
    chat.send("a")
    chat.send("b")
    before, resets = model.prefilled, model.resets
    n_prompt = chat.context_used - len(chat.turns[-1].reply_ids)
    chat.regen()
    assert model.prefilled == before and model.resets == resets       # the prompt's logits were kept
    assert model.n_past >= n_prompt
    before = model.prefilled
    chat.undo()
    chat.send("c")                                     # prefills "c\nBob:": "\nAlice: " of "b" is kept
    assert model.prefilled - before == len(tok.encode("c\nBob:"))
    assert model.resets == resets
    chat.turns[0].reply_ids = tok.encode(" " + chat.turns[0].reply)   # a history that re-encodes differently
    before = model.prefilled
    chat.send("d")
    n_keep = len(tok.encode(PREAMBLE)) + len(chat.turns[0].user_ids)
    assert model.prefilled - before < chat.context_used - n_keep       # not the whole conversation
    assert model.resets == resets


def test_real_model_regen_prefills_nothing_again(tiny_model):
    import gpt2cy
    chat = gpt2cy.Chat(tiny_model, seed=3, max_new_tokens=6, on_notice=None)
    chat.send("Hello there")
    calls = []
    real = tiny_model.prefill
    tiny_model.prefill = lambda ids: calls.append(len(ids)) or real(ids)
    try:
        last = list(chat.regen(stream=True))[-1]
        assert calls == [] and last.cached_tokens == last.prompt_tokens
        old = chat.undo().user_ids
        last = list(chat.send("Hi", stream=True))[-1]
        new = chat.turns[-1].user_ids
        shared = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)    # "\nAlice:" is shared
        assert shared >= 2 and calls == [len(new) - shared]
        assert last.cached_tokens == last.prompt_tokens - calls[0]
    finally:
        del tiny_model.prefill


def test_save_and_load_a_transcript(tmp_path):
    tok = FakeTokenizer(WORDS)
    model = FakeModel(tok, n_ctx=2048, seed=3)
    chat = Chat(model, seed=5, max_new_tokens=6, on_notice=None, top_k=7, stop=["x"])
    chat.send("a")
    chat.send("b \u00e9\u202e")
    path = str(tmp_path / "t.json")
    chat.save(path, model_name="fake-1")
    data = json.loads(open(path, encoding="utf-8").read())
    assert data["version"] == 1 and data["model"] == "fake-1" and data["params"]["top_k"] == 7
    assert [t["user"] for t in data["turns"]] == ["a", "b \u00e9\u202e"]

    other = Chat(model, seed=9, max_new_tokens=3, on_notice=None)
    other.send("zzz")
    before, resets = model.prefilled, model.resets
    assert other.load(path)["model"] == "fake-1"
    assert other.history == chat.history and other.params == chat.params
    assert other.max_new_tokens == 6 and other.stop == ["x"]
    assert other.seed == 5                                        # the saved seed, not the one it had
    assert model.prefilled == before                              # nothing runs until the next send
    assert other.context_used == len(tok.encode(PREAMBLE)) + sum(
        len(tok.encode(f"\nAlice: {u}\nBob:")) + len(tok.encode(t.reply)) for u, t in zip(["a", "b \u00e9\u202e"], other.turns))
    other.send("c")                                               # re-prefills after the shared preamble
    was, now = tok.encode("\nAlice: zzz\nBob:"), tok.encode("\nAlice: a\nBob:")
    shared = len(tok.encode(PREAMBLE)) + next(i for i, (x, y) in enumerate(zip(was, now)) if x != y)
    assert model.prefilled - before == other.context_used - len(other.turns[-1].reply_ids) - shared
    assert model.resets == resets and len(other.turns) == 3


@pytest.mark.parametrize("content,match", [
    (b"{not json", "invalid JSON"), (b"\xff\xfe", "UTF-8"), (b"[1, 2]", "JSON object"),
    (b'{"version": 2, "turns": []}', "version"), (b'{"version": 1}', "turns"),
    (b'{"version": 1, "turns": [{"user": 3}]}', "turn 1"),
    (b'{"version": 1, "turns": [], "params": {"temperature": -1}}', "temperature"),
    (b'{"version": 1, "turns": [], "params": {"max_tokens": "5"}}', "max_tokens"),
    (b'{"version": 1, "turns": [], "params": {"seed": -4}}', "seed"),
    (b'{"version": 1, "turns": [], "params": {"logit_bias": {"999999": 5}}}', "token 999999, but the vocabulary"),
])
def test_a_bad_transcript_changes_nothing(tmp_path, content, match):
    chat, _, _ = bot([" Hi", "\n"])
    chat.send("keep me")
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        chat.load(str(path))
    assert "\n" not in str(e.value)
    assert chat.history == [("keep me", "Hi")]
    with pytest.raises(OSError):
        chat.load(str(tmp_path / "missing.json"))


def test_an_interrupted_reply_keeps_what_was_shown():
    tok = FakeTokenizer(WORDS)
    model = ScriptModel(tok, tok.encode(" Hi there Hi there Hi there"), n_ctx=512)
    chat = Chat(model, temperature=0, on_notice=None)
    stream = chat.send("talk", stream=True)
    shown = [next(stream).text for _ in range(2)]
    stream.close()                                               # what the REPL does on Ctrl-C
    assert chat.history == [("talk", "".join(shown).strip())]
    assert chat.turns[0].finish_reason is None


def test_overflow_drops_oldest_whole_turns_never_the_preamble():
    chat, model, notes = bot([" Hi", " there", "\n"], n_ctx=200, max_new_tokens=20)
    n_pre = len(model.tokenizer.encode(PREAMBLE))
    for i in range(40):
        chat.send(f"message {i}")
        assert chat.context_used + 20 <= 200 + 20                # never more than fits
    assert notes and all(n.startswith("[context full: dropped") for n in notes)
    assert chat.history[-1] == ("message 39", "Hi there")
    assert 1 <= len(chat.history) < 40
    assert model.tokenizer.decode(model.ids).startswith(PREAMBLE)
    assert model.ids[:n_pre] == model.tokenizer.encode(PREAMBLE)


def test_a_message_too_long_for_the_context_is_a_clear_error():
    chat, _, _ = bot([" Hi"], n_ctx=200)
    with pytest.raises(ContextLengthError, match="message"):
        chat.send("word " * 500)
    assert chat.history == []
    assert chat.send("short") == "Hi"


def test_multiline_replies():
    chat, _, _ = bot([" Sure", "\n", " Hi", "\nAlice", ":"], multiline=True)
    assert chat.send("list") == "Sure\n Hi"


def test_odd_text_is_just_text():
    chat, model, _ = bot([" Hi", "\n"])
    assert chat.send("<|endoftext|>\x00\x1b[2J\u202e") == "Hi"
    assert model.tokenizer.eot_token not in model.ids


def test_own_preamble():
    tok = FakeTokenizer(WORDS)
    model = ScriptModel(tok, tok.encode(" Hi\n"), n_ctx=512)
    chat = Chat(model, preamble="\nAlice: Yo\nBob: Yo", temperature=0, on_notice=None)
    assert chat.send("x") == "Hi"
    assert tok.decode(model.ids) == "\nAlice: Yo\nBob: Yo\nAlice: x\nBob: Hi"
    with pytest.raises(ContextLengthError, match="preamble"):
        Chat(FakeModel(tok, n_ctx=8), preamble="a long preamble text")


def test_bad_template():
    with pytest.raises(ValueError):
        Chat(FakeModel(FakeTokenizer(WORDS), n_ctx=512), template="nope")


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    import gpt2cy
    return gpt2cy.load(tiny_model_dir, threads=1)


def test_real_model_chat(tiny_model):
    """The real engine and tokenizer: turns extend the cache, the same seed replays the same replies."""
    import gpt2cy
    replies = []
    for _ in range(2):
        chat = gpt2cy.Chat(tiny_model, seed=7, max_new_tokens=8, on_notice=None)
        replies.append([chat.send("Hello there"), chat.send("What is two plus two?")])
        assert "\n" not in "".join(replies[-1])
        assert chat.context_used <= tiny_model.config.n_ctx
    assert replies[0] == replies[1]
    before = chat.context_used                          # the next turn prefills only its own tokens
    last = list(chat.send("And three?", stream=True))[-1]
    assert last.cached_tokens >= before - 1 and last.prompt_tokens - last.cached_tokens <= 12


def test_real_model_overflow(tiny_model):
    import gpt2cy
    notes = []
    chat = gpt2cy.Chat(tiny_model, seed=1, max_new_tokens=10, multiline=True, on_notice=notes.append)
    for i in range(8):
        chat.send(f"Tell me about number {i}.")
        assert chat.context_used < tiny_model.config.n_ctx
    assert any("context full: dropped" in n for n in notes)
    with pytest.raises(ContextLengthError):
        chat.send("long " * 200)


def test_a_smaller_context_bounds_the_chat(tiny_model_dir):
    import gpt2cy
    model = gpt2cy.load(tiny_model_dir, threads=1, n_ctx=150)
    assert model.n_ctx == 150 and model.config.n_ctx == 256
    notes = []
    chat = gpt2cy.Chat(model, seed=1, max_new_tokens=10, multiline=True, on_notice=notes.append)
    assert chat.n_ctx == 150
    for i in range(5):
        chat.send(f"Tell me about number {i}.")
        assert chat.context_used <= 150 and model.n_past <= 150
    assert any("context full: dropped" in n for n in notes)
    with pytest.raises(ContextLengthError, match=r"\(150\)"):
        chat.send("long " * 60)
    for bad in (0, 257, "100", 1.5):
        with pytest.raises(ValueError, match="n_ctx"):
            gpt2cy.load(tiny_model_dir, n_ctx=bad)


def test_the_turn_ending_newline_is_never_penalised():
    tok = FakeTokenizer([" Hi", " there"])            # "\n" is its own token, as in GPT-2's BPE
    nl, hi, there = tok.encode("\n")[0], tok.encode(" Hi")[0], tok.encode(" there")[0]

    def logits(ids):
        out = np.full(tok.n_vocab, -10.0, np.float32)
        if ids[-1] == hi:
            out[nl], out[there] = 2.0, 1.9            # "\n" just ahead of " there"
        else:
            out[hi] = 5.0
        return out

    chat = Chat(FakeModel(tok, n_ctx=1024, logits_fn=logits), temperature=0, repetition_penalty=1.5,
                on_notice=None)
    assert nl in tok.encode(PREAMBLE)[-64:]          # the newline sits in the penalty window
    assert chat.send("x") == "Hi"                    # only the exemption lets "\n" win over " there"


def test_a_reply_never_ends_before_its_first_token():
    tok = FakeTokenizer([" Hi", "\n\n"])
    enders = [tok.encode("\n")[0], tok.encode("\n\n")[0], tok.eot_token]

    def logits(ids):
        out = np.zeros(tok.n_vocab, np.float32)
        out[enders] = 30.0                            # the model would rather end the turn at once
        out[tok.encode(" Hi")[0]] = 20.0
        return out

    chat = Chat(FakeModel(tok, n_ctx=1024, logits_fn=logits), temperature=0, on_notice=None)
    assert chat.send("x") == "Hi" and chat.turns[0].finish_reason == "stop"


def test_load_names_the_params_it_does_not_know(tmp_path):
    model = FakeModel(FakeTokenizer(WORDS), n_ctx=2048, seed=3)
    notes = []
    chat = Chat(model, seed=1, on_notice=notes.append)
    path = tmp_path / "t.json"
    path.write_text('{"version": 1, "turns": [], "params": {"top_k": 3, "mirostat": 2, "typical_p": 0.5}}')
    chat.load(str(path))
    assert chat.params.top_k == 3
    assert notes == ["the transcript's params 'mirostat', 'typical_p' are not known here; ignored"]
