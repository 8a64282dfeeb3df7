"""WordNet 3.0 for METEOR, read from Debian's ``wordnet-base`` files (never ``nltk.download``).

Debian ships WordNet's database files in ``/usr/share/wordnet`` but not the ``lexnames`` table
that nltk's reader opens first; it is the fixed list of WordNet 3.0's 45 lexicographer files
(lexnames(5WN)), written here beside a copy of Debian's files (nltk reads only files below the
reader's own folder, so links out of it are refused).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEBIAN_WORDNET = Path("/usr/share/wordnet")
_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv",
          "noun.exc", "verb.exc", "adj.exc", "adv.exc")
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity "
    "noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
"""WordNet 3.0's lexicographer files, in the order of their numbers (lexnames(5WN))."""
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetMissing(RuntimeError):
    """WordNet's files are not installed (Debian package ``wordnet-base``)."""


def lexnames_text() -> str:
    """The ``lexnames`` file: number, name and part-of-speech number, tab-separated."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "rrr-ray" / "wordnet-3.0"


@lru_cache(maxsize=1)
def wordnet_reader(source: Path = DEBIAN_WORDNET) -> Any:
    """An nltk WordNet reader over ``source``'s files (and a written ``lexnames``)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    missing = [f for f in _FILES if not (source / f).is_file()]
    if missing:
        raise WordNetMissing(f"WordNet is not installed ({source}/{missing[0]} is missing): "
                             f"apt-get install wordnet-base (requirements/debian.txt)")
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        copy = folder / name
        if copy.is_symlink() or not copy.is_file() or copy.stat().st_size != (source / name).stat().st_size:
            partial = copy.with_suffix(copy.suffix + ".partial")
            shutil.copyfile(source / name, partial)
            partial.replace(copy)
    lexnames = folder / "lexnames"
    if not lexnames.exists() or lexnames.read_text() != lexnames_text():
        lexnames.write_text(lexnames_text())
    if str(folder) not in nltk.data.path:  # nltk reads only below its data paths
        nltk.data.path.append(str(folder))
    class LocalWordNet(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            """No mapping onto another WordNet (used only by the multilingual data, which these
            files lack; it would read ``index.sense``, which Debian does not ship)."""
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none are used
        return LocalWordNet(str(folder), None)
