"""``reliq chaos``: a fault-injection run that proves no accepted task is lost.

See :func:`reliq.chaos.run.run_chaos`. The task types workers serve during a run live
in :mod:`reliq.chaos.tasks` (imported by the workers with ``--app``).
"""
