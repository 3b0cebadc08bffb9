"""The dependency picture is part of the suite: a wrong arrow between apps, an import cycle inside one, a private
module imported from outside its package or Django in the Django-free core fails here. The contracts are in
pyproject.toml ([tool.importlinter]); README.md, "Code layout", draws them."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_it_keeps_every_import_contract():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_it_lets_the_site_agent_import_nothing_but_itself_and_the_shared_core():
    # Tighter than a forbidden list: any new module the agent imports must be its own or consortium.federated.
    graph = grimp.build_graph("sites", "consortium", cache_dir=None)
    allowed = ("sites.agent", "consortium.federated")
    arrows = {
        (module, imported)
        for module in graph.find_descendants("sites.agent") | {"sites.agent"}
        for imported in graph.find_modules_directly_imported_by(module)
        if not (imported == "consortium" or imported.startswith(tuple(f"{name}." for name in allowed))
                or imported in allowed)
    }
    assert arrows == set()
