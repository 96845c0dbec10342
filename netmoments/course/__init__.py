"""Course layer: graded assignments built on the book (nbgrader), see ``python -m netmoments.course --help``.

Optional: importing :mod:`netmoments` does not import this package; this package imports nbgrader only to
release the student versions, and nbformat and IPython only when it grades (:mod:`netmoments.course.judge`).
:mod:`netmoments.course.checks` (the test-case helper the notebooks use) needs only torch.
"""
from .grading import ASSIGNMENTS, grade_notebook, grade_submissions, release  # noqa: F401

__all__ = ["ASSIGNMENTS", "grade_notebook", "grade_submissions", "release"]
