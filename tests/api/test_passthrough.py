"""spec.sglang.serverArgs / routerArgs against the argument lists of the pinned SGLang and smg."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from kuberl.api.passthrough import (
    SGLANG_SERVER,
    SMG_ROUTER,
    Bound,
    FlagTable,
    check_args,
    deprecated_keys,
    flag_to_key,
    key_to_flag,
    to_flags,
)
from kuberl.api.passthrough_tables import SGLANG_VERSION, SMG_VERSION
from kuberl.api.resolve import resolve
from tests.api.cases import _with

ROOT = Path(__file__).resolve().parents[2]


def _problems(args: dict, table=SGLANG_SERVER) -> dict[str, str]:
    return dict(check_args(args, table))


def test_tables_come_from_the_pinned_versions() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    assert f"smg=={SMG_VERSION}" in dev
    assert version("smg") == SMG_VERSION, "regenerate with hack/gen-passthrough-args.py"
    assert SGLANG_VERSION == "0.5.14"
    # a few flags every RL job uses, with the kinds SGLang's parser gives them
    flags = SGLANG_SERVER.flags
    assert flags["mem-fraction-static"]["kind"] == "float"
    assert flags["enable-memory-saver"]["kind"] == "bool"
    assert flags["tp-size"]["kind"] == "int" and flags["tensor-parallel-size"]["alias_of"] == "tp-size"
    assert "cache_aware" in SMG_ROUTER.flags["policy"]["choices"]


def test_every_flag_round_trips_through_its_camel_case_key() -> None:
    for table in (SGLANG_SERVER, SMG_ROUTER):
        for flag in table.flags:
            assert key_to_flag(flag_to_key(flag)) == flag


def test_unknown_key_names_the_closest_argument() -> None:
    problems = _problems({"memFractonStatic": 0.8, "completelyMadeUp": 1})
    assert problems["memFractonStatic"].endswith("did you mean memFractionStatic?")
    assert "SGLang 0.5.14" in problems["completelyMadeUp"] and "did you mean" not in problems["completelyMadeUp"]


@pytest.mark.parametrize(("args", "key", "message"), [
    ({"memFractionStatic": 1.01}, "memFractionStatic", "must be > 0 and <= 1"),
    ({"memFractionStatic": 0}, "memFractionStatic", "must be > 0 and <= 1"),
    ({"ncclPort": -1}, "ncclPort", "must be >= 1 and <= 65535"),
    ({"dpSize": 0}, "dpSize", "must be >= 1"),
    ({"memFractionStatic": "0.8"}, "memFractionStatic", "expects a number"),
    ({"chunkedPrefillSize": 1.5}, "chunkedPrefillSize", "expects an integer"),
    ({"contextLength": "lots"}, "contextLength", "e.g. 8192 or 8k"),
    ({"enableMemorySaver": "yes"}, "enableMemorySaver", "expects true or false"),
    ({"cudaGraphBsDecode": [1, "two"]}, "cudaGraphBsDecode", "items: expects an integer"),
    ({"tokenizerMode": "fast"}, "tokenizerMode", "not one of auto, slow"),
    ({"modelPath": "/m"}, "modelPath", "spec.model.hfCheckpoint"),
    ({"model": "/m"}, "model", "spec.model.hfCheckpoint"),  # an alias of a kuberl-owned flag
    ({"randomSeed": 1}, "randomSeed", "spec.rollout.seed"),
])
def test_bad_server_values_are_refused(args: dict, key: str, message: str) -> None:
    assert message in _problems(args)[key]


def test_good_server_values_pass_and_become_flags() -> None:
    args = {"memFractionStatic": 0.7, "enableMemorySaver": True, "disableRadixCache": False,
            "contextLength": "8k", "cudaGraphBsDecode": [1, 2, 4], "ncclPort": 29500,
            "attentionBackend": "some-plugin-backend", "json_model_override_args": None}
    args.pop("json_model_override_args")
    assert check_args(args, SGLANG_SERVER) == []
    assert to_flags(args, SGLANG_SERVER) == [
        "--attention-backend", "some-plugin-backend",  # choices SGLang extends at run time: open
        "--context-length", "8k",
        "--cuda-graph-bs-decode", "1", "2", "4",
        "--enable-memory-saver",
        "--mem-fraction-static", "0.7",
        "--nccl-port", "29500",
    ]


def test_switches_that_default_on_cannot_be_turned_off_by_false() -> None:
    # SGLang 0.5.14 has no such store_true flag; a table with one shows the rule.
    table = FlagTable("prog 1", "spec.x", {"keep-going": {"kind": "bool", "default": True}})
    assert "cannot turn it off" in dict(check_args({"keepGoing": False}, table))["keepGoing"]
    assert check_args({"keepGoing": True}, table) == []


def test_boolean_optional_false_becomes_the_no_flag() -> None:
    flag = next(f for f, i in SMG_ROUTER.flags.items()
                if i["kind"] == "bool_optional" and "alias_of" not in i)
    key = flag_to_key(flag)
    assert check_args({key: False}, SMG_ROUTER) == []
    assert to_flags({key: False}, SMG_ROUTER) == [f"--no-{flag}"]
    assert to_flags({key: True}, SMG_ROUTER) == [f"--{flag}"]


def test_router_args_owned_by_kuberl_and_out_of_range_are_refused() -> None:
    problems = _problems({"port": 1, "workerUrls": ["http://x"], "requestTimeoutSecs": 5,
                          "disableRetries": True, "healthCheckPort": 70000}, SMG_ROUTER)
    assert "spec.sglang.routerRequestTimeoutSecs" in problems["requestTimeoutSecs"]
    assert "double-count" in problems["disableRetries"]
    assert {"port", "workerUrls"} <= set(problems)
    assert "65535" in problems["healthCheckPort"]


def test_router_flags_are_accepted_by_the_real_smg_parser() -> None:
    from smg.launch_router import parse_router_args

    args = {"policy": "round_robin", "cacheThreshold": 0.4, "maxPayloadSize": 1024,
            "healthCheckPort": 31001, "removeUnhealthyWorkers": False}
    assert check_args(args, SMG_ROUTER) == []
    parsed = parse_router_args(["--worker-urls", "http://127.0.0.1:1", *to_flags(args, SMG_ROUTER)])
    assert parsed.policy == "round_robin" and parsed.cache_threshold == 0.4
    assert parsed.max_payload_size == 1024 and parsed.health_check_port == 31001


def test_values_smg_refuses_are_refused_here_too() -> None:
    from smg.launch_router import parse_router_args

    for args in ({"policy": "fastest"}, {"cacheThreshold": "high"}):
        assert check_args(args, SMG_ROUTER), args
        with pytest.raises(SystemExit):
            parse_router_args(to_flags(args, SMG_ROUTER))


def test_deprecated_keys_are_reported_separately() -> None:
    deprecated = next(f for f, i in SGLANG_SERVER.flags.items() if i.get("deprecated"))
    key = flag_to_key(deprecated)
    assert deprecated_keys({key: None, "memFractionStatic": 0.5}, SGLANG_SERVER) == [key]


def test_bound_describes_itself() -> None:
    assert Bound(0.0, 1.0, low_open=True).describe() == "> 0 and <= 1"
    assert not Bound(1).holds(0) and Bound(1).holds(1)


def test_resolve_passes_checked_flags_to_the_workers() -> None:
    from kuberl.api import parse_job

    manifest = _with("spec.sglang.serverArgs", {"memFractionStatic": 0.6, "cudaGraphBsDecode": [1, 8]})
    manifest = _with("spec.sglang.routerArgs", {"policy": "round_robin"}, base=manifest)
    config = resolve(parse_job(manifest))
    assert config.sglang_server_args == ["--cuda-graph-bs-decode", "1", "8",
                                         "--mem-fraction-static", "0.6"]
    assert config.router_args == ["--policy", "round_robin"]


def test_generator_names_its_sources() -> None:
    text = (ROOT / "hack" / "gen-passthrough-args.py").read_text()
    assert "sglang/srt/server_args.py" in text and "RouterArgs.add_cli_args" in text
    header = (ROOT / "api" / "passthrough_tables.py").read_text().splitlines()[0]
    assert re.match(r'"""GENERATED by hack/gen-passthrough-args.py', header)
