#!/usr/bin/env python3
"""Ingest an HLS playlist of MPEG-TS or fMP4 segments into a TAMS store: exact, concurrent, resumable.

The command; its code is the module ``ingest_core`` (``ingest_hls.py --help`` says what it does). A script is
compiled afresh on every run, a module imported once from its cached bytecode: keeping this file
small starts the command sooner.
"""

import gc

# The imports build some 35,000 objects the collector tracks, and they live as long as the
# process: it would walk them again and again, during the imports (20-30 ms of a run) and then at
# every full collection. So it waits for the imports, and then leaves those objects out.
gc.disable()
from credentials import exit_now  # noqa: E402
from ingest_core import main  # noqa: E402

gc.freeze()
gc.enable()

if __name__ == "__main__":
    exit_now(main())
