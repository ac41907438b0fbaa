# Sourced by every role's start script: run from platform/ with the repo on the path.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export PYTHONPATH="$repo/platform:$repo${PYTHONPATH:+:$PYTHONPATH}"
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-switchyard.settings.base}"
cd "$repo/platform"
# A checkout's virtualenv (make run, tests) comes first; the image has its own on PATH.
if [ -x "$repo/.venv/bin/celery" ]; then export PATH="$repo/.venv/bin:$PATH"; fi
