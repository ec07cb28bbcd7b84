"""Custom reward functions as a user would write them (loaded by import path in the tests)."""

from __future__ import annotations

import asyncio


def length_reward(args, sample):
    """slime-style (args, sample): 1.0 for a response of at least ``args['min_chars']`` chars."""
    return 1.0 if len(sample.response_text) >= args["min_chars"] else 0.0


def label_in_response(sample):
    return {"score": 1.0 if str(sample.label) in sample.response_text else 0.0, "pred": "x"}


async def async_reward(args, sample):
    await asyncio.sleep(0)
    return 0.25


def rank_in_group(args, samples):
    """Per-group: rewards by response length rank, to prove the whole group arrives at once."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].response_text))
    ranks = [0.0] * len(samples)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return ranks


def raises(args, sample):
    raise RuntimeError("grader bug")
