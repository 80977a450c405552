"""The Dockerfile builds from files that exist and installs the project the way README.md says.

No Docker engine is needed: the Dockerfile is read as text. The build itself (and its check that
Transformer Engine and apex import) runs wherever an image is built.
"""

import fnmatch
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dockerfile_instructions():
    """(INSTRUCTION, argument) pairs, with line continuations joined and comments dropped."""
    with open(os.path.join(REPO, "Dockerfile")) as fh:
        text = re.sub(r"\\\n", " ", fh.read())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copy_sources():
    sources = []
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def pip_install_commands(lines):
    return [m.group(0).strip() for line in lines
            for m in [re.search(r"pip install[^&;`#]*", line)] if m]


def test_base_image_is_an_ngc_pytorch_release():
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups()
                for word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest)
    base = [rest for word, rest in dockerfile_instructions() if word == "FROM"][0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base), base


def test_every_copied_path_exists_and_is_not_dockerignored():
    sources = copy_sources()
    assert "setup.py" in sources and "megatron_nitp" in sources
    with open(os.path.join(REPO, ".dockerignore")) as fh:
        ignored = [p.strip() for p in fh if p.strip() and not p.startswith("#")]
    for src in sources:
        assert glob.glob(os.path.join(REPO, src)), f"COPY {src}: no such file in the repository"
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is dockerignored"


def test_entry_points_the_slurm_scripts_run_are_in_the_image():
    sources = copy_sources()
    for entry in ("pretrain_gpt_nitp.py", "pretrain_moe_nitp.py"):
        assert entry in sources


def test_pip_install_line_is_the_readme_one():
    readme = os.path.join(REPO, "README.md")
    if not os.path.exists(readme):
        pytest.skip("README.md not written yet: its install line (`pip install -e .`) is what "
                    "the Dockerfile must match")
    with open(readme) as fh:
        readme_installs = set(pip_install_commands(fh))
    project_installs = {c for c in readme_installs if c.endswith(" .") or " -e ." in c}
    assert project_installs, "README.md has no `pip install ... .` line for the project"
    docker_installs = pip_install_commands(
        rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert len(docker_installs) == 1
    assert docker_installs[0] in project_installs, (docker_installs, project_installs)
