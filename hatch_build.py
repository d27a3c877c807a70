"""Build hook: an editable install puts nothing under ``site-packages/detrix_auto/``.

The wheel force-includes the ``sitecustomize`` shim at ``detrix_auto/_shim/``.
In an editable wheel that was the only file under ``detrix_auto/``, so the
directory existed in site-packages beside the path entry of the checkout, and
``pip uninstall`` (which removes files, and only the directories it finds
wholly listed) left it empty. An empty ``detrix_auto/`` on ``sys.path`` still
imports, as a namespace package. An editable install has no use for the copy:
``detrix-auto run`` takes the shim from the checkout (``sitecustomize_shim/``).
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EditableWithoutPackageFiles(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version != "editable":
            return
        forced = self.build_config.get_force_include()
        build_data["force_include_editable"] = {
            source: target
            for source, target in forced.items()
            if not target.replace("\\", "/").startswith("detrix_auto/")
        }
