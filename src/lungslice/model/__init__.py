"""Slice classifiers on cached features, patient-grouped CV, study aggregation, metrics.

Modules: :mod:`~lungslice.model.heads` (logistic / MLP heads),
:mod:`~lungslice.model.cv` (patient folds), :mod:`~lungslice.model.aggregate`
(candidates, study scores, recommendations), :mod:`~lungslice.model.metrics`
(slice, nodule and study figures with bootstrap CIs), :mod:`~lungslice.model.bundle`
(the saved model), :mod:`~lungslice.model.dataset` (features joined with labels),
:mod:`~lungslice.model.evaluate` (the cross-validated report).
"""
