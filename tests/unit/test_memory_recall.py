"""Pure pieces of memory retrieval and write-back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from server.engine.prompt import ChatTurn, latest_user_text, with_context_block
from server.memory.recall import (
    MEMORY_BLOCK_FOOTER,
    MEMORY_BLOCK_HEADER,
    Candidate,
    Weights,
    extract_facts,
    lexical_query,
    memory_block,
    memory_line,
    people_asked_about,
    prompt_order,
    rank,
    said_when,
    statements,
    third_party,
    third_person,
    time_window,
    turn_text,
)
from server.memory.schedule import seconds_until
from server.memory.updates import (
    Existing,
    attribute,
    decide,
    named_subject,
    parse_judgement,
    relation_of,
)

DEC_1 = 1_796_126_400.0  # 2026-12-01 12:00 UTC


def test_lexical_query_quotes_content_words_only() -> None:
    assert lexical_query("What is my dog's NAME?") == '"dog\'s"'
    assert lexical_query('Where does "my" sister live AND work?') == '"sister" OR "live" OR "work"'
    assert lexical_query("what is it?") == ""


def test_extract_facts_keeps_first_person_statements() -> None:
    text = "My dog is called Rex. Can you suggest a toy for him? I live in Berlin\nWrite me a poem. The sky is blue."
    assert extract_facts(text) == ["My dog is called Rex.", "I live in Berlin."]
    assert extract_facts("What is my dog called?") == []
    assert extract_facts("Hi!") == []


def test_third_person_rewrites_the_user_as_subject() -> None:
    assert third_person("My dog is called Rex.") == "The user's dog is called Rex."
    assert (
        third_person("I live in Berlin and I work as a nurse.")
        == "The user lives in Berlin and the user works as a nurse."
    )
    assert third_person("I'm allergic to penicillin.") == "The user is allergic to penicillin."
    assert third_person("I went to Paris. I studied law.") == "The user went to Paris. The user studied law."
    assert third_person("I carry my bag.") == "The user carries the user's bag."
    assert third_person("Call me Sam.") == "Call the user Sam."


def test_memory_line_shows_a_turn_by_what_the_user_said() -> None:
    stored = turn_text("My dog is called Rex.", "What a lovely name!")
    assert stored == "User: My dog is called Rex.\nAssistant: What a lovely name!"
    assert memory_line(stored, "turn") == "Earlier the user said: The user's dog is called Rex."
    assert memory_line("I like tea.", "fact") == "The user likes tea."
    assert memory_line("I like tea.", "fact", DEC_1, DEC_1 + 3600) == "(today) The user likes tea."
    assert memory_line("I like tea.", "fact", DEC_1) == "The user likes tea."  # no clock, no date
    assert "lovely" not in memory_line(stored, "turn", DEC_1, DEC_1)  # never what the assistant said


def test_a_memory_is_dated_as_a_person_would_say_it() -> None:
    day = 86400.0
    assert said_when(DEC_1, DEC_1 + 11 * 3600) == "today"  # 23:00 the same UTC day
    assert said_when(DEC_1, DEC_1 + 13 * 3600) == "yesterday"  # 01:00 the next day
    assert said_when(DEC_1, DEC_1 + 6 * day) == "6 days ago"
    assert said_when(DEC_1, DEC_1 + 7 * day) == "Dec 1"
    assert said_when(DEC_1 - 300 * day, DEC_1) == "Feb 4"
    assert said_when(DEC_1 - 400 * day, DEC_1) == "Oct 27 2025"
    assert said_when(DEC_1 + day, DEC_1) == "today"  # a clock behind the store's is not "in 1 days"


def test_memory_block_stops_at_the_token_budget() -> None:
    def words(text: str) -> int:
        return len(text.split())

    header = words(MEMORY_BLOCK_HEADER) + words(MEMORY_BLOCK_FOOTER)
    block, used = memory_block(["one two", "three four", "five six"], header + 7, words)
    assert used == 2 and block == f"{MEMORY_BLOCK_HEADER}\n- one two\n- three four{MEMORY_BLOCK_FOOTER}"
    assert block.startswith("<memory>") and "not instructions" in block and block.endswith("</memory>")
    assert memory_block(["far too long for the budget"], header + 2, words) == ("", 0)
    assert memory_block([], 100, words) == ("", 0)


def test_third_party_memories_rank_below_the_users_own_when_penalised() -> None:
    assert third_party("My uncle James adopted a puppy called Nala.") == "uncle"
    assert third_party("My old roommate Jake moved to Denver.") == "flatmate"
    assert third_party("My dog is called Rex.") is None
    assert people_asked_about("Where does my mum's flatmate live?") == {"mother", "flatmate"}
    own = Candidate(1, "My dog is called Rex.", similarity=0.60, lexical=0.0)
    uncle = Candidate(2, "My uncle James adopted a dog called Nala.", similarity=0.62, lexical=2.0)
    weights = Weights(lexical=0.05, third_party=0.1)
    assert [c.id for c, _ in rank("What is my dog called?", [uncle, own], weights)] == [1, 2]
    assert [c.id for c, _ in rank("What is my uncle's dog called?", [uncle, own], weights)] == [2, 1]
    assert [c.id for c, _ in rank("What is my dog called?", [uncle, own], Weights(lexical=0.05))] == [2, 1]


def test_a_turn_never_outranks_the_fact_taken_from_it() -> None:
    fact = Candidate(1, "My dog is called Rex.", 0.70, 0.0, kind="fact", source="req_1")
    turn = Candidate(2, "User: My dog is called Rex. Is that a good name?", 0.90, 3.0, kind="turn", source="req_1")
    other_turn = Candidate(3, "User: I walked the dog.", 0.80, 0.0, kind="turn", source="req_2")
    ranked = rank("What is my dog called?", [turn, fact, other_turn], Weights())
    assert [c.id for c, _ in ranked] == [3, 1, 2]


def test_time_window_prefers_what_was_said_then() -> None:
    day = 86400.0
    window = time_window("what did I say last week about the car?", DEC_1)
    assert window is not None and window[0] <= DEC_1 - 7 * day < window[1] and window[1] <= DEC_1
    september = time_window("what was I reading in September?", DEC_1)
    assert september is not None and september[0] <= 1_789_000_000 < september[1]  # 2026-09-10 in Sept 2026
    assert time_window("what did I say 3 days ago?", DEC_1)[0] < DEC_1 - 3 * day < time_window("x 3 days ago", DEC_1)[1]
    assert time_window("may I ask where I live?", DEC_1) is None
    assert time_window("where do I live?", DEC_1) is None
    old = Candidate(1, "I bought a bike.", 0.55, 0.0, said_at=DEC_1 - 60 * day)
    recent = Candidate(2, "I sold my bike.", 0.50, 0.0, said_at=DEC_1 - 8 * day)
    weights = Weights(in_window=0.1)
    assert [c.id for c, _ in rank("bike?", [old, recent], weights)] == [1, 2]
    assert [c.id for c, _ in rank("bike last week?", [old, recent], weights, window)] == [2, 1]
    assert [c.id for c, _ in rank("bike?", [old, recent], Weights(recency=0.1))] == [2, 1]


def test_statements_leave_out_questions_and_requests() -> None:
    assert statements("My dog is Rex. What is my dog called? Please be brief. Ana is allergic to shellfish") == [
        "My dog is Rex.",
        "Ana is allergic to shellfish.",
    ]
    assert statements("What is my dog called?") == []


def test_knowledge_updates_at_write_time() -> None:
    limits = {"duplicate_similarity": 0.92, "update_similarity": 0.5, "replace_similarity": 0.85}
    lisbon = Existing(1, "I live in Lisbon.", 0.55)
    assert decide("Actually I moved to Porto last week.", [lisbon], **limits).action == "UPDATE"
    assert decide("Actually I moved to Porto last week.", [lisbon], **limits).target == 1
    assert decide("I love the trams here.", [Existing(1, "I live in Lisbon.", 0.62)], **limits).action == "ADD"
    assert decide("I live in Lisbon.", [Existing(1, "I live in Lisbon.", 0.99)], **limits).action == "NOOP"
    tennis = Existing(2, "I play tennis on Sundays.", 0.90)
    assert decide("I play tennis on Saturdays.", [tennis], **limits).action == "UPDATE"
    assert decide("I work in Lisbon.", [Existing(1, "I live in Lisbon.", 0.88)], **limits).action == "ADD"
    dog = Existing(3, "I have a dog called Rex.", 0.54)
    assert decide("I don't have a dog anymore.", [dog], **limits).action == "DELETE"
    uncle = Existing(4, "My uncle moved to Porto.", 0.9)
    assert decide("I moved to Porto.", [uncle], **limits).action == "ADD"  # about someone else


def test_the_models_judgement_is_parsed_or_left_to_the_rules() -> None:
    shown = [Existing(7, "I live in Lisbon.", 0.6)]
    assert parse_judgement("UPDATE 7", shown).action == "UPDATE"
    assert parse_judgement("update [7] because", shown).target == 7
    assert parse_judgement("DELETE 9", shown) is None  # not a memory it was shown
    assert parse_judgement("ADD", shown).action == "ADD"
    assert parse_judgement("NOOP", shown).action == "NOOP"
    assert parse_judgement("I think so", shown) is None


def test_statements_about_people_the_user_named_are_attributed() -> None:
    assert named_subject("Ana is allergic to shellfish too.") == "Ana"
    assert named_subject("The weather is nice.") is None
    assert named_subject("I am tired.") is None
    known = ["My dog is Rex.", "My wife Ana works as a nurse."]
    assert relation_of("Ana", known) == "wife"
    assert relation_of("Bob", known) is None
    assert attribute("Ana is allergic to shellfish too.", "Ana", "wife") == "My wife Ana is allergic to shellfish too."
    assert third_person(attribute("Ana is allergic to shellfish too.", "Ana", "wife")).startswith("The user's wife Ana")


def test_memory_block_goes_after_the_stable_prefix() -> None:
    system = ChatTurn("system", "A long stable system prompt.")
    earlier = [ChatTurn("user", "hi"), ChatTurn("assistant", "hello")]
    user = ChatTurn("user", "What is my dog called?")
    placed = with_context_block([system, *earlier, user], "<memory>BLOCK</memory>")
    assert placed[:3] == [system, *earlier]  # the prefix the engine caches is untouched
    assert placed[3] == ChatTurn("user", "<memory>BLOCK</memory>\n\nWhat is my dog called?")
    assert with_context_block([system, user], "") == [system, user]
    assert with_context_block([user, ChatTurn("assistant", "ok")], "B")[0].content.startswith("B\n\n")


def test_latest_user_text_is_the_last_user_turn() -> None:
    assert (
        latest_user_text([ChatTurn("user", "first"), ChatTurn("assistant", "ok"), ChatTurn("user", "second")])
        == "second"
    )


def test_curation_time_is_the_next_occurrence() -> None:
    assert seconds_until("03:00", datetime(2026, 11, 22, 2, 59)) == 60
    assert seconds_until("03:00", datetime(2026, 11, 22, 3, 0)) == 24 * 3600
    assert seconds_until("00:00", datetime(2026, 11, 22, 23, 30)) == 1800


def test_user_goal_breaks_near_ties() -> None:
    cooking = Candidate(1, "I love making risotto.", similarity=0.50, lexical=0.0, goal_similarity=0.6)
    running = Candidate(2, "I love running marathons.", similarity=0.505, lexical=0.0, goal_similarity=0.0)
    assert [c.id for c, _ in rank("What do I love?", [cooking, running], Weights())] == [2, 1]
    assert [c.id for c, _ in rank("What do I love?", [cooking, running], Weights(goal=0.02))] == [1, 2]


def test_prompt_order_lists_recalled_memories_oldest_first_whatever_their_rank() -> None:
    @dataclass(frozen=True)
    class Said:
        id: int
        created_at: float
        text: str

    rex, leeds, tea, hockey = Said(4, 10.0, "rex"), Said(2, 5.0, "leeds"), Said(3, 5.0, "tea"), Said(1, 20.0, "hockey")
    assert prompt_order([rex, hockey, tea, leeds]) == [leeds, tea, rex, hockey]  # when said, then id
    # The same memories recalled in another rank order read the same, token for token (the prefix cache's unit).
    words = lambda text: len(text.split())
    one = memory_block([m.text for m in prompt_order([hockey, rex, leeds])], 200, words)
    other = memory_block([m.text for m in prompt_order([leeds, hockey, rex])], 200, words)
    assert one == other and one[1] == 3
