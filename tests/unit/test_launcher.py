"""The one rank launcher (training, conversion, memory measurement): torchrun's environment
per rank, and a failed rank stops its peers - after a grace period for their own reports -
instead of leaving them waiting for it."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from megatron_sail.distributed.launcher import start_ranks, terminate, wait_ranks

FAIL_RANK_1 = ("import os, sys, time\n"
               "if os.environ['RANK'] == '1': sys.exit(3)\n"
               "time.sleep(60)\n")


def test_every_rank_gets_the_launch_environment(tmp_path):
    code = ("import json, os\n"
            "keys = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', "
            "'SAIL_LAUNCHER', 'EXTRA')\n"
            "print(json.dumps({k: os.environ[k] for k in keys}))\n")
    procs = start_ranks(2, ["-c", code], "test", env={"EXTRA": "x"}, stdout=subprocess.PIPE,
                        text=True)
    seen = [json.loads(p.communicate()[0]) for p in procs]
    assert [s["RANK"] for s in seen] == ["0", "1"] and {s["WORLD_SIZE"] for s in seen} == {"2"}
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"] and seen[0]["EXTRA"] == "x"
    assert {s["SAIL_LAUNCHER"] for s in seen} == {"test"}


def test_a_failed_rank_stops_the_others():
    procs = start_ranks(2, ["-c", FAIL_RANK_1], "test")
    start = time.monotonic()
    codes, first = wait_ranks(procs, grace=0, stop=terminate)
    assert first == 3 and codes == [-signal.SIGTERM, 3]
    assert time.monotonic() - start < 30  # not the 60 s rank 0 would have slept


def test_peers_get_the_grace_period_to_end_on_their_own():
    code = ("import os, sys, time\n"
            "time.sleep(0 if os.environ['RANK'] == '1' else 1)\n"
            "sys.exit(3 if os.environ['RANK'] == '1' else 2)\n")
    codes, first = wait_ranks(start_ranks(2, ["-c", code], "test"), grace=20, stop=terminate)
    assert codes == [2, 3] and first == 3  # rank 0 reported its own error, not a SIGTERM
    codes, first = wait_ranks(start_ranks(2, ["-c", FAIL_RANK_1], "test"), grace=0.5,
                              stop=terminate)
    assert codes == [-signal.SIGTERM, 3]
