#!/usr/bin/env python3
"""Generate api/passthrough_tables.py: the command-line arguments of the pinned SGLang and smg.

Where the data comes from:
  * SGLang: the ``ServerArgs`` dataclass in ``sglang/srt/server_args.py`` of the SGLang wheel, read as
    source (the wheel needs CUDA and torch pins, so it is never imported). Each ``A[T, Arg(...)]`` field
    becomes a flag as ``sglang.srt.arg_groups.arg_utils.add_cli_args_from_dataclass`` derives it (name,
    aliases, ``cli_name``, ``no_cli``, bool -> store_true, List -> nargs, Literal/choices), plus the
    flags ``ServerArgs.add_cli_args`` registers by hand (deprecated spellings, dynamic choices).
    Choice lists that SGLang extends at run time (plugins call ``add_*_choices``) are recorded as open.
  * smg: the argparse parser of the installed ``smg`` package (``smg launch`` builds it with
    ``RouterArgs.add_cli_args``), walked action by action.

Usage (from the repository root; the dev extra installs smg):
  pip download --no-deps sglang==0.5.14 -d /tmp/sgl
  .venv/bin/python hack/gen-passthrough-args.py --sglang-wheel /tmp/sgl/sglang-0.5.14-*.whl
Then run ``.venv/bin/pytest tests/api/test_passthrough.py`` (it checks the table's versions).
"""

from __future__ import annotations

import argparse
import ast
import pprint
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

SGLANG_VERSION = "0.5.14"
SMG_VERSION = "1.13.0"
OUT = Path(__file__).resolve().parents[1] / "api" / "passthrough_tables.py"
SERVER_ARGS_PATH = "sglang/srt/server_args.py"


# --- SGLang: static reading of ServerArgs ------------------------------------------------------------


def _module_constants(tree: ast.Module) -> tuple[dict[str, ast.expr], set[str]]:
    """Module-level NAME = expr assignments, and the names mutated by .extend/.append/.add/.update."""
    consts: dict[str, ast.expr] = {}
    mutated: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("extend", "append", "add", "update", "insert"):
                if isinstance(node.func.value, ast.Name):
                    mutated.add(node.func.value.id)
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            mutated.add(node.target.id)
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                consts[target.id] = node.value
    return consts, mutated


def _choices(expr: ast.expr | None, consts: dict[str, ast.expr], mutated: set[str]
             ) -> tuple[list[Any] | None, bool]:
    """(choices, open): literal choices, following NAME aliases; open when SGLang extends them."""
    if expr is None:
        return None, False
    seen: list[str] = []
    while isinstance(expr, ast.Name) and expr.id in consts:
        seen.append(expr.id)
        expr = consts[expr.id]
    if any(name in mutated for name in seen):
        return None, True
    try:
        value = ast.literal_eval(expr)
    except ValueError:
        return None, True  # computed at run time (plugin registries): cannot be checked statically
    if isinstance(value, (list, tuple, set, frozenset)):
        return sorted(value, key=str), False
    return None, True


def _unwrap(ann: str) -> tuple[str, bool]:
    """'Optional[X]' -> ('X', True)."""
    m = re.fullmatch(r"Optional\[(.*)\]", ann)
    return (m.group(1), True) if m else (ann, False)


def _literal_values(ann: str) -> list[Any] | None:
    m = re.fullmatch(r"Literal\[(.*)\]", ann)
    if not m:
        return None
    return list(ast.literal_eval(f"[{m.group(1)}]"))


def _kind_of(ann: str) -> tuple[str, str | None]:
    """(kind, element kind) of an annotation: bool, int, float, str, list, json."""
    inner, _ = _unwrap(ann)
    if inner in ("bool", "int", "float", "str"):
        return inner, None
    m = re.fullmatch(r"List\[(int|float|str)\]", inner)
    if m:
        return "list", m.group(1)
    if inner.startswith(("Dict", "dict", "Union")):
        return "json", None
    return "str", None


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    return value if isinstance(value, (bool, int, float, str, type(None))) else None


def _kw(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def sglang_flags(source: str) -> dict[str, dict[str, Any]]:
    """Every ``--flag`` of ``python -m sglang.launch_server`` -> its description."""
    tree = ast.parse(source)
    consts, mutated = _module_constants(tree)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServerArgs")
    flags: dict[str, dict[str, Any]] = {}
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name, ann = stmt.target.id, stmt.annotation
        if not (isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) == "A"):
            continue  # a plain annotation: not a CLI argument unless add_cli_args registers it
        type_node, *meta = ann.slice.elts  # type: ignore[attr-defined]
        arg = next((m for m in meta if isinstance(m, ast.Call)), None)
        kw = _kw(arg) if arg is not None else {}
        if _literal(kw.get("no_cli")) is True:
            continue
        ann_text, optional = _unwrap(ast.unparse(type_node))
        kind, elem = _kind_of(ann_text)
        choices, open_choices = _choices(kw.get("choices"), consts, mutated)
        literal = _literal_values(ann_text)
        if literal is not None:
            choices = choices or literal
            kind = "str" if all(isinstance(v, str) or v is None for v in literal) else kind
        action = kw.get("action")
        if action is not None:
            text = ast.unparse(action)
            kind = "bool_optional" if text.endswith("BooleanOptionalAction") else "custom"
        elif kind == "bool":
            kind = "bool"
        if "type_parser" in kw:
            parser = ast.unparse(kw["type_parser"])
            if parser in ("json.loads", "json_list_type"):
                kind = "json"
            elif parser == "human_readable_int":
                kind = "hrint"
            elif parser == "nullable_str":
                kind = "str"
            else:
                kind = "custom"
        if kw.get("nargs") is not None and kind not in ("list", "custom"):
            elem, kind = kind, "list"
        cli = _literal(kw.get("cli_name")) or "--" + name.replace("_", "-")
        entry = {
            "field": name,
            "kind": kind,
            "optional": optional,
            "default": _literal(stmt.value),
        }
        if elem:
            entry["elem"] = elem
        if choices is not None and not open_choices:
            entry["choices"] = choices
        aliases = ast.literal_eval(kw["aliases"]) if "aliases" in kw else []
        for flag in [cli, *aliases]:
            flags[flag.removeprefix("--")] = {**entry, **({"alias_of": cli[2:]} if flag != cli else {})}
    add_cli = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "add_cli_args")
    for call in ast.walk(add_cli):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "add_argument"):
            continue
        names = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        kw = _kw(call)
        action = ast.unparse(kw["action"]) if "action" in kw else None
        type_name = ast.unparse(kw["type"]) if "type" in kw else "str"
        if action in ("'store_true'", "DeprecatedStoreTrueAction", "'store_false'"):
            kind = "bool"
        elif action and "StoreConst" in action:
            kind = "bool"
        elif type_name in ("int", "float", "str"):
            kind = type_name
        else:
            kind = "custom"
        if kw.get("nargs") is not None and kind in ("int", "float", "str"):
            entry = {"kind": "list", "elem": kind}
        else:
            entry = {"kind": kind}
        choices, open_choices = _choices(kw.get("choices"), consts, mutated)
        if choices is not None and not open_choices:
            entry["choices"] = choices
        dest = _literal(kw.get("dest"))
        entry["field"] = dest or names[0].removeprefix("--").replace("-", "_")
        entry["optional"] = True
        entry["default"] = None
        if action and "Deprecated" in action:
            entry["deprecated"] = True
        for flag in names:
            if flag.startswith("--"):
                flags.setdefault(flag.removeprefix("--"), entry)
    return _with_negations(flags)


def _with_negations(flags: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """argparse.BooleanOptionalAction also accepts ``--no-<flag>``: a plain switch of its own."""
    out = dict(flags)
    for flag, entry in flags.items():
        if entry["kind"] == "bool_optional":
            if flag.startswith("no-"):
                out[flag] = {**entry, "kind": "bool", "negates": flag.removeprefix("no-")}
            elif f"no-{flag}" not in flags:
                out[f"no-{flag}"] = {**entry, "kind": "bool", "negates": flag}
    return dict(sorted(out.items()))


def read_wheel(path: Path) -> tuple[str, str]:
    m = re.match(r"sglang-([^-]+)-", path.name)
    if not m:
        sys.exit(f"{path} is not an sglang wheel")
    with zipfile.ZipFile(path) as wheel:
        return m.group(1), wheel.read(SERVER_ARGS_PATH).decode()


# --- smg: the installed package's argparse parser ----------------------------------------------------


def smg_flags() -> tuple[str, dict[str, dict[str, Any]]]:
    from importlib.metadata import version as dist_version

    from smg.router_args import RouterArgs

    version = dist_version("smg")  # smg.__version__ lags the distribution (says 1.1.0 in 1.13.0)
    parser = argparse.ArgumentParser(add_help=False)
    RouterArgs.add_cli_args(parser, use_router_prefix=False)
    flags: dict[str, dict[str, Any]] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,  # noqa: SLF001
                               argparse._StoreConstAction)):  # noqa: SLF001
            entry: dict[str, Any] = {"kind": "bool"}
        elif isinstance(action, argparse.BooleanOptionalAction):
            entry = {"kind": "bool_optional"}
        else:
            conv = action.type
            if conv in (int, float, str) or conv is None:
                scalar = (conv or str).__name__
            elif getattr(conv, "__name__", "") == "_non_negative_int":
                scalar = "uint"
            else:
                scalar = "custom"
            if action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1 \
                    or isinstance(action, argparse._ExtendAction | argparse._AppendAction):  # noqa: SLF001
                entry = {"kind": "list", "elem": scalar}
            else:
                entry = {"kind": scalar}
        if action.choices is not None:
            entry["choices"] = sorted(action.choices, key=str)
        entry["field"] = action.dest
        entry["optional"] = action.default is None
        default = action.default
        entry["default"] = default if isinstance(default, (bool, int, float, str, type(None))) else None
        for flag in longs:
            flags[flag.removeprefix("--")] = {**entry, **({"alias_of": longs[0][2:]}
                                                         if flag != longs[0] else {})}
    return version, _with_negations(flags)


HEADER = '''"""GENERATED by hack/gen-passthrough-args.py: do not edit by hand.

The command-line flags of the SGLang server (``python -m sglang.launch_server``, from ``ServerArgs`` in
``sglang/srt/server_args.py`` of the sglang=={sglang} wheel) and of the smg router (``smg launch``, from the
argparse parser of smg=={smg}). Keys are flag names without ``--``; ``kind`` is bool (store_true),
bool_optional (``--x``/``--no-x``), int, uint (non-negative int), hrint (an int or text such as 8k),
float, str, list (``elem`` per item),
json (a JSON value) or custom (a parser of its own: passed through as text); ``choices`` is absent when the
server computes or extends them at run time. kuberl.api.passthrough checks spec.sglang.serverArgs and
routerArgs against these tables.
"""

from __future__ import annotations

from typing import Any

'''


def _table(name: str, flags: dict[str, dict[str, Any]]) -> str:
    """One line per flag, so a version bump reads as a line diff."""
    lines = [f"{name}: dict[str, dict[str, Any]] = {{"]
    lines += [f"    {flag!r}: {pprint.pformat(entry, width=10_000, sort_dicts=True)},"
              for flag, entry in flags.items()]
    return "\n".join([*lines, "}"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sglang-wheel", type=Path, required=True)
    args = parser.parse_args()
    sglang_version, source = read_wheel(args.sglang_wheel)
    if sglang_version != SGLANG_VERSION:
        sys.exit(f"expected sglang {SGLANG_VERSION} (the pinned version), got {sglang_version}")
    smg_version, router = smg_flags()
    if smg_version != SMG_VERSION:
        sys.exit(f"expected smg {SMG_VERSION} (the pinned version), got {smg_version}")
    server = sglang_flags(source)
    text = HEADER.format(sglang=sglang_version, smg=smg_version)
    text += f"SGLANG_VERSION = {sglang_version!r}\nSMG_VERSION = {smg_version!r}\n\n"
    text += _table("SGLANG_SERVER_FLAGS", server) + "\n"
    text += _table("SMG_ROUTER_FLAGS", router)
    OUT.write_text(text)
    print(f"wrote {OUT}: {len(server)} SGLang flags, {len(router)} smg flags")


if __name__ == "__main__":
    main()
