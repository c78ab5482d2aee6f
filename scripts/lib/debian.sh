# Sourced by scripts/demo and scripts/test: installs a Debian package when a program it gives is
# missing (as root, or through sudo).

# debian_install PROGRAM PACKAGE WHY: installs PACKAGE unless PROGRAM is executable. Without
# apt-get (not Debian), says what is missing and carries on: what needs it then says so too.
debian_install() {
    if [ -x "$1" ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "$1 is missing and this is not Debian: install $2 for $3." >&2
        return 0
    fi
    echo "Installing Debian's $2 for $3…" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}
