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
    inputs_module = sys_module(pack_nodes(host)[0], "inputs")
    unchecked = []
    for node in pack_nodes(host):
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


def test_every_number_of_every_node_has_finite_bounds_the_check_reads(host):
    """check_numbers reads each Float and Int input's bounds from the node's own schema: NaN, infinities and
    values past a bound are named with the bounds; the default passes."""
    inputs_module = sys_module(pack_nodes(host)[0], "inputs")
    checked = 0
    for node in pack_nodes(host):
        for i in node.define_schema().inputs:
            if not is_number(node, i):
                continue
            assert i.min is not None and i.max is not None, f"{node.__name__}.{i.id} declares no bounds"
            inputs_module.check_numbers(node, **{i.id: i.default})
            for bad in (float("nan"), float("inf"), i.max + 1, i.min - 1, "3"):
                with pytest.raises(ValueError, match=rf"{i.id} = .* must be a finite number from {i.min} to {i.max}"):
                    inputs_module.check_numbers(node, **{i.id: bad})
            checked += 1
    assert checked >= 20


def test_numbers_the_value_alone_rules_out_are_refused_before_the_run(host):
    """Each node's validate_inputs names its numbers (the host's bounds check lets NaN through), but for the
    nodes whose check guards a downloaded file alone (bench/soak.CHECKED_BEFORE_RUN): the host files a failed
    check under every input named, and a missing download would mark every widget."""
    import inspect
    import sys

    from harness.comfy_host import PACK_DIR
    sys.path.append(str(PACK_DIR / "bench"))
    import soak
    unnamed = []
    for node in pack_nodes(host):
        numbers = [i for i in node.define_schema().inputs if is_number(node, i)]
        named = set(inspect.getfullargspec(node.validate_inputs).args) if "validate_inputs" in vars(node) else set()
        if node.define_schema().node_id in soak.CHECKED_BEFORE_RUN:
            continue
        unnamed += [f"{node.__name__}.{i.id}" for i in numbers if i.id not in named]
        for i in (i for i in numbers if i.id in named):
            assert node.validate_inputs(**{i.id: i.default}) is True
            for bad in (float("nan"), i.max + 1, i.min - 1):
                message = node.validate_inputs(**{i.id: bad})
                assert isinstance(message, str) and f"{i.id} = " in message and "must be a finite number" in message
    assert unnamed == []


def pack_nodes(host) -> list:
    return [cls for name, cls in host.NODE_CLASS_MAPPINGS.items() if ".nodes." in cls.__module__
            and hasattr(cls, "define_schema")
            and cls.__module__.split(".")[0] not in ("nodes", "comfy_extras", "harness", "cupscale_test_loader")]


def is_number(node, schema_input) -> bool:
    """A Float or Int widget, by the host's own classes (their names differ between releases)."""
    io = sys_module(node, "host").io
    return isinstance(schema_input, (io.Float.Input, io.Int.Input))


def sys_module(node, name: str):
    import sys
    return sys.modules[node.__module__.rsplit(".", 1)[0] + "." + name]
