"""The project map's floors hold: ops -> runtime -> models -> io / expand / data -> train / eval -> compare / demo ->
cli, with the public API (``statex/__init__``) at the top. A module imports only from its own floor or below (the
check reads every ``import`` in src/statex, lazy ones inside functions included); no module is over 400 lines."""
import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "statex"
FLOORS = [  # lowest first; a module belongs to the floor of its longest matching prefix
    ["statex.errors", "statex.validation", "statex.files", "statex.locks", "statex.resources",
     "statex.strict_json", "statex.outputs", "statex.config"],
    ["statex.ops"],
    ["statex.runtime.settings", "statex.runtime.autotune", "statex.runtime.dispatch", "statex.runtime.machine",
     "statex.runtime"],
    ["statex.models", "statex.summary"],
    ["statex.io", "statex.expand", "statex.data"],
    ["statex.train", "statex.eval", "statex.runtime.prewarm"],
    ["statex.compare", "statex.demo"],
    ["statex.cli", "statex.cli_support", "statex.eval.cli", "statex.compare.cli", "statex.demo.cli",
     "statex.__main__", "statex"],
]
# transformers' dialect puts loading and saving on the model class (``CausalLM.from_pretrained`` /
# ``save_pretrained``): the class calls the io floor lazily, the one sanctioned upward call
ALLOWED = {("statex.models.lm", "statex.io.loading"), ("statex.models.lm", "statex.io.own")}


def floor_of(module: str) -> int:
    best, floor = -1, None
    for number, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), number
    assert floor is not None, f"{module} is on no floor: add it to FLOORS (and to the README's project map)"
    return floor


def modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            if base.startswith("statex"):
                # "from statex import runtime" names a package; "from statex import load_model" the API
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    yield sub if (SRC.parent / (sub.replace(".", "/") + ".py")).exists() or \
                        (SRC.parent / sub.replace(".", "/")).is_dir() else base
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("statex"))


def test_no_module_imports_from_a_higher_floor():
    upward = []
    for module, path in modules():
        for target in imports(path):
            if floor_of(target) > floor_of(module) and (module, target) not in ALLOWED:
                upward.append(f"{module} (floor {floor_of(module)}) imports {target} (floor {floor_of(target)})")
    assert not upward, "\n".join(upward)


def test_no_module_is_over_400_lines():
    long = {module: n for module, path in modules() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long
