"""Shared test harness: capture sink, private Postfix lab, milter processes, milter client.

Importable as ``support`` because ``tests/`` (which has no ``__init__.py``) is put on
``sys.path`` by pytest for ``tests/conftest.py``.
"""
