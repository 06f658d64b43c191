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

# A runaway submission must not hang grading: every cell gets this many seconds.
c.Execute.timeout = 120
# Autograding sets NBGRADER_EXECUTION; notebooks use it to skip heavy demonstration cells.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
