"""The code location the fault-injection acceptance tests' daemon loads: the product's definitions,
built from the environment like ``backfill_platform.definitions``, with ``write_hooks`` bound to the
test-only :class:`~backfill_platform_tests.faults.FaultInjector`.

``BACKFILL_TEST_FAULTS`` is the fault spec and ``BACKFILL_TEST_FAULT_STATE_DIR`` the folder of the
attempt counters (tests only: the product never reads them).
"""

import os

from backfill_platform.definitions import build_defs
from backfill_platform.resources.write_hooks import WRITE_HOOKS_KEY
from backfill_platform.settings import load_settings
from backfill_platform_tests.faults import FaultInjector

FAULTS_VAR = "BACKFILL_TEST_FAULTS"
FAULT_STATE_DIR_VAR = "BACKFILL_TEST_FAULT_STATE_DIR"


def workspace_yaml(folder) -> str:
    """Write a workspace.yaml that loads this module (from the repository root); return its path."""
    from backfill_platform.settings import PROJECT_ROOT

    path = os.path.join(str(folder), "fault_workspace.yaml")
    with open(path, "w") as out:
        out.write(
            "load_from:\n"
            "  - python_module:\n"
            "      module_name: backfill_platform_tests.fault_location\n"
            "      location_name: backfill_platform\n"
            f"      working_directory: {PROJECT_ROOT}\n"
        )
    return path


defs = build_defs(
    load_settings(),
    resources={
        WRITE_HOOKS_KEY: FaultInjector(
            spec=os.environ.get(FAULTS_VAR, ""), state_dir=os.environ.get(FAULT_STATE_DIR_VAR, "/nonexistent")
        )
    },
)
