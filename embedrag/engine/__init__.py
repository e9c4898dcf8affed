"""The reusable library behind the CLI, one subpackage per concept (see ARCHITECTURE.md).
No typer, no rich: progress goes through callbacks and messages through the ``logging``
module. Heavy libraries (torch, transformers, peft, lancedb) are imported inside the
functions that need them.

The flat module paths of earlier releases (``embedrag.engine.encoder``, ...) still import,
as the moved module itself, with a ``DeprecationWarning``; they go in the next release."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old module -> its home since the subpackages
MOVED = {
    "errors": "core.errors", "atomic": "core.atomic",
    "data": "data.examples", "documents": "data.documents", "testsets": "data.testsets",
    "answer_sets": "data.answer_sets",
    "precision": "encoding.precision", "models": "encoding.models", "pooling": "encoding.pooling",
    "st_format": "encoding.st_format", "adapter_loading": "encoding.adapter_loading",
    "parallel": "encoding.parallel", "encoder": "encoding.encoder", "fingerprint": "encoding.fingerprint",
    "validate": "encoding.validate", "light_bert": "encoding.light_bert", "backends": "encoding.backends",
    "search": "retrieval.search", "lexical": "retrieval.lexical", "store": "retrieval.store",
    "metrics": "evaluation.metrics", "significance": "evaluation.significance",
    "evaluate": "evaluation.evaluate", "answer_metrics": "evaluation.answer_metrics",
    "mine": "mining.mine",
    "train_config": "training.train_config", "sampling": "training.sampling",
    "contrastive": "training.contrastive", "loss": "training.loss", "finetune": "training.finetune",
    "launch": "training.launch", "holdout": "training.holdout", "checkpoints": "training.checkpoints",
    "train": "training.train", "merge": "training.merge",
    "rag": "llm.rag", "query_writers": "llm.query_writers", "generate": "llm.generate",
    "answer_eval": "llm.answer_eval", "captions": "llm.captions",
    "demo": "tools.demo", "doctor": "tools.doctor", "export": "tools.export",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path (``embedrag.engine.encoder``, ``embedrag.engine.loss.infonce``) as
    the module at its new one: the same module object, so patches and isinstance agree.
    ``embedrag.engine.data`` is now the data package itself and is not redirected."""

    def find_spec(self, fullname, path=None, target=None):
        head = fullname.removeprefix(__name__ + ".").partition(".")[0]
        if not fullname.startswith(__name__ + ".") or head not in MOVED or head == "data":
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        head, _, rest = spec.name.removeprefix(__name__ + ".").partition(".")
        new = f"{__name__}.{MOVED[head]}" + (f".{rest}" if rest else "")
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the moved module is already executed


sys.meta_path.insert(0, _MovedModules())  # before the path finder: loss.infonce too
