"""How an ``auth_classes`` tag turns into permissions: the two conventions in use, and ``auto``.

* ``class`` (this proxy's own): a tag names a class, and the groups ``<class>_read``,
  ``<class>_write`` and ``<class>_delete`` hold those permissions on it. Tag ``news``: group
  ``news_write`` may write.
* ``group`` (the BBC example proxy's): a tag names a group, which holds the permission the
  tag's name ends with (``read``, ``write`` or ``delete``, a plain suffix). Tag ``news_write``:
  group ``news_write`` may write (and not read); a tag ending in none of the words grants
  nothing.
* ``auto``: each tag on its own: one ending in ``read``, ``write`` or ``delete`` is read the
  ``group`` way, any other the ``class`` way. A store tagged for either proxy keeps its
  decisions; the price is that a class of ours whose name ends in one of the words (``thread``)
  is read the ``group`` way, so a store using such classes wants ``class``.

Everything here is pure; ``rules`` applies the scopes and the ``admin`` group on top.
"""

from __future__ import annotations

import enum

__all__ = ["ClassModel", "granted_by", "tags_granting"]

# The permission words, as ``rules.Perm`` spells them; kept here as strings so this module
# needs nothing from ``rules``.
PERMISSION_WORDS = ("read", "write", "delete")


class ClassModel(enum.StrEnum):
    AUTO = "auto"
    GROUP = "group"
    CLASS = "class"


def _group_word(tag: str) -> str | None:
    """The permission word a tag ends with, if any."""
    return next((word for word in PERMISSION_WORDS if tag.endswith(word)), None)


def _reads_as_group(model: ClassModel, tag: str) -> bool:
    if model is ClassModel.GROUP:
        return True
    if model is ClassModel.CLASS:
        return False
    return _group_word(tag) is not None


def granted_by(model: ClassModel, tag: str, groups: frozenset[str]) -> frozenset[str]:
    """The permission words one tag grants to a caller in ``groups``."""
    if not tag:
        return frozenset()
    if _reads_as_group(model, tag):
        word = _group_word(tag)
        return frozenset([word]) if word is not None and tag in groups else frozenset()
    return frozenset(word for word in PERMISSION_WORDS if f"{tag}_{word}" in groups)


def tags_granting(model: ClassModel, word: str, groups: frozenset[str]) -> frozenset[str]:
    """Every tag that would grant ``word`` to a caller in ``groups``: the classes of its
    ``<class>_<word>`` groups and its groups ending in ``word``, kept where ``model`` reads
    them so."""
    suffix = "_" + word
    candidates = {g[: -len(suffix)] for g in groups if g.endswith(suffix)} | {g for g in groups if g.endswith(word)}
    return frozenset(tag for tag in candidates if word in granted_by(model, tag, groups))
