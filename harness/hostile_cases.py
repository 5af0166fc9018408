"""Hostile inputs made from the nodes' own schemas (issue 26): every input of every pack node, read from a
server's ``/object_info``, gets the cases of its type, so an input added later is covered without writing its
case, and a node added later fails the suite until it has a base graph.

A case is a base graph that runs (one per node type, given by the caller) with one input of that node made
hostile. What it must get: refused by ``/prompt`` where the value alone decides (a number outside its bounds,
not finite or of the wrong type, a dropdown value that is not an option), else a run that ends normally or an
error that names the node and the input; never a raw exception, and the server serves on. A node may check some
inputs when the run starts instead (the host files a failed ``validate_inputs`` under every input it names, so a
node whose check guards a downloaded file names that input alone): the caller lists those, and their values
must then be refused or named. Pure Python: the runner (bench/soak.py) sends the prompts; the tests check
the cases without a host."""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

NAN, INF = float("nan"), float("inf")
BIG_TEXT = 5 * 2 ** 20
"""5 MB: past every text bound the pack sets (cupscale.guards.MAX_TEXT_CHARS), far below what a server holds."""
PATHS = ("../../../../etc/passwd", "/etc/passwd", "..\\..\\..\\windows\\win.ini", "name\x00.pth", ".", "..",
         "not one of the options")
"""Dropdown values a client can send that no folder list offers: traversal, absolute, backslash, NUL, directories."""
SHAPES = {"batch 0": (0, 64, 64), "1 x 1": (1, 1, 1), "1 x 100000": (1, 1, 100_000)}
"""(batch, height, width) in pixels (a latent has an eighth of each side, at least 1) of the tensors the harness's
CupscaleHostileTensor node sends into IMAGE, MASK and LATENT inputs."""
TENSOR_TYPES = ("IMAGE", "MASK", "LATENT")
TENSOR_NODE = "CupscaleHostileTensor"
TESTING_CATEGORY = "cupscale/testing"


@dataclass(frozen=True)
class Case:
    node_type: str
    input: str
    label: str  # what is hostile about the value: "NaN", "above max", "5 MB", "batch 0", ...
    node: str  # the node's id in ``prompt``
    prompt: dict
    expect: str  # "refused" by /prompt; "named": refused, or an error naming it; "safe": that, or a normal run

    @property
    def name(self) -> str:
        return f"{self.node_type}.{self.input}: {self.label}"


def pack_schemas(object_info: dict, module: str) -> dict[str, dict]:
    """The pack's own nodes in ``/object_info``: those the host loaded from ``module`` (``custom_nodes.<the
    pack's folder>``), the harness's testing nodes left out."""
    return {name: info for name, info in object_info.items()
            if info.get("python_module") == module and info.get("category") != TESTING_CATEGORY}


def inputs_of(info: dict) -> Iterator[tuple[str, str, dict]]:
    """(name, type, options) of each required and optional input. Dropdowns come as a list of options (old
    nodes) or as ``COMBO`` with ``options`` (V3 nodes): both are given as ``COMBO`` with ``options``."""
    for section in ("required", "optional"):
        for name, spec in info.get("input", {}).get(section, {}).items():
            kind, options = spec[0], dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(kind, list):
                kind, options = "COMBO", {**options, "options": kind}
            yield name, kind, options


def number_values(kind: str, options: dict) -> list[tuple[str, object, str]]:
    """(label, value, what it must get) for an INT or FLOAT input: out of bounds, not finite, huge, of the
    wrong type, and 0 and -1 (refused only where the bounds exclude them)."""
    low, high = options.get("min"), options.get("max")
    huge = 2 ** 63 if kind == "INT" else 1e300

    def outside(v: float) -> bool:
        return (low is not None and v < low) or (high is not None and v > high)
    cases = [("NaN", NAN, True), ("inf", INF, True), ("-inf", -INF, True), ("text", "twelve", True)]
    cases += [(label, v, outside(v)) for label, v in (("huge", huge), ("-huge", -huge), ("0", 0), ("-1", -1))]
    step = max(options.get("step", 1), 1)
    if low is not None:
        cases.append(("below min", low - step, True))
    if high is not None:
        cases.append(("above max", high + step, True))
    return [(label, v, "refused" if refused else "safe") for label, v, refused in cases]


def combo_values(options: dict, planted: dict[str, str]) -> list[tuple[str, object, str]]:
    """Values no list offers (refused), and each planted hostile file the list does offer (it must be named
    at the run: a truncated file, a pickle that runs code, ...)."""
    offered = options.get("options", [])
    cases = [(f"{value!r}", value, "refused") for value in PATHS if value not in offered]
    cases.append(("a number", 3, "refused"))
    return cases + [(f"planted file {label}", name, "named") for name, label in planted.items() if name in offered]


def text_values() -> list[tuple[str, object, str]]:
    """Made when asked: the server process imports this module too (the harness's tensor node)."""
    texts = {"5 MB": "x" * BIG_TEXT, "100,000 lines": "a region\n" * 100_000, "NUL": "a\x00b",
             "JSON nested 10,000 deep": "[" * 10_000 + "]" * 10_000}
    return [(label, value, "safe") for label, value in texts.items()]


def tensor_links(prompt: dict, kind: str) -> Iterator[tuple[str, str, dict]]:
    """(label, the producer's id, the prompt with that CupscaleHostileTensor node added) for each hostile shape
    of an IMAGE, MASK or LATENT."""
    for shape in SHAPES:
        node_id = f"hostile_{kind.lower()}_{shape.replace(' ', '_')}"
        yield shape, node_id, {**copy.deepcopy(prompt),
                               node_id: {"class_type": TENSOR_NODE, "inputs": {"kind": kind, "shape": shape}}}


def cases(schemas: dict[str, dict], bases: dict[str, tuple[dict, str]], planted: dict[str, str] | None = None,
          at_run: dict[str, set[str]] | None = None) -> list[Case]:
    """Every case of every input of every node in ``schemas``. ``bases``: node type -> (a prompt that runs,
    the node's id in it); ``planted``: hostile file name -> what it is, for dropdowns that list them;
    ``at_run``: node type -> the inputs it checks when the run starts rather than before."""
    missing = sorted(set(schemas) - set(bases))
    if missing:
        raise KeyError(f"no base graph for {', '.join(missing)}: add one, so its inputs are tried too")
    out = []
    for node_type, info in sorted(schemas.items()):
        prompt, node = bases[node_type]
        if prompt[node]["class_type"] != node_type:
            raise ValueError(f"the base graph for {node_type} has {prompt[node]['class_type']} at node {node}")
        for name, kind, options in inputs_of(info):
            if kind in TENSOR_TYPES:
                for label, producer, hostile in tensor_links(prompt, kind):
                    hostile[node]["inputs"][name] = [producer, 0]
                    out.append(Case(node_type, name, label, node, hostile, "safe"))
                continue
            if kind in ("INT", "FLOAT"):
                values = number_values(kind, options)
            elif kind == "COMBO":
                values = combo_values(options, planted or {})
            elif kind == "STRING":
                values = text_values()
            else:
                continue  # a link of a type no client can make hostile (MODEL, CLIP, ...), or a boolean
            later = name in (at_run or {}).get(node_type, set())
            for label, value, expect in values:
                hostile = copy.deepcopy(prompt)
                hostile[node]["inputs"][name] = value
                out.append(Case(node_type, name, label, node, hostile, "named" if later and expect == "refused"
                                else expect))
    return out


@dataclass(frozen=True)
class Verdict:
    case: Case
    where: str  # "validation", "run", "none" (it ran to the end) or "timeout"
    at: str  # the node the error names
    message: str
    alive: bool  # the server served on, and an ordinary prompt after the case gave its pixels again

    @property
    def fault(self) -> str | None:
        """What fell short, or None."""
        if not self.alive:
            return "the server stopped serving, or the next ordinary prompt's pixels changed"
        if self.where == "timeout":
            return "no answer within the runner's time limit (the run was interrupted)"
        if self.case.expect == "refused" and self.where != "validation":
            return f"not refused by /prompt ({self.where})"
        if self.where == "none":
            return None if self.case.expect == "safe" else "it ran"
        # A patch's input that first meets the sampled latent in the sampler is refused there, naming the patch.
        if self.at != self.case.node and self.case.node_type not in self.message:
            return f"the error names node {self.at!r}, not {self.case.node!r}"
        if self.case.input not in self.message:
            return "the error does not name the input"
        return None


def counts(verdicts: list[Verdict]) -> dict[str, tuple[int, int]]:
    """node type -> (cases, faults), for the README's reliability table."""
    table: dict[str, tuple[int, int]] = {}
    for v in verdicts:
        n, bad = table.get(v.case.node_type, (0, 0))
        table[v.case.node_type] = (n + 1, bad + (v.fault is not None))
    return table

