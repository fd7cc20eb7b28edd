"""The web console: server-rendered pages for staff (``/console``), beside the API in the same
FastAPI service (:func:`console.web.install`). Every action calls the same services as the
``ykt`` CLI and the API; the pages hold no lifecycle rule of their own."""
