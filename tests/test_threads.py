"""The engine asks OpenMP to sleep at barriers (OMP_WAIT_POLICY=PASSIVE) unless the user chose a policy."""

import os
import subprocess
import sys

from conftest import PLUGIN_DIR

PROBE = "import os, seg_uncertainty.engine, torch; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy_after_import(**env):
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), environ.get("PYTHONPATH", "")])
    environ.update(env)
    run = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=300,
                         check=True)
    return run.stdout.strip().splitlines()[-1]


def test_engine_sets_passive_wait_policy_by_default():
    assert _policy_after_import() == "PASSIVE"


def test_engine_keeps_the_users_policy_and_the_opt_out():
    assert _policy_after_import(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert _policy_after_import(SEG_UNCERTAINTY_THREADS="torch") == "None"
