"""Stop strings: found across any token split, held back while they might match, left out of the text."""
import pytest
from hypothesis import given, settings, strategies as st

from gpt2cy.generation.stopping import StopMatcher


def run(pieces, stops):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, stopped = m.feed(p)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(m.flush())
    return "".join(out), m.stopped


def expected(text, stops):
    cuts = [text.find(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def test_stop_split_across_pieces():
    m = StopMatcher(["\nAlice:"])
    assert m.feed("Sure, here") == ("Sure, here", False)
    assert m.feed(".\nAl") == (".", False)           # "\nAl" could still become the stop
    assert m.feed("ic") == ("", False)
    assert m.feed("e: more") == ("", True)
    assert m.matched == "\nAlice:" and m.flush() == ""
    assert m.feed("anything") == ("", True)


def test_held_text_is_released_when_it_stops_matching():
    m = StopMatcher(["\nAlice:"])
    assert m.feed("a\nAli") == ("a", False)
    assert m.feed("son") == ("\nAlison", False)


def test_flush_releases_a_held_tail():
    m = StopMatcher(["STOP"])
    assert m.feed("go ST") == ("go ", False)
    assert m.flush() == "ST"


def test_earliest_stop_wins_and_no_stops_pass_through():
    assert run(["xx", "ab", "cd"], ["bcd", "abc"]) == ("xx", True)
    assert run(["a", "b"], []) == ("ab", False)


def test_a_stop_inside_one_piece():
    assert run(["Hello\nBob: hi"], ["\n"]) == ("Hello", True)


def test_bad_stops():
    with pytest.raises(ValueError):
        StopMatcher([""])
    with pytest.raises(TypeError):
        StopMatcher([b"x"])


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab\nc:", max_size=30),
       stops=st.lists(st.text(alphabet="ab\nc:", min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=10))
def test_any_split_gives_the_unsplit_answer(text, stops, cuts):
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    assert run(pieces, stops) == expected(text, stops)


def test_a_longer_stop_starting_earlier_wins_even_when_split():
    # ":a" holds the stop "a", but ":a:" (starting earlier) may still complete: wait and see
    m = StopMatcher(["a", ":a:"])
    assert m.feed(":a") == ("", False)
    assert m.feed(":") == ("", True) and m.matched == ":a:"
    m = StopMatcher(["a", ":a:"])
    assert m.feed(":a") == ("", False)
    assert m.feed("b") == (":", True) and m.matched == "a"
    m = StopMatcher(["a", ":a:"])                   # the text ends while waiting: the short stop holds
    assert m.feed("x:a") == ("x", False)
    assert m.flush() == ":" and m.stopped and m.matched == "a"
