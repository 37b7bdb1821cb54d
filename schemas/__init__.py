"""The contracts every stage relies on, in one place and tied to no transport.

- :mod:`schemas.records`: the message records (raw document, scored document, dead letter, alert, label,
  model version) as frozen pydantic models, versioned by ``SCHEMA_VERSION``.
- :mod:`schemas.jsonschema`: JSON Schema exported from those records (``riskstream schemas export``).
- :mod:`schemas.es`: the Elasticsearch composable index templates, aliases and index naming.
- :mod:`schemas.db`: the SQL store (SQLAlchemy 2 models) and its Alembic migrations in ``schemas/migrations``.

Stages import from here and never from each other.
"""

from schemas.records import (
    CHANNELS,
    SCHEMA_VERSION,
    Alert,
    Channel,
    DeadLetter,
    Label,
    ModelVersionRecord,
    Prediction,
    RawDocument,
    ScoredDocument,
)

__all__ = [
    "CHANNELS",
    "SCHEMA_VERSION",
    "Alert",
    "Channel",
    "DeadLetter",
    "Label",
    "ModelVersionRecord",
    "Prediction",
    "RawDocument",
    "ScoredDocument",
]
