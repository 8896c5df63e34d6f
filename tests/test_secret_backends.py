"""Every secret backend: it renders cleanly, adds only its own dependency, leaks no credential,
and its generated repository passes its own ruff and pytest (slow, one test per backend)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.rendering import BIN, ROOT, render

BACKENDS = [
    "env",
    "prefect",
    "aws-secrets-manager",
    "gcp-secret-manager",
    "azure-key-vault",
    "vault",
]
# What each backend adds to the generated pyproject.toml (name of the distribution only).
RUNTIME_PACKAGES = {
    "env": set(),
    "prefect": set(),
    "aws-secrets-manager": {"prefect-aws"},
    "gcp-secret-manager": {"google-cloud-secret-manager"},
    "azure-key-vault": {"azure-identity", "azure-keyvault-secrets"},
    "vault": {"hvac"},
}
DEV_PACKAGES = {"aws-secrets-manager": {"moto"}}
# How the README tells CI to get credentials by OIDC, per backend.
OIDC_WORDS = {
    "aws-secrets-manager": ["id-token: write", "aws-actions/configure-aws-credentials"],
    "gcp-secret-manager": ["id-token: write", "google-github-actions/auth"],
    "azure-key-vault": ["id-token: write", "azure/login", "federated"],
    "vault": ["id-token: write", "hashicorp/vault-action", "method: jwt"],
}
# The name of the secret 'warehouse-dsn' in each environment, per cloud backend.
SECRET_NAMES = {
    "aws-secrets-manager": "sales-etl/{env}/warehouse-dsn",
    "gcp-secret-manager": "sales-etl-{env}-warehouse-dsn",
    "azure-key-vault": "sales-etl-{env}-warehouse-dsn",
    "vault": "sales-etl/{env}/warehouse-dsn",
}
# Literal credentials that look real. Built from pieces so this file holds none itself.
CREDENTIAL_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "long hex token": r"\b[0-9a-fA-F]{32,}\b",
    "long base64 token": r"[A-Za-z0-9+/]{40,}={0,2}",
    "password assignment": r"(?i)\b(password|passwd|pwd)\s*[=:]\s*['\"]?[^\s'\"$<{]{4,}",
    "credentials in a URL": r"://[^/\s:@]+:[^/\s:@$<{]{3,}@",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    "Vault token": r"\bhv[sb]\.[A-Za-z0-9_-]{20,}",
    "Slack token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "Azure storage key": r"AccountKey=[A-Za-z0-9+/=]{20,}",
}
# Long hex strings that are not credentials: actions and hooks pinned to a commit.
PINNED_COMMIT = r"(@|\brev: )[0-9a-f]{40}\b"
FAKE_CREDENTIALS = [
    "AKIA" + "Q3EXAMPLE7XK2LMNOPQ"[:16],
    "-----BEGIN " + "RSA PRIVATE KEY-----",
    "token = '" + "9f2c" * 10 + "'",
    "key: " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" + "ab",
    "pass" + "word='hunter22'",
    "postgresql://etl:" + "s3cret@db.internal/warehouse",
    "gh" + "p_" + "A1b2C3d4E5f6" * 3,
    "hv" + "s." + "CAESIJ3x9Qk1n2b3v4c5x6z7",
]


@pytest.fixture(scope="session")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each backend rendered once, with three environments (do not modify in a test)."""
    base = tmp_path_factory.mktemp("secret-backends")
    return {
        backend: render(template, base / backend, {"secret_backend": backend})
        for backend in BACKENDS
    }


def rendered_files(repo: Path) -> list[Path]:
    return sorted(path for path in repo.rglob("*") if path.is_file() and ".git" not in path.parts)


def package_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", requirement)[0] for requirement in requirements}


def test_every_backend_is_a_choice_of_copier_yml() -> None:
    questions = yaml.safe_load((ROOT / "copier.yml").read_text())
    assert list(questions["secret_backend"]["choices"].values()) == BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_has_its_module_fixtures_and_readme(
    rendered: dict[str, Path], backend: str
) -> None:
    repo = rendered[backend]
    package = repo / "src" / "sales_etl"
    module = (package / "_internal" / "secret_backend.py").read_text()
    for name in ("BACKEND", "def read_secret(", "def how_to_create("):
        assert name in module
    assert "def provide_secret(" in (repo / "tests" / "secret_fixtures.py").read_text()
    has_backend_tests = (repo / "tests" / "test_secret_backend.py").exists()
    assert has_backend_tests == (backend != "prefect")
    assert (package / "ops" / "sync_secrets.py").exists() == (backend == "prefect")
    assert (repo / "tests" / "test_sync_secrets.py").exists() == (backend == "prefect")
    readme = (repo / "README.md").read_text()
    section = readme[readme.index("## Secrets") :].split("\n## ")[0]
    assert "{{" not in section and "{%" not in section
    for word in OIDC_WORDS.get(backend, []):
        assert word in section, f"{backend}: README's Secrets section lacks {word!r}"
    for environment in ("dev", "staging", "prod") if backend in SECRET_NAMES else ():
        name = SECRET_NAMES[backend].format(env=environment)
        assert name in section, f"{backend}: README shows no way to create {name}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_chosen_backend_adds_dependencies(rendered: dict[str, Path], backend: str) -> None:
    project = tomllib.loads((rendered[backend] / "pyproject.toml").read_text())
    runtime = package_names(project["project"]["dependencies"])
    assert runtime - {"prefect", "pydantic", "pyyaml"} == RUNTIME_PACKAGES[backend]
    dev = package_names(project["dependency-groups"]["dev"])
    assert dev - {"pre-commit", "pytest", "ruff"} == DEV_PACKAGES.get(backend, set())


@pytest.mark.parametrize("backend", BACKENDS)
def test_makefile_has_sync_secrets_only_for_prefect(
    rendered: dict[str, Path], backend: str
) -> None:
    repo = rendered[backend]
    makefile = (repo / "Makefile").read_text()
    if backend != "prefect":
        assert "sync-secrets" not in makefile
        return
    assert (
        "\n\n.PHONY: sync-secrets\n"
        "sync-secrets: ## Create or update ENV's Secret blocks from environment variables\n"
        "\tuv run python -m $(PACKAGE).ops.sync_secrets --env $(ENV)\n"
    ) in makefile

    def dry_run(target: str) -> str:
        # --no-print-directory: under `make test` this make is nested and would say where it is.
        return subprocess.run(
            ["make", "--no-print-directory", "-n", target, "ENV=prod"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    sync = "uv run python -m sales_etl.ops.sync_secrets --env prod\n"
    assert dry_run("sync-secrets") == sync
    # make deploy, what CI runs, syncs the blocks before it reconciles.
    assert dry_run("deploy") == (
        sync + "uv run python -m sales_etl.ops.promote --env prod --default-branch main\n"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_blank_line_litter(rendered: dict[str, Path], backend: str) -> None:
    for path in rendered_files(rendered[backend]):
        text = path.read_text(errors="replace")
        where = path.relative_to(rendered[backend])
        assert "\n\n\n\n" not in text, f"{where}: three blank lines in a row"
        assert not text.startswith("\n"), f"{where}: starts with a blank line"


def test_credential_patterns_catch_fakes() -> None:
    for sample in FAKE_CREDENTIALS:
        assert any(re.search(p, sample) for p in CREDENTIAL_PATTERNS.values()), sample


def test_no_rendered_file_holds_a_credential(rendered: dict[str, Path]) -> None:
    found = []
    for backend, repo in rendered.items():
        for path in rendered_files(repo):
            text = re.sub(PINNED_COMMIT, "@<commit>", path.read_text(errors="replace"))
            for number, line in enumerate(text.splitlines(), 1):
                for kind, pattern in CREDENTIAL_PATTERNS.items():
                    if re.search(pattern, line):
                        found.append(f"{backend}: {path.relative_to(repo)}:{number}: {kind}")
    assert not found, "\n".join(found)


def hook_arguments(repo: Path) -> list[str]:
    """The arguments of the generated repository's own detect-secrets hook."""
    config = yaml.safe_load((repo / ".pre-commit-config.yaml").read_text())
    hooks = [hook for entry in config["repos"] for hook in entry["hooks"]]
    return next(hook.get("args", []) for hook in hooks if hook["id"] == "detect-secrets")


def test_detect_secrets_finds_nothing_in_any_backend(rendered: dict[str, Path]) -> None:
    # One scan over every rendered tree (each a directory named after its backend), with the
    # arguments of the generated repositories' own hook.
    (arguments,) = {tuple(hook_arguments(repo)) for repo in rendered.values()}
    (parent,) = {repo.parent for repo in rendered.values()}
    scan = subprocess.run(
        [str(BIN / "detect-secrets"), "scan", "--all-files", *arguments, "."],
        cwd=parent,
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(scan.stdout)["results"]
    assert not results, json.dumps(results, indent=2)


def test_detect_secrets_catches_a_planted_key(tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text(f'aws_key = "{FAKE_CREDENTIALS[0]}"\n')
    scan = subprocess.run(
        [str(BIN / "detect-secrets"), "scan", "--all-files", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(scan.stdout)["results"]


# Each backend's repository is installed and passes its own checks in
# tests/test_runtimes.py::test_generated_repository_passes_its_own_checks, paired with a runtime
# and task runner, so its flow tests also run on Dask's and Ray's worker processes.
