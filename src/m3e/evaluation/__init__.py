"""Evaluation: the offline benchmark, C-MTEB and MTEB-zh through mteb, baselines and reports.

Tasks are mteb tasks (``m3e.evaluation.mteb_tasks``) built from the task files that ``m3e data build``
writes, so metrics and protocols are mteb's own. Models are m3e models wrapped as mteb encoders by
:func:`for_mteb` (``m3e.evaluation.mteb_adapter``; ``mteb.evaluate(for_mteb(model), tasks)``) or the
baselines of ``m3e.evaluation.baselines``. ``m3e.evaluation.runner`` runs models x tasks and
``m3e.evaluation.report`` writes the table, results JSON, markdown report and chart.

Nothing here is imported by ``import m3e``: mteb is heavy and only needed for evaluation (the adapter
imports it only when mteb asks a model for its metadata).
"""

from __future__ import annotations

from m3e.evaluation.mteb_adapter import MtebEncoder, for_mteb

__all__ = ["MtebEncoder", "for_mteb"]
