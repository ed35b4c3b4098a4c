#!/usr/bin/env python3
"""Ingest an HLS playlist of MPEG-TS or fMP4 segments into a TAMS store: exact, concurrent, resumable.

The command; its code is the module ``ingest_core`` (``ingest_hls.py --help`` says what it does). A script is
compiled afresh on every run, a module imported once from its cached bytecode: keeping this file
small starts the command sooner.
"""

from credentials import exit_now
from ingest_core import main

if __name__ == "__main__":
    exit_now(main())
