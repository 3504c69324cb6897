"""A small real MCP server (the SDK's MCPServer, formerly FastMCP) that the gateway tests put behind the proxy.

python tests/mcp_upstream.py     # serves on stdio
"""

from __future__ import annotations

from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("notes", instructions="Reads and writes text files.")


@server.tool()
def write_file(path: str, content: str) -> str:
    """Write `content` to the file at `path`, replacing what was there."""
    Path(path).write_text(content, encoding="utf-8")
    return f"wrote {len(content)} characters to {path}"


@server.tool()
def read_file(path: str) -> str:
    """The text of the file at `path`."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolError(f"no such file: {path}") from None


if __name__ == "__main__":
    server.run()
