"""The documentation is checked like code: the configuration reference names every variable
the settings read, every relative link leads somewhere, and commands are shown the way they
are run (`scripts/manage <command>`, `.venv/bin/python -m <module>`).

No database and no Django: these read files only.
"""

import re
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
TESTING = DOCS / "testing.md"

# What the settings read: the settings modules, the Celery app (beat's checkpoint interval) and,
# when there is one, a module of environment helpers.
SETTINGS_SOURCES = [
    *sorted((REPO / "config" / "settings").glob("*.py")),
    REPO / "config" / "celery.py",
    REPO / "config" / "env.py",
]
# The settings module of the test suite: a variable read only here is meant for the suite
# (MARKETPLACE_TEST_*) and documented in docs/testing.md instead.
TEST_SETTINGS = REPO / "config" / "settings" / "test.py"
# The shell scripts and the Procfile read a few variables of their own (`${MARKETPLACE_PORT}`).
SCRIPT_SOURCES = [
    *sorted(p for p in (REPO / "scripts").glob("*") if p.is_file()),
    REPO / "Procfile",
]
TEST_SCRIPT = REPO / "scripts" / "test"

SETTING_READ = re.compile(r"""["'](MARKETPLACE_[A-Z0-9_]+|MAINTENANCE_MODE)["']""")
SCRIPT_READ = re.compile(r"\$\{?(MARKETPLACE_[A-Z0-9_]+)")
DOCUMENTED = re.compile(
    r"(?<![A-Z0-9_])(MARKETPLACE_[A-Z0-9_]*[A-Z0-9]|MAINTENANCE_MODE)(?![A-Z0-9_])"
)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _reads(sources: list[Path], pattern: re.Pattern[str]) -> dict[str, set[Path]]:
    """Variable name -> the files that read it."""
    found: dict[str, set[Path]] = {}
    for source in sources:
        if source.exists():
            for name in pattern.findall(_read(source)):
                found.setdefault(name, set()).add(source)
    return found


def _all_reads() -> dict[str, set[Path]]:
    found = _reads(SETTINGS_SOURCES, SETTING_READ)
    for name, sources in _reads(SCRIPT_SOURCES, SCRIPT_READ).items():
        found.setdefault(name, set()).update(sources)
    return found


def _suite_only(name: str, sources: set[Path]) -> bool:
    return name.startswith("MARKETPLACE_TEST_") or sources <= {TEST_SETTINGS, TEST_SCRIPT}


def _mentioned(path: Path) -> set[str]:
    return set(DOCUMENTED.findall(_read(path)))


def _relative(paths: set[Path]) -> str:
    return ", ".join(sorted(str(p.relative_to(REPO)) for p in paths))


def test_the_settings_read_variables_at_all() -> None:
    # A guard for the tests below: a pattern that finds nothing would pass them vacuously.
    settings_reads = _reads(SETTINGS_SOURCES, SETTING_READ)
    assert {"MARKETPLACE_SERVICE_ENV", "MARKETPLACE_DATABASE_URL", "MAINTENANCE_MODE"} <= set(
        settings_reads
    )


def test_every_variable_the_settings_read_is_in_the_configuration_reference() -> None:
    documented = _mentioned(CONFIGURATION)
    missing = {
        name: sources
        for name, sources in _all_reads().items()
        if not _suite_only(name, sources) and name not in documented
    }
    assert not missing, "docs/configuration.md does not name: " + "; ".join(
        f"{name} (read in {_relative(sources)})" for name, sources in sorted(missing.items())
    )


def test_every_variable_only_the_test_suite_reads_is_in_the_testing_page() -> None:
    documented = _mentioned(TESTING)
    missing = {
        name: sources
        for name, sources in _all_reads().items()
        if _suite_only(name, sources) and name not in documented
    }
    assert not missing, "docs/testing.md does not name: " + "; ".join(
        f"{name} (read in {_relative(sources)})" for name, sources in sorted(missing.items())
    )


def test_the_configuration_reference_names_no_variable_nothing_reads() -> None:
    read = set(_all_reads())
    stale = sorted(_mentioned(CONFIGURATION) - read)
    assert not stale, f"docs/configuration.md names variables nothing reads: {', '.join(stale)}"


# --- Links -------------------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) or [text](target "title"); images too.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (where `#` starts no heading and links are text)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text as rendered (code spans and links become
    their text), lowercased, every character that is not a letter, digit, `_`, `-` or space
    dropped, and each space made a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*)", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    kept = []
    for char in text.lower():
        category = unicodedata.category(char)
        if char in "-_ " or category[0] in "LN" or category in ("Mn", "Mc"):
            kept.append("-" if char == " " else char)
    return "".join(kept)


def anchors(path: Path) -> set[str]:
    """Every anchor the file's headings produce, with GitHub's -1, -2 ... for repeats."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in _prose_lines(_read(path)):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in _prose_lines(_read(path)):
        targets.extend(LINK.findall(INLINE_CODE.sub("", line)))
    return targets


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path.resolve()
        if destination != REPO and REPO not in destination.parents:
            problems.append(f"{target}: leads out of the repository")
        elif not destination.exists():
            problems.append(f"{target}: {file_part} does not exist")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{target}: no heading in {destination.name} makes #{anchor}")
    return problems


def test_the_slug_rule_is_githubs() -> None:
    assert github_slug("Checkout: `POST /api/v1/checkout`") == "checkout-post-apiv1checkout"
    assert github_slug("The package format (`licensing/envelope.py`)") == (
        "the-package-format-licensingenvelopepy"
    )
    assert github_slug("Orders: `GET /api/v1/orders`, `GET /api/v1/orders/{id}`") == (
        "orders-get-apiv1orders-get-apiv1ordersid"
    )
    assert github_slug("Database, cache and broker") == "database-cache-and-broker"
    assert github_slug("A — B") == "a--b"


def test_the_docs_are_there() -> None:
    names = {str(p.relative_to(REPO)) for p in markdown_files()}
    assert {
        "README.md",
        "docs/README.md",
        "docs/configuration.md",
        "docs/testing.md",
        "docs/formats/package-v1.md",
        "docs/formats/audit-chain-v1.md",
    } <= names


def test_every_relative_link_leads_to_a_file_and_heading_that_exist() -> None:
    problems = {
        str(path.relative_to(REPO)): broken
        for path in markdown_files()
        if (broken := broken_links(path))
    }
    assert not problems, "broken links: " + "; ".join(
        f"{name}: {', '.join(found)}" for name, found in sorted(problems.items())
    )


# --- How commands are shown ------------------------------------------------------------------

# `python manage.py x`, `.venv/bin/python manage.py x`, or a bare `manage.py x` at the start of
# a command: management commands are shown as `scripts/manage x`.
MANAGE_PY = re.compile(
    r"(python[0-9.]*\s+(\./)?manage\.py\b|(^|[`$]\s*|\s{2,})(\./)?manage\.py\s+\w)"
)
# A module run as a tool with some other Python than the project's: `python -m x`.
BARE_PYTHON_M = re.compile(r"(?<![/\w.-])python[0-9.]*\s+-m\s")


def test_commands_are_shown_as_they_are_run() -> None:
    problems = []
    for path in markdown_files():
        for number, line in enumerate(_read(path).splitlines(), start=1):
            if MANAGE_PY.search(line) or BARE_PYTHON_M.search(line):
                problems.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not problems, (
        "show management commands as `scripts/manage <command>` and modules as "
        "`.venv/bin/python -m <module>`: " + "; ".join(problems)
    )
