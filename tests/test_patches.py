"""supervision/patches.py changes supervisord's internals: each patch fails here, by name, when supervisor changes."""

import importlib
import importlib.metadata
import re

import pytest

from supervision import patches
from tests.conftest import ROOT


def test_the_pinned_supervisor_is_the_one_the_patches_were_written_for():
    pinned = re.search(r"^supervisor==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)[1]
    assert pinned == patches.PINNED, (
        f"requirements.txt pins supervisor=={pinned}; re-check every patch in supervision/patches.py "
        f"({', '.join(patches.PATCHED)}) against it, then set PINNED")


@pytest.mark.parametrize("patch", sorted(patches.PATCHED))
def test_a_patch_still_finds_what_it_patches(patch):
    installed = importlib.metadata.version("supervisor")
    assert installed == patches.PINNED, f"patch {patch!r} was written for supervisor {patches.PINNED}, not {installed}"
    for target in patches.PATCHED[patch]:
        module, _, path = target.partition(":")
        found = importlib.import_module(module)
        for name in path.split("."):
            assert hasattr(found, name), f"patch {patch!r}: supervisor {installed} has no {target}"
            found = getattr(found, name)


def test_the_forked_childs_exit_still_has_its_interpreter_calls():
    # supervision/preload.py `_finish` does what Py_FinalizeEx does, through CPython's private names.
    import atexit
    import threading

    assert callable(threading._shutdown) and callable(atexit._run_exitfuncs)
