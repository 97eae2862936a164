"""Task plug-ins of the one trainer. ``get_task(name)`` imports a task lazily."""

from __future__ import annotations

import importlib

# name -> "module:Class". A new task adds one line here and a module beside this file.
_REGISTRY = {
    "attributes": "jaxface.tasks.attributes:AttributesTask",
    "detection": "jaxface.tasks.detection:DetectionTask",
    "recognition": "jaxface.tasks.recognition:RecognitionTask",
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str):
    """The task class registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(available())}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
