"""What the registry records of a model (a document of the ``models`` collection).

Its own module so that :mod:`ml.predictor` (a loaded model carries its record) and
:mod:`ml.registry` (which builds loaded models) both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

#: Statuses of a model document (the deployed pointer is the truth: see ``ml.registry``).
#: ``retired``: it was deployed and another version replaced it (a later deploy, a promote
#: or a rollback); it may be deployed again. ``archived``: set aside by hand or on purpose,
#: kept for the record, never served by default nor deployed again.
STATUSES = ("candidate", "deployed", "retired", "archived")


@dataclass
class ModelRecord:
    """One registered model (a document of the ``models`` collection).

    Attributes:
        metrics: measured on the held-out split: val_accuracy, precision, recall, f1,
            baselines {majority_class, logistic_regression}, and training details.
        feature_spec: :meth:`ml.features.FeatureSpec.to_dict` (lookback, features, scaler).
    """

    model_id: str
    model_type: str
    symbol: str
    timeframe: str
    version: int
    file_path: str  # the file's name in the store (GridFS), not a path of one host
    metrics: dict[str, Any]
    status: str
    created_by: str
    created_at: datetime
    feature_spec: dict[str, Any]
    horizon_bars: int
    training_task_id: str | None = None
    deployed_at: datetime | None = None
    deployed_by: str | None = None
    archived_at: datetime | None = None
    archived_by: str | None = None
    retired_at: datetime | None = None
    retired_by: str | None = None
    #: the model of the key that was deployed when this one was deployed (where a rollback
    #: from this one goes back to); None for the key's first deployed model
    replaced_model_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        """Return the MongoDB document."""
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ModelRecord:
        """Build a record from a ``models`` document (``_id`` and unknown keys ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in known})
