"""The package, configs, docs and build files stand on their own: nothing refers to files
outside the repository (the `../shared` folder, briefing notes by name)."""

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ["jaxface", "configs", "docs", "benchmarks", "launch", "pyproject.toml", "README.md"]
SUFFIXES = {".py", ".md", ".toml", ".txt", ".sh", ".sbatch", ".cfg", ".yaml", ".yml", ".json"}
FORBIDDEN = ("../shared", "METHODS.md", "PROTOCOLS.md", "DESIGN.md")
# The README may say where the tests look for real data (tests/conftest.py); nothing else.
ALLOWED = {("README.md", "../shared")}


def _files():
    for name in SCANNED:
        path = REPO / name
        if path.is_file():
            yield path
            continue
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.suffix in SUFFIXES and "__pycache__" not in f.parts:
                yield f


def test_scanned_folders_exist():
    for name in SCANNED:
        assert (REPO / name).exists(), name


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_no_reference_outside_the_repository(needle):
    hits = []
    for f in _files():
        rel = f.relative_to(REPO).as_posix()
        if (rel, needle) in ALLOWED:
            continue
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if needle in line:
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, f"{needle!r} found:\n" + "\n".join(hits)


def test_docs_cited_by_the_code_exist():
    for name in ("methods.md", "protocols.md"):
        assert (REPO / "docs" / name).is_file(), name


@pytest.mark.parametrize("needle", FORBIDDEN[1:])
def test_tests_cite_no_briefing_notes(needle):
    """Tests may look for ../shared/data (and skip without it); they cite no notes."""
    hits = [
        f"{f.name}:{i}"
        for f in sorted((REPO / "tests").glob("*.py"))
        if f.name != pathlib.Path(__file__).name
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if needle in line
    ]
    assert not hits, hits
