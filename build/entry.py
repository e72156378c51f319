"""PyInstaller entry point for the frozen ``opik-cipx`` binary.

A separate file rather than the ``opik_cipx.cli`` package itself so the package is
imported as a package (relative imports work) exactly as under ``pip install``.
"""

from opik_cipx.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
