"""Stage II, planning: which widths meet the target.

- :mod:`~compresskit.plan.planner`: ``WidthPlan``, the density rules (``plan_widths``) and the target
  planner (``plan_for_target``);
- :mod:`~compresskit.plan.cost`: cost models (parameters, MACs) that price any widths before surgery;
- :mod:`~compresskit.plan.latency`: the measured per-layer latency table (a cost model);
- :mod:`~compresskit.plan.metric`: the registry of cost measures a target names (``register_metric``);
- :mod:`~compresskit.plan.importance`: importance criteria (``register_importance``);
- :mod:`~compresskit.plan.verify`: the verification loop (shrink, measure, correct the budget, replan).

Measurements come from :mod:`compresskit.measure`; the surgery a plan feeds is :mod:`compresskit.surgery`.
"""
