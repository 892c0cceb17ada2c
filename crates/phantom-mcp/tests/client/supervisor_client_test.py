#!/usr/bin/env python3
"""Drive the supervisor's MCP endpoint (`phantom-supervisor --bind`, `/mcp/v1/`) with
the official Python MCP SDK (PyPI `mcp`), authenticated by an API key of
`phantom keys add`, as the README's MCP client configuration shows.

    supervisor_client_test.py TARGET_DIR   (holds phantom and phantom-supervisor)

Run by scripts/test-mcp.sh in its throwaway venv. Prints one line per check and exits
1 if any failed.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

BIN_DIR = sys.argv[1]
failed = 0


def check(what, ok, detail=""):
    global failed
    print(("ok   " if ok else "FAIL ") + what + ("" if ok else f": {detail}"))
    if not ok:
        failed = 1


async def session(url, key):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    async with http:
        async with Client(streamable_http_client(url, http_client=http, max_sse_event_size=8 << 20)) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            check("supervisor /mcp/v1/: tools/list has run_code", "run_code" in tools, tools)
            r = await client.call_tool("run_code", {"language": "python", "code": "print(6*7)"})
            sc = r.structured_content or {}
            check("supervisor /mcp/v1/: run_code python", sc.get("stdout") == "42\n", sc)
            r = await client.call_tool("create_sandbox", {"name": "sdk-box"})
            check("supervisor /mcp/v1/: create_sandbox", not r.is_error, r)
            r = await client.call_tool("exec_in_sandbox", {"name": "sdk-box", "argv": ["sh", "-c", "echo kept > k.txt; cat k.txt"]})
            check("supervisor /mcp/v1/: exec_in_sandbox", (r.structured_content or {}).get("stdout") == "kept\n", r)
            r = await client.call_tool("destroy_sandbox", {"name": "sdk-box"})
            check("supervisor /mcp/v1/: destroy_sandbox", not r.is_error, r)


async def refused(url):
    http = httpx2.AsyncClient(timeout=30)
    async with http:
        try:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                await client.list_tools()
            check("supervisor /mcp/v1/: no key is refused", False, "connected without a key")
        except Exception as e:  # the SDK wraps the 401 (tests/mcp_supervisor.rs checks the status)
            check("supervisor /mcp/v1/: no key is refused", True, repr(e))


def main():
    with tempfile.TemporaryDirectory(prefix="phantom-mcp-sup.") as work:
        env = dict(os.environ, PHANTOM_STATE_DIR=os.path.join(work, "state"))
        os.makedirs(env["PHANTOM_STATE_DIR"])
        key = json.loads(subprocess.run(
            [f"{BIN_DIR}/phantom", "keys", "add", "sdk", "--json"],
            env=env, check=True, capture_output=True, text=True).stdout)["key"]
        log = open(os.path.join(work, "supervisor.log"), "w+")
        server = subprocess.Popen(
            [f"{BIN_DIR}/phantom-supervisor", "--bind", "127.0.0.1:0", "--profiles", "default",
             "--zygote-pools", "1", "--socket", os.path.join(work, "engine.sock")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        try:
            url = None
            for _ in range(600):
                log.seek(0)
                m = re.search(r"MCP \(Streamable HTTP\) on (http://\S+)", log.read())
                if m:
                    url = m.group(1)
                    break
                if server.poll() is not None:
                    break
                time.sleep(0.05)
            check("supervisor prints its MCP endpoint", url is not None and url.endswith("/mcp/v1/"), url)
            if url:
                asyncio.run(session(url, key))
                asyncio.run(refused(url))
        finally:
            server.terminate()
            server.wait(timeout=30)
            subprocess.run([f"{BIN_DIR}/phantom", "destroy", "--all", "--every-owner"], env=env,
                           capture_output=True)
            if failed:
                log.seek(0)
                print(log.read()[-3000:])
    sys.exit(failed)


main()
