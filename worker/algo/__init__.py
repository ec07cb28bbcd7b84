"""The RL math of the worker, pure tensor code with no I/O.

``advantages`` (rewards -> per-token advantages), ``kl`` (KL estimators), ``losses`` (the policy loss as
packing-invariant partial sums) and ``packing`` (dynamic batch size and DP balancing). See
docs/algorithms.md for the formulas and the invariance argument.
"""
