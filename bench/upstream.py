"""UPSTREAM WORKAROUND (dagster 1.13.27, ``dagster/_utils/interrupts.py``), the one place for it in bench/.

Every in-process run (``dg.materialize``) ends in ``capture_interrupts``, which gives SIGTERM the handler
SIGINT has (``setup_interrupt_handlers``), dropping the benchmark's own. In a background job, where SIGINT
is ignored (``make bench &``, nohup), SIGTERM was then ignored too: on 3 Dec ``kill -TERM`` left a
``make bench`` running, floors and servers included. The benchmark's in-process runs go through
:func:`materialize`, which puts SIGTERM's handler back after the run. ``test_bench.py`` keeps the
reproduction; when it fails, Dagster fixed the bug and this module can go.
"""

from __future__ import annotations

import signal
import threading


def materialize(*args, **kwargs):
    """``dagster.materialize``, then SIGTERM's handler as it was before the run."""
    import dagster as dg

    if threading.current_thread() is not threading.main_thread():  # no handler to lose: Dagster leaves it
        return dg.materialize(*args, **kwargs)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return dg.materialize(*args, **kwargs)
    finally:
        signal.signal(signal.SIGTERM, handler)
