#!/usr/bin/env python3
"""Export a TAMS Flow, or part of one, to a media file holding exactly the frames the Flow references.

The command; its code is the module ``outgest_core`` (``outgest_file.py --help`` says what it does). A script is
compiled afresh on every run, a module imported once from its cached bytecode: keeping this file
small starts the command sooner.
"""

from credentials import exit_now
from outgest_core import main

if __name__ == "__main__":
    exit_now(main())
