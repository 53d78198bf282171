"""Restore a video archive on a Ray cluster: the entry point for `ray job submit`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/restore.py s3://archive/videos --out s3://archive/restored --task sr --scale 4 --address auto

Takes exactly the options of `raywarp run` (see `raywarp run --help`). Inside a Ray job
pass `--address auto` to use the job's cluster; without it an embedded local Ray starts.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir, when raywarp is not installed

from raywarp.cli import add_run_args, run_command  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    raise SystemExit(run_command(parser.parse_args()))
