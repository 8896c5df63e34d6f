"""`fleet update --push`: push the update branch, and the link that opens its pull request.

The link is derived from the remote's fetch URL alone (no API call, no token): GitHub and
GitLab (hosts whose name says so, so GitHub Enterprise and self-managed GitLab work too),
Bitbucket Cloud, and Azure Repos in its dev.azure.com, ssh.dev.azure.com and
*.visualstudio.com forms.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlsplit

from fleet import repo as g

_SCP = re.compile(r"^(?:[\w.+-]+@)?(?P<host>[\w.-]+):(?P<path>(?!//).+)$")


def split_remote(url: str) -> tuple[str, str] | None:
    """(host, path without .git) of a remote URL, or None for a local path."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme == "file" or not parts.hostname:
            return None
        return parts.hostname.lower(), parts.path.strip("/").removesuffix(".git")
    match = _SCP.match(url)
    if not match or url.startswith(("/", ".")):
        return None
    return match["host"].lower(), match["path"].strip("/").removesuffix(".git")


def pull_request_url(remote_url: str, branch: str, base: str) -> str | None:
    split = split_remote(remote_url)
    if split is None:
        return None
    host, path = split
    b, t = quote(branch, safe=""), quote(base, safe="")
    if host in ("ssh.dev.azure.com", "vs-ssh.visualstudio.com"):
        # git@ssh.dev.azure.com:v3/ORG/PROJECT/REPO
        org, project, name = path.removeprefix("v3/").split("/", 2)
        web = (
            f"https://dev.azure.com/{org}/{project}/_git/{name}"
            if host == "ssh.dev.azure.com"
            else f"https://{org}.visualstudio.com/{project}/_git/{name}"
        )
        return f"{web}/pullrequestcreate?sourceRef={b}&targetRef={t}"
    if host == "dev.azure.com" or host.endswith(".visualstudio.com"):
        return f"https://{host}/{path}/pullrequestcreate?sourceRef={b}&targetRef={t}"
    if "github" in host:
        return f"https://{host}/{path}/compare/{quote(base)}...{quote(branch)}?expand=1"
    if "gitlab" in host:
        return (
            f"https://{host}/{path}/-/merge_requests/new"
            f"?merge_request%5Bsource_branch%5D={b}&merge_request%5Btarget_branch%5D={t}"
        )
    if "bitbucket" in host:
        return f"https://{host}/{path}/pull-requests/new?source={b}&dest={t}"
    return None


def remote_for(top: Path, base: str | None) -> str | None:
    """The base branch's upstream remote, else `origin`, else the only remote."""
    if base:
        configured = g.git(top, "config", f"branch.{base}.remote", check=False).stdout.strip()
        if configured and configured != ".":
            return configured
    remotes = g.git(top, "remote").stdout.split()
    if "origin" in remotes:
        return "origin"
    return remotes[0] if len(remotes) == 1 else None


def push_branch(top: Path, branch: str, base: str | None) -> str | None:
    """Push `branch` (raises GitError on failure); the pull request link, when one is known."""
    remote = remote_for(top, base)
    if remote is None:
        raise g.GitError("no remote to push to (none called origin, and not exactly one)")
    g.git(top, "push", "--quiet", "--set-upstream", remote, f"refs/heads/{branch}")
    url = g.git(top, "remote", "get-url", remote).stdout.strip()
    target = base or _remote_default_branch(top, remote)
    return pull_request_url(url, branch, target) if target else None


def _remote_default_branch(top: Path, remote: str) -> str | None:
    head = g.git(top, "symbolic-ref", "--quiet", f"refs/remotes/{remote}/HEAD", check=False)
    return head.stdout.strip().removeprefix(f"refs/remotes/{remote}/") or None
