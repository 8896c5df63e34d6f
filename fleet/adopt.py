"""`python -m fleet adopt PATH`: bring an existing Prefect 3 repository under the template.

On a new branch, in two commits:
1. the pristine render at the template ref (its answers file records `_commit`): this is the
   base copier's three-way merge re-renders on the next `copier update`, so what the team did
   not edit merges cleanly;
2. the team's code on top: flow modules moved under the package's `flows/` (entrypoints become
   module paths, which `ops validate` requires and Dask/Ray workers import), every existing
   deployment carried into flows.yaml with its name, schedule, parameters and tags, and
   ADOPTION.md saying what was inferred, moved and what the team must look at.

Nothing is executed from the repository: deploy scripts are read with `ast`.
"""

from __future__ import annotations

import ast
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet import repo as g
from fleet.commit_hook import hook_module

BRANCH = "adopt/copier-prefect"
TEMPLATE_ROOT = Path(__file__).resolve().parents[1]
ENV_NAMES = ("dev", "test", "qa", "staging", "prod", "production")
PREFECT2 = (
    (re.compile(r"Deployment\.build_from_flow"), "Deployment.build_from_flow"),
    (
        re.compile(r"from prefect\.deployments import Deployment\b"),
        "prefect.deployments.Deployment",
    ),
    (re.compile(r"prefect deployment build"), "`prefect deployment build`"),
    (re.compile(r"prefect\s*(==\s*2|<\s*3|~=\s*2|>=\s*2[.\d]*\s*,\s*<\s*3)"), "a Prefect 2 pin"),
    (re.compile(r"prefect agent start"), "`prefect agent start`"),
)
SCHEDULE_KEYS = ("cron", "interval", "rrule", "timezone", "anchor_date", "day_or")
RUNTIMES = {"process": "process", "docker": "docker", "kubernetes": "kubernetes", "ecs": "ecs"}
# Job variables only one worker type's default base job template has: a deployment setting one
# names the pool type even when the pool itself is not in the repository.
POOL_TYPE_KEYS = {
    "kubernetes": {
        "namespace",
        "service_account_name",
        "finished_job_ttl",
        "backoff_limit",
        "pod_watch_timeout_seconds",
        "job_watch_timeout_seconds",
    },
    "ecs": {
        "cluster",
        "task_definition_arn",
        "launch_type",
        "vpc_id",
        "execution_role_arn",
        "task_role_arn",
        "network_configuration",
        "task_start_timeout_seconds",
    },
}
# `prefect work-pool create NAME --type TYPE` in a script, Makefile or CI file of the repository.
SCRIPT_SUFFIXES = {".sh", ".yml", ".yaml", ".mk", ".py", ".toml"}
POOL_TYPE_OPTION = re.compile(r"(?:--type|-t)[=\s]+[\"']?([a-z]+)")


class AdoptError(Exception):
    """Refused: the message says why; the repository is left as it was."""


@dataclass
class Deployment:
    flow_file: str  # path of the flow's module in the repository as found
    function: str
    name: str
    schedule: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    pool: str | None = None
    pool_type: str | None = None
    image: bool = False
    source: str = "prefect.yaml"


@dataclass
class Inferred:
    answers: dict[str, str] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)  # answer -> where it came from
    deployments: list[Deployment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- refusing ---------------------------------------------------------------------------------


def refusal(repo: Path) -> str | None:
    """Why this repository cannot be adopted, or None."""
    if g.is_dirty(repo):
        return "the repository has uncommitted changes: commit or stash them first"
    if (repo / g.ANSWERS_FILE).exists():
        return f"{g.ANSWERS_FILE} exists: the repository is already generated; use `fleet update`"
    if g.branch_exists(repo, BRANCH):
        return f"branch {BRANCH} exists: delete it to adopt again"
    found = prefect2_signs(repo)
    if found:
        return (
            "this is a Prefect 2-style repository (" + "; ".join(found) + "): migrate it to "
            "Prefect 3 (prefect.yaml or flow.deploy(), workers instead of agents) first"
        )
    return None


def tracked(repo: Path) -> list[str]:
    return [p for p in g.git(repo, "ls-files", "-z").stdout.split("\0") if p]


def prefect2_signs(repo: Path) -> list[str]:
    signs = []
    for path in tracked(repo):
        if Path(path).name in ("deployment.yaml",) or path.endswith("-deployment.yaml"):
            signs.append(f"{path} is an agent-era deployment file")
            continue
        if not path.endswith((".py", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".sh", "Makefile")):
            continue
        text = (repo / path).read_text(errors="replace")
        signs += [f"{path} uses {what}" for pattern, what in PREFECT2 if pattern.search(text)]
    return signs


# --- inferring --------------------------------------------------------------------------------


def literal(node: ast.AST | None) -> object:
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def schedule_from(values: dict[str, Any]) -> dict[str, Any] | None:
    schedule = {k: values[k] for k in SCHEDULE_KEYS if values.get(k) not in (None, "")}
    if not {"cron", "interval", "rrule"} & set(schedule):
        return None
    if isinstance(schedule.get("interval"), float) and schedule["interval"].is_integer():
        schedule["interval"] = int(schedule["interval"])
    return schedule


def pool_type_of(job_variables: object) -> str | None:
    """The worker type whose job variables a deployment sets, when only one type has them."""
    keys = set(job_variables) if isinstance(job_variables, dict) else set()
    types = [kind for kind, known in POOL_TYPE_KEYS.items() if keys & known]
    return types[0] if len(types) == 1 else None


def pool_types_created(repo: Path) -> set[str]:
    """Pool types the repository's own scripts, Makefile or CI files create pools of."""
    found = set()
    for path in tracked(repo):
        file = repo / path
        if file.suffix in SCRIPT_SUFFIXES or file.name == "Makefile":
            with contextlib.suppress(OSError, UnicodeDecodeError):
                for line in file.read_text().splitlines():
                    if "work-pool create" in line and (match := POOL_TYPE_OPTION.search(line)):
                        found.add(match.group(1))
    return found & set(RUNTIMES)


def from_prefect_yaml(repo: Path) -> tuple[list[Deployment], list[str]]:
    path = repo / "prefect.yaml"
    if not path.is_file():
        return [], []
    data = yaml.safe_load(path.read_text()) or {}
    found, notes = [], []
    steps = yaml.safe_dump(data.get("build") or []) + yaml.safe_dump(data.get("push") or [])
    image = "build_docker_image" in steps
    for spec in data.get("deployments") or []:
        entrypoint = str(spec.get("entrypoint") or "")
        file, _, function = entrypoint.rpartition(":")
        if not file.endswith(".py"):
            notes.append(f"prefect.yaml deployment {spec.get('name')!r}: entrypoint {entrypoint!r}")
            continue
        schedules = [s for s in spec.get("schedules") or [] if schedule_from(s)]
        legacy = spec.get("schedule") or {}
        if legacy and schedule_from(legacy):
            schedules.append(legacy)
        if len(schedules) > 1:
            notes.append(
                f"deployment {spec.get('name')!r} has {len(schedules)} schedules: the first is kept"
            )
        pool = spec.get("work_pool") or {}
        jobs = pool.get("job_variables") or {}
        if dropped := sorted(set(jobs) - {"image"}):
            notes.append(
                f"deployment {spec.get('name')!r} sets job variables {', '.join(dropped)}: they are"
                " not carried into flows.yaml; the environment's work pool sets them now"
            )
        found.append(
            Deployment(
                flow_file=file,
                function=function,
                name=str(spec.get("name")),
                schedule=schedule_from(schedules[0]) if schedules else None,
                parameters=dict(spec.get("parameters") or {}),
                tags=[str(t) for t in spec.get("tags") or []],
                pool=pool.get("name"),
                pool_type=pool_type_of(jobs),
                image=image or "image" in jobs,
            )
        )
    return found, notes


def from_scripts(repo: Path) -> list[Deployment]:
    """`flow.deploy(...)` and `flow.from_source(...).deploy(...)` calls, read with ast."""
    found = []
    for path in tracked(repo):
        if not path.endswith(".py"):
            continue
        try:
            tree = ast.parse((repo / path).read_text())
        except SyntaxError:
            continue
        flows = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)
            and any("flow" in ast.unparse(d) for d in node.decorator_list)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "deploy"):
                continue
            kw = {k.arg: literal(k.value) for k in node.keywords if k.arg}
            receiver = node.func.value  # type: ignore[attr-defined]
            if (
                isinstance(receiver, ast.Call)
                and getattr(receiver.func, "attr", "") == "from_source"
            ):
                args = {k.arg: literal(k.value) for k in receiver.keywords if k.arg}
                entry = args.get("entrypoint") or literal(
                    receiver.args[1] if len(receiver.args) > 1 else None
                )
                if not isinstance(entry, str) or ":" not in entry:
                    continue
                file, _, function = entry.rpartition(":")
            elif isinstance(receiver, ast.Name) and receiver.id in flows:
                file, function = path, receiver.id
            else:
                continue
            found.append(
                Deployment(
                    flow_file=file,
                    function=function,
                    name=str(kw.get("name") or function),
                    schedule=schedule_from(kw),
                    parameters=dict(kw.get("parameters") or {}),
                    tags=[str(t) for t in kw.get("tags") or []],
                    pool=kw.get("work_pool_name"),
                    pool_type=pool_type_of(kw.get("job_variables")),
                    image=bool(kw.get("image")),
                    source=path,
                )
            )
    return found


def environments_of(deployments: list[Deployment]) -> list[str] | None:
    """Environment names when every deployment (or pool) name ends in one, else None."""
    names = set()
    for d in deployments:
        for text in (d.name, d.pool or ""):
            last = re.split(r"[-_/]", text)[-1]
            if last in ENV_NAMES:
                names.add(last)
                break
        else:
            return None
    return [e for e in ENV_NAMES if e in names] or None


def environment_of(d: Deployment, environments: list[str]) -> str:
    for text in (d.name, d.pool or ""):
        last = re.split(r"[-_/]", text)[-1]
        if last in environments:
            return last
    return environments[-1]


def ci_platform(repo: Path) -> str | None:
    if any((repo / ".github" / "workflows").glob("*.y*ml")):
        return "github-actions"
    for name, platform in (
        (".gitlab-ci.yml", "gitlab-ci"),
        ("bitbucket-pipelines.yml", "bitbucket-pipelines"),
        ("azure-pipelines.yml", "azure-pipelines"),
    ):
        if (repo / name).is_file():
            return platform
    return None


def python_version(repo: Path) -> str | None:
    if (repo / ".python-version").is_file():
        match = re.match(r"(3\.\d+)", (repo / ".python-version").read_text().strip())
        if match:
            return match.group(1)
    project = pyproject(repo).get("project") or {}
    match = re.search(r"(3\.\d+)", str(project.get("requires-python") or ""))
    return match.group(1) if match else None


def pyproject(repo: Path) -> dict[str, Any]:
    import tomllib

    path = repo / "pyproject.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def infer(repo: Path) -> Inferred:
    result = Inferred()
    yaml_found, result.notes = from_prefect_yaml(repo)
    result.deployments = yaml_found + from_scripts(repo)
    name = (pyproject(repo).get("project") or {}).get("name")
    result.answers["project_name"] = str(name or repo.name)
    result.how["project_name"] = "pyproject.toml [project] name" if name else "directory name"
    if ci := ci_platform(repo):
        result.answers["ci_platform"], result.how["ci_platform"] = ci, "the repository's CI files"
    if py := python_version(repo):
        result.answers["python_version"] = py
        result.how["python_version"] = ".python-version or requires-python"
    pool_types = {d.pool_type for d in result.deployments} - {None}
    pool_types = pool_types or pool_types_created(repo)
    if len(pool_types) == 1:
        result.answers["runtime"] = str(pool_types.pop())
        result.how["runtime"] = "its deployments' job variables or its `work-pool create --type`"
    elif any(d.image for d in result.deployments):
        result.answers["runtime"] = "docker"
        result.how["runtime"] = "a Docker image in its deployments (build step or image=)"
    elif result.deployments:
        result.answers["runtime"] = "process"
        result.how["runtime"] = "deployments without an image"
    envs = environments_of(result.deployments)
    if envs and len(envs) > 1:
        result.answers["environments"] = "[" + ", ".join(envs) + "]"
        result.how["environments"] = "deployment or work pool names ending in an environment"
    timezones = {(d.schedule or {}).get("timezone") for d in result.deployments} - {None}
    if len(timezones) == 1:
        result.answers["timezone"] = str(timezones.pop())
        result.how["timezone"] = "its schedules"
    return result


# --- writing ----------------------------------------------------------------------------------


def module_name(file: str, taken: set[str]) -> str:
    stem = re.sub(r"\W", "_", Path(file).stem).lower()
    if stem in taken or stem in ("etl", "publish", "__init__"):
        stem = f"team_{stem}"
    return stem


def render(template: str, ref: str | None, answers: dict[str, str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet", "--trust"]
    cmd += ["--vcs-ref", ref or "HEAD"]
    for key, value in answers.items():
        cmd += ["--data", f"{key}={value}"]
    proc = subprocess.run(
        [*cmd, template, str(dest)], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        raise AdoptError(
            f"copier could not render the template: {(proc.stderr or proc.stdout)[-2000:]}"
        )


def flows_entries(
    inferred: Inferred, moved: dict[str, str], package: str, environments: list[str]
) -> dict[str, dict[str, Any]]:
    """One flows.yaml entry per existing deployment, named as it was in its environment."""
    entries: dict[str, dict[str, Any]] = {}
    for d in inferred.deployments:
        module = moved[d.flow_file]
        env = environment_of(d, environments)
        key = re.sub(r"\W", "-", f"{d.function}-{d.name}").lower()
        entry: dict[str, Any] = {"entrypoint": f"{package}.flows.{module}:{d.function}"}
        entry["name"] = d.name if env == environments[-1] else {env: d.name}
        if d.schedule:
            entry["schedule"] = d.schedule
        if d.parameters:
            entry["parameters"] = d.parameters
        if d.tags:
            entry["tags"] = d.tags
        entries[key] = entry
    return entries


def adopt(path: Path, data: dict[str, str], template: str | None, ref: str | None) -> Path:
    """Adopt the repository at path; returns the report file. Raises AdoptError unchanged."""
    repo = g.toplevel(path)
    if repo is None:
        raise AdoptError(f"{path} is not a git repository")
    if reason := refusal(repo):
        raise AdoptError(reason)
    inferred = infer(repo)
    if not inferred.deployments:
        raise AdoptError("found no deployment (prefect.yaml or a .deploy() call) to adopt")
    answers = {**inferred.answers, **data}
    src = g.git_url(template or str(TEMPLATE_ROOT))
    start = g.current_branch(repo) or g.head_commit(repo)
    with tempfile.TemporaryDirectory(prefix="fleet-adopt-") as tmp:
        rendered = Path(tmp) / "render"
        render(src, ref, answers, rendered)
        settled = yaml.safe_load((rendered / g.ANSWERS_FILE).read_text())
        g.git(repo, "switch", "--quiet", "-c", BRANCH)
        try:
            report = _write(repo, rendered, settled, inferred, data)
        except Exception:
            g.git(repo, "reset", "--quiet", "--hard")
            g.git(repo, "clean", "--quiet", "-fd")
            g.git(repo, "switch", "--quiet", start)
            g.git(repo, "branch", "--quiet", "-D", BRANCH)
            raise
    return report


def _write(
    repo: Path, rendered: Path, answers: dict[str, Any], inferred: Inferred, data: dict[str, str]
) -> Path:
    package = str(answers["package_name"])
    environments = list(answers["environments"])
    kept: list[str] = []
    # A file the template renders too (prefect.yaml, pyproject.toml, README.md, a CI workflow)
    # becomes the template's; the team's is kept beside it, under a name no tool reads.
    for name in tracked(repo):
        if (rendered / name).is_file():
            target = f"{name}.pre-adoption"
            g.git(repo, "mv", name, target)
            kept.append(f"`{name}` → `{target}` (the template's takes its place)")
    shutil.copytree(rendered, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    # Commit 1, the base of copier's three-way merge: the render as the template made it.
    g.commit_all(repo, f"Adopt copier-prefect: the template at {answers['_commit']}")
    moved: dict[str, str] = {}
    flows_dir = Path("src", package, "flows")
    for file in dict.fromkeys(d.flow_file for d in inferred.deployments):
        if not (repo / file).is_file():
            raise AdoptError(f"a deployment's entrypoint names {file}, which the repository lacks")
        module = module_name(file, set(moved.values()))
        g.git(repo, "mv", file, str(flows_dir / f"{module}.py"))
        moved[file] = module
        inferred.notes += _record_commits(repo, repo / flows_dir / f"{module}.py", package)
        test = repo / "tests" / "flows" / f"test_{module}.py"
        test.write_text(_flow_test(package, module))
    entries = flows_entries(inferred, moved, package, environments)
    (repo / "flows.yaml").write_text(_with_entries((repo / "flows.yaml").read_text(), entries))
    report = repo / "ADOPTION.md"
    report.write_text(_report(answers, inferred, data, moved, entries, kept, flows_dir))
    g.commit_all(repo, "Adopt copier-prefect: the team's flows and their deployments")
    return report


def _record_commits(repo: Path, module: Path, package: str) -> list[str]:
    """Give the module's flows the hook that labels runs with their commit; what to do by
    hand where a flow has on_running hooks of its own."""
    left = hook_module(module, package, repo)
    where = module.relative_to(repo)
    return [
        f"`{where}`: `@{decorator}` has on_running hooks of its own: add `record_commit` to "
        "them (smoke and promotion count only runs that record their commit)."
        for decorator in left
    ]


def _flow_test(package: str, module: str) -> str:
    return (
        f'"""Adopted: {module} imports (write tests that run its flows on the harness)."""\n\n'
        "import importlib\n\n\n"
        f"def test_{module}_imports() -> None:\n"
        f'    assert importlib.import_module("{package}.flows.{module}")\n'
    )


def _with_entries(text: str, entries: dict[str, dict[str, Any]]) -> str:
    body = yaml.safe_dump({"flows": entries}, sort_keys=False, default_flow_style=False)
    return re.sub(r"(?m)^flows: \{\}\n", lambda _: body, text)


def _report(
    answers: dict[str, Any],
    inferred: Inferred,
    data: dict[str, str],
    moved: dict[str, str],
    entries: dict[str, dict[str, Any]],
    kept: list[str],
    flows_dir: Path,
) -> str:
    lines = ["# Adoption by copier-prefect", "", "## Answers", ""]
    for key, value in sorted((k, v) for k, v in answers.items() if not k.startswith("_")):
        how = "--data" if key in data else inferred.how.get(key, "the template's default")
        lines.append(f"- `{key}`: `{value}` ({how})")
    lines += ["", "## Moved", ""]
    lines += [f"- `{old}` → `{flows_dir}/{new}.py`" for old, new in moved.items()]
    lines += [f"- {line}" for line in kept]
    lines += ["", "## Deployments carried into flows.yaml", ""]
    for d, key in zip(inferred.deployments, entries, strict=True):
        lines.append(
            f"- `{key}`: deployment `{d.name}` of `{d.function}` (from {d.source}), "
            f"schedule {d.schedule or 'none'}, parameters {d.parameters or '{}'}"
        )
    lines += [
        "",
        "## Look at",
        "",
        "- Imports between your own modules: moved modules are now "
        f"`{answers['package_name']}.flows.*`; run `make check`.",
        "- Dependencies of `pyproject.toml.pre-adoption` (if any) go into `pyproject.toml`'s own.",
        "- Each flow has only an import test under tests/flows: write one that runs it.",
        "- Each moved flow now declares `on_running=[record_commit]`: its runs record the "
        "commit they ran, which smoke runs and promotion compare with the deployment's version.",
        "- Work pools: the deployments now run on the template's pools "
        f"(`{answers['project_slug']}-<env>`), not their old ones "
        f"({', '.join(sorted({d.pool for d in inferred.deployments if d.pool})) or 'none named'}).",
        "- The template's example ETL and publish deployments are kept (prefect.yaml is the "
        "template's): delete their flows if you do not want them, and keep prefect.yaml as is.",
        "- Then delete the `*.pre-adoption*` files.",
        *[f"- {note}" for note in inferred.notes],
    ]
    return "\n".join(lines) + "\n"
