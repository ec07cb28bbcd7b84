"""Rows shaped like the reference workload's data: dapo-math-17k (train) and aime-2024 (eval)."""

DAPO_SUFFIX = ('\n\nRemember to put your answer on its own line after "Answer:".')
DAPO_ROWS = [
    {"prompt": [{"role": "user", "content": "Solve: what is 12 + 22?" + DAPO_SUFFIX}],
     "label": "34", "metadata": {"source": "dapo"}},
    {"prompt": [{"role": "user", "content": "How many primes are below 20?" + DAPO_SUFFIX}],
     "label": "8", "metadata": {"source": "dapo"}},
    {"prompt": [{"role": "user", "content": "Compute 7 * 9 - 13." + DAPO_SUFFIX}],
     "label": "50", "metadata": {"source": "dapo"}},
]
AIME_ROWS = [
    {"prompt": [{"role": "user", "content": "Find the remainder when 2^10 is divided by 1000. "
                 "Put the final answer in \\boxed{}."}], "label": "24"},
    {"prompt": [{"role": "user", "content": "Let x = 1/2 + 1/4. Find x. Put the final answer in "
                 "\\boxed{}."}], "label": "\\frac{3}{4}"},
]
