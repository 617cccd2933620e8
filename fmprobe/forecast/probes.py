"""Which calibrated meta-model a curve gets: the probe that made it, mapped to a family.

Learning curves of different learners have different shapes, and a sweep knows its probe, so
the forecast has one model per probe family, calibrated on the LCDB curves of one scikit-learn
learner each, plus a pooled model for every other name:

===============  ============  =====================================================  ========
probe name       family        calibrated on (LCDB learner)                           training
                                                                                      curve
===============  ============  =====================================================  ========
``logreg``       ``logreg``    LogisticRegression (fmprobe's logreg: same objective)  used
``ridge``        ``ridge``     RidgeClassifier (fmprobe's ridge: the same estimator)  used
``knn<k>``       ``knn``       KNeighborsClassifier (k = 5)                           not used
``attnpool``     ``mlp``       MLPClassifier (a network trained by gradient descent)  used
``lda``          ``lda``       LinearDiscriminantAnalysis                             used
``knn``          ``knn``       KNeighborsClassifier                                   used
``rf``           ``rf``        RandomForestClassifier                                 used
``mlp``          ``mlp``       MLPClassifier                                          used
anything else    ``pooled``    all six learners together                              used
===============  ============  =====================================================  ========

The training curve of fmprobe's kNN probes (``knn<k>``) is a leave-one-out score, an estimate
of the test score rather than the resubstitution score LCDB records, so it is left out there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROBE_FAMILIES = ("logreg", "lda", "knn", "rf", "mlp", "ridge")
POOLED = "pooled"

_EXACT = {
    "logreg": ("logreg", True),
    "ridge": ("ridge", True),
    "attnpool": ("mlp", True),
    "lda": ("lda", True),
    "knn": ("knn", True),
    "rf": ("rf", True),
    "mlp": ("mlp", True),
}
_KNN_K = re.compile(r"knn\d+")


@dataclass(frozen=True)
class ProbeFamily:
    """The calibrated family of a probe name.

    Attributes
    ----------
    family : str
        One of ``PROBE_FAMILIES``, or ``"pooled"`` for a name that is not known.
    known : bool
        Whether the name is a known probe (False: the pooled model is used).
    uses_train : bool
        Whether the probe's training-set metric is the kind the family was calibrated on.
    """

    family: str
    known: bool
    uses_train: bool


def probe_family(name: str | None) -> ProbeFamily:
    """The family of probe ``name`` (case-insensitive); an empty or unknown name is pooled.

    Examples
    --------
    >>> probe_family("knn20")
    ProbeFamily(family='knn', known=True, uses_train=False)
    >>> probe_family("svm").family
    'pooled'
    """
    key = (name or "").strip().lower()
    if key in _EXACT:
        fam, train = _EXACT[key]
        return ProbeFamily(family=fam, known=True, uses_train=train)
    if _KNN_K.fullmatch(key):
        return ProbeFamily(family="knn", known=True, uses_train=False)
    return ProbeFamily(family=POOLED, known=False, uses_train=True)
