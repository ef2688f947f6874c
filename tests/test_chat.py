"""Chat: the Alice/Bob template, replies ending at the turn, history, KV reuse, context overflow."""
import numpy as np
import pytest

from gpt2cy.chat import GREETING, PREAMBLE, Chat
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
