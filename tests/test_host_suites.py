"""benchmarks/host_suites.py's bookkeeping: junit outcomes read right, every difference classified, none hidden."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _record import RunRecord
from host_suites import SuiteRun, read_junit, report

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="trainer.test_a.T" name="test_ok"/>
  <testcase classname="trainer.test_a.T" name="test_broken">
    <failure message="AssertionError: 1 != 2&#10;more">tb</failure>
  </testcase>
  <testcase classname="trainer.test_b" name="test_setup"><error message="fixture failed">tb</error></testcase>
  <testcase classname="trainer.test_b" name="test_gpu"><skipped message="needs a GPU"/></testcase>
</testsuite></testsuites>
"""


def test_the_junit_outcomes_and_first_message_lines_are_read(tmp_path: Path) -> None:
    path = tmp_path / "run.xml"
    path.write_text(JUNIT)
    outcomes = read_junit(path)
    assert {k: o.state for k, o in outcomes.items()} == {
        "trainer.test_a.T::test_ok": "passed",
        "trainer.test_a.T::test_broken": "failed",
        "trainer.test_b::test_setup": "error",
        "trainer.test_b::test_gpu": "skipped",
    }
    assert outcomes["trainer.test_a.T::test_broken"].message == "AssertionError: 1 != 2"


def _run(tmp_path: Path, deelbo_xml: str) -> SuiteRun:
    plain, deelbo = tmp_path / "plain.xml", tmp_path / "deelbo.xml"
    plain.write_text(JUNIT.replace('<failure message="AssertionError: 1 != 2&#10;more">tb</failure>', ""))  # passes
    deelbo.write_text(deelbo_xml)
    return SuiteRun("transformers", "here", read_junit(plain), read_junit(deelbo), "built 3, trained 2", 1.0, 2.0)


def test_a_test_that_passes_as_written_and_fails_with_the_deelbo_is_a_defect_unless_named(tmp_path: Path) -> None:
    text, defects = report([_run(tmp_path, JUNIT)], RunRecord.start())
    assert defects == 1  # test_broken passes as written: not one of BY_DESIGN
    assert "`trainer.test_a.T::test_broken` | **no: a defect** | AssertionError: 1 != 2" in text
    assert "Fail as written too" in text and "trainer.test_b::test_setup" in text  # the environment's, listed apart


def test_a_named_difference_is_no_defect(tmp_path: Path) -> None:
    by_design = "trainer.test_h.TrainerHyperParameterMultiObjectOptunaIntegrationTest"  # one of BY_DESIGN
    refused = "ConfigError: the DE-ELBo selection score is one number: pass selection='eval'"
    run = _run(tmp_path, JUNIT.replace("trainer.test_a.T", by_design).replace("AssertionError: 1 != 2", refused))
    run.plain = {k.replace("trainer.test_a.T", by_design): v for k, v in run.plain.items()}
    text, defects = report([run], RunRecord.start())
    assert defects == 0 and "multi-objective hyperparameter_search" in text
    other = _run(tmp_path, JUNIT.replace("trainer.test_a.T", by_design))  # the same test failing otherwise
    other.plain = run.plain
    assert report([other], RunRecord.start())[1] == 1
