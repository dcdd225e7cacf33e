# shellcheck shell=bash
# Sourced by scripts/demo and scripts/test: choose the Python to install sst-vault into.
#
# Stock Debian 12 and Ubuntu 24.04 mark their system Python "externally managed" (PEP 668): pip
# refuses to install into it. So:
#   - a virtual environment's Python (PYTHON, or python3 of an activated venv) is used as it is;
#   - an externally managed Python gets a virtual environment, `.venv` in this checkout, reused
#     while it still runs and has the same Python version (otherwise made again); when
#     `python3 -m venv` fails because Debian's `python3-venv` is missing, that is installed with
#     apt-get (through sudo when not root);
#   - any other Python (pyenv, a self-built one) is installed into directly, as before.
# Every installation is printed as it happens (`==> …`).
#
# Needs: $root (the checkout). Defines say, warn, install_apt; choose_python sets $python.

venv_dir="$root/.venv"

say() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }

install_apt() {  # install_apt PACKAGE…: apt-get install, through sudo when not root
  local -a sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { warn "not root and no sudo: cannot install $*"; return 1; }
    sudo=(sudo)
  fi
  say "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

python_fact() {  # python_fact PYTHON CODE -> prints CODE's output, fails when PYTHON cannot run
  "$1" -c "$2" 2>/dev/null
}

externally_managed() {  # true for a non-venv Python whose stdlib carries EXTERNALLY-MANAGED
  python_fact "$1" '
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if not in_venv and os.path.exists(marker) else 1)'
}

venv_is_current() {  # .venv exists, runs, and was made from a Python of the same version
  [[ -x "$venv_dir/bin/python" ]] || return 1
  local want have
  want="$(python_fact "$1" 'import sys; print(sys.version_info[:2])')" || return 1
  have="$(python_fact "$venv_dir/bin/python" 'import sys; print(sys.version_info[:2])')" || return 1
  [[ "$want" == "$have" ]] && python_fact "$venv_dir/bin/python" 'import pip' >/dev/null
}

make_venv() {  # make_venv PYTHON: a fresh .venv, installing python3-venv once if needed
  local base="$1" log
  log="$(mktemp)"
  say "$base -m venv --clear $venv_dir"
  if "$base" -m venv --clear "$venv_dir" >"$log" 2>&1; then
    rm -f "$log"
    return 0
  fi
  # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) separately: python3-venv, or the
  # versioned python3.X-venv it depends on.
  if grep -qi ensurepip "$log" && command -v apt-get >/dev/null 2>&1; then
    local version
    version="$(python_fact "$base" 'import sys; print("%d.%d" % sys.version_info[:2])')"
    rm -rf "$venv_dir"
    if install_apt python3-venv "python$version-venv"; then
      say "$base -m venv --clear $venv_dir"
      if "$base" -m venv --clear "$venv_dir" >"$log" 2>&1; then
        rm -f "$log"
        return 0
      fi
    fi
  fi
  cat "$log" >&2
  rm -f "$log"
  rm -rf "$venv_dir"
  echo "error: could not create a virtual environment with $base -m venv" \
    "(on Debian/Ubuntu: apt-get install python3-venv)" >&2
  return 1
}

choose_python() {  # choose_python PYTHON: sets python to the interpreter to install into
  local base="$1"
  if ! python_fact "$base" 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $base is not Python 3.11 or newer (set PYTHON=/path/to/python3.11+)" >&2
    return 1
  fi
  if externally_managed "$base"; then
    if venv_is_current "$base"; then
      say "using the virtual environment $venv_dir ($base is externally managed, PEP 668)"
    else
      say "$base is externally managed (PEP 668): making a virtual environment in $venv_dir"
      make_venv "$base" || return 1
    fi
    python="$venv_dir/bin/python"
  else
    python="$base"
  fi
}

pip_install() {  # pip_install ARGS…: pip install into $python, printing what it installed
  local log status=0
  log="$(mktemp)"
  say "$python -m pip install $*"
  "$python" -m pip install --disable-pip-version-check --progress-bar off "$@" >"$log" 2>&1 ||
    status=$?
  if ((status)); then
    cat "$log" >&2
  else
    grep -E '^Successfully installed' "$log" | sed 's/^/    /' >&2 ||
      printf '    (nothing new: every requirement was installed already)\n' >&2
  fi
  rm -f "$log"
  return "$status"
}
