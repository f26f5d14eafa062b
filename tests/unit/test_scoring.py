"""The quality scorer's direction on constructed pairs (docs/metrics.md): each dimension moves the way it claims."""

from __future__ import annotations

import time

import pytest

from services.metrics import scoring

STORY_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle"
STORY = (
    "Mara had kept the lighthouse on Gull Rock for twelve years. Every morning the lighthouse lamp needed "
    "cleaning, and Mara cleaned it before the ferry passed at 7:40. One foggy morning the ferry was late, so Mara "
    "walked down to the rocks below the lighthouse. Between the rocks she found a green bottle with a message "
    "inside. The message was written in faded ink by a sailor named Tomas in 1962. Tomas asked whoever found the "
    "bottle to light a candle for his brother. That evening Mara lit the candle in the lantern room, beside the "
    "lamp she had cleaned for twelve years. Finally, the ferry sounded its horn as it passed, and Mara waved."
)


def scored(text: str, prompt: str = STORY_PROMPT, **kw) -> scoring.Score:
    return scoring.score(text, prompt, **kw)


def test_every_dimension_has_three_named_factors_and_a_feedback_sentence_with_its_numbers():
    s = scored(STORY)
    assert set(s.dimensions) == set(scoring.DIMENSIONS)
    for name, d in s.dimensions.items():
        assert tuple(d.factors) == scoring.FACTORS[name]
        assert all(0 <= v <= 100 for v in d.factors.values())
        assert d.score == round(sum(d.factors.values()) / 3, 1)
        assert f"{d.score:.1f}" in d.feedback and d.feedback.endswith(".")
    assert s.overall_quality == round(sum(scoring.WEIGHTS[n] * s.dimensions[n].score for n in scoring.DIMENSIONS), 1)
    assert s.version == scoring.SCORER_VERSION


def test_the_same_text_and_prompt_give_the_same_scores():
    a, b = scored(STORY), scored(STORY)
    assert a.metrics() == b.metrics()
    assert {n: d.factors for n, d in a.dimensions.items()} == {n: d.factors for n, d in b.dimensions.items()}


def test_shuffled_sentences_score_lower_coherence():
    sentences = scoring.Text.of(STORY).sentences
    shuffled = " ".join(sentences[i] for i in (4, 0, 7, 2, 5, 1, 6, 3))
    assert scored(shuffled).dimensions["coherence"].score < scored(STORY).dimensions["coherence"].score


def test_a_text_the_model_finds_unlikely_scores_lower_coherence():
    fluent = scored(STORY, token_logprobs=[-1.0] * 50)
    garbled = scored(STORY, token_logprobs=[-4.0] * 50)
    assert fluent.perplexity == pytest.approx(2.718, abs=0.01)
    assert garbled.dimensions["coherence"].score < fluent.dimensions["coherence"].score


def test_a_truncated_answer_scores_lower_completeness():
    truncated = STORY[: STORY.index("Between the rocks") + 30]
    assert (scored(truncated, finish_reason="length").dimensions["completeness"].score
            < scored(STORY, finish_reason="stop").dimensions["completeness"].score)
    # Without a finish reason the ending decides.
    assert scored(truncated).dimensions["completeness"].score < scored(STORY).dimensions["completeness"].score


def test_an_answer_off_the_prompt_scores_lower_completeness():
    prompt = "Explain how photosynthesis turns sunlight, water and carbon dioxide into glucose and oxygen."
    on = ("Photosynthesis captures sunlight in chlorophyll. The plant splits water, releasing oxygen, and uses the "
          "energy to fix carbon dioxide into glucose in the Calvin cycle.")
    off = "The weather was pleasant yesterday. We went for a walk in the park and had ice cream."
    assert scored(off, prompt).dimensions["completeness"].score < scored(on, prompt).dimensions["completeness"].score


def test_long_polysyllabic_sentences_score_lower_readability():
    plain = "The cat sat on the mat. It was warm there. The sun came in through the window. The cat slept."
    dense = ("Notwithstanding considerable institutional heterogeneity, contemporaneous organizational "
             "restructuring methodologies necessitate comprehensive interdisciplinary evaluation of "
             "multidimensional sociotechnical infrastructural interdependencies characterizing "
             "internationalized administrative decentralization.")
    assert scored(dense, "").dimensions["readability"].score < scored(plain, "").dimensions["readability"].score


def test_repeated_text_scores_lower_creativity():
    repeated = "The lighthouse keeper found a bottle. " * 12
    assert scored(repeated).dimensions["creativity"].score < scored(STORY).dimensions["creativity"].score


def test_copying_the_prompt_scores_lower_originality():
    copied = (STORY_PROMPT + ". ") * 3
    assert (scored(copied).dimensions["creativity"].factors["originality"]
            < scored(STORY).dimensions["creativity"].factors["originality"])


def test_a_vague_answer_scores_lower_specificity_than_a_concrete_one():
    prompt = "How do I get from Paris to London?"
    vague = ("There are various things you can do. Some options are generally good and some are maybe not so "
             "nice. It kind of depends on lots of stuff, really, and different people like different things.")
    concrete = ("Take the Eurostar from Gare du Nord to St Pancras International: trains leave about 15 times a "
                "day, the trip takes 2 hours 16 minutes, and tickets start near 44 EUR when booked 30 days ahead.")
    assert scored(vague, prompt).dimensions["specificity"].score < scored(concrete, prompt).dimensions[
        "specificity"].score


def test_a_three_word_answer_to_a_300_word_story_request_scores_lower_length_appropriateness():
    prompt = "Write a 300-word story about a dragon"
    short = "Dragons are big."
    story = " ".join(["The old dragon slept under the mountain while the village above kept its fires lit."] * 1)
    long_enough = " ".join(f"Sentence {i} tells how the dragon {w} the valley." for i, w in
                           enumerate(["guarded", "watched", "crossed", "warmed", "saved"] * 8))
    assert scoring.target_words(prompt, None) == (225.0, 375.0)
    assert (scored(short, prompt).dimensions["length_appropriateness"].score
            < scored(long_enough, prompt).dimensions["length_appropriateness"].score)
    assert scored(story, prompt).dimensions["length_appropriateness"].factors["target_fit"] < 100


def test_repeated_sentences_score_lower_redundancy():
    once = scored(STORY).dimensions["length_appropriateness"].factors["redundancy"]
    twice = scored(STORY + " " + STORY).dimensions["length_appropriateness"].factors["redundancy"]
    assert twice < once


def test_feedback_names_the_strongest_and_weakest_factor():
    d = scoring.Dimension("coherence", {"logical_flow": 94.0, "consistency": 90.2, "transitions": 40.0}, score=74.7)
    text = scoring.feedback(d)
    assert text == ("Good coherence (74.7): logical flow is its strongest factor (94.0), transitions its weakest "
                    "(40.0).")


def test_empty_and_odd_texts_score_without_failing():
    for text in ("x", "...", "12 34 56", "\n\n\n", "é" * 50):
        s = scoring.score(text, "")
        assert 0 <= s.overall_quality <= 100


def test_scoring_a_500_word_response_is_fast():
    text = " ".join([STORY] * 4)[: 3200]
    scoring.score(text, STORY_PROMPT)  # warm the lexicon
    times = []
    for i in range(20):
        started = time.perf_counter()
        scoring.score(text + f" Day {i}.", STORY_PROMPT)
        times.append(time.perf_counter() - started)
    times.sort()
    assert times[len(times) // 2] < 0.05  # docs/metrics.md quotes the measured p50/p95 (bench/lab.py)


def test_a_judge_verdict_keeps_only_valid_dimensions():
    from services.metrics.judge import parse_verdict

    text = ('Sure! {"coherence": {"score": 81, "rationale": "Flows well."}, "completeness": {"score": 140}, '
            '"readability": {"score": "high"}, "creativity": {"score": 55.25, "rationale": 7}} Hope this helps.')
    assert parse_verdict(text) == {"coherence": {"score": 81.0, "rationale": "Flows well."},
                                   "creativity": {"score": 55.2, "rationale": ""}}
    assert parse_verdict("no json here") == {} and parse_verdict("{not json}") == {}
