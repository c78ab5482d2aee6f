"""Reading /proc for the benchmarks' CPU accounting, shared by their runners."""

from pathlib import Path


def backend_database(entry: Path) -> str:
    """The database of a PostgreSQL backend, from its title (`postgres: 15/main: <user>
    <database> <client> <state>`); empty for the server's own processes."""
    try:
        title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    parts = title.split(": ", 2)
    words = parts[2].split() if len(parts) == 3 else []
    # A backend's title has a client address ("127.0.0.1(5432)", "[local]"); a server
    # process's ("walwriter", "checkpointer") has none.
    if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
        return words[1]
    return ""
