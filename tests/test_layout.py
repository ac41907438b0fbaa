"""The repository layout guard: platform/ is a folder, never a package."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_is_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists(), (
        "platform/__init__.py shadows the standard library's platform module; remove it"
    )


def test_import_platform_is_the_standard_library():
    import platform

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert platform.python_version().startswith("3.")


def test_routing_imports_without_django():
    # A service that only publishes must be able to use routing where Django is
    # not installed: make `import django` fail, then use routing.
    code = (
        "import sys; sys.modules['django'] = None\n"
        "import routing, routing.celery_config as rc\n"
        "assert rc.route_for('media.thumbnail', 'slow', 'premium')['routing_key'] == "
        "'slow.premium.media.thumbnail'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={"PATH": ""})


def test_tests_folder_is_not_named_test():
    assert not (REPO / "test").exists()
