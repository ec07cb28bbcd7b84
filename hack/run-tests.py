"""The suite's runner (``make test``): pytest, then exit without the interpreter's final teardown.

Every result is in by then: pytest has reported, unconfigured and closed its captures, and the atexit
handlers (Ray's shutdown, multiprocessing's children, temporary directories, logging) still run here.
What is skipped is the module teardown afterwards, where native threads that libraries keep in the test
process (gloo's, Ray's core worker, gRPC's) can crash an otherwise green run at its very end
(pytorch/pytorch#190489; one CI run died so after "1271 passed"). The product's own processes exit
normally, and the tests that start them check their exit codes. PYTHONFAULTHANDLER=1 (set by the
Makefile) prints every thread's stack should anything still crash. Set KUBERL_TEST_FULL_TEARDOWN=1 to
exit the ordinary way.
"""

from __future__ import annotations

import atexit
import os
import sys

import pytest


def main() -> None:
    code = int(pytest.main(sys.argv[1:]))
    if os.environ.get("KUBERL_TEST_FULL_TEARDOWN") == "1":
        sys.exit(code)
    atexit._run_exitfuncs()  # what an ordinary exit runs before its module teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
