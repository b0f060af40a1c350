"""Pure pieces of memory retrieval and write-back."""

from __future__ import annotations

from datetime import datetime

from server.engine.prompt import ChatTurn, latest_user_text, with_system_block
from server.memory.recall import (
    MEMORY_BLOCK_HEADER,
    Candidate,
    extract_facts,
    lexical_query,
    memory_block,
    memory_line,
    people_asked_about,
    rerank,
    third_party,
    third_person,
    turn_text,
)
from server.memory.schedule import seconds_until


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


def test_memory_block_stops_at_the_token_budget() -> None:
    def words(text: str) -> int:
        return len(text.split())

    header = words(MEMORY_BLOCK_HEADER)
    block, used = memory_block(["one two", "three four", "five six"], header + 7, words)
    assert used == 2 and block == f"{MEMORY_BLOCK_HEADER}\n- one two\n- three four"
    assert memory_block(["far too long for the budget"], header + 2, words) == ("", 0)
    assert memory_block([], 100, words) == ("", 0)


def test_third_party_memories_rank_below_the_users_own() -> None:
    assert third_party("My uncle James adopted a puppy called Nala.") == "uncle"
    assert third_party("My old roommate Jake moved to Denver.") == "flatmate"
    assert third_party("My dog is called Rex.") is None
    assert people_asked_about("Where does my mum's flatmate live?") == {"mother", "flatmate"}
    own = Candidate(1, "My dog is called Rex.", similarity=0.60, lexical=0.0)
    uncle = Candidate(2, "My uncle James adopted a dog called Nala.", similarity=0.62, lexical=2.0)
    ranked = rerank("What is my dog called?", [uncle, own], lexical_weight=0.05, third_party_penalty=0.1)
    assert [candidate.id for candidate, _ in ranked] == [1, 2]
    asked = rerank("What is my uncle's dog called?", [uncle, own], lexical_weight=0.05, third_party_penalty=0.1)
    assert [candidate.id for candidate, _ in asked] == [2, 1]


def test_memory_block_goes_into_the_one_leading_system_turn() -> None:
    user = ChatTurn("user", "What is my dog called?")
    assert with_system_block([user], "BLOCK") == [ChatTurn("system", "BLOCK"), user]
    system = ChatTurn("system", "Be brief.")
    assert with_system_block([system, user], "BLOCK") == [ChatTurn("system", "Be brief.\n\nBLOCK"), user]
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
    plain = rerank("What do I love?", [cooking, running], lexical_weight=0.05, third_party_penalty=0.1)
    assert [candidate.id for candidate, _ in plain] == [2, 1]
    steered = rerank(
        "What do I love?", [cooking, running], lexical_weight=0.05, third_party_penalty=0.1, goal_weight=0.02
    )
    assert [candidate.id for candidate, _ in steered] == [1, 2]
