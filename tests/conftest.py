import os

import pytest

from services import redis_server

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server started for this test session on a free port."""
    with redis_server() as url:
        yield url
