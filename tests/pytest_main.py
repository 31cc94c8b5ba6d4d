"""Entry point of every Bazel py_test: runs pytest on the files given as arguments.

`bazel test //:test_x` executes this with ``$(location tests/test_x.py)``, so
the test file's tests really run (a pytest file run as a plain script would
define its tests and exit 0 without running any).
"""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(["-q", *sys.argv[1:]]))
