"""TensorFlow's start-up lines stay out of the output; other stderr output does not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flobc.ml.quiet import STARTUP_NOISE, filtered_stderr


def test_importing_keras_after_flobc_ml_prints_no_start_up_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import flobc.ml, keras, tensorflow; print(tensorflow.__name__)"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tensorflow"
    assert not STARTUP_NOISE.search(done.stderr), done.stderr


def test_the_filter_drops_the_notices_and_writes_back_the_rest(
        capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_stderr():
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see\n")
        os.write(2, b"a real error during the import\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err
    assert "a real error during the import" in err


def test_the_filter_restores_stderr_when_the_import_fails(
        capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ImportError), filtered_stderr():
        os.write(2, b"said before failing\n")
        raise ImportError("no such module")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "said before failing" in err and "after" in err
