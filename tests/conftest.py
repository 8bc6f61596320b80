import os

import pytest
import redis

from services import redis_server

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def redis_server_url():
    """A real redis-server started for this test session on a free port."""
    with redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url):
    """That server, emptied for each test: no counter, queue or session leaks between tests."""
    conn = redis.Redis.from_url(redis_server_url)
    conn.flushall()
    conn.close()
    return redis_server_url
