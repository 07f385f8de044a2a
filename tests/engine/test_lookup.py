"""Prompt lookup proposes what followed the latest earlier occurrence of the context's tail."""

from __future__ import annotations

from draftvocab.engine.lookup import lookup


def test_copies_what_followed_the_longest_matching_tail():
    # tail (8, 9) occurs at 1..2 followed by 3, 4; the 1-gram 9 also occurs later (ignored:
    # longer n-grams are tried first)
    ctx = [7, 8, 9, 3, 4, 5, 9, 6, 8, 9]
    assert lookup(ctx, max_ngram=3, min_ngram=1, num=2) == [3, 4]
    assert lookup(ctx, max_ngram=2, min_ngram=2, num=10) == [3, 4, 5, 9, 6, 8, 9]


def test_takes_the_most_recent_occurrence():
    ctx = [1, 2, 3, 1, 2, 4, 1, 2]
    assert lookup(ctx, max_ngram=2, num=1) == [4]


def test_falls_back_to_shorter_ngrams_down_to_min_ngram():
    ctx = [1, 5, 6, 2, 5]  # only the 1-gram 5 recurs
    assert lookup(ctx, max_ngram=3, min_ngram=2, num=3) == []
    assert lookup(ctx, max_ngram=3, min_ngram=1, num=3) == [6, 2, 5]


def test_nothing_to_copy_in_short_or_fresh_contexts():
    assert lookup([], num=3) == [] and lookup([4], num=3) == []
    assert lookup([1, 2, 3, 4], min_ngram=1, num=3) == []
    assert lookup([1, 1, 1, 1], num=3) == [1]  # the overlap ends at the context's end
