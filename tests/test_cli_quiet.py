"""`clue` starts quietly: third-party import-time FutureWarning / DeprecationWarning are
hidden unless --verbose or CLUE_VERBOSE=1 asks for them; our own and other warnings stay.

Each case runs a fresh Python (warnings print once per process, and the filter
must be in place before the import that warns). A stand-in third-party package
``oldlib`` warns the way google-api-core does on import, and a stand-in
sub-command module imports it while `clue_cli.main.main` builds its parser,
so the test sees exactly what a user would, whatever the installed packages
happen to warn about today.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONWARNINGS", "CLUE_VERBOSE")}
    env.update(extra)
    return env


def _clue(*args, **env):
    return subprocess.run([sys.executable, "-m", "clue_cli.main", *args], cwd=ROOT,
                          env=_env(**env), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [["--help"], ["synth", "--help"]])
def test_help_prints_no_warning_lines(args):
    proc = _clue(*args)
    assert proc.returncode == 0, proc.stderr
    assert "usage: clue" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if "Warning" in line], proc.stderr


@pytest.fixture()
def fake_packages(tmp_path):
    """``oldlib`` warns at import (FutureWarning, DeprecationWarning, UserWarning);
    ``fakecmd`` is a `clue` sub-command module that imports it."""
    (tmp_path / "oldlib.py").write_text(textwrap.dedent("""
        import warnings
        warnings.warn("oldlib: unsupported Python version", FutureWarning)
        warnings.warn("oldlib: oneOf is deprecated", DeprecationWarning)
        warnings.warn("oldlib: something you should know", UserWarning)
    """))
    (tmp_path / "fakecmd.py").write_text(textwrap.dedent("""
        import oldlib

        def add_parser(sub):
            p = sub.add_parser("fake")
            p.add_argument("--verbose", action="store_true")
            p.set_defaults(func=lambda args: 0)
    """))
    return str(tmp_path)


def _run_main(path, argv, **env):
    code = ("import sys; import clue_cli.main as m; m.COMMAND_MODULES = ['fakecmd']; "
            f"sys.exit(m.main({argv!r}))")
    env = _env(PYTHONPATH=os.pathsep.join([path, ROOT]), **env)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_third_party_import_warnings_are_hidden_by_default_but_user_warnings_stay(fake_packages):
    err = _run_main(fake_packages, ["fake"])
    assert "FutureWarning" not in err and "DeprecationWarning" not in err, err
    assert "UserWarning: oldlib: something you should know" in err


@pytest.mark.parametrize("argv,env", [(["fake", "--verbose"], {}),
                                      (["fake"], {"CLUE_VERBOSE": "1"})],
                         ids=["--verbose", "CLUE_VERBOSE=1"])
def test_verbose_shows_every_warning(fake_packages, argv, env):
    err = _run_main(fake_packages, argv, **env)
    assert "FutureWarning: oldlib: unsupported Python version" in err
    assert "DeprecationWarning: oldlib: oneOf is deprecated" in err


def test_the_filter_reaches_child_processes_and_spares_our_modules():
    code = textwrap.dedent("""
        import os, subprocess, sys, warnings
        from clue_cli.main import quiet_warnings
        assert quiet_warnings([])
        warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="clue_keras.x")
        child = "import warnings; warnings.warn('child', FutureWarning)"
        subprocess.run([sys.executable, "-c", child], check=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "FutureWarning: ours" in proc.stderr      # our own warnings are never hidden
    assert "child" not in proc.stderr                # PYTHONWARNINGS passed on
