"""Roll a new template version out to many repositories generated from it.

Usage::

    python -m fleet update --to REF [--template SRC] [--branch NAME] [--jobs N]
                           [--report DIR] [--check CMD | --no-checks] [--trust] [--push]
                           [--lock-wait SECONDS] [--repos-file FILE] REPO...
    python -m fleet status [--format markdown|json] [--template SRC] [--repos-file FILE] REPO...

REPO is a local path (updated in place) or a git URL (cloned under ``DIR/repos/`` and updated
there). Repos run in parallel, ``--jobs`` at a time (default: CPU count), each copier update in
one of ``--jobs`` warm worker processes (fleet/worker.py) rather than a fresh process each.

Per repository, under a lock (``.git/fleet.lock``; held elsewhere -> ``skipped-locked``):

0. A marker (``.git/fleet-update.json``) on the current branch means an earlier run was cut
   short mid-update: the repository is first restored from it (fleet/safety.py).
1. A dirty worktree (``git status --porcelain`` non-empty, untracked files included) is refused
   as ``skipped-dirty`` and left exactly as it was: no stash, no checkout, no index refresh.
2. No ``.copier-answers.yml`` -> ``skipped-not-a-copier-repo``. ``_commit`` equal to REF, or
   resolving to the same template commit -> ``skipped-current``.
3. A new branch (default ``template-update/REF``) is created from the current HEAD and checked
   out; nothing is ever committed on the branch the repo was on. An existing branch of that name
   with commits of its own -> ``skipped-branch-exists``; an empty one is recreated. With
   ``--template SRC`` differing from ``_src_path``, the answers file is first repointed to SRC
   in its own commit on that branch (``copier update`` has no switch for a new source).
4. ``copier update`` (REF, defaults, skip answered, inline conflicts; ``--trust`` only when
   given) runs in a worker process: copier's Python API changes the process-wide working
   directory and environment, so two updates never share a process at the same time.
5. Conflicts are read from the tree, never from copier's exit code (it exits 0 when it leaves
   conflict markers): unmerged index entries, conflict markers on lines the update added (and in
   new untracked files), ``git diff --check`` leftover-marker reports, and ``*.rej`` files.
6. With conflicts the result is ``updated-with-conflicts``: the branch stays checked out with the
   conflicted tree uncommitted so a human resolves it with ordinary git tools, and checks are
   not run (they would fail on the markers).
7. Without conflicts the update is committed (``chore: update template to REF``, hooks skipped:
   the checks below are the gate) and then the checks run: ``--check CMD`` (a shell command run
   in the repo, in its own process group), else ``make check`` when the Makefile has a ``check``
   target, none with ``--no-checks``. Result: ``updated`` or ``checks-failed``. With ``--push``
   the branch is pushed and the report gives the link that opens its pull request.
8. Anything unexpected -> ``error`` with a message, and the repository is restored as it was.

SIGINT/SIGTERM (fleet/interrupt.py): nothing new starts, running copier and check process
groups are killed (SIGKILL after a grace period), every repository not fully updated is
restored byte for byte (branch, index, tree) and reported ``interrupted``; the report is
written and the exit code is 128 + the signal.

Reports: ``DIR/report-<UTC time>.json`` and ``.md``, a new pair per run, ``DIR`` defaulting
to ``./fleet-report``, which ignores itself in git (a ``.gitignore`` of ``*``).

Exit code: 0 when every repo is ``updated`` or ``skipped-current``; 1 when any repo has another
status (conflicts, failed checks, errors, and the skips that leave a repo behind); 2 for
command-line errors; 130/143 when stopped by SIGINT/SIGTERM.
"""
