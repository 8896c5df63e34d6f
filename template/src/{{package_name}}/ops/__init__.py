"""Orchestrator state as code: `python -m <package>.ops reconcile --env <env>`.

Template-owned: copier update replaces this package. Declarations live in config/ and
prefect.yaml, never here.
"""
