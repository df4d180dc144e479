"""The README's Python example runs and does what the README says it does."""
import contextlib
import io
import re

from conftest import REPO


def test_python_example_learns_the_string():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == "predicted 24/24 next characters"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    test_command = re.search(r"^(python -m pytest[^\n#]*?)\s*#", readme, re.M).group(1).strip()
    assert test_command in (REPO / ".ci" / "run").read_text()
