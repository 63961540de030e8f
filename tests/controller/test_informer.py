"""The watch cache's store: each object filed under the LLMDeployment its label names, moved when
the label changes, forgotten when the label goes or the object is deleted. (The list-and-watch
stream itself runs against the real API server in e2e/test_watch_cache.py.)"""

from __future__ import annotations

from llmscale.controller.informer import Store
from llmscale.controller.objects import PodView


def _names(store: Store[PodView], namespace: str, owner: str) -> list[str]:
    return sorted(p.name for p in store.get(namespace, owner))


def test_objects_are_filed_moved_and_forgotten_by_their_label() -> None:
    s: Store[PodView] = Store()
    s.put("ns", "a", "alpha", PodView("a"))
    s.put("ns", "b", "alpha", PodView("b"))
    s.put("other", "a", "alpha", PodView("a", variant="l4x1"))  # same name, another namespace
    assert (_names(s, "ns", "alpha"), _names(s, "other", "alpha"), len(s)) == (["a", "b"], ["a"], 3)
    s.put("ns", "b", "beta", PodView("b"))  # relabelled
    assert (_names(s, "ns", "alpha"), _names(s, "ns", "beta")) == (["a"], ["b"])
    s.put("ns", "a", "alpha", PodView("a", terminating=True))  # modified in place
    assert s.get("ns", "alpha") == [PodView("a", terminating=True)]
    s.put("ns", "a", "", None)  # deleted (or its label removed)
    assert (_names(s, "ns", "alpha"), _names(s, "other", "alpha"), len(s)) == ([], ["a"], 2)
    s.put("ns", "zz", "", None)  # never seen: nothing to forget
    assert s.get("nowhere", "alpha") == [] and len(s) == 2
