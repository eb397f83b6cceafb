# Shared by .ci/run and .ci/matrix (sourced from the checkout's root): where things live, the log line, the
# per-version summary line, and the host's pip pointed at the shared wheelhouse.
SRC=$PWD
CACHE=${SEG_UNCERTAINTY_CACHE:-/var/cache/seg_uncertainty}
PIP_CACHE=$CACHE/pip
LOGS=$SRC/build/matrix
mkdir -p "$LOGS"

log() { printf '[matrix %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Counts from pytest's JUnit XML: "passed failed skipped" (errors count as failed).
junit_counts() {
  /usr/bin/python3 - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0")
    raise SystemExit
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(total - failed - skipped, failed, skipped)
EOF
}

# summary NAME JUNIT STATUS SECONDS: print and record one line; fails the matrix on failure or no test.
overall=0
summary() {
  local name=$1 junit=$2 status=$3 seconds=$4 passed failed skipped
  read -r passed failed skipped < <(junit_counts "$junit")
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi   # set-up failed before pytest ran
  if [ "$passed" -eq 0 ] || [ "$failed" -ne 0 ]; then overall=1; fi
  printf '%s: %s passed, %s failed, %s skipped, %s s\n' "$name" "$passed" "$failed" "$skipped" "$seconds" |
    tee -a "$LOGS/summary.txt"
}

# host_name: the host's summary name, "QGIS <version> (host, Python <x.y>)".
host_name() {
  printf 'QGIS %s (host, Python %s)' "$(dpkg-query -W -f='${Version}' qgis 2>/dev/null || echo '?')" \
    "$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
}

# with_wheelhouse COMMAND...: run COMMAND (on the host, in this checkout) with pip installing only from the
# wheelhouse that the Debian roots share, filled first by `pip download` (which skips the wheels it holds; one
# download at a time, as the suites run side by side). The venv is made first, from the system Python.
with_wheelhouse() {
  mkdir -p "$PIP_CACHE/wheels" 2>/dev/null || { PIP_CACHE=$SRC/build/pip; mkdir -p "$PIP_CACHE/wheels"; }
  make build/constraints.txt || return
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv || return
  flock "$PIP_CACHE/wheels.lock" .venv/bin/python -m pip download -q --disable-pip-version-check \
    -d "$PIP_CACHE/wheels" -r requirements.txt -r requirements-dev.txt -c build/constraints.txt || return
  PIP_FIND_LINKS="$PIP_CACHE/wheels" PIP_NO_INDEX=1 "$@"
}
