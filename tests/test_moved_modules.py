"""The engine's flat module paths of earlier releases still import (issue 21 moved them into
subpackages), as the moved module itself and with a DeprecationWarning; checkpoints hold no
reference to any module path, so a move never breaks a resume."""

from __future__ import annotations

import importlib
import pickletools
import subprocess
import sys
import zipfile

import pytest

from embedrag.engine import MOVED


def _old_import(name: str):
    """Import in a fresh interpreter: which module answers, and the warning it gave."""
    code = ("import warnings, importlib; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            f"    m = importlib.import_module({name!r})\n"
            "print(m.__name__); print(w[0].category.__name__ if w else 'none'); print(w[0].message if w else '')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("old", ["encoder", "store", "train_config", "loss.infonce"])
def test_an_old_path_is_the_moved_module_with_a_deprecation_warning(old):
    name, category, message = _old_import(f"embedrag.engine.{old}")
    head, _, rest = old.partition(".")
    assert name == f"embedrag.engine.{MOVED[head]}" + (f".{rest}" if rest else "")
    assert category == "DeprecationWarning" and "moved to" in message


def test_old_and_new_paths_are_one_module_and_every_move_resolves():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("embedrag.engine.fingerprint")
        from embedrag.engine.data import Example  # the old training-JSONL module's names
    from embedrag.engine.data.examples import Example as moved
    from embedrag.engine.encoding import fingerprint

    assert old is fingerprint and Example is moved
    for new in MOVED.values():
        importlib.import_module(f"embedrag.engine.{new}")


def test_checkpoint_files_reference_no_module_path(tmp_path):
    """optimizer.pt, scheduler.pt and rng_state.pt are state dicts: no embedrag class pickled."""
    import torch

    from embedrag.engine.training.checkpoints import rng_state

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    for name, obj in (("optimizer.pt", optimizer.state_dict()), ("rng_state.pt", rng_state())):
        torch.save(obj, tmp_path / name)
        with zipfile.ZipFile(tmp_path / name) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        globals_ = [arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")
                    or (op.name in ("SHORT_BINUNICODE", "BINUNICODE") and "embedrag" in str(arg))]
        assert not [g for g in globals_ if "embedrag" in str(g)], name
