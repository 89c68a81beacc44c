"""The automatic choice of backend: ``backend="auto"``, autotuning and ``explain``.

=================  ==============================================================================
module             what
=================  ==============================================================================
``choice``         the rules :func:`choose` applies, eligibility, the tuner's measurement
``cost``           estimated seconds of a backend on a problem, from its ``cost_terms``
``constants``      the constants of those estimates: fitted on this machine, or shipped and
                   scaled to its speeds
``probe``          measuring those speeds (once per machine, the first time auto needs them)
``timing``         the one timing rule of the tuner and of ``fastconv bench``
``tuning_cache``   ``autotune.json``: the measured winners, kept across processes
``explain``        the choice shown as a table
``calibrate``      fitting the constants, and the ``fastconv tune`` command
=================  ==============================================================================

Examples
--------
>>> import fastconv
>>> report = fastconv.explain((1, 1, 64, 64), (1, 1, 3, 3), padding="same")
>>> report.choice in [row.name for row in report.rows if row.supported]
True
"""

from fastconv.auto.choice import autotune, choose, clear_cache, kernel_rank
from fastconv.auto.constants import rerun_probe
from fastconv.auto.explain import ExplainRow, Explanation, explain

__all__ = ["autotune", "choose", "clear_cache", "explain", "ExplainRow", "Explanation", "kernel_rank", "rerun_probe"]
