"""Classification accuracy as an `evaluate` metric module, shipped so it loads by path without the Hub."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Fraction of predicted class ids equal to the reference class ids."

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids, one int per sample.
    references: true class ids, one int per sample.
Returns:
    accuracy: fraction of samples whose prediction equals the reference, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if len(predictions) == 0:
            raise ValueError("accuracy needs at least one prediction, got none")
        return {"accuracy": float(np.mean(predictions == references))}
