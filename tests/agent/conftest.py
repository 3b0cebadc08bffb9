import pytest

from tests.agent.scripted_server import ScriptedServer, serving


@pytest.fixture
def server() -> ScriptedServer:
    yield from serving()
