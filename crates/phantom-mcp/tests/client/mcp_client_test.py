#!/usr/bin/env python3
"""Drive phantom-mcp with the official Python MCP SDK (PyPI `mcp`), over stdio and
over Streamable HTTP, on the handshake revisions (initialize, Mcp-Session-Id) and on
the 2026-07-28 revision (server/discover, no initialize).

    mcp_client_test.py PHANTOM_MCP_BINARY [--mode zygote|cold]

Run by scripts/test-mcp.sh (part of scripts/test.sh) in a throwaway venv. Prints one
line per check and exits 1 if any failed.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

BIN = sys.argv[1]
MODE = sys.argv[sys.argv.index("--mode") + 1] if "--mode" in sys.argv else "zygote"
MAX_OUTPUT = 1 << 20  # the server's default --max-output
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)
    if not ok:
        failures.append(name)


def structured(result):
    """The result's structuredContent, checked against its text copy."""
    sc = result.structured_content
    if sc is not None:
        text = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        assert text and json.loads(text[0]) == sc, "the text copy is not the structured content"
    return sc


def text_of(result):
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def processes_matching(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [p for p in out.stdout.split() if int(p) != os.getpid()]


async def run_checks(client, label, marker):
    tools = (await client.list_tools()).tools
    names = sorted(t.name for t in tools)
    check(f"{label}: tools/list", names == sorted([
        "get_metrics", "list_profiles", "run_code", "run_command", "create_sandbox", "exec_in_sandbox",
        "write_file", "read_file", "list_files", "destroy_sandbox", "list_sandboxes", "snapshot_sandbox",
        "list_processes", "kill_process", "start_process",
        "create_context", "list_contexts", "restart_context", "delete_context"]), names)
    check(f"{label}: every tool has input and output schemas",
          all(t.input_schema.get("type") == "object" and (t.output_schema or {}).get("type") == "object" for t in tools))

    r = await client.call_tool("run_code", {"language": "python", "code": "import sys; print(6*7); print(sys.argv)"})
    sc = structured(r)
    check(f"{label}: python", not r.is_error and sc["exit_code"] == 0 and sc["stdout"].startswith("42\n"), sc)
    check(f"{label}: python sees python3 -c argv", sc and "['-c']" in sc["stdout"], sc)

    r = await client.call_tool("run_code", {"language": "bash", "code": "echo out; echo err >&2; [[ 1 == 1 ]] && exit 3"})
    sc = structured(r)
    check(f"{label}: bash failure is a result with isError",
          r.is_error and sc["exit_code"] == 3 and sc["stdout"] == "out\n" and sc["stderr"] == "err\n", (r.is_error, sc))

    r = await client.call_tool("run_code", {
        "language": "python",
        "code": "import os; print(open('data/in.txt').read()); print(os.getcwd())",
        "files": [{"path": "data/in.txt", "content": "file content"}]})
    sc = structured(r)
    check(f"{label}: files land in /workspace", not r.is_error and sc["stdout"] == "file content\n/workspace\n", sc)

    r = await client.call_tool("run_code", {"language": "sh", "code": "cat", "stdin": "from stdin"})
    sc = structured(r)
    check(f"{label}: stdin", sc["stdout"] == "from stdin", sc)

    r = await client.call_tool("run_command", {"argv": ["sh", "-c", "echo $GREETING"], "env": {"GREETING": "hi"}})
    sc = structured(r)
    check(f"{label}: run_command with env", not r.is_error and sc["stdout"] == "hi\n", sc)

    t0 = time.monotonic()
    r = await client.call_tool("run_code", {"language": "python", "code": "import time; time.sleep(30)", "timeout": 1})
    took = time.monotonic() - t0
    sc = structured(r)
    check(f"{label}: timeout", r.is_error and sc["timed_out"] and took < 10
          and any("timed out" in n for n in sc["notes"]), (took, sc))

    r = await client.call_tool("run_code", {"language": "python",
                                            "code": "import sys; sys.stdout.write('x' * (5 << 20))"})
    sc = structured(r)
    check(f"{label}: 5 MiB output is truncated and said",
          sc["output_truncated"] and len(sc["stdout"]) == MAX_OUTPUT and sc["max_output_bytes"] == MAX_OUTPUT
          and any("truncated" in n for n in sc["notes"]),
          {k: sc[k] for k in ("output_truncated", "notes")} | {"len": len(sc["stdout"])})

    r = await client.call_tool("run_code", {"language": "python"})
    check(f"{label}: a missing argument says what to send",
          r.is_error and "`code` is missing" in text_of(r) and "print(1)" in text_of(r), text_of(r))
    r = await client.call_tool("run_command", {"argv": "ls -l"})
    check(f"{label}: argv as a string says to split it", r.is_error and '["sh", "-c", "ls -l"]' in text_of(r), text_of(r))
    r = await client.call_tool("run_code", {"language": "python", "code": "print(1)",
                                            "files": [{"path": "../escape.txt", "content": "x"}]})
    check(f"{label}: a path escape is refused, saying what to send",
          r.is_error and "`../escape.txt`" in text_of(r) and "relative to /workspace without `..`" in text_of(r),
          text_of(r))

    # Progress, then cancellation: the sandbox must be gone soon after.
    progress = []

    async def on_progress(p, total, message):
        progress.append((p, message))

    async def long_call():
        await client.call_tool("run_command", {"argv": ["sleep", marker], "timeout": 60},
                               progress_callback=on_progress)

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_call)
        deadline = time.monotonic() + 15
        while not processes_matching(f"sleep {marker}") and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        started = bool(processes_matching(f"sleep {marker}"))
        await anyio.sleep(2.5)
        tg.cancel_scope.cancel()
    check(f"{label}: the long run started", started)
    check(f"{label}: progress notifications", len(progress) >= 1, progress)
    deadline = time.monotonic() + 10
    while processes_matching(f"sleep {marker}") and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    check(f"{label}: cancellation kills the run", not processes_matching(f"sleep {marker}"))

    await sandbox_checks(client, label, marker)

    r = await client.call_tool("list_profiles", {})
    sc = structured(r)
    check(f"{label}: list_profiles", any(p["name"] == "python-dev" and "python" in p["default_for"] for p in sc["profiles"]), sc)
    r = await client.call_tool("get_metrics", {})
    sc = structured(r)
    check(f"{label}: get_metrics", sc["runs_served"] >= 7 and sc["latency_ms"]["p50"] is not None
          and sc["mode"] == MODE, sc)
    if MODE == "zygote":
        check(f"{label}: warm runs served", sc["warm"] >= 1 and sc["pools"], sc)


async def sandbox_checks(client, label, marker):
    """A persistent sandbox: create, write, exec, read, list, a path escape, snapshot,
    destroy."""
    name = re.sub(r"[^A-Za-z0-9]", "-", f"{label}-{marker}")
    r = await client.call_tool("create_sandbox", {"name": name, "profile": "default"})
    sc = structured(r)
    check(f"{label}: create_sandbox", not r.is_error and sc and sc["status"] == "running", text_of(r))
    r = await client.call_tool("create_sandbox", {"name": name})
    check(f"{label}: a second create of the name is refused", r.is_error and "exists already" in text_of(r), text_of(r))
    r = await client.call_tool("write_file", {"name": name, "path": "src/app.py", "content": "print('persisted')\n"})
    check(f"{label}: write_file", not r.is_error and structured(r)["bytes"] == 19, text_of(r))
    # A code context: state between run_code calls in the sandbox (the SDK checks the
    # structured result against run_code's output schema).
    r = await client.call_tool("create_context", {"sandbox": name})
    sc = structured(r)
    check(f"{label}: create_context", not r.is_error and sc and sc["language"] == "python", text_of(r))
    ctx = sc["id"] if sc else ""
    r = await client.call_tool("run_code", {"language": "python", "code": "x = 1", "sandbox": name, "context": ctx})
    r = await client.call_tool("run_code", {"language": "python", "code": "x + 1", "sandbox": name, "context": ctx})
    sc = structured(r)
    check(f"{label}: run_code in a context keeps state", not r.is_error and sc and
          [x.get("text") for x in sc["results"] if x.get("is_main_result")] == ["2"], text_of(r))
    r = await client.call_tool("delete_context", {"sandbox": name, "context": ctx})
    check(f"{label}: delete_context", not r.is_error, text_of(r))
    r = await client.call_tool("exec_in_sandbox", {"name": name, "argv": ["python3", "src/app.py"]})
    sc = structured(r)
    check(f"{label}: exec_in_sandbox runs the written file", not r.is_error and sc["stdout"] == "persisted\n", sc)
    r = await client.call_tool("exec_in_sandbox", {"name": name, "argv": ["sh", "-c", "echo kept > out.txt; ln -s /etc/shadow shadow; exit 4"]})
    sc = structured(r)
    check(f"{label}: exec_in_sandbox failure is a result with isError", r.is_error and sc["exit_code"] == 4, sc)
    r = await client.call_tool("read_file", {"name": name, "path": "/workspace/out.txt"})
    check(f"{label}: read_file sees what exec wrote", not r.is_error and structured(r)["content"] == "kept\n", text_of(r))
    r = await client.call_tool("list_files", {"name": name})
    entries = sorted(e["name"] for e in structured(r)["entries"]) if not r.is_error else []
    check(f"{label}: list_files", entries == ["out.txt", "shadow", "src"], text_of(r))
    for path in ["shadow", "../../../etc/passwd", "/etc/passwd"]:
        r = await client.call_tool("read_file", {"name": name, "path": path})
        check(f"{label}: read_file {path} (an escape) is refused",
              r.is_error and ("leaves the workspace" in text_of(r) or "outside the workspace" in text_of(r))
              and "root:" not in text_of(r), text_of(r))
    r = await client.call_tool("snapshot_sandbox", {"name": name})
    check(f"{label}: snapshot_sandbox", not r.is_error and structured(r)["files"] == 2, text_of(r))
    # Background processes: a job left behind does not hold the exec; listed, killed.
    r = await client.call_tool("exec_in_sandbox", {"name": name, "argv": ["sh", "-c", "sleep 308 & echo started"]})
    check(f"{label}: exec_in_sandbox returns while its background job runs", not r.is_error, text_of(r))
    r = await client.call_tool("start_process", {"name": name, "argv": ["sleep", "309"]})
    pid = structured(r).get("pid") if not r.is_error else None
    check(f"{label}: start_process gives a pid", isinstance(pid, int), text_of(r))
    r = await client.call_tool("list_processes", {"name": name})
    listed = [p["pid"] for p in structured(r)["processes"]] if not r.is_error else []
    check(f"{label}: list_processes", not r.is_error and isinstance(listed, list), text_of(r))
    r = await client.call_tool("kill_process", {"name": name, "pid": pid if isinstance(pid, int) else 0, "signal": "kill"})
    check(f"{label}: kill_process", not r.is_error and structured(r)["signal"] == "kill", text_of(r))
    r = await client.call_tool("list_sandboxes", {})
    check(f"{label}: list_sandboxes", not r.is_error and any(s["name"] == name for s in structured(r)["sandboxes"]), text_of(r))
    r = await client.call_tool("destroy_sandbox", {"name": name})
    check(f"{label}: destroy_sandbox", not r.is_error and structured(r)["status"] == "destroyed", text_of(r))
    r = await client.call_tool("exec_in_sandbox", {"name": name, "argv": ["true"]})
    check(f"{label}: exec into a destroyed sandbox says so", r.is_error and "no sandbox named" in text_of(r), text_of(r))


async def stdio(protocol_mode, marker):
    # The SDK passes a stdio server only a few variables; the state directory too.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PHANTOM_STATE_DIR", "TMPDIR")}
    params = StdioServerParameters(command=BIN, args=["--transport", "stdio", "--mode", MODE], env=env)
    async with Client(params, mode=protocol_mode) as client:
        check(f"stdio/{protocol_mode}: negotiated {client.protocol_version}", True)
        await run_checks(client, f"stdio/{protocol_mode}", marker)
        return client.protocol_version


async def http(url, protocol_mode, marker):
    # A result carries the output twice (structuredContent and its text copy): at the
    # default 1 MiB cap that is more than the SDK's default 1 MiB per SSE event.
    transport = streamable_http_client(url, max_sse_event_size=8 << 20)
    async with Client(transport, mode=protocol_mode) as client:
        check(f"http/{protocol_mode}: negotiated {client.protocol_version}", True)
        await run_checks(client, f"http/{protocol_mode}", marker)
        return client.protocol_version


def post(url, body, headers=None):
    """A raw JSON-RPC POST; returns (status, headers, messages)."""
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read().decode()
            status, rh = resp.status, resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers, []
    if rh.get("Content-Type", "").startswith("text/event-stream"):
        msgs = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:") and line[5:].strip()]
    else:
        msgs = [json.loads(raw)] if raw.strip() else []
    return status, rh, msgs


def raw_http_checks(url):
    # 2025-06-18: initialize gives an Mcp-Session-Id, which the next requests carry.
    status, headers, msgs = post(url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
    sid = headers.get("Mcp-Session-Id")
    check("http/2025-06-18: initialize", status == 200 and msgs and msgs[0]["result"]["protocolVersion"] == "2025-06-18"
          and sid, (status, msgs))
    common = {"Mcp-Session-Id": sid or "", "MCP-Protocol-Version": "2025-06-18"}
    post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, common)
    status, _, msgs = post(url, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "run_code", "arguments": {"language": "sh", "code": "echo raw"}}}, common)
    check("http/2025-06-18: tools/call in the session",
          status == 200 and msgs and msgs[-1]["result"]["structuredContent"]["stdout"] == "raw\n", msgs)
    status, _, _ = post(url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                        {"Mcp-Session-Id": "no-such-session", "MCP-Protocol-Version": "2025-06-18"})
    check("http/2025-06-18: an unknown session is refused", 400 <= status < 500, status)

    # 2026-07-28: server/discover lists what we speak.
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    status, _, msgs = post(url, {"jsonrpc": "2.0", "id": 4, "method": "server/discover", "params": {"_meta": meta}},
                           {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "server/discover"})
    versions = msgs[0].get("result", {}).get("supportedVersions", []) if msgs else []
    check("http/2026-07-28: server/discover lists 2025-06-18, 2025-11-25, 2026-07-28",
          status == 200 and {"2025-06-18", "2025-11-25", "2026-07-28"} <= set(versions), (status, msgs))

    # DNS rebinding: a foreign Host or Origin is refused.
    init = {"jsonrpc": "2.0", "id": 5, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    status, _, _ = post(url, init, {"Host": "evil.example"})
    check("http: a foreign Host is refused", status == 403, status)
    status, _, _ = post(url, init, {"Origin": "http://evil.example"})
    check("http: a foreign Origin is refused", status == 403, status)
    status, _, _ = post(url, init, {"Origin": "http://localhost:3000"})
    check("http: a loopback Origin is accepted", status == 200, status)


class HttpServer:
    def __init__(self, *extra):
        self.proc = subprocess.Popen([BIN, "--transport", "http", "--port", "0", "--mode", MODE, *extra],
                                     stderr=subprocess.PIPE, text=True)
        self.url = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            sys.stderr.write(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if not self.url:
            raise SystemExit(f"phantom-mcp --transport http did not start (exit {self.proc.poll()})")
        # Keep draining its log so that it never blocks on a full pipe.
        self.drain = asyncio.get_event_loop().run_in_executor(None, lambda: [sys.stderr.write(l) for l in self.proc.stderr])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        check("http: the server stops on SIGTERM", code == 0, code)


def api_key_checks():
    with tempfile.TemporaryDirectory() as d:
        key = os.path.join(d, "key")
        with open(key, "w") as f:
            f.write("test-key-0123456789abcdef\n")
        out = subprocess.run([BIN, "--transport", "http", "--bind", "0.0.0.0", "--port", "0"],
                             capture_output=True, text=True, timeout=30)
        check("http: a non-loopback bind without --api-key-file is refused",
              out.returncode == 2 and "--api-key-file" in out.stderr, (out.returncode, out.stderr))
        server = HttpServer("--api-key-file", key)
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        status, headers, _ = post(server.url, init)
        check("http: no API key gets 401", status == 401 and headers.get("WWW-Authenticate") == "Bearer", status)
        status, _, _ = post(server.url, init, {"Authorization": "Bearer wrong-key-0123456789abc"})
        check("http: a wrong API key gets 401", status == 401, status)
        status, _, msgs = post(server.url, init, {"Authorization": "Bearer test-key-0123456789abcdef"})
        check("http: the API key is accepted", status == 200 and msgs and "result" in msgs[0], (status, msgs))
        server.stop()


async def main():
    base = 31.0 + (os.getpid() % 50) / 100  # a sleep duration no other process uses
    for i, mode in enumerate(["legacy", "auto"]):
        version = await stdio(mode, f"{base + i * 0.001:.3f}")
        if mode == "auto":
            check("stdio/auto: the SDK chose 2026-07-28", version == "2026-07-28", version)
    server = HttpServer()
    try:
        for i, mode in enumerate(["legacy", "auto"]):
            version = await http(server.url, mode, f"{base + (2 + i) * 0.001:.3f}")
            if mode == "auto":
                check("http/auto: the SDK chose 2026-07-28", version == "2026-07-28", version)
        raw_http_checks(server.url)
    finally:
        server.stop()
    api_key_checks()
    print(f"\n{len(failures)} failed" if failures else "\nall MCP client checks passed")
    sys.exit(1 if failures else 0)


asyncio.run(main())
