"""Scoring reconstructions: the frozen evaluator classifier (train / cache / load) and
the metrics of Section V-B (evaluator accuracy, PSNR, SSIM), with trivial baselines (core;
may import ``psfl.utils``, ``psfl.channel``, ``psfl.models`` and ``psfl.data``)."""
from psfl.evaluate.classifiers import (
    CLASSIFIERS, ClassifierSpec, CompactCNN, FrozenClassifier, classifier_accuracy, create_classifier, freeze,
)
from psfl.evaluate.evaluator import (
    EvaluatorInfo, cache_path, dataset_fingerprint, default_cache_dir, fit_classifier, list_evaluators,
    load_classifier_checkpoint, load_evaluator, train_evaluator,
)
from psfl.evaluate.metrics import evaluate_reconstruction, to_unit_range, using_channel

__all__ = [
    "CLASSIFIERS", "ClassifierSpec", "CompactCNN", "EvaluatorInfo", "FrozenClassifier", "cache_path",
    "classifier_accuracy", "create_classifier", "dataset_fingerprint", "default_cache_dir",
    "evaluate_reconstruction", "fit_classifier", "freeze", "list_evaluators", "load_classifier_checkpoint",
    "load_evaluator", "to_unit_range", "train_evaluator", "using_channel",
]
