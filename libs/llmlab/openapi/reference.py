"""The readable API reference at /docs: Swagger UI from the installed swagger-ui-py package, over /openapi.json.

Nothing is fetched from elsewhere at run time: the page's script and style sheet are files of that package,
served by the ops service at /docs/<name> (only the names below).
"""

from __future__ import annotations

import functools
import importlib.resources

import swagger_ui  # only its files (static/) are used: its web-framework handlers are not

ASSETS = {
    "swagger-ui-bundle.js": "application/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>llmlab API reference</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                                 persistAuthorization: true});
  </script>
</body>
</html>
"""


def page() -> bytes:
    return PAGE.encode()


@functools.lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of one of the page's files, or None for any other name."""
    if name not in ASSETS:
        return None
    return ASSETS[name], (importlib.resources.files(swagger_ui) / "static" / name).read_bytes()
