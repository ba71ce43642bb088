"""Retrieval's branch of the one exception tree (`slmflow.errors`).

    SlmflowError
    └── RetrievalError                 anything about an index, its embedder or its store
        ├── IngestError                a file that cannot be read as text (binary, unreadable, bad PDF)
        ├── DuplicateIdError           two documents with one id in a batch, or an id already indexed
        ├── DimensionMismatchError     the embedder's vectors do not fit the store's dimension
        └── StoreUnavailableError      the vector server is down or refuses the request

Every failure leaves the index as it was before the call: a batch is embedded in full before
anything is written, and the catalog commits in one SQLite transaction.
"""

from __future__ import annotations

from ..errors import SlmflowError

__all__ = ["RetrievalError", "IngestError", "DuplicateIdError", "DimensionMismatchError",
           "StoreUnavailableError"]


class RetrievalError(SlmflowError):
    """An index, its embedder or its vector store failed."""


class IngestError(RetrievalError):
    """A document cannot be read as text: binary, unreadable, empty or a broken PDF."""


class DuplicateIdError(RetrievalError):
    """A document id occurs twice in a batch, or is already in the index."""


class DimensionMismatchError(RetrievalError):
    """The embedder's dimension differs from the dimension the index was built with."""


class StoreUnavailableError(RetrievalError):
    """The vector store's server cannot be reached or failed a request."""
