"""spec.sglang.serverArgs / routerArgs: checked against the flags of the pinned SGLang and smg.

The flag tables are generated from the pinned packages (``passthrough_tables.py``, by
hack/gen-passthrough-args.py); this module adds what no argument parser declares (value ranges, and the
flags kuberl sets itself) and turns a checked camelCase map into command-line flags. A typo or an
impossible value is thus an error naming ``spec.sglang.serverArgs.<key>`` at ``kuberl validate`` and at
admission, not a crash in a pod after its GPUs were allocated.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from kuberl.api.passthrough_tables import (
    SGLANG_SERVER_FLAGS,
    SGLANG_VERSION,
    SMG_ROUTER_FLAGS,
    SMG_VERSION,
)

PORT_RANGE = (1, 65535)
_HUMAN_INT = re.compile(r"^\d+(\.\d+)?[kKmMgGtT]?$")


@dataclass(frozen=True)
class Bound:
    """An inclusive numeric range; ``low_open`` makes the lower end exclusive (a fraction > 0)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        return " and ".join(p for p in (low, high) if p)


@dataclass(frozen=True)
class FlagTable:
    """One program's flags, plus the ranges and kuberl-owned flags no parser declares."""

    program: str  # e.g. "SGLang 0.5.14 (python -m sglang.launch_server)"
    spec_field: str  # e.g. "spec.sglang.serverArgs"
    flags: dict[str, dict[str, Any]]
    bounds: dict[str, Bound] = field(default_factory=dict)
    owned: dict[str, str] = field(default_factory=dict)  # flag -> who sets it instead

    def bound(self, flag: str) -> Bound | None:
        """The range of ``flag``: declared, else any ``*-port`` is a TCP port."""
        canonical = self.flags[flag].get("alias_of", flag)
        if canonical in self.bounds:
            return self.bounds[canonical]
        if canonical == "port" or canonical.endswith("-port"):
            return Bound(*PORT_RANGE)
        if self.flags[flag]["kind"] == "uint":
            return Bound(0)
        return None


def flag_to_key(flag: str) -> str:
    """``mem-fraction-static`` -> ``memFractionStatic`` (the spelling the spec uses)."""
    head, *rest = flag.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def key_to_flag(key: str) -> str:
    """``memFractionStatic`` -> ``mem-fraction-static``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", key).lower()


_POSITIVE = Bound(1)
SGLANG_SERVER = FlagTable(
    program=f"SGLang {SGLANG_VERSION} (python -m sglang.launch_server)",
    spec_field="spec.sglang.serverArgs",
    flags=SGLANG_SERVER_FLAGS,
    bounds={
        "mem-fraction-static": Bound(0.0, 1.0, low_open=True),
        **{f: _POSITIVE for f in (
            "dp-size", "pp-size", "ep-size", "attn-cp-size", "moe-dp-size", "moe-dense-tp-size",
            "context-length", "max-running-requests", "max-total-tokens", "max-prefill-tokens",
            "page-size", "stream-interval", "tokenizer-worker-num", "detokenizer-worker-num",
        )},
        "schedule-conservativeness": Bound(0.0),
    },
    owned={
        "model-path": "spec.model.hfCheckpoint",
        "tp-size": "spec.sglang.gpusPerEngine",
        "host": "kuberl (each engine binds its pod's address)",
        "port": "kuberl (a free port per engine)",
        "weight-version": "kuberl (the trainer's weight version after every sync)",
        "random-seed": "spec.rollout.seed",
    },
)
SMG_ROUTER = FlagTable(
    program=f"smg {SMG_VERSION} (smg launch)",
    spec_field="spec.sglang.routerArgs",
    flags=SMG_ROUTER_FLAGS,
    owned={
        "host": "kuberl (the driver's router address)",
        "port": "kuberl (a free port)",
        "worker-urls": "kuberl (it registers the engines it starts)",
        "request-timeout-secs": "spec.sglang.routerRequestTimeoutSecs",
        "disable-retries": "kuberl (retries stay off: a resent /generate would double-count samples)",
        "prometheus-port": "kuberl",
    },
)


def _kind_error(kind: str, elem: str | None, value: Any) -> str | None:
    """Why ``value`` does not fit ``kind``, or None."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("bool", "bool_optional"):
        return None if isinstance(value, bool) else "expects true or false"
    if kind in ("int", "uint"):
        return None if isinstance(value, int) and not isinstance(value, bool) else "expects an integer"
    if kind == "hrint":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and _HUMAN_INT.match(value))
        return None if ok else "expects an integer (e.g. 8192 or 8k)"
    if kind == "float":
        return None if is_number else "expects a number"
    if kind == "list":
        if not isinstance(value, list):
            return "expects a list"
        for item in value:
            problem = _kind_error(elem or "str", None, item)
            if problem:
                return f"items: {problem}"
        return None
    if kind == "json":
        return None
    if isinstance(value, (list, dict, bool)):
        return "expects a single value (text or a number)"
    return None


def check_args(args: dict[str, Any], table: FlagTable) -> list[tuple[str, str]]:
    """Return ``(key, problem)`` for every key of ``args`` that ``table``'s program would refuse."""
    problems: list[tuple[str, str]] = []
    known = {flag_to_key(f): f for f in table.flags}
    for key, value in args.items():
        flag = known.get(key)
        if flag is None:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append((key, f"not an argument of {table.program}{hint}"))
            continue
        info = table.flags[flag]
        owner = table.owned.get(info.get("negates") or info.get("alias_of", flag))
        if owner is not None:
            problems.append((key, f"set by {owner}; remove it from {table.spec_field}"))
            continue
        if value is None:
            continue  # omitted: the program's default
        kind = info["kind"]
        problem = _kind_error(kind, info.get("elem"), value)
        if problem is None and "choices" in info:
            items = value if isinstance(value, list) else [value]
            allowed = {str(c) for c in info["choices"]}
            wrong = [v for v in items if str(v) not in allowed]
            if wrong:
                problem = f"{wrong[0]!r} is not one of {', '.join(sorted(allowed))}"
        if problem is None and kind == "bool" and value is False and info.get("default") is True:
            problem = (f"{table.program} turns --{flag} on by default and this flag cannot turn it "
                       "off; look for its disable- counterpart")
        bound = table.bound(flag)
        if problem is None and bound is not None:
            numbers = value if isinstance(value, list) else [value]
            bad = [v for v in numbers if isinstance(v, (int, float)) and not bound.holds(v)]
            if bad:
                problem = f"{bad[0]!r} is out of range: it must be {bound.describe()}"
        if problem:
            problems.append((key, problem))
    return problems


def deprecated_keys(args: dict[str, Any], table: FlagTable) -> list[str]:
    """The keys of ``args`` that ``table``'s program still accepts but has deprecated."""
    known = {flag_to_key(f): f for f in table.flags}
    return [k for k in args if k in known and table.flags[known[k]].get("deprecated")]


def to_flags(args: dict[str, Any], table: FlagTable) -> list[str]:
    """Turn a checked camelCase map into flags: true -> bare flag, false -> omitted (``--no-x`` for
    ``--x/--no-x`` switches), a list -> one item per argument, JSON values -> compact JSON text."""
    out: list[str] = []
    for key, value in sorted(args.items()):
        flag = key_to_flag(key)
        kind = table.flags.get(flag, {}).get("kind")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                out.append(f"--{flag}")
            elif kind == "bool_optional":
                out.append(f"--no-{flag}")
            continue
        if kind == "list" and isinstance(value, list):
            out += [f"--{flag}", *(str(v) for v in value)]
        elif isinstance(value, (dict, list)):
            out += [f"--{flag}", json.dumps(value, separators=(",", ":"), sort_keys=True)]
        else:
            out += [f"--{flag}", str(value)]
    return out
