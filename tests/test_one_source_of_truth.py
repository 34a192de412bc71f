"""The registries are the source of truth for method names: every registered VLM pruning method is in README.md's
method list, in docs/methods.md's method table and (where it has one) among the drop-in decoder classes; every
kvcompress method is in docs/kvcompress.md's registry list. A method added to a registry without its
documentation fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import llava.model
from kvcompress.methods.registry import METHODS as KVCOMPRESS_METHODS
from llava.model.language_model import drop_in
from llava.model.language_model.pruning_llama import PruningLlamaModel
from llava.pruning.registry import available_methods

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_DROP_IN = {
    # drop_in.py gives the class names users of the published forks (FastV, fine-head, SparseVLM, PDrop) and of
    # the published pre-LLM methods (VisPruner, CDPruner) expect; these methods have no fork whose name to keep:
    "ablation_a": "this project's own dynamic strategy / head-count selector over fastv_fine_head (no upstream fork)",
    "random": "a control baseline (random keep set), not a published method",
    "learned": "this project's trained pruner: needs a checkpoint per model (pruner_checkpoint), no default to build",
    "learned_merger": "this project's trained TokenMerger: needs a checkpoint (merger_checkpoint), no default to build",
}
"""Registered methods that deliberately have no ``*_LlamaModel`` drop-in class, each with the reason."""


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\s]+)`", text))


def readme_method_list() -> str:
    """README.md's paragraph that lists the registry names (``## Pruning methods``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Pruning methods", 1)[1]
    return section.split("\n\n", 2)[1]


def methods_md_table() -> str:
    """docs/methods.md's ``## Methods`` table (up to the first blank line after it)."""
    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    section = text.split("\n## Methods\n", 1)[1]
    return section.strip().split("\n\n", 1)[0]


def drop_in_classes() -> dict[str, type]:
    """``{class name: class}`` of every drop-in decoder defined in ``drop_in.py``."""
    return {name: cls for name, cls in inspect.getmembers(drop_in, inspect.isclass)
            if cls.__module__ == drop_in.__name__ and issubclass(cls, PruningLlamaModel)}


def test_every_registered_method_is_in_the_readme_method_list():
    paragraph = readme_method_list()
    assert paragraph.startswith("Registry names (`llava.pruning.registry.available_methods()`)")
    assert set(available_methods()) - backticked(paragraph) == set()


def test_every_registered_method_has_a_row_in_the_methods_md_table():
    rows = [line for line in methods_md_table().splitlines() if line.startswith("| `")]
    names = [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]
    assert sorted(names) == sorted(set(names)), "a method has two rows"
    assert set(available_methods()) - set(names) == set()
    assert set(names) - set(available_methods()) == set(), "a row for a method the registry does not have"


def test_every_method_with_a_fork_has_its_drop_in_class_and_the_exclusions_are_current():
    defaults = {cls.default_pruning_method: name for name, cls in drop_in_classes().items()
                if cls.__dict__.get("default_pruning_method")}
    registered = set(available_methods())
    assert set(WITHOUT_DROP_IN) <= registered, "an exclusion names a method the registry does not have"
    assert registered - set(WITHOUT_DROP_IN) - set(defaults) == set(), "a method without its drop-in class"
    assert set(WITHOUT_DROP_IN) & set(defaults) == set(), "an excluded method has a drop-in class: drop the exclusion"
    assert set(defaults) <= registered


def test_every_drop_in_class_is_exported_and_documented():
    documented = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    for name in drop_in_classes():
        assert getattr(llava.model, name, None) is drop_in_classes()[name], f"llava.model does not export {name}"
        assert f"`{name}`" in documented, f"docs/methods.md does not list {name}"


def test_every_kvcompress_method_is_in_the_kvcompress_docs():
    text = " ".join((ROOT / "docs" / "kvcompress.md").read_text(encoding="utf-8").split())
    listed = re.search(r"builds methods by name: `([^`]+)`", text)
    assert listed, "docs/kvcompress.md lost its registry list ('builds methods by name: `...`')"
    names = [name.strip() for name in listed.group(1).split(",")]
    assert names == list(KVCOMPRESS_METHODS), "docs/kvcompress.md's registry list differs from kvcompress.methods.registry"
