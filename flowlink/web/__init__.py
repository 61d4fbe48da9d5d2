"""The web console: server-rendered pages at ``/`` over the same domain functions as the API."""
