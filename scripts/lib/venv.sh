# Sourced by scripts/demo, scripts/test and scripts/manage, from the project folder: the one
# place that makes the virtual environment and installs the platform into it.

# venv_install REQUIREMENTS: makes .venv with Python 3.11 if it is missing, then installs the
# requirements file into it. Progress goes to stderr, so that a caller capturing a command's
# output (token=$(scripts/manage issue_api_token …)) gets only that output.
venv_install() {
    if [ -x .venv/bin/python ]; then
        echo "Checking the packages in .venv…" >&2
    else
        python=$(command -v python3.11 || command -v python3 || true)
        if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "The platform needs Python 3.11 (python3.11 or python3 on PATH); found ${python:-none}." >&2
            exit 1
        fi
        echo "Installing the platform into .venv (first run: a minute or two)…" >&2
        "$python" -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$1"
}
