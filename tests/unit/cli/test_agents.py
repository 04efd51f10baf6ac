"""`cli/agents.fetch`, the one reader of an agent's ``/debug/*`` documents: each way an agent
gives no document is an AgentUnanswered that says which (a loopback HTTP server, no root)."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator

import pytest

from smesh.cli.agents import Agent, AgentUnanswered, ask, fetch

ANSWERS = {
    "/doc": (200, b'{"node": "node-9"}'),
    "/list": (200, b"[1, 2]"),
    "/text": (200, b"not json"),
    "/missing": (404, b"this agent's wiring has no authorization policy\n"),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = ANSWERS[self.path]
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def agent() -> Iterator[Agent]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Agent("node-9", "127.0.0.1", server.server_address[1], None, "restart it")
    finally:
        server.shutdown()
        server.server_close()


def test_a_json_object_is_the_document(agent: Agent) -> None:
    assert fetch(agent, "/doc") == {"node": "node-9"}
    ask(agent, "/doc")
    assert (agent.doc, agent.error) == ({"node": "node-9"}, None)


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/missing", "the agent answered /missing with 404: this agent's wiring has no"),
        ("/text", "the agent's answer is not JSON: "),
        ("/list", "the agent's answer is not a JSON object: b'[1, 2]'"),
    ],
)
def test_no_document_says_why(agent: Agent, path: str, said: str) -> None:
    with pytest.raises(AgentUnanswered, match="^" + re.escape(said)):
        fetch(agent, path)
    ask(agent, path)
    assert agent.error is not None
    assert agent.error.startswith(said)


def test_an_agent_known_down_is_not_asked(agent: Agent) -> None:
    agent.down = "the agent (pid 4242) is not running"
    with pytest.raises(AgentUnanswered, match=r"^the agent \(pid 4242\) is not running$"):
        fetch(agent, "/doc")
