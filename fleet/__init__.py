"""Roll a new template version out to many repositories generated from it.

Usage::

    python -m fleet update --to REF [--template SRC] [--branch NAME] [--jobs N]
                           [--report DIR] [--check CMD | --no-checks] [--trust]
                           [--repos-file FILE] REPO...

REPO is a local path (updated in place) or a git URL (cloned under ``DIR/repos/`` and updated
there; nothing is pushed). Repos run in parallel, ``--jobs`` at a time (default: CPU count).

Per repository, in this order:

1. A dirty worktree (``git status --porcelain`` non-empty, untracked files included) is refused
   as ``skipped-dirty`` and left exactly as it was: no stash, no checkout, no index refresh.
2. No ``.copier-answers.yml`` -> ``skipped-not-a-copier-repo``. ``_commit`` equal to REF, or
   resolving to the same template commit -> ``skipped-current``.
3. A new branch (default ``template-update/REF``) is created from the current HEAD and checked
   out; nothing is ever committed on the branch the repo was on. An existing branch of that name
   -> ``skipped-branch-exists``. With ``--template SRC`` differing from ``_src_path``, the answers
   file is first repointed to SRC in its own commit on that branch (``copier update`` has no
   switch for a new source, and refuses a dirty tree).
4. ``copier update --vcs-ref REF --defaults --skip-answered --conflict inline`` runs as a
   subprocess (``--trust`` only when given). Copier's Python API is not thread-safe: it changes
   the process-wide working directory (plumbum ``local.cwd`` -> ``os.chdir``) and environment
   (``local.env``) while it works, so threads sharing one process would race.
5. Conflicts are read from the tree, never from copier's exit code (it exits 0 when it leaves
   conflict markers): unmerged index entries, conflict markers on lines the update added (and in
   new untracked files), ``git diff --check`` leftover-marker reports, and ``*.rej`` files.
6. With conflicts the result is ``updated-with-conflicts``: the branch stays checked out with the
   conflicted tree uncommitted so a human resolves it with ordinary git tools, and checks are
   not run (they would fail on the markers). A half-merged commit would look finished to anyone
   who only reads the branch list.
7. Without conflicts the update is committed (``chore: update template to REF``, hooks skipped:
   the checks below are the gate) and then the checks run: ``--check CMD`` (a shell command run
   in the repo), else ``make check`` when the Makefile has a ``check`` target, none with
   ``--no-checks``. Committing first keeps check artefacts out of the commit. Result:
   ``updated`` or ``checks-failed``.
8. Anything unexpected -> ``error`` with a message. If copier failed before touching the tree,
   the new branch is removed and the previous checkout restored, so a rerun starts clean.

Reports: ``DIR/report.json`` (one record per repo) and ``DIR/report.md`` (table and details),
``DIR`` defaulting to ``./fleet-report``.

Exit code: 0 when every repo is ``updated`` or ``skipped-current``; 1 when any repo has another
status (conflicts, failed checks, errors, and the skips that leave a repo behind: dirty, branch
exists, not a copier repo); 2 for command-line errors.
"""
