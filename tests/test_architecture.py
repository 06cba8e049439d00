"""The import rules of DESIGN.md §2, checked on the source."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "adntn_cli"
TN_ALLOWED = {"torch", "opt_einsum", "numpy"}
CLI_ONLY = {"typer", "rich", "click"}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or ""


def test_tn_imports_only_torch_opt_einsum_and_itself():
    for path in (PKG / "tn").rglob("*.py"):
        depth = len(path.relative_to(PKG / "tn").parts) - 1  # 0 for tn/x.py
        for level, module in _imports(path):
            if level:
                assert level - 1 <= depth, f"{path.name} imports outside tn/: {'.' * level}{module}"
            else:
                top = module.split(".")[0]
                ok = top in TN_ALLOWED or top in sys.stdlib_module_names or top == "__future__"
                assert ok, f"{path.relative_to(PKG)} imports {module}"


def test_only_the_cli_imports_typer_and_rich():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("cli.py", "cli"):
            continue
        for level, module in _imports(path):
            assert level or module.split(".")[0] not in CLI_ONLY, f"{rel} imports {module}"


def test_import_adntn_cli_does_not_import_torch():
    code = "import sys, adntn_cli; adntn_cli.__version__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_names_resolve():
    import adntn_cli

    assert adntn_cli.TNGenerator.__name__ == "TNGenerator"
    assert callable(adntn_cli.from_module)
