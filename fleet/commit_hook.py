"""Give an adopted flow module's flows the template's `record_commit` hook.

Every flow of a generated repository declares `on_running=[record_commit]`, which labels its
runs with the commit they ran; smoke runs and the promotion gate count only runs so labelled,
and `ops validate` names a flow without it. An adopted module gets the hook here, as a text
edit of its decorators (read with `ast`, never executed), so the rest of the file stays
byte for byte the team's.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

HOOK = "on_running=[record_commit]"


def _flow_decorators(tree: ast.Module) -> list[ast.expr]:
    """The decorators `@flow`, `@flow(...)`, `@prefect.flow` and `@prefect.flow(...)`."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name == "flow":
                found.append(decorator)
    return found


def _offset(lines: list[str], line: int, column: int) -> int:
    """The character offset of a 1-based line and a 0-based UTF-8 byte column."""
    before = sum(len(text) for text in lines[: line - 1])
    if line > len(lines):
        return before
    return before + len(lines[line - 1].encode()[:column].decode())


def add_commit_hook(source: str, package: str) -> tuple[str, list[str]]:
    """The module with the hook on each of its flows and the import it needs; and the flows
    that declare on_running hooks of their own without it (left alone: add it by hand)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, str]] = []
    left: list[str] = []
    for decorator in _flow_decorators(tree):
        if isinstance(decorator, ast.Call):
            hooks = [k.value for k in decorator.keywords if k.arg == "on_running"]
            if hooks:
                if "record_commit" not in ast.unparse(hooks[0]):
                    left.append(ast.unparse(decorator))
                continue
            assert decorator.func.end_lineno is not None and decorator.func.end_col_offset
            at = _offset(lines, decorator.func.end_lineno, decorator.func.end_col_offset) + 1
            empty = not decorator.args and not decorator.keywords
            edits.append((at, HOOK if empty else f"{HOOK}, "))
        else:
            assert decorator.end_lineno is not None and decorator.end_col_offset is not None
            at = _offset(lines, decorator.end_lineno, decorator.end_col_offset)
            edits.append((at, f"({HOOK})"))
    if not edits:
        return source, left
    # After the module's last import; sort_imports() then puts it in its section.
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    line = f"from {package}._internal.provenance import record_commit\n"
    after = imports[-1].end_lineno if imports and imports[-1].end_lineno else 0
    if after and not lines[after - 1].endswith("\n"):
        line = "\n" + line
    edits.append((_offset(lines, after + 1, 0), line))
    text = source
    for at, insert in sorted(edits, reverse=True):
        text = text[:at] + insert + text[at:]
    return text, left


def _ruff(repo: Path, *args: str) -> int:
    """ruff, with the repository's own settings; its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=repo,
        capture_output=True,
        timeout=60,
        check=False,
    ).returncode


def hook_module(module: Path, package: str, repo: Path) -> list[str]:
    """add_commit_hook on a file of repo; the flows left to the team. Its imports are sorted
    after, and a file ruff-formatted before is formatted again (a decorator may have grown past
    the line length); a file that was not is left as the team wrote it."""
    text = module.read_text()
    hooked, left = add_commit_hook(text, package)
    if hooked != text:
        formatted = _ruff(repo, "format", "--check", "--quiet", str(module)) == 0
        module.write_text(hooked)
        _ruff(repo, "check", "--select", "I", "--fix", "--quiet", str(module))
        if formatted:
            _ruff(repo, "format", "--quiet", str(module))
    return left
