"""nbgrader for the course: ``solutions/`` holds the source notebooks (with solutions and hidden tests),
``exercises/`` the student release that ``nbgrader generate_assignment`` makes from them.

Instructor workflow (from the repository root):
    nbgrader generate_assignment a01 --force     # solutions/a01 -> exercises/a01
    # collect student notebooks into submitted/<student_id>/a01/a01.ipynb
    nbgrader autograde a01                       # -> autograded/, scores in gradebook.db
    nbgrader generate_feedback a01               # -> feedback/ (HTML per student)
    nbgrader export                              # -> grades.csv
"""
c = get_config()  # noqa: F821  (nbgrader injects get_config)

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.course_id = "peftlab"

# A runaway submission must not hang grading: every cell gets this many seconds, then the kernel is
# interrupted, the cell records the error and the rest of the notebook still runs and grades.
c.Execute.timeout = 120

# Autograding, nbgrader 0.9.6's pipeline with two of the course's preprocessors (peftlab/grading_preprocessors.py):
# - RestoreDeletedCells, in place of OverwriteCells: a test cell a student deleted is put back, with its hidden
#   tests, and graded (add_missing_cells), instead of becoming a manual-grading item;
# - FlagTampering, after the notebook ran and before its scores are saved: a submission whose own cells assign to
#   torch.*, math.*, numpy.*, builtins or peftlab.*, or rebind what a locked cell set up (REF, the imports),
#   gets an error output "GradingFlag: ..." in every autograded test cell (each scores 0; the feedback says why).
#   Overrule it for one student: nbgrader autograde aNN --student ID --force --FlagTampering.enabled=False
# - ExecuteTestsOutOfHistory, in place of nbgrader's Execute (configured as Execute): test cells run with
#   store_history=False, so their source, hidden tests included, is not in In / _ih while an answer runs;
# - ScoreByPassing, before the scores are saved: a test cell scores its points when it raises nothing and 0 when it
#   raises, whatever it displays (nbgrader would read a result the cell shows, e.g. one an answer publishes with
#   get_ipython().displayhook, as the cell's grade and never see the AssertionError after it).
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearOutput,  # noqa: E402
                                    DeduplicateIds, IgnorePattern, LimitOutput,
                                    OverwriteKernelspec, SaveAutoGrades)

c.OverwriteCells.add_missing_cells = True  # RestoreDeletedCells is an OverwriteCells: it reads this
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec,
                                      "peftlab.grading_preprocessors.RestoreDeletedCells", CheckCellMetadata]
c.Autograde.autograde_preprocessors = ["peftlab.grading_preprocessors.ExecuteTestsOutOfHistory", IgnorePattern,
                                       ClearMetadataPreprocessor, LimitOutput,
                                       "peftlab.grading_preprocessors.FlagTampering",
                                       "peftlab.grading_preprocessors.ScoreByPassing", SaveAutoGrades,
                                       AssignLatePenalties, CheckCellMetadata]
# Autograding sets NBGRADER_EXECUTION; notebooks use it to skip heavy demonstration cells.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
