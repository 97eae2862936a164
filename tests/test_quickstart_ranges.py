"""The quickstart's numbers on the tiny variants lie in the ranges docs/results states.

The ranges are read from ``docs/results/quickstart_spread.md`` (its last table), where
they are derived from runs under three XLA CPU targets; this test runs the quickstart's
own code path (``quickstart.run``) on the attributes and recognition ``tiny`` variants.
"""

import json
import pathlib
import re

import pytest

from jaxface import quickstart

REPO = pathlib.Path(__file__).resolve().parents[1]
SPREAD = REPO / "docs" / "results" / "quickstart_spread.md"
ROW = re.compile(
    r"^\| (?P<variant>\w+\.py:\w+) \| (?P<metric>[\w/]+) \|.*\| "
    r"(?P<lo>[0-9.]+)–(?P<hi>[0-9.]+) \|$"
)


def stated_ranges() -> dict[tuple[str, str], tuple[float, float]]:
    ranges = {}
    for line in SPREAD.read_text().splitlines():
        m = ROW.match(line)
        if m:
            ranges[(m["variant"], m["metric"])] = (float(m["lo"]), float(m["hi"]))
    return ranges


def test_the_spread_document_states_a_range_per_tiny_number():
    ranges = stated_ranges()
    assert {v for v, _ in ranges} == {"lmle.py:tiny", "dream.py:tiny"}
    assert len(ranges) == 6
    assert all(lo <= hi for lo, hi in ranges.values())


def test_tiny_quickstart_numbers_lie_in_the_stated_ranges(tmp_path, monkeypatch):
    ranges = stated_ranges()
    entries = []
    for variant in ("lmle.py:tiny", "dream.py:tiny"):
        file, name = variant.split(":")
        metrics = tuple(m for v, m in ranges if v == variant)
        entries.append((variant, file, name, metrics))
    monkeypatch.setattr(quickstart, "ENTRIES", entries)
    rows = quickstart.run(str(tmp_path), configs_dir=str(REPO / "configs"))
    assert [r["status"] for r in rows] == ["finished", "finished"]
    outside = []
    for variant, file, name, metrics in entries:
        result = json.loads((tmp_path / f"{file[:-3]}_{name}" / "result.json").read_text())
        for metric in metrics:
            got = round(float(result["eval_results"][metric]), 4)
            lo, hi = ranges[(variant, metric)]
            if not lo <= got <= hi:
                outside.append(f"{variant} {metric} = {got:.4f}, stated {lo:.4f}–{hi:.4f}")
    assert not outside, "outside the stated ranges:\n" + "\n".join(outside)


@pytest.mark.parametrize("line", ["| lmle.py:tiny | m/x | 0.1 | 0.1 | 0.1 | 0.0500–0.1500 |"])
def test_the_row_pattern_reads_a_range(line):
    m = ROW.match(line)
    assert m and (float(m["lo"]), float(m["hi"])) == (0.05, 0.15)
