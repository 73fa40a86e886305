"""The README's Python example runs as printed, and its test command is the one CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    last = scope["trainer"].last_metrics
    assert last["step"] == 300 and {"loss", "rate", "distortion", "code_l2"} <= set(last)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = [b for b in blocks if "pytest" in b][0].strip()
    assert test_cmd in ci
    assert "torch==2.13.0" in test_cmd.split("pip install -e")[0]
