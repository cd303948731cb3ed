"""Print the API's OpenAPI document: `python -m meterwax.api.openapi > schemas/openapi.json`
(tests/test_api.py keeps the committed copy in sync with the app)."""

from __future__ import annotations

import sys

from meterwax.api.app import create_app, openapi_document
from meterwax.api.backends import FolderBackend


def main() -> int:
    # The document depends on the routes alone; a back end that is never opened will do.
    sys.stdout.buffer.write(openapi_document(create_app(FolderBackend("."))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
