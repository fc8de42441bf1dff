"""The four ways a request combines the LM with its datastore: the one list of modes.

It has no dependencies, so the command line and the server's settings and protocol can
name the modes without loading the model code.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """How a request combines the LM with its datastore."""

    PARAMETRIC = "parametric"  # the LM alone
    KNNLM = "knnlm"  # the LM interpolated with the kNN vote of the datastore's entries
    RIC = "ric"  # BM25 passages of the datastore prepended to the context
    KNNLM_RIC = "knnlm+ric"  # both

    @property
    def uses_knn(self) -> bool:
        return self in (Mode.KNNLM, Mode.KNNLM_RIC)

    @property
    def uses_ric(self) -> bool:
        return self in (Mode.RIC, Mode.KNNLM_RIC)


MODES: tuple[str, ...] = tuple(m.value for m in Mode)
