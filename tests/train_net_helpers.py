"""Running tools/train_net.py as a user does (a subprocess) and reading what a run wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train_net(config: str, *args: str, timeout: int = 400, check: bool = True
                  ) -> subprocess.CompletedProcess:
    """`python tools/train_net.py --config-file CONFIG ARGS...` from the repository root, with one
    intra-op thread (the tiny models are far faster that way on shared cores); with `check`, a
    non-zero exit fails the test with the output's tail."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def dg_table(out: str) -> dict:
    """The domain-generalization table (`dg_results.json`) a run wrote into `out`."""
    with open(os.path.join(out, "dg_results.json")) as f:
        return json.load(f)


def train_run(config: str, data_key: str, data_root: str, out: str, *opts: str,
              timeout: int = 400) -> str:
    """Train `config` on the data at `data_root` (set through config key `data_key`) into `out`
    and return `out`: what each test module's `trained` fixture does once for all its tests."""
    run_train_net(config, data_key, data_root, "OUTPUT_DIR", out, *opts, timeout=timeout)
    return out


def eval_only_table(config: str, data_key: str, data_root: str, trained: str, out: str,
                    weights: str = "model_final.pth", timeout: int = 400) -> dict:
    """`--eval-only` of the run in `trained` (its `weights` file, under the run's own name so the
    tables compare whole) into `out`; returns the DG table it wrote, which must equal the run's."""
    run_train_net(config, "--eval-only", data_key, data_root, "OUTPUT_DIR", out,
                  "MODEL.WEIGHTS", os.path.join(trained, weights),
                  "TEST.DG.RUN_NAME", os.path.basename(trained), timeout=timeout)
    return dg_table(out)


def metric_rows(out: str, key: str = "total_loss") -> dict[int, dict]:
    """The rows of `OUTPUT_DIR/metrics.json` that hold `key`, by iteration."""
    rows = {}
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if key in row:
                rows[row["iteration"]] = row
    return rows


def sigkill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every 50 ms), as a crash would; fails the
    test if the process ended first or `ready` never held. Always reaps the process."""
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(0.05)
        assert proc.poll() is None and ready(), proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
