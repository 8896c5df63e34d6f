"""CI values that arrived unexpanded: Azure Pipelines passes `$(NAME)` on as literal text when
NAME is not defined, so a missing secret would be stored, or sent as an API key, as that text.

Kept free of Prefect imports: registry_login runs it before anything else is loaded.
"""

from __future__ import annotations

import re

UNEXPANDED_MACRO = re.compile(r"\$\([A-Za-z_][\w.]*\)")


def unexpanded(name: str, value: str) -> str | None:
    """The problem with a value CI passed on unexpanded, or None."""
    if UNEXPANDED_MACRO.fullmatch(value.strip()):
        return (
            f"{name} is the literal text '{value.strip()}': the CI variable it names is not "
            "defined (Azure Pipelines passes an undefined $(NAME) on as text)"
        )
    return None
