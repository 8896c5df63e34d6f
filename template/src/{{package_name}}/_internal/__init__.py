"""Plumbing the template owns: copier update replaces it, so keep your code elsewhere."""
