"""Imported at start-up by every Python process of the gs:// tests (tests/gcs_emulator.py
puts this directory on PYTHONPATH), Beam's worker processes included.

Beam's GcsIO asks ``google.auth.default()`` for credentials and retries for
~41 s before it goes anonymous (which the emulator accepts). Once
``apache_beam.internal.gcp.auth`` is imported -- and only then, so no process
pays for importing Beam -- its ``get_service_credentials`` is made to return
None (anonymous) at once.
"""
import importlib.abc
import sys

_TARGET = "apache_beam.internal.gcp.auth"


class _PatchBeamAuth(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            module.get_service_credentials = lambda *args, **kwargs: None

        spec.loader.exec_module = patched
        return spec


sys.meta_path.insert(0, _PatchBeamAuth())
