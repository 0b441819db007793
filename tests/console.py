"""The `mmmmodal` console script's own code (`mmmmodal_hf.cli.main`), run for many cases in one fresh process.

Each case gets its working directory, its arguments and its own stderr (file descriptor 2, so log records count
too), and ends with the exit status a console script gives (a SystemExit's message printed, as Python prints it).
A fresh process per case would spend about 6 s importing torch and transformers; the cases share nothing else.
"""

import json
import subprocess
import sys
from pathlib import Path

CASES_IN_ONE_PROCESS = r"""
import json, os, sys, tempfile, traceback
from mmmmodal_hf.cli import main

cases, outcomes = json.loads(sys.argv[1]), []
for args, cwd in cases:
    os.chdir(cwd)
    with tempfile.TemporaryFile() as stderr:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(stderr.fileno(), 2)
        try:
            status = main(args)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) or exit.code is None else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            status = "raised"
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        stderr.seek(0)
        outcomes.append({"status": status or 0, "stderr": stderr.read().decode(errors="replace")})
print("OUTCOMES " + json.dumps(outcomes))
"""


def run_cases(cases: list[tuple[list[str], Path]], env: dict | None = None) -> list[dict]:
    """Each case's {"status", "stderr"}, as `mmmmodal ARGS` run in its folder would end."""
    completed = subprocess.run(
        [sys.executable, "-c", CASES_IN_ONE_PROCESS, json.dumps([(args, str(cwd)) for args, cwd in cases])],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-5000:]
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith("OUTCOMES ")]
    return json.loads(line[len("OUTCOMES ") :])
