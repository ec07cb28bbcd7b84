"""``remote`` grader: POST ``{prompt, response, label}`` to a reward service, retried with backoff."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from kuberl.errors import KuberlError


class RemoteRewardError(KuberlError):
    """The reward service kept failing after all retries."""


async def grade_remote(
    url: str, prompt: Any, response: str, label: Any, client: httpx.AsyncClient,
    retries: int = 10, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
) -> float | dict[str, Any]:
    """The service's JSON answer: a number, or a dict the caller reads ``reward_key`` from."""
    payload = {"prompt": prompt, "response": response, "label": label}
    last = ""
    for attempt in range(retries + 1):
        try:
            resp = await client.post(url, json=payload)
            if resp.status_code == 200:
                return resp.json()
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                break  # the request itself is wrong: retrying will not help
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        if attempt < retries:
            await asyncio.sleep(min(max_backoff_s, backoff_s * 2**attempt))
    raise RemoteRewardError(f"reward service {url} failed: {last}; check rollout.rmUrl and the "
                            "service's logs")
