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
``attnpool``     ``mlp``       MLPClassifier (a network trained by gradient descent)  not used
``lda``          ``lda``       LinearDiscriminantAnalysis                             used
``knn``          ``knn``       KNeighborsClassifier                                   used
``rf``           ``rf``        RandomForestClassifier                                 used
``mlp``          ``mlp``       MLPClassifier                                          not used
anything else    ``pooled``    all six learners together                              used
===============  ============  =====================================================  ========

The training curve of fmprobe's kNN probes (``knn<k>``) is a leave-one-out score, an estimate
of the test score rather than the resubstitution score LCDB records, so it is left out there.
The mlp family (``mlp``, ``attnpool``) does not read it either: on the development curves
(5-fold cross-validation by data set) the forecast of the MLP curves is worse with it than
without it at both fit budgets (MAE / pow3 0.85 against 0.74 at n <= 64, 0.80 against 0.79 at
n <= 50), the rule being to drop the training curve for a family where it is worse at both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROBE_FAMILIES = ("logreg", "lda", "knn", "rf", "mlp", "ridge")
POOLED = "pooled"

_EXACT = {
    "logreg": ("logreg", True),
    "ridge": ("ridge", True),
    "attnpool": ("mlp", False),
    "lda": ("lda", True),
    "knn": ("knn", True),
    "rf": ("rf", True),
    "mlp": ("mlp", False),
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
