"""Git helpers: the git CLI run in one repository, answers-file reading, conflict detection."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

ANSWERS_FILE = ".copier-answers.yml"

# Copier's inline markers are "<<<<<<< before updating" / ">>>>>>> after updating". A bare
# "=======" is not enough on its own: it is also a Markdown/RST heading underline.
_MARKER = re.compile(r"^(<{7}|>{7})( |$)")
_HEX = re.compile(r"^[0-9a-f]{7,40}$")
_DESCRIBE = re.compile(r"-g([0-9a-f]{7,40})$")  # `git describe` form copier stores in _commit
_ALIASES = {"gh:": "https://github.com/", "gl:": "https://gitlab.com/"}


class GitError(RuntimeError):
    pass


def subprocess_env() -> dict[str, str]:
    # Many repos run at once behind a progress bar: a credential prompt would hang the run.
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0"}


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["git", "-c", "core.quotePath=false", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
        env=subprocess_env(),
        check=False,
        # Out of the terminal's process group: Ctrl-C reaches the fleet, which lets a running
        # git command finish (they are short) instead of leaving a half-written index.lock.
        start_new_session=True,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise GitError(f"git {' '.join(args)} failed in {repo}: {detail}")
    return proc


def is_url(spec: str) -> bool:
    return "://" in spec or re.match(r"^[\w.+-]+@[\w.-]+:", spec) is not None


# What Renovate's copier manager reads from `_src_path` and then looks up with `git ls-remote`:
# a URL with one of these schemes, or `git@host:path`. It skips a plain path without a word, and
# copier's own `gh:`/`gl:` shorthand parses as a URL but fails the lookup.
RENOVATE_SCHEMES = ("https", "http", "ssh", "git", "file", "git+https", "git+ssh", "git+file")
_SSH_SHORT = re.compile(r"^[\w.+-]+@[\w.-]+:.+")


def renovate_problem(src: str) -> str | None:
    """Why Renovate cannot update from this `_src_path`, or None when it can."""
    scheme, sep, rest = src.partition("://")
    if (sep and scheme in RENOVATE_SCHEMES and rest) or _SSH_SHORT.match(src):
        return None
    if src.startswith(tuple(_ALIASES)):
        full = _ALIASES[src[:3]] + src[3:].lstrip("/")
        return (
            f"_src_path '{src}' is copier's shorthand: Renovate cannot look it up; "
            f"use the full URL ({full}.git)"
        )
    if not sep:
        return (
            f"_src_path '{src}' is a path: Renovate skips this repository without a warning; "
            f"use a git URL (https://..., git@host:..., or {git_url(src)})"
        )
    return f"_src_path '{src}' has a scheme Renovate cannot look up ({', '.join(RENOVATE_SCHEMES)})"


def git_url(src: str) -> str:
    """src as a git URL copier reads and Renovate's answers schema accepts: a local path
    becomes `file://` when it ends in .git, else `git+file://` (copier takes `file://` only for
    a path ending in .git)."""
    if is_url(src) or src.startswith(tuple(_ALIASES)):
        return src
    path = Path(src).expanduser().resolve().as_posix()
    return ("file://" if path.endswith(".git") else "git+file://") + path


def clone(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    git(dest.parent, "clone", "--quiet", url, str(dest))


def toplevel(path: Path) -> Path | None:
    proc = git(path, "rev-parse", "--show-toplevel", check=False)
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def is_dirty(repo: Path) -> bool:
    # --no-optional-locks: plain `git status` may rewrite .git/index to refresh stat data, and a
    # refused repo must be left exactly as it was.
    out = git(repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=all")
    return bool(out.stdout.strip())


def head_commit(repo: Path) -> str:
    return git(repo, "rev-parse", "--verify", "HEAD").stdout.strip()


def current_branch(repo: Path) -> str | None:
    proc = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def is_valid_branch_name(repo: Path, name: str) -> bool:
    return git(repo, "check-ref-format", "--branch", name, check=False).returncode == 0


def branch_exists(repo: Path, name: str) -> bool:
    proc = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False)
    return proc.returncode == 0


def commit_all(repo: Path, message: str) -> bool:
    """Commit everything in the tree; False when there was nothing to commit."""
    git(repo, "add", "-A")
    if git(repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return False
    # --no-verify: the repo's checks run explicitly afterwards; hooks installed in one clone
    # (formatters that rewrite files, hooks that need network) would make the fleet unpredictable.
    git(repo, "commit", "--quiet", "--no-verify", "-m", message)
    return True


@dataclass(frozen=True)
class Answers:
    commit: str | None
    src_path: str | None


def read_answers(repo: Path) -> Answers | None:
    path = repo / ANSWERS_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{ANSWERS_FILE} is not a mapping")
    commit, src = data.get("_commit"), data.get("_src_path")
    return Answers(
        commit=str(commit) if commit is not None else None,
        src_path=str(src) if src is not None else None,
    )


def repoint_answers(repo: Path, src: str) -> None:
    """Rewrite `_src_path` in place, keeping the rest of the file (comments, order) as is."""
    path = repo / ANSWERS_FILE
    line = yaml.safe_dump({"_src_path": src}, default_flow_style=False).strip()
    text, count = re.subn(r"(?m)^_src_path:.*$", lambda _: line, path.read_text())
    if count != 1:
        raise ValueError(f"{ANSWERS_FILE} has {count} `_src_path` lines, expected 1")
    path.write_text(text)


class RefResolver:
    """Resolve template refs to commits, one `git ls-remote` per template source per run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, dict[str, str]] = {}

    def refs(self, src: str) -> dict[str, str]:
        # Held across ls-remote on purpose: every repo of a fleet shares one template, and one
        # network round trip beats N identical ones.
        with self._lock:
            if src not in self._refs:
                self._refs[src] = _ls_remote(src)
            return self._refs[src]

    def resolve(self, src: str, ref: str) -> str | None:
        refs = self.refs(src)
        if ref in refs:
            return refs[ref]
        if match := _DESCRIBE.search(ref):
            return match.group(1)
        return ref if _HEX.match(ref) else None

    def same_commit(self, src: str, a: str, b: str) -> bool:
        if a == b:
            return True
        ra, rb = self.resolve(src, a), self.resolve(src, b)
        if not ra or not rb:
            return False
        return ra.startswith(rb) or rb.startswith(ra)


def _ls_remote(src: str) -> dict[str, str]:
    url = src.removeprefix("git+")
    for alias, base in _ALIASES.items():
        if url.startswith(alias):
            url = base + url.removeprefix(alias).lstrip("/")
    proc = git(Path.cwd(), "ls-remote", url, check=False)
    refs: dict[str, str] = {}
    if proc.returncode != 0:
        return refs  # unresolvable: callers fall back to comparing the names themselves
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        peeled = name.endswith("^{}")  # an annotated tag's commit, which must win over the tag
        name = name.removesuffix("^{}")
        for short in (name, name.removeprefix("refs/tags/"), name.removeprefix("refs/heads/")):
            if peeled or short not in refs:
                refs[short] = sha
    return refs


def find_conflicts(repo: Path) -> list[str]:
    """Paths the update left conflicted, read from the tree (copier exits 0 regardless)."""
    found: set[str] = set()
    # Unmerged index entries: what copier's inline mode leaves, and what `git status` shows as UU.
    for line in git(repo, "ls-files", "-u").stdout.splitlines():
        found.add(line.partition("\t")[2])
    # Plumbing (diff-files, diff-index) rather than `git diff`: porcelain diff refreshes the
    # index file even with GIT_OPTIONAL_LOCKS=0, and `fleet status` must write nothing.
    found.update(git(repo, "diff-files", "--name-only", "--diff-filter=U").stdout.splitlines())
    # Markers on added lines only: a file that already contained markers (docs about merging,
    # test fixtures) before the update is not this update's conflict. Binary files show no lines.
    diff = git(
        repo,
        *("diff-index", "-p", "HEAD", "--no-color", "--no-ext-diff", "-U0", "--no-renames"),
        *("--src-prefix=a/", "--dst-prefix=b/"),  # whatever diff.noprefix/mnemonicPrefix say
    )
    current: str | None = None
    for line in diff.stdout.splitlines():
        if line.startswith("+++ "):
            current = line[4:].removeprefix("b/") if line != "+++ /dev/null" else None
        elif current and line.startswith("+") and _MARKER.match(line[1:]):
            found.add(current)
    # git's own judgement, restricted to start/end markers for the heading-underline reason above.
    check = git(repo, "diff-index", "--check", "--no-color", "HEAD", check=False)
    for line in check.stdout.splitlines():
        path, _, rest = line.partition(":")
        lineno, _, what = rest.partition(":")
        if "leftover conflict marker" in what and _line_is_marker(repo / path, lineno):
            found.add(path)
    untracked = git(repo, "ls-files", "--others", "--exclude-standard", "-z").stdout.split("\0")
    found.update(p for p in untracked if p and _has_markers(repo / p))
    # Without --exclude-standard so a .rej hidden by .gitignore still counts.
    rejects = git(repo, "ls-files", "--others", "-z", "--", "*.rej").stdout.split("\0")
    found.update(p for p in rejects if p)
    return sorted(found)


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return None if b"\0" in data[:8192] else data.decode(errors="replace")


def _has_markers(path: Path) -> bool:
    text = _read_text(path)
    return text is not None and any(_MARKER.match(line) for line in text.splitlines())


def _line_is_marker(path: Path, lineno: str) -> bool:
    text = _read_text(path)
    if text is None or not lineno.isdigit():
        return False
    lines = text.splitlines()
    index = int(lineno) - 1
    return 0 <= index < len(lines) and bool(_MARKER.match(lines[index]))
