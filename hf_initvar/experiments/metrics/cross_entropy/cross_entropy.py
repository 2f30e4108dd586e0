"""Mean cross-entropy of class logits as an `evaluate` metric module, shipped so it loads by path."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Mean negative log-likelihood of the reference classes under softmax(logits), in nats. "
    "Non-finite logits give a non-finite loss (nan or inf), never a finite stand-in."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: one row of class logits (floats) per sample.
    references: true class ids, one int per sample.
Returns:
    cross_entropy: mean of -log softmax(logits)[reference] over samples, in nats.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CrossEntropy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        logits = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.int64)
        if logits.ndim != 2 or len(logits) != len(references):
            raise ValueError(
                f"cross_entropy needs logits of shape (samples, classes) and one reference per sample; "
                f"got logits {logits.shape} and {len(references)} references"
            )
        # log-sum-exp with the row max subtracted, so large finite logits do not overflow.
        with np.errstate(invalid="ignore", over="ignore"):
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_normalizer = np.log(np.exp(shifted).sum(axis=1))
            log_likelihood = shifted[np.arange(len(references)), references] - log_normalizer
        return {"cross_entropy": float(-log_likelihood.mean())}
