"""Quality metrics with classifiers pyganx trains itself (no downloaded weights):
domain and digit classifiers, KID on their features, and ``evaluate_run`` behind
``pyganx eval``."""
from .classifier import ConvClassifier, TrainedClassifier, cache_dir, cached_classifier, train_classifier
from .kid import kid, polynomial_mmd2

__all__ = ["ConvClassifier", "TrainedClassifier", "cache_dir", "cached_classifier", "evaluate_run",
           "kid", "polynomial_mmd2", "train_classifier"]


def evaluate_run(*args, **kwargs):
    """See :func:`pyganx.metrics.evaluate.evaluate_run` (imported lazily: it needs the engine)."""
    from .evaluate import evaluate_run as run
    return run(*args, **kwargs)
