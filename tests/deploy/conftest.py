"""Fixtures shared with the linking tests: server processes on their own stores."""

from tests.linking.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    make_key,
    second_database_url,
    server_factory,
    two_servers,
    two_servers_env,
)
