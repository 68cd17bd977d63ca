"""Every bad input of ``tests/badinputs.py``: one ``error:`` line on stderr, exit code 2, and
not one file created or touched (issue 10, item 4)."""
from __future__ import annotations

import os
import shutil

import pytest

from badinputs import CASES, make_inputs, make_prior, place_prior, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    make_inputs(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def priors(inputs, tmp_path_factory):
    """One short finished run of each entry, made once and copied into the cases that need it."""
    out = {}
    for entry in sorted({c.prior for c in CASES if c.prior}):
        folder = tmp_path_factory.mktemp(f"prior-{entry}")
        shutil.copytree(inputs, folder, dirs_exist_ok=True)
        out[entry] = make_prior(entry, str(folder))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, inputs, priors, tmp_path, monkeypatch, capsys):
    from badinputs import entry_main

    shutil.copytree(inputs, tmp_path, dirs_exist_ok=True)
    place_prior(case, priors, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = snapshot(str(tmp_path))
    capsys.readouterr()
    try:
        rc = entry_main(case.entry)(case.command())
    except SystemExit as e:  # the parser's own errors exit through sys.exit
        rc = e.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert rc == 2, (case, err)
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert case.words in errors[0], errors[0]
    assert snapshot(str(tmp_path)) == before  # nothing created, nothing touched
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "pwned")
