"""The pack's bounded caches (cupscale/lru.py) and the dropdown check every node shares (nodes/inputs.py)."""
from __future__ import annotations

import pytest
import torch

from cupscale.lru import LRU, PEAKS, env_limit


def test_lru_evicts_least_recently_used_by_entries_and_by_bytes():
    cache = LRU("test entries", max_entries=2)
    for k in "abc":
        cache.put(k, k)
        cache.get("a")  # a stays recent
    assert list(cache.entries) == ["c", "a"] and PEAKS["test entries"]["entries"] == 2
    sized = LRU("test bytes", max_bytes=2 * 4 * 10)
    for k in range(5):
        sized.put(k, (torch.zeros(10), torch.zeros(10)))  # 80 bytes each: one fits
    assert list(sized.entries) == [4] and sized.bytes == 80
    assert sized.put("big", torch.zeros(100)) is not None and len(sized) == 0  # too big to keep, still returned


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CUPSCALE_TEST_LIMIT", "7")
    assert env_limit("CUPSCALE_TEST_LIMIT", 3) == 7 and env_limit("CUPSCALE_UNSET_LIMIT", 3) == 3
    monkeypatch.setenv("CUPSCALE_TEST_LIMIT", "lots")
    try:
        env_limit("CUPSCALE_TEST_LIMIT", 3)
    except ValueError as e:
        assert "$CUPSCALE_TEST_LIMIT = 'lots'" in str(e)
    else:
        raise AssertionError("a bad limit must be refused")


def test_every_dropdown_of_every_node_is_checked(host):
    """Each Combo input is checked before the run (validate_inputs lists it) or when the run starts: a label
    that is not an option is named in the error."""
    import inspect

    from harness.comfy_host import run_prompt  # noqa: F401  (the host is up)
    pack_nodes = [cls for name, cls in host.NODE_CLASS_MAPPINGS.items() if cls.__module__.split(".")[0] not in
                  ("nodes", "comfy_extras", "harness", "cupscale_test_loader") and hasattr(cls, "define_schema")
                  and ".nodes." in cls.__module__]
    inputs_module = sys_module(pack_nodes[0], "inputs")
    unchecked = []
    for node in pack_nodes:
        combos = inputs_module.combo_options(node)
        validated = set(inspect.getfullargspec(node.validate_inputs).args) if "validate_inputs" in vars(node) else set()
        at_run = set(getattr(node, "COMBOS_AT_RUN", ()))
        unchecked += [f"{node.__name__}.{c}" for c in combos if c not in validated | at_run]
        for name in set(combos) & validated:
            message = node.validate_inputs(**{**dict.fromkeys(validated - {"cls"}), name: "not an option"})
            assert isinstance(message, str) and f"{name} = 'not an option'" in message
        for name in at_run:
            with pytest.raises(ValueError, match=f"{name} = 'not an option' is not one of"):
                inputs_module.check_combos(node, **{name: "not an option"})
    assert unchecked == []


def sys_module(node, name: str):
    import sys
    return sys.modules[node.__module__.rsplit(".", 1)[0] + "." + name]
