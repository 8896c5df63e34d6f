"""The Jinja validator macros in includes/ against their oracles: croniter and zoneinfo.

copier.yml validates `schedule_cron` and `timezone` with plain Jinja macros (no extensions, so
no --trust). These tests render the macros in a sandboxed Jinja environment configured like
Copier's and compare the verdict with croniter.is_valid / zoneinfo for tables of hand-picked
answers and a seeded sweep of expressions built from the cron grammar. Where the macro is
deliberately stricter than croniter, the case says so and asserts that croniter accepts it, so
the table fails if croniter's behaviour changes under us.
"""

from __future__ import annotations

import importlib.util
import random
import re
import shutil
import sys
import zoneinfo
from datetime import datetime
from pathlib import Path, PurePosixPath
from types import ModuleType

import copier
import pytest
from croniter import CroniterBadDateError, croniter
from jinja2 import Environment, FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment

from tests.rendering import QUESTIONS

REPO = Path(__file__).resolve().parent.parent
TIMEZONES_FILE = REPO / "includes" / "timezones.jinja"
UPDATE_SCRIPT = REPO / "scripts" / "update_timezones.py"


# The envops copier.yml sets.
COPIER_ENVOPS = {"keep_trailing_newline": True, "lstrip_blocks": True, "trim_blocks": True}


def _copier_like_env(**envops: bool) -> SandboxedEnvironment:
    # Copier renders in a SandboxedEnvironment whose loader root is the template root
    # (where copier.yml lives), with the template's envops, plus its `pathjoin` global and
    # the filters it always loads.
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(REPO)),
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"],
        **envops,
    )
    env.globals["pathjoin"] = lambda *parts: str(PurePosixPath(*parts))
    return env


ENV = _copier_like_env(**COPIER_ENVOPS)
CRON = ENV.from_string("{% from 'includes/cron.jinja' import cron_error %}{{ cron_error(x) }}")
TZ = ENV.from_string(
    "{% from 'includes/timezones.jinja' import timezone_error %}{{ timezone_error(x) }}"
)


def cron_error(expr: object) -> str:
    return CRON.render(x=expr)


def timezone_error(name: object) -> str:
    return TZ.render(x=name)


CRON_PREFIX = "schedule_cron: '{}' is not a valid cron expression ("
CRON_SUFFIX = "). Use five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *'."
TZ_MESSAGE = (
    "timezone: '{}' is not an IANA time zone name. "
    "Use a name such as 'UTC', 'Europe/Berlin' or 'America/New_York'."
)


def _zero_day_or_month(expr: str) -> bool:
    """True when a day-of-month or month value is written as 0.

    croniter lets 0 through there when it is the upper bound of a range (`5-0`, `12-0/2`) or
    both bounds (`0-0`), because it only checks the values the range expands to. The macro
    rejects it like every other out-of-range number.
    """
    fields = expr.split()
    if len(fields) != 5:
        return False
    return any(
        part.isdigit() and int(part) == 0
        for field in fields[2:4]
        for item in field.split(",")
        for part in item.partition("/")[0].split("-")
    )


CRON_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def fires(expr: str) -> bool:
    """croniter finds a next occurrence (it searches decades ahead, so Feb 29 counts)."""
    try:
        croniter(expr, datetime(2026, 12, 1)).get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


def expected_valid(expr: str) -> bool:
    """The oracle: croniter, minus the documented places where the macro is stricter, and an
    expression must fire at least once."""
    if not croniter.is_valid(expr):
        return False
    is_alias = expr.lower() in CRON_ALIASES
    syntax = is_alias or (len(expr.split()) == 5 and not _zero_day_or_month(expr))
    return syntax and fires(expr)


NEVER_FIRES = (
    "schedule_cron: '{}' never fires: none of its months has a day {} (February has 29 days at "
    "most; April, June, September and November 30). Choose days that exist in those months."
)


def assert_verdict(expr: str, valid: bool) -> None:
    out = cron_error(expr)
    if valid:
        assert out == "", f"{expr!r} should be accepted, got: {out}"
    elif out.startswith(f"schedule_cron: '{expr}' never fires"):
        assert out in {NEVER_FIRES.format(expr, day) for day in (30, 31)}, f"{expr!r}: {out!r}"
    else:
        assert out.startswith(CRON_PREFIX.format(expr)), f"{expr!r}: {out!r}"
        assert out.endswith(CRON_SUFFIX), f"{expr!r}: {out!r}"
        assert "\n" not in out.replace(expr, ""), f"{expr!r}: message is not one line"


# --------------------------------------------------------------------------- cron tables

VALID_CRON = [
    "0 2 * * *",
    "* * * * *",
    "*/5 * * * *",
    "0 */2 * * *",
    "0 0 1 * *",
    "0 0 1 1 *",
    "0 9 * * 1-5",
    "0 9 * * mon-fri",
    "0 9 * * MON-FRI",
    "0 9 * * Mon,Wed,Fri",
    "30 6 * * sun",
    "0 0 * * 7",  # 7 is Sunday, like 0
    "0 0 * * 0,7",
    "0 0 * * 5-7",
    "15,45 * * * *",
    "0-59/15 * * * *",
    "5-55/10 * * * *",
    "10/5 * * * *",  # N/S starts at N and runs to the end of the field
    "59/15 * * * *",  # ... which at the field maximum is just that value
    "0 0 31 * *",
    "0 0 29 2 *",
    "0 0 1 jan *",
    "0 0 1 JAN,jul *",
    "0 0 1 jan-jun/2 *",
    "0 0 1 */3 *",
    "0 0 1 dec/3 *",
    "0 12 1-7 * 1",
    "0 0 * * */2",
    "*/100 * * * *",  # a step wider than the field
    "*/01 * * * *",
    "00 02 * * *",  # leading zeros
    "0\t2 * * *",
    "  0 2 * * *  ",
    "0 2   * * *",
    "5-5/2 * * * *",  # croniter reads an equal range as the whole field
    "0 0 * * sun-sun",
    "0 0 1 12/1 *",
    "1,2,3,4,5,10-20/3,*/7 0-23/4 1-31 jan-dec sun-sat",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "@Daily",
    # Ranges written backwards wrap around the end of the field, as in croniter.
    "50-10 * * * *",
    "0 22-2 * * *",
    "0 0 25-5 * *",
    "0 0 1 nov-feb *",
    "0 0 * * fri-mon",
    "0 0 * * 6-1",
    "0 0 * * 6-7",
    "0 0 * * 7-1",
    "0 0 * * 7/2",
    "50-10/3 22-2/2 25-5/4 nov-feb/2 sat-tue/2",
]

INVALID_CRON = [
    "",
    "   ",
    "0",
    "0 2 * *",
    "0 2 * * * * * *",
    "60 * * * *",
    "* 24 * * *",
    "* * 0 * *",
    "* * 32 * *",
    "* * * 0 *",
    "* * * 13 *",
    "* * * * 8",
    "-1 * * * *",
    "*/0 * * * *",
    "*/00 * * * *",
    "0-59/0 * * * *",
    "5/0 * * * *",
    "1,,2 * * * *",
    ",1 * * * *",
    "1, * * * *",
    "1- * * * *",
    "-5 * * * *",
    "1-2-3 * * * *",
    "1--3 * * * *",
    "1/2/3 * * * *",
    "*/ * * * *",
    "/5 * * * *",
    "5/ * * * *",
    "*-5 * * * *",
    "5-* * * * *",
    "** * * * *",
    "*/x * * * *",
    "* * * * monday",
    "* * * january *",
    "* * * * jan",
    "* * * mon *",
    "jan * * * *",
    "1.5 * * * *",
    "0x1 * * * *",
    "1_0 * * * *",
    "+1 * * * *",
    "* * 0-5 * *",  # 0 is inside the range, and croniter checks every value in it
    "* * * 0/2 *",
    "* * 1-32 * *",
    "* * * * 1-8",
    "60/5 * * * *",
    "0 0 1 1 1 2 3 4",
    "@reboot",
    "@every 5m",
    " @daily",
    "@daily ",
    "@daily * * * *",
    "0\u00a02 * * * *",  # no-break space is not a separator
    "0\u00a02 * * *",
    "0 2 * * *\u200b",
    "0\x1c2 * * * *",  # str.split() would split here, croniter does not
    "0 2 * * \uff15",  # a full-width 5: isdigit() is True, croniter's \d is ASCII-only
    "h * * * *",  # hashed values need a hash id croniter is not given
    "h/5 * * * *",
    "? * * * *",
    "* * * * 1#6",
    "* * LW * *",
    "* * * * 5L",
    "* * 15w,1 * *",
    "0 (2) * * *",
    "0 2 * * * #comment",
]

# croniter accepts these; the macro rejects them on purpose, for the given reason.
STRICTER_THAN_CRONITER = [
    # Six and seven fields are croniter's seconds and year columns, not standard cron.
    ("* * * * * *", "found 6 fields; seconds and year fields are not supported"),
    ("0 0 12 * * 0 2030", "found 7 fields; seconds and year fields are not supported"),
    # Quartz/croniter extensions: '?', last (L), nearest weekday (W), nth weekday (#), and
    # hashed/random values (Prefect itself refuses bare H and R).
    ("* * ? * *", "'?' is a non-standard extension"),
    ("* * * * ?", "'?' is a non-standard extension"),
    ("* * L * *", "'L' (last day or weekday of the month) is a non-standard extension"),
    ("* * 1-L * *", "'L' (last day or weekday of the month) is a non-standard extension"),
    ("* * * * L5", "'L' (last day or weekday of the month) is a non-standard extension"),
    ("0 0 15W * *", "'W' (nearest weekday) is a non-standard extension"),
    ("0 0 W15 * *", "'W' (nearest weekday) is a non-standard extension"),
    ("* * * * 5#2", "'#' (nth weekday of the month) is a non-standard extension"),
    ("* * * * fri#3", "'#' (nth weekday of the month) is a non-standard extension"),
    ("* * * * mon-fri#1", "'#' (nth weekday of the month) is a non-standard extension"),
    ("R * * * *", "'H' and 'R' (hashed and random values) are non-standard extensions"),
    ("r/15 * * * *", "'H' and 'R' (hashed and random values) are non-standard extensions"),
    ("R(0-29) * * * *", "'H' and 'R' (hashed and random values) are non-standard extensions"),
    # A 0 bound in day-of-month or month: croniter only range-checks the values a range
    # expands to, and `5-0`, `31-0`, `0-0` happen to expand to none (or to the whole field).
    ("* * 5-0 * *", "day-of-month field '5-0': 0 is out of range, use a number 1-31"),
    ("* * 31-0 * *", "day-of-month field '31-0': 0 is out of range, use a number 1-31"),
    ("* * 0-0 * *", "day-of-month field '0-0': 0 is out of range, use a number 1-31"),
    ("* * * 0-0 *", "month field '0-0': 0 is out of range"),
    ("* * * 12-0 *", "month field '12-0': 0 is out of range"),
    ("* * * 12-0/2 *", "month field '12-0/2': 0 is out of range"),
]


@pytest.mark.parametrize("expr", VALID_CRON)
def test_valid_cron_is_accepted_like_croniter(expr: str) -> None:
    assert croniter.is_valid(expr), "table error: croniter rejects this"
    assert_verdict(expr, valid=True)


@pytest.mark.parametrize("expr", INVALID_CRON)
def test_invalid_cron_is_rejected_like_croniter(expr: str) -> None:
    assert not croniter.is_valid(expr), "table error: croniter accepts this"
    assert_verdict(expr, valid=False)


@pytest.mark.parametrize(("expr", "reason"), STRICTER_THAN_CRONITER)
def test_cron_is_stricter_than_croniter(expr: str, reason: str) -> None:
    assert croniter.is_valid(expr), "croniter now rejects this: move it to INVALID_CRON"
    assert_verdict(expr, valid=False)
    assert reason in cron_error(expr)


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "it is empty"),
        ("0 2 * *", "found 4 fields"),
        ("0", "found 1 field)"),
        ("0 2 * * *\u200b", "it contains a non-ASCII character"),
        ("@reboot", "an alias must stand alone"),
        ("61 * * * *", "minute field '61': 61 is out of range, use a number 0-59"),
        ("0 24 * * *", "hour field '24': 24 is out of range, use a number 0-23"),
        ("0 0 * 13 *", "month field '13': 13 is out of range, use a number 1-12 or a name"),
        ("0 0 * * 8", "day-of-week field '8': 8 is out of range, use a number 0-7 or a name"),
        ("0 0 * * monday", "'monday' is not a number 0-7 or a name sun-sat"),
        ("jan * * * *", "minute field 'jan': 'jan' is not a number 0-59"),
        ("*/0 * * * *", "a step must be at least 1"),
        ("*/x * * * *", "step 'x' is not a whole number"),
        ("1,,2 * * * *", "empty list item"),
        ("-5 * * * *", "negative numbers are not allowed"),
        ("1-2-3 * * * *", "'1-2-3' is not a range"),
        ("0 2 * * * #comment", "found 6 fields"),
        ("0 (2) * * *", "hour field '(2)': unexpected character '('"),
    ],
)
def test_cron_reason(expr: str, reason: str) -> None:
    assert reason in cron_error(expr)


def test_cron_message_is_exact() -> None:
    assert cron_error("61 2 * * *") == (
        "schedule_cron: '61 2 * * *' is not a valid cron expression "
        "(minute field '61': 61 is out of range, use a number 0-59). "
        "Use five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *'."
    )


@pytest.mark.parametrize("value", [None, 5, 1.5, ["0", "2", "*", "*", "*"]])
def test_cron_non_string_answer_is_rejected(value: object) -> None:
    assert cron_error(value).startswith(CRON_PREFIX.format(value))


# --------------------------------------------------------------------------- cron sweep

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (lowest, highest, names) per field; day-of-week 7 is Sunday.
FIELDS = ((0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, MONTH_NAMES), (0, 7, DAY_NAMES))
# Names that are wrong everywhere or in the wrong field (never L, W, H, R: those are the
# extensions covered by the tables above, where croniter is not the oracle).
WRONG_NAMES = (*MONTH_NAMES, *DAY_NAMES, "janu", "mo", "x", "sunday", "1a")


def _random_case(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def _number(rng: random.Random, lowest: int, highest: int, sloppy: bool) -> str:
    if sloppy and rng.random() < 0.7:
        # The edges, one past them, values that are special somewhere (0, 7), and far out.
        n = rng.choice([lowest - 1, lowest, highest, highest + 1, 0, 7, 60, 99, 1000])
    else:
        n = rng.randint(lowest, highest)
    text = str(n)
    return "0" + text if n >= 0 and rng.random() < 0.1 else text


def _value(rng: random.Random, field: int, sloppy: bool) -> str:
    lowest, highest, names = FIELDS[field]
    if sloppy and rng.random() < 0.2:
        return _random_case(rng, rng.choice(WRONG_NAMES))
    if names and rng.random() < 0.4:
        return _random_case(rng, rng.choice(names))
    return _number(rng, lowest, highest, sloppy)


def _step(rng: random.Random, sloppy: bool) -> str:
    if sloppy and rng.random() < 0.5:
        return rng.choice(["0", "00", "", "x", "-1", "1.5"])
    return "01" if rng.random() < 0.1 else str(rng.randint(1, 70))


def _item(rng: random.Random, field: int) -> str:
    """A list item: well formed with in-range values, or (one time in ten) sloppy."""
    sloppy = rng.random() < 0.1
    v, w, s = _value(rng, field, sloppy), _value(rng, field, sloppy), _step(rng, sloppy)
    shapes = [
        ("*", 3),
        (f"*/{s}", 3),
        (v, 6),
        (f"{v}/{s}", 2),
        (f"{v}-{w}", 5),
        (f"{v}-{w}/{s}", 3),
    ]
    if sloppy:
        shapes += [
            ("", 1),
            (f"{v}-", 1),
            (f"-{v}", 1),
            (f"{v}--{w}", 1),
            (f"{v}-{w}-{v}", 1),
            (f"*-{v}", 1),
            (f"{v}/{s}/{s}", 1),
            ("**", 1),
            (f"/{s}", 1),
        ]
    texts, weights = zip(*shapes, strict=True)
    return rng.choices(texts, weights)[0]


def _expression(rng: random.Random) -> str:
    count = rng.choices([5, 4, 6, 7], [0.94, 0.02, 0.02, 0.02])[0]
    fields = [
        ",".join(_item(rng, min(i, 4)) for _ in range(rng.choices([1, 2, 3], [6, 2, 1])[0]))
        for i in range(count)
    ]
    separator = rng.choices([" ", "  ", "\t"], [0.9, 0.05, 0.05])[0]
    text = separator.join(fields)
    return f" {text} " if rng.random() < 0.03 else text


# Valid syntax that never fires: with day-of-week `*`, no named month has the day (croniter
# is_valid accepts them; get_next finds nothing).
NEVER_FIRING_CRON = [
    ("0 0 31 2 *", 31),
    ("0 0 30 2 *", 30),
    ("0 0 30,31 feb *", 30),
    ("0 0 31 4,6,9,11 *", 31),
    ("0 0 31 9/2 *", 31),  # September and November
    ("0 0 30/5 2 *", 30),
    ("15 6 31 FEB,Jun *", 31),
    ("0 0 31 2 *,1", 31),  # a `*` item makes day-of-week unrestricted
]
FIRING_EDGE_CRON = [
    "0 0 29 2 *",  # leap years
    "0 0 31 2 */1",  # a restricted day-of-week: either field matching is enough
    "0 0 31 2 0-6",
    "0 0 31 2 mon",
    "0 0 31-31 2 *",  # N-N is the whole field in croniter
    "0 0 31 feb-feb *",
    "0 0 31 2/2 *",  # 2/2 runs from February to December
    "0 0 31 11-2 *",  # wraps through December and January
    "0 0 */31 2 *",
    "0 0 31 apr-apr/5 *",  # apr-apr is the whole field: with step 5, January, June, November
    "0 0 30,31 2,4 *",
]


@pytest.mark.parametrize(("expr", "day"), NEVER_FIRING_CRON)
def test_cron_that_never_fires_is_refused(expr: str, day: int) -> None:
    assert croniter.is_valid(expr)
    assert not fires(expr)
    assert cron_error(expr) == NEVER_FIRES.format(expr, day)


@pytest.mark.parametrize("expr", FIRING_EDGE_CRON)
def test_cron_that_fires_on_an_edge_is_accepted(expr: str) -> None:
    assert fires(expr)
    assert cron_error(expr) == ""


def _day_item(rng: random.Random) -> str:
    """Day-of-month items biased to 29-31, where months decide whether a schedule fires."""
    return rng.choice(
        ["29", "30", "31", "30-31", "31/5", "30/3", "28-31/2", "31-29", "31-30/2"]
        + [_item(rng, 2)] * 3
    )


@pytest.mark.parametrize("seed", range(2))
def test_never_firing_sweep_matches_croniter(seed: int) -> None:
    """Day-of-month x month x day-of-week combinations against croniter's get_next."""
    rng = random.Random(seed)
    verdicts = []
    for _ in range(400):
        days = ",".join(_day_item(rng) for _ in range(rng.choice([1, 1, 2])))
        months = rng.choice(["2", "feb", "4,6", "9/2", "apr-jun", "11", _item(rng, 3)])
        weekdays = rng.choice(["*", "*", "*", _item(rng, 4)])
        expr = f"0 0 {days} {months} {weekdays}"
        verdicts.append((expr, expected_valid(expr), cron_error(expr)))
    mismatches = [(expr, valid, out) for expr, valid, out in verdicts if (out == "") != valid]
    assert not mismatches, mismatches[:10]
    # Both outcomes, and schedules that never fire among the refusals, or this proves little.
    assert sum("never fires" in out for _, _, out in verdicts) > 10


@pytest.mark.parametrize("seed", range(4))
def test_cron_sweep_matches_croniter(seed: int) -> None:
    rng = random.Random(seed)
    expressions = [_expression(rng) for _ in range(300)]
    verdicts = [(expr, expected_valid(expr), cron_error(expr)) for expr in expressions]
    mismatches = [(expr, valid, out) for expr, valid, out in verdicts if (out == "") != valid]
    assert not mismatches, "\n".join(
        f"{expr!r}: expected {'valid' if valid else 'invalid'}, macro said {out!r}"
        for expr, valid, out in mismatches[:20]
    )
    # The generator must exercise both outcomes, or the comparison proves little.
    n_valid = sum(valid for _, valid, _ in verdicts)
    assert 0.25 * len(verdicts) < n_valid < 0.75 * len(verdicts), n_valid
    for expr, valid, _ in verdicts[:100]:
        assert_verdict(expr, valid)


# The forms includes/cron.jinja accepts at sight, and values just outside them.
PLAIN_FIELDS = (
    ("*", "*/1", "*/15", "*/59", "*/60", "*/0", "0", "5", "59", "60", "05"),
    ("*", "*/1", "*/23", "*/24", "0", "9", "19", "23", "24", "07"),
    ("*", "1", "9", "28", "29", "30", "31", "0"),
    ("*", "1", "2", "12", "13", "0"),
    ("*", "0", "5", "7", "8"),
)


def _checked_env_loads() -> tuple[SandboxedEnvironment, list[str]]:
    loaded: list[str] = []

    class RecordingLoader(FileSystemLoader):
        def get_source(self, environment: Environment, template: str) -> tuple[str, str, object]:
            loaded.append(template)
            return super().get_source(environment, template)

    env = _copier_like_env(**COPIER_ENVOPS)
    env.loader = RecordingLoader(str(REPO))
    return env, loaded


@pytest.mark.parametrize("seed", range(2))
def test_forms_accepted_at_sight_agree_with_the_whole_check(seed: int) -> None:
    rng = random.Random(seed)
    expressions = {" ".join(rng.choice(values) for values in PLAIN_FIELDS) for _ in range(400)}
    checked = ENV.from_string(
        "{% from 'includes/cron_checked.jinja' import checked_cron_error %}"
        "{{ checked_cron_error(x) }}"
    )
    disagreements = [expr for expr in expressions if cron_error(expr) != checked.render(x=expr)]
    assert not disagreements, disagreements[:10]
    assert sum(cron_error(expr) == "" for expr in expressions) > 50


def test_common_forms_do_not_load_the_whole_check() -> None:
    env, loaded = _checked_env_loads()
    validator = env.from_string(
        "{% from 'includes/cron.jinja' import cron_error %}{{ cron_error(x) }}"
    )
    for expr in ("0 2 * * *", "*/15 */2 28 12 7", "59 23 1 1 0"):
        assert validator.render(x=expr) == ""
    assert "includes/cron_checked.jinja" not in loaded
    for expr in ("0 2 * * *\n", "0 0 29 2 *", "0 2 * * mon"):
        assert validator.render(x=expr) == ""
    assert "includes/cron_checked.jinja" in loaded
    assert "never fires" in validator.render(x="0 0 31 2 *")


def _edge_values(field: int) -> list[str]:
    lowest, highest, names = FIELDS[field]
    numbers = sorted({0, lowest, lowest + 1, (lowest + highest) // 2, highest - 1, highest})
    return [str(n) for n in numbers] + ([names[0], names[-1]] if names else [])


@pytest.mark.parametrize("field", range(5))
def test_ranges_in_both_directions_match_croniter(field: int) -> None:
    """`a-b` and `a-b/2` for every pair of edge values, reversed ranges included."""
    mismatches = []
    for a in _edge_values(field):
        for b in _edge_values(field):
            for item in (f"{a}-{b}", f"{a}-{b}/2", f"{a}/7"):
                fields = ["*"] * 5
                fields[field] = item
                expr = " ".join(fields)
                if (cron_error(expr) == "") != expected_valid(expr):
                    mismatches.append(expr)
    assert not mismatches


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(ENV, id="copier-envops"),
        pytest.param(_copier_like_env(), id="default-envops"),
    ],
)
def test_valid_answers_render_nothing_at_all(env: Environment) -> None:
    cron = env.from_string(
        "{% from 'includes/cron.jinja' import cron_error %}{{ cron_error('0 2 * * *') }}"
    )
    tz = env.from_string(
        "{% from 'includes/timezones.jinja' import timezone_error %}{{ timezone_error('UTC') }}"
    )
    assert cron.render() == ""
    assert tz.render() == ""
    assert (
        "\n"
        not in env.from_string(
            "{% from 'includes/cron.jinja' import cron_error %}{{ cron_error('61 * * * *') }}"
        ).render()
    )


def _copier_template(tmp_path: Path) -> Path:
    src = tmp_path / "template"
    # Only what the validators import: copier renders every file of this minimal template.
    (src / "includes").mkdir(parents=True)
    for name in ("cron.jinja", "cron_checked.jinja", "timezones.jinja"):
        shutil.copy(REPO / "includes" / name, src / "includes" / name)
    (src / "copier.yml").write_text(
        "_envops:\n"
        "  keep_trailing_newline: true\n"
        "  lstrip_blocks: true\n"
        "  trim_blocks: true\n"
        "schedule_cron:\n"
        "  type: str\n"
        "  default: '0 2 * * *'\n"
        "  validator: \"{% from pathjoin('includes', 'cron.jinja') import cron_error %}"
        '{{ cron_error(schedule_cron) }}"\n'
        "timezone:\n"
        "  type: str\n"
        "  default: UTC\n"
        "  validator: \"{% from pathjoin('includes', 'timezones.jinja') import timezone_error %}"
        '{{ timezone_error(timezone) }}"\n',
        encoding="utf-8",
    )
    return src


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"schedule_cron": "@weekly", "timezone": "Asia/Tokyo"}, None),
        ({"schedule_cron": "0 2 * * * *"}, "schedule_cron: '0 2 * * * *' is not a valid cron"),
        ({"timezone": "Mars/Olympus"}, TZ_MESSAGE.format("Mars/Olympus")),
    ],
)
def test_copier_runs_the_validators_without_trust(
    tmp_path: Path, data: dict[str, str], error: str | None
) -> None:
    src, dst = _copier_template(tmp_path), tmp_path / "out"
    if error is None:
        worker = copier.run_copy(str(src), dst, data=data, defaults=True, quiet=True)
        assert worker.answers.user == data
    else:
        with pytest.raises(ValueError, match=re.escape(error)):
            copier.run_copy(str(src), dst, data=data, defaults=True, quiet=True)


# --------------------------------------------------------------------------- time zones


def _zones_in_file() -> list[str]:
    return re.findall(r"^  ([^\s']+)$", TIMEZONES_FILE.read_text(encoding="utf-8"), re.M)


def _load_update_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_timezones", UPDATE_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tzdata_zones() -> set[str]:
    """zoneinfo.available_timezones() from the tzdata package alone, without the host's files."""
    saved = zoneinfo.TZPATH
    zoneinfo.reset_tzpath(to=())
    try:
        return zoneinfo.available_timezones()
    finally:
        zoneinfo.reset_tzpath(to=saved)


STALE = "includes/timezones.jinja is out of date: run .venv/bin/python scripts/update_timezones.py"


def test_timezone_list_equals_zoneinfo(tzdata_zones: set[str]) -> None:
    zones = _zones_in_file()
    assert len(zones) > 400
    assert zones == sorted(set(zones)), "the list must be sorted and without duplicates"
    assert set(zones) == tzdata_zones, STALE
    # Everything the macro accepts, Prefect (which checks available_timezones()) accepts too.
    assert set(zones) <= zoneinfo.available_timezones()


def test_timezone_file_is_what_the_script_writes() -> None:
    script = _load_update_script()
    expected = script.render(script.bundled_timezones())
    assert TIMEZONES_FILE.read_text(encoding="utf-8") == expected, STALE


def test_every_listed_timezone_is_accepted(tzdata_zones: set[str]) -> None:
    rejected = [zone for zone in sorted(tzdata_zones) if timezone_error(zone)]
    assert not rejected


VALID_ZONES = [
    "UTC",
    "Etc/UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Argentina/Buenos_Aires",
    "Asia/Kolkata",
    "Australia/Sydney",
    "Etc/GMT+5",
    "US/Eastern",  # a legacy link, still in tzdata and accepted by Prefect
    "GMT",
    "Zulu",
]

INVALID_ZONES = [
    "",
    " UTC",
    "UTC ",
    "utc",
    "europe/berlin",
    "Europe/Berlín",
    "Europe/Berlin\n",
    "Europe/Berlin Asia/Tokyo",
    "Europe/",
    "/UTC",
    "Europe",
    "America/New York",
    "Mars/Olympus",
    "GMT+2",
    "+02:00",
    "EST-5",
    "CEST",
    "posixrules",
]


@pytest.mark.parametrize("name", VALID_ZONES)
def test_valid_timezone_is_accepted(name: str) -> None:
    assert name in zoneinfo.available_timezones(), "table error"
    assert timezone_error(name) == ""


@pytest.mark.parametrize("name", INVALID_ZONES)
def test_invalid_timezone_is_rejected(name: str) -> None:
    assert name not in zoneinfo.available_timezones(), "table error"
    assert timezone_error(name) == TZ_MESSAGE.format(name)


def test_host_only_zone_files_are_rejected(tzdata_zones: set[str]) -> None:
    # Debian's /usr/share/zoneinfo/localtime symlink shows up in available_timezones() on
    # such hosts only; it is not an IANA name and the list deliberately leaves it out.
    assert "localtime" not in tzdata_zones
    assert timezone_error("localtime") == TZ_MESSAGE.format("localtime")


@pytest.mark.parametrize("value", [None, 0, ["UTC"]])
def test_non_string_timezone_is_rejected(value: object) -> None:
    assert timezone_error(value) == TZ_MESSAGE.format(value)


def test_timezone_message_is_exact() -> None:
    assert timezone_error("Europe/Paris ") == (
        "timezone: 'Europe/Paris ' is not an IANA time zone name. "
        "Use a name such as 'UTC', 'Europe/Berlin' or 'America/New_York'."
    )


# --------------------------------------------------------------------------- reserved names

RESERVED = ENV.from_string(
    "{% from 'includes/reserved_names.jinja' import RESERVED_PACKAGES, RESERVED_PROJECTS %}"
    "{{ RESERVED_PACKAGES }}|{{ RESERVED_PROJECTS }}"
)
DEPENDENCIES = (REPO / "includes" / "dependencies.jinja").read_text(encoding="utf-8")
# Import names of the distributions includes/dependencies.jinja installs, where they differ.
IMPORT_NAMES = {
    "pyyaml": "yaml",
    "google-cloud-secret-manager": "google",
    "azure-identity": "azure",
    "azure-keyvault-secrets": "azure",
    "pre-commit": "pre_commit",
}


def test_reserved_names_cover_every_dependency_and_the_standard_library() -> None:
    """A dependency added to includes/dependencies.jinja without rerunning
    scripts/update_reserved_names.py fails here."""
    packages, projects = (part.split() for part in RESERVED.render().split("|"))
    required = set(re.findall(r'"([a-z0-9-]+)(?:\[[a-z]+\])?[><=]', DEPENDENCIES))
    required |= {"prefect", "pytest", "ruff", "pre-commit"}
    assert required - set(projects) == set()
    imports = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in required}
    stdlib = {name for name in sys.stdlib_module_names if re.fullmatch(r"[a-z_][a-z0-9_]*", name)}
    assert (imports | stdlib | {"tests"}) - set(packages) == set()


def test_api_topology_validator_accepts_each_choice_and_names_the_allowed_ones() -> None:
    """copier refuses a value outside `choices` first; the macro also guards what copier.yml's
    choices and ops/topology.py's TOPOLOGIES must agree on."""
    validator = ENV.from_string(
        "{% from 'includes/validators.jinja' import api_topology_error %}"
        "{{ api_topology_error(x) }}"
    )
    questions = QUESTIONS
    assert sorted(questions["api_topology"]["choices"].values()) == sorted(
        ["shared", "per-environment"]
    )
    for value in questions["api_topology"]["choices"].values():
        assert validator.render(x=value) == ""
    assert validator.render(x="mesh") == (
        "api_topology: 'mesh' is not a topology. Use 'shared' (one Prefect API for every "
        "environment) or 'per-environment' (a server or Prefect Cloud workspace per environment)."
    )
    topology = REPO / "template" / "src" / "{{package_name}}" / "ops" / "topology.py.jinja"
    assert 'TOPOLOGIES = ("shared", "per-environment")' in topology.read_text(encoding="utf-8")
