"""Checking the command lines a test runs against the scripts' own parsers.

A test that runs train.py, val.py, detect.py or export.py with a flag the script no longer has
fails only where it runs; for a `cuda`-marked test that is the first GPU. `check_cli_flags` reads
the test module's AST and checks each such flag against the script's build_parser().
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

from call_check import ROOT, Problem


def _local_nodes(func: ast.AST):
    """The nodes of a function's body, nested functions and classes left out."""
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _script(node: ast.expr) -> str | None:
    """"train.py", ROOT / "train.py" or str(ROOT / "train.py") -> "train.py", if the repository has that script."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
        node = node.args[0]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        node = node.right
    ok = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py") and \
        "/" not in node.value and (ROOT / node.value).is_file()
    return node.value if ok else None


def check_cli_flags(path: str | Path) -> tuple[list[Problem], int]:
    """(problems, flags checked): each "--flag" that follows a repository script's name in a call's
    arguments or a list (run("train.py", "--epochs", 1, *args), with args a list assigned in the
    function; [sys.executable, str(ROOT / "val.py"), "--half"]) must be an option of that
    script's build_parser()."""
    path = Path(path)
    source = path.read_text()
    tree = ast.parse(source)
    parsers: dict[str, set[str]] = {}
    problems, checked = [], 0
    for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        nodes = list(_local_nodes(func))
        lists = {t.id: n.value for n in nodes if isinstance(n, ast.Assign) and isinstance(n.value, (ast.List, ast.Tuple))
                 for t in n.targets if isinstance(t, ast.Name)}
        for call in (n for n in nodes if isinstance(n, (ast.Call, ast.List, ast.Tuple))):
            items = call.args if isinstance(call, ast.Call) else call.elts
            at = next((i for i, a in enumerate(items) if _script(a)), None)
            if at is None:
                continue
            script = _script(items[at])
            if script not in parsers:
                module = importlib.import_module(script.removesuffix(".py"))
                if not hasattr(module, "build_parser"):
                    continue
                parsers[script] = {s for a in module.build_parser()._actions for s in a.option_strings}
            for arg in items[at + 1:]:
                part = arg.value if isinstance(arg, ast.Starred) else arg
                part = lists.get(part.id, part) if isinstance(part, ast.Name) else part
                for c in ast.walk(part):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.startswith("--"):
                        checked += 1
                        if c.value.split("=")[0] not in parsers[script]:
                            text = " ".join((ast.get_source_segment(source, call) or "").split())[:120]
                            problems.append(Problem(c.lineno, text, f"{script} has no option {c.value}"))
    return sorted(problems, key=lambda p: p.line), checked
