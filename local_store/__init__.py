"""The local TAMS store: an embedded TAMS API 8.2 server (aiohttp + SQLite + files on disk).

Run it with ``python -m local_store``; build it in-process with ``local_store.app.create_app``.
"""
