"""The RRR format core: validate, StreamValidator, repair, guided_regex, ChatML extraction."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrr_ray import StreamValidator, extract_assistant_reply, guided_regex, repair, validate
from rrr_ray.format.spec import RULES, SECTION_NAMES, ErrorCode
from tests.helpers import SEED_DIR, seed_replies

GOOD = "<react>*leans in*</react>\n<respond>Tell me more.</respond>\n<reflect>They need space.</reflect>"
SEED_REPLIES = seed_replies()


def codes(text: str) -> list[str]:
    return validate(text).error_codes


# -- validate ---------------------------------------------------------------------------------

def test_valid_reply_has_sections_and_no_errors():
    v = validate(GOOD)
    assert v.valid and v.errors == [] and v.warnings == []
    assert (v.react, v.respond, v.reflect) == ("*leans in*", "Tell me more.", "They need space.")


def test_whitespace_around_and_between_sections_is_allowed():
    assert validate("\n  " + GOOD.replace("\n", "\n\n  ") + "  \n").valid


@pytest.mark.parametrize("text, expected", [
    ("<react>*a*</react><respond>b</respond>", ["missing_tag"]),
    ("<respond>b</respond><react>*a*</react><reflect>c</reflect>", ["wrong_order"]),
    ("<react>*a*<respond>b</respond><reflect>c</reflect>", ["unclosed_tag"]),
    ("<react>*a*</react><respond>b</respond><reflect>c", ["unclosed_tag"]),
    ("<react>*a*</react><respond>  </respond><reflect>c</reflect>", ["empty_section"]),
    ("Sure! <react>*a*</react><respond>b</respond><reflect>c</reflect>", ["text_outside_tags"]),
    ("<react>*a*</react>x<respond>b</respond><reflect>c</reflect> ok", ["text_outside_tags", "text_outside_tags"]),
    ("<react>*a*</react><respond>b</respond><respond>b</respond><reflect>c</reflect>", ["duplicate_tag"]),
    ("<react>*a <react>x*</react><respond>b</respond><reflect>c</reflect>", ["nested_tag"]),
    ("<react>*a*</react></respond><respond>b</respond><reflect>c</reflect>", ["unexpected_closing_tag"]),
    ("<REACT>*a*</react><respond>b</respond><reflect>c</reflect>", ["tag_case"]),
    ("", ["missing_tag", "missing_tag", "missing_tag"]),
])
def test_each_rule_has_its_error_code(text, expected):
    assert codes(text) == expected


def test_errors_carry_positions_and_sections():
    text = "hi <react>*a*</react><respond></respond><reflect>c</reflect>"
    errors = validate(text).errors
    assert [(e.code.value, e.position, e.section) for e in errors] == [
        ("text_outside_tags", 0, None), ("empty_section", text.index("<respond>"), "respond")]


def test_lt_sign_and_unknown_tags_inside_text_are_text():
    text = "<react>*a <b> c*</react><respond>2 < 3 and <3 </respond><reflect>x<y</reflect>"
    v = validate(text)
    assert v.valid, v.summary()
    assert v.respond == "2 < 3 and <3"


def test_missing_asterisks_is_a_warning_not_an_error():
    v = validate("<react>leans in</react><respond>b</respond><reflect>c</reflect>")
    assert v.valid and [w.code.value for w in v.warnings] == ["not_starred"]


def test_every_error_code_has_a_rule():
    assert set(RULES) == set(ErrorCode)


def test_seed_data_is_read_and_mostly_valid_after_repair():
    assert len(SEED_REPLIES) == 366
    assert sum(validate(r).valid for r in SEED_REPLIES) >= 200
    assert all(repair(r)[1].valid_after for r in SEED_REPLIES)


# -- StreamValidator ----------------------------------------------------------------------------

ADVERSARIAL = [
    GOOD,
    "<react>*a*</react><respond>x <re</respond><reflect>c</reflect>",
    "<react>*a*</react><respond>b</respond><reflect>c</reflect><",
    "<react>*é 😀 <</react>\n<respond>日本語 </respond><reflect>ok</re",
    "<react><react>*x*</react></react>",
    "</reflect><reflect>c</reflect><respond>b</respond><react>*a*</react>",
    "<React>*a*</REACT><respond>b</Respond><reflect></reflect>",
    "text <react>*a* <respond>b<reflect>c",
    "<<react>>*a*<</react>><respond>b</respond><reflect>c</reflect>",
    "<react>*a*</react>   \n\t <respond>b</respond>\n<reflect>c</reflect>\n",
    "<reactx>*a*</react><respond>b</respond>",
]

_alphabet = st.sampled_from(["<", ">", "/", "*", " ", "\n", "a", "é", "😀", "<react>", "</react>", "<respond>",
                             "</respond>", "<reflect>", "</reflect>", "<REACT>", "</Reflect>", "<re", "act>", "x"])
adversarial_text = st.lists(_alphabet, max_size=40).map("".join)
any_text = st.one_of(adversarial_text, st.sampled_from(ADVERSARIAL + SEED_REPLIES), st.text(max_size=60))


def feed_in_pieces(text: str, cuts: list[int]) -> tuple[StreamValidator, list]:
    validator = StreamValidator()
    events = []
    bounds = sorted({0, len(text), *[c % (len(text) + 1) for c in cuts]})
    for a, b in zip(bounds, bounds[1:]):
        events += validator.feed(text[a:b])
    return validator, events


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=any_text, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_stream_close_equals_validate_for_every_split(text, cuts):
    validator, events = feed_in_pieces(text, cuts)
    assert validator.close() == validate(text)
    _, whole_events = feed_in_pieces(text, [])
    assert _text_by_section(events) == _text_by_section(whole_events)


def _text_by_section(events) -> dict:
    out: dict = {}
    for e in events:
        if e.kind == "text":
            out[e.section] = out.get(e.section, "") + e.text
    return out


@settings(max_examples=200, deadline=None)
@given(text=any_text, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_stream_error_events_are_exactly_the_errors_found(text, cuts):
    validator, events = feed_in_pieces(text, cuts)
    streamed = [e.error for e in events if e.kind == "error"]
    final = validator.close().errors
    assert streamed == final[:len(streamed)]


def test_char_by_char_over_all_seed_replies():
    for reply in SEED_REPLIES:
        validator = StreamValidator()
        for ch in reply:
            validator.feed(ch)
        assert validator.close() == validate(reply)


def test_events_label_text_with_its_section():
    validator = StreamValidator()
    events = []
    for piece in ["<rea", "ct>*le", "ans*</react>\n<respond>Hi", "</respond><reflect>ok</reflect>"]:
        events += validator.feed(piece)
    labelled = {}
    for e in events:
        if e.kind == "text":
            labelled[e.section] = labelled.get(e.section, "") + e.text
    assert labelled == {"react": "*leans*", None: "\n", "respond": "Hi", "reflect": "ok"}
    kinds = [(e.kind, e.section) for e in events if e.kind != "text"]
    assert kinds == [("section_start", "react"), ("section_end", "react"), ("section_start", "respond"),
                     ("section_end", "respond"), ("section_start", "reflect"), ("section_end", "reflect")]
    assert validator.close().valid


def test_violation_is_flagged_as_soon_as_certain():
    validator = StreamValidator()
    assert validator.feed("<react>*a*</react>") and not validator.errors
    events = validator.feed("Oops")
    assert [e.error.code.value for e in events if e.kind == "error"] == ["text_outside_tags"]
    events = validator.feed("<reflect>")  # respond skipped: reported as missing at close only
    assert not [e for e in events if e.kind == "error"]
    assert validator.feed("</reflect>")[0].error.code.value == "empty_section"


def test_feed_after_close_is_an_error():
    validator = StreamValidator()
    validator.close()
    with pytest.raises(RuntimeError):
        validator.feed("x")


# -- repair ---------------------------------------------------------------------------------------

def test_repair_fixes_case_closing_tags_stars_and_whitespace():
    text = "  <React>leans in</React>\n<respond> Hi there  \n<reflect>They smiled.  "
    fixed, report = repair(text)
    assert fixed == "<react>*leans in*</react>\n<respond>Hi there</respond>\n<reflect>They smiled.</reflect>"
    assert {c.code for c in report.changes} == {"tag_case", "inserted_closing_tag", "added_asterisks", "whitespace"}
    assert not report.valid_before and report.valid_after and report.unrepaired == []


def test_repair_reorders_when_each_section_is_present_once():
    fixed, report = repair("<reflect>c</reflect><react>*a*</react><respond>b</respond>")
    assert fixed == "<react>*a*</react>\n<respond>b</respond>\n<reflect>c</reflect>"
    assert "reordered" in {c.code for c in report.changes}


@pytest.mark.parametrize("text, left", [
    ("<react>*a*</react><respond>b</respond>", ["missing_tag"]),
    ("<react>*a*</react><respond> </respond><reflect>c</reflect>", ["empty_section"]),
    ("Hello <react>*a*</react><respond>b</respond><reflect>c</reflect>", ["text_outside_tags"]),
])
def test_repair_never_invents_content(text, left):
    fixed, report = repair(text)
    assert [e.code.value for e in report.unrepaired] == left
    assert not report.valid_after
    assert "Generic" not in fixed
    words = lambda s: set(re.findall(r"[A-Za-z]+", s)) - set(SECTION_NAMES)  # noqa: E731
    assert words(fixed) <= words(text)


def test_repair_of_a_valid_canonical_reply_changes_nothing():
    fixed, report = repair(GOOD)
    assert fixed == GOOD and report.changes == []


@settings(max_examples=300, deadline=None)
@given(text=any_text)
def test_repair_is_idempotent_and_never_makes_things_worse(text):
    fixed, report = repair(text)
    again, report2 = repair(fixed)
    assert again == fixed
    if validate(text).valid:
        assert report.valid_after


# -- guided_regex -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bounded", [True, False])
def test_guided_regex_matches_repaired_seed_replies(bounded):
    pattern = re.compile(guided_regex(bounded=bounded))
    repaired = [repair(r)[0] for r in SEED_REPLIES]
    assert all(pattern.fullmatch(r) for r in repaired)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(guided_regex(), fullmatch=True))
def test_everything_the_guided_regex_accepts_validates(text):
    v = validate(text)
    assert v.valid, (text, v.summary())
    assert not v.warnings


def test_guided_regex_rejects_invalid_replies():
    pattern = re.compile(guided_regex())
    for bad in ["<react>*a*</react>\n<respond>b</respond>", "<react>a</react>\n<respond>b</respond>\n<reflect>c</reflect>",
                "<react>*a*</react>\n<respond> </respond>\n<reflect>c</reflect>", "x" + GOOD]:
        assert not pattern.fullmatch(bad)


# -- ChatML ---------------------------------------------------------------------------------------

def test_extract_assistant_reply_from_chatml():
    raw = f"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{GOOD}<|im_end|>\n"
    assert extract_assistant_reply(raw) == GOOD
    assert extract_assistant_reply(f"<|im_start|>assistant\n{GOOD}") == GOOD
    assert extract_assistant_reply(GOOD + "<|im_end|>") == GOOD
    assert extract_assistant_reply("  " + GOOD) == GOOD


def test_chatml_pieces_join_to_render_chatml_and_mark_the_replies():
    from rrr_ray.format.chatml import ASSISTANT_HEADER, IM_END, IM_START, chatml_pieces, render_chatml

    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": GOOD}, {"role": "user", "content": "and?"}]
    for gen in (False, True):
        pieces = list(chatml_pieces(conv, add_generation_prompt=gen))
        assert "".join(t for t, _ in pieces) == render_chatml(conv, add_generation_prompt=gen)
        assert [t for t, reply in pieces if reply] == [GOOD + IM_END]
    assert render_chatml(conv[1:3], add_generation_prompt=True) == (
        f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n{GOOD}{IM_END}\n{ASSISTANT_HEADER}")
    assert ASSISTANT_HEADER == "<|im_start|>assistant\n"


def test_seed_dir_is_inside_the_repository():
    from tests.helpers import REPO

    assert SEED_DIR.is_dir() and SEED_DIR.resolve().is_relative_to(REPO.resolve())
