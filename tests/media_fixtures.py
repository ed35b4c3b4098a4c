"""Session fixtures with synthesized HLS content (see ``tests/synthetic_media.py``).

Use them with ``pytest_plugins = ["tests.media_fixtures"]`` in a test module (or in
``tests/conftest.py`` for the whole suite).
"""

from __future__ import annotations

import pytest

from tests.synthetic_media import SynthesizedHLS, synthesized

__all__ = ["hls_audio_content", "hls_content"]


@pytest.fixture(scope="session")
def hls_content(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedHLS:
    """320x180, 30 fps, 20 s in ten 2-second segments (1-second GOPs), video only."""
    return synthesized(tmp_path_factory)


@pytest.fixture(scope="session")
def hls_audio_content(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedHLS:
    """320x180, 30 fps, 8 s in four 2-second segments, with AAC stereo audio."""
    return synthesized(tmp_path_factory, duration=8, audio=True)
