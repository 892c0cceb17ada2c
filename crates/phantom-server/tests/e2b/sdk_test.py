#!/usr/bin/env python3
"""E2B's unchanged Python SDKs against `phantom-supervisor --e2b-bind`.

    sdk_test.py TARGET_DIR   (holds phantom and phantom-supervisor)

Starts a supervisor with its own state directory, makes two keys with
`phantom keys add --e2b`, points the SDK at it with the environment variables a user
sets (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY) and checks what the issue lists.
Prints one line per check; exits 1 if any failed. Run by scripts/test-e2b.sh.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time

BIN_DIR = sys.argv[1]
failed = 0


def check(what, ok, detail=""):
    global failed
    print(("ok   " if ok else "FAIL ") + what + ("" if ok else f": {detail!r}"))
    if not ok:
        failed = 1


def raises(what, exc_name, f):
    """Check that f() raises the SDK exception named exc_name (or a subclass)."""
    try:
        f()
    except Exception as e:  # the SDK's own exception classes
        names = [c.__name__ for c in type(e).__mro__]
        check(what, exc_name in names, f"{type(e).__name__}: {e}")
        return e
    check(what, False, "no exception")
    return None


def sdk_checks(key, other_key):
    from e2b import Sandbox, CommandExitException

    # Create with metadata and envs; the template conventions.
    sb = Sandbox.create(metadata={"suite": "e2b", "run": "1"}, envs={"GREETING": "hello"})
    check("create returns a sandbox id", bool(re.fullmatch(r"i[a-z0-9]{19}", sb.sandbox_id)), sb.sandbox_id)

    streamed = []
    r = sb.commands.run("echo $GREETING; pwd; echo $HOME; touch /home/user/w /tmp/t && echo writable",
                        on_stdout=lambda s: streamed.append(s))
    check("commands.run sees the sandbox's envs", r.stdout.splitlines()[0] == "hello", r.stdout)
    check("the working directory and HOME are /home/user", r.stdout.splitlines()[1:3] == ["/home/user", "/home/user"], r.stdout)
    check("/home/user and /tmp are writable", "writable" in r.stdout, r.stdout + r.stderr)
    check("on_stdout streamed the output", "".join(streamed) == r.stdout, streamed)
    r = sb.commands.run("echo per-call $X", envs={"X": "yes"}, cwd="/tmp")
    check("a call's envs and cwd", r.stdout == "per-call yes\n", r.stdout)

    e = raises("a non-zero exit raises CommandExitException", "CommandExitException",
               lambda: sb.commands.run("echo out; echo err >&2; exit 7"))
    if e is not None:
        check("the exception carries exit code and output", e.exit_code == 7 and e.stdout == "out\n" and e.stderr == "err\n",
              (e.exit_code, e.stdout, e.stderr))

    # Background command, list, kill.
    h = sb.commands.run("sleep 60", background=True)
    pids = [p.pid for p in sb.commands.list()]
    check("a background command is listed", h.pid in pids, pids)
    started = time.time()
    check("commands.kill kills it", sb.commands.kill(h.pid) is True)
    try:
        h.wait()
        check("the killed command ends", False, "wait() returned normally")
    except CommandExitException:
        check("the killed command ends at once", time.time() - started < 5, time.time() - started)
    check("a killed command is no longer listed", h.pid not in [p.pid for p in sb.commands.list()])

    # Stdin: send, stream, close; a process without stdin says so.
    h = sb.commands.run("cat; echo done", background=True, stdin=True)
    sb.commands.send_stdin(h.pid, "hello\n")
    sb.commands.stream_input(h.pid, ["a", b"b", "c\n"])
    sb.commands.close_stdin(h.pid)
    r = h.wait()
    check("send_stdin, stream_input and close_stdin reach the command", r.stdout == "hello\nabc\ndone\n", r.stdout)
    h = sb.commands.run("sleep 5", background=True)
    raises("send_stdin to a command started without stdin is refused", "SandboxException",
           lambda: sb.commands.send_stdin(h.pid, "x"))
    sb.commands.kill(h.pid)

    # A PTY: an interactive bash with a terminal of the size asked, input and resize.
    from e2b import PtySize
    term = sb.pty.create(PtySize(rows=24, cols=80))
    sb.pty.send_stdin(term.pid, b"stty size; test -t 0 && test -t 1 && echo IS-A-TTY\n")
    time.sleep(1)
    sb.pty.resize(term.pid, PtySize(rows=40, cols=120))
    sb.pty.send_stdin(term.pid, b"stty size; exit 5\n")
    seen = []
    try:
        term.wait(on_pty=lambda d: seen.append(bytes(d)))
        check("pty: the shell's exit", False, "no exit code")
    except CommandExitException as e:
        check("pty: the shell's exit code", e.exit_code == 5, e.exit_code)
    text = b"".join(seen).decode(errors="replace")
    check("pty: a terminal of the size asked, then resized", "24 80" in text and "40 120" in text and "IS-A-TTY" in text, text)

    # A command outlives its stream (disconnect) and can be connected to again.
    h = sb.commands.run("sleep 1; echo late; exit 3", background=True)
    h.disconnect()
    check("a disconnected command keeps running", h.pid in [p.pid for p in sb.commands.list()])
    again = sb.commands.connect(h.pid)
    e = raises("connect: the command's end comes through", "CommandExitException", again.wait)
    if e is not None:
        check("connect: output after attaching and the exit code", e.exit_code == 3 and e.stdout == "late\n",
              (e.exit_code, e.stdout))
    raises("connect to a finished command is NotFound", "SandboxException", lambda: sb.commands.connect(h.pid))

    # Files.
    info = sb.files.write("/home/user/dir/a.txt", "alpha")
    check("files.write", info.path == "/home/user/dir/a.txt", info)
    check("files.read (relative to the home)", sb.files.read("dir/a.txt") == "alpha")
    sb.files.write_files([{"path": "m1.txt", "data": "1"}, {"path": "/home/user/m2.bin", "data": b"\x00\x01"}])
    check("files.write_files and read bytes", sb.files.read("m2.bin", format="bytes") == b"\x00\x01")
    names = sorted(e.name for e in sb.files.list("/home/user"))
    check("files.list", {"dir", "m1.txt", "m2.bin"} <= set(names), names)
    check("files.make_dir", sb.files.make_dir("/home/user/new/sub") is True)
    check("files.exists", sb.files.exists("new/sub") and not sb.files.exists("nope"))
    moved = sb.files.rename("dir/a.txt", "b.txt")
    check("files.rename", moved.path == "/home/user/b.txt" and sb.files.read("b.txt") == "alpha", moved)
    sb.files.remove("new")
    check("files.remove", not sb.files.exists("new"))
    r = sb.commands.run("cat b.txt m1.txt")
    check("files written are what commands see", r.stdout == "alpha1", r.stdout)
    raises("a missing file is FileNotFoundException", "FileNotFoundException", lambda: sb.files.read("missing"))
    raises("a path outside the home is refused", "InvalidArgumentException", lambda: sb.files.read("/etc/passwd"))

    # Watching a directory (the sync SDK polls a watcher), recursively; a symlink
    # out of the home is no directory to watch.
    sb.files.make_dir("watched")
    w = sb.files.watch_dir("/home/user/watched", recursive=True)
    sb.files.write("watched/new.txt", "x")
    sb.commands.run("mkdir /home/user/watched/d")
    seen = {(e.name, e.type.name) for e in w.get_new_events()}
    sb.commands.run("echo y > /home/user/watched/d/inner && chmod 600 /home/user/watched/new.txt && rm /home/user/watched/new.txt")
    seen |= {(e.name, e.type.name) for e in w.get_new_events()}
    want = {("new.txt", "CREATE"), ("new.txt", "WRITE"), ("d", "CREATE"), ("d/inner", "CREATE"),
            ("new.txt", "CHMOD"), ("new.txt", "REMOVE")}
    check("watch_dir: changes, in subdirectories too", want <= seen, sorted(seen))
    w.stop()
    sb.commands.run("ln -s /etc /home/user/etc-link")
    raises("watch_dir through a symlink out of the home is refused", "SandboxException",
           lambda: sb.files.watch_dir("/home/user/etc-link"))

    # Metrics: from the sandbox's cgroup and its workspace.
    sb.commands.run("head -c 3000000 /dev/zero > /home/user/big; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
    m = sb.get_metrics()[-1]
    check("get_metrics: memory, disk and CPU in use", m.mem_used > 1_000_000 and m.disk_used >= 3_000_000
          and m.disk_total >= m.disk_used and m.cpu_used_pct > 0 and m.mem_total >= m.mem_used, m)
    sb.files.remove("big")

    # Egress rules: allowOut is the egress proxy's allow list; anything else is refused.
    net = Sandbox.create(network={"allow_out": ["pypi.test", "*.corp.test"], "deny_out": ["0.0.0.0/0"]})
    r = net.commands.run("""python3 - <<'EOF'
import os, urllib.request, urllib.error
print(os.environ.get("HTTPS_PROXY", "none").startswith("http://127.0.0.1:"))
try:
    urllib.request.urlopen("http://blocked.example/", timeout=10)
except urllib.error.HTTPError as e:
    print(e.code)
EOF""")
    check("network.allow_out: a proxy that refuses what is not listed", r.stdout.split() == ["True", "403"], r.stdout + r.stderr)
    net.kill()
    raises("network.allow_out with an address range is refused (400)", "SandboxException",
           lambda: Sandbox.create(network={"allow_out": ["10.0.0.0/8"]}))
    closed = Sandbox.create(allow_internet_access=False)
    r = closed.commands.run("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")
    check("allow_internet_access=False: no interface but lo (down)", r.stdout.split() == ["lo"], r.stdout)
    closed.kill()

    # Info, list, timeout, connect.
    info = sb.get_info()
    check("get_info: metadata and template", info.metadata == {"suite": "e2b", "run": "1"} and info.template_id == "base", info)
    listed = [s.sandbox_id for s in Sandbox.list().next_items()]
    check("list shows it", sb.sandbox_id in listed, listed)
    from e2b import SandboxQuery
    q = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b"})).next_items()
    check("list filters by metadata", [s.sandbox_id for s in q] == [sb.sandbox_id], q)
    q = Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items()
    check("list filters out other metadata", q == [], q)
    before = sb.get_info().end_at
    sb.set_timeout(3600)
    check("set_timeout moves the end", sb.get_info().end_at > before)
    again = Sandbox.connect(sb.sandbox_id)
    check("connect reaches the same sandbox", again.commands.run("cat b.txt").stdout == "alpha")
    check("is_running", sb.is_running())

    # Pause: its processes stopped (a counter does not move), its memory kept;
    # connect resumes it.
    counter = sb.commands.run("i=0; while true; do i=$((i+1)); echo $i > /home/user/count; sleep 0.05; done",
                              background=True)
    time.sleep(0.5)
    sb.pause()
    check("pause: the state is paused", sb.get_info().state.value == "paused", sb.get_info().state)
    raises("a paused sandbox refuses commands", "SandboxException", lambda: sb.commands.run("true"))
    frozen_at = time.time()
    time.sleep(1.5)
    resumed = Sandbox.connect(sb.sandbox_id)
    c1 = int(resumed.files.read("count"))
    time.sleep(0.5)
    c2 = int(resumed.files.read("count"))
    check("while paused nothing ran; after connect it goes on", c2 > c1 and c1 < 10 + 0.5 / 0.05 + 5,
          (c1, c2, time.time() - frozen_at))
    check("connect resumed it", sb.get_info().state.value == "running")
    sb.commands.kill(counter.pid)

    # Snapshots: the home into the content-addressed store; a sandbox made from one.
    snap = sb.create_snapshot(name="suite-snap")
    check("create_snapshot", snap.snapshot_id == "suite-snap", snap)
    check("list_snapshots", "suite-snap" in [s.snapshot_id for s in Sandbox.list_snapshots().next_items()])
    from_snap = Sandbox.create(template=snap.snapshot_id)
    check("a sandbox made from a snapshot has its files", from_snap.files.read("b.txt") == "alpha")
    from_snap.kill()

    # Another key: "not found", as for E2B.
    os.environ["E2B_API_KEY"] = other_key
    raises("another key cannot connect", "NotFoundException", lambda: Sandbox.connect(sb.sandbox_id))
    check("another key does not list it", sb.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()])
    check("another key cannot kill it (kill answers False: not found)", Sandbox.kill(sb.sandbox_id) is False)
    raises("another key cannot read its info", "NotFoundException", lambda: Sandbox.get_info(sb.sandbox_id))
    e = raises("another key cannot start from its snapshot", "SandboxException", lambda: Sandbox.create(template="suite-snap"))
    check("... which is not found for it", e is not None and getattr(e, "status_code", None) == 404, e)
    os.environ["E2B_API_KEY"] = key

    # Refusals.
    os.environ["E2B_API_KEY"] = "e2b_" + "0" * 40
    raises("an unknown key is AuthenticationException", "AuthenticationException", lambda: Sandbox.create())
    os.environ["E2B_API_KEY"] = key
    e = raises("an unknown template is refused", "SandboxException", lambda: Sandbox.create(template="no-such-template"))
    check("... with 404 and a message naming the templates", e is not None and getattr(e, "status_code", None) == 404
          and "base" in str(e), e)

    # A short timeout: the sandbox goes by itself.
    short = Sandbox.create(timeout=2)
    time.sleep(4)
    check("a sandbox past its timeout is gone", short.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()])

    sb.kill()
    check("kill removes it", sb.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()])


def limits_checks(small, key):
    """A key's limits hold on the E2B API as on /api/v2."""
    from e2b import Sandbox
    os.environ["E2B_API_KEY"] = small
    made = [Sandbox.create(), Sandbox.create()]
    raises("a key's max_concurrent stops a third sandbox (429: RateLimitException)", "RateLimitException",
           lambda: made.append(Sandbox.create()))
    for sb in made:
        sb.kill()
    os.environ["E2B_API_KEY"] = key


def code_interpreter_checks():
    import base64
    from e2b_code_interpreter import Sandbox
    sb = Sandbox.create()
    check("code interpreter: the template is code-interpreter-v1", sb.get_info().template_id == "code-interpreter-v1")
    sb.run_code("x = 1")
    e = sb.run_code("x + 1")
    check("a context keeps state: x = 1 then x + 1 gives 2", e.text == "2", e)
    e = sb.run_code("print('out'); import sys; print('err', file=sys.stderr)")
    check("stdout and stderr are the logs", e.logs.stdout == ["out\n"] and e.logs.stderr == ["err\n"], e.logs)
    streamed = []
    sb.run_code("for i in range(3): print(i)", on_stdout=lambda m: streamed.append(m.line))
    check("on_stdout streams", "".join(streamed) == "0\n1\n2\n", streamed)
    e = sb.run_code("def f():\n    raise ValueError('bad value')\nf()")
    check("an exception: name, value, traceback", e.error is not None and e.error.name == "ValueError"
          and e.error.value == "bad value" and "in f" in e.error.traceback and "_run" not in e.error.traceback, e.error)
    e = sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    png = e.results[0].png if e.results else None
    check("a matplotlib chart is a valid PNG", png is not None and base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n", e)
    e = sb.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    check("a DataFrame comes as text and HTML", bool(e.results) and e.results[0].html and "<table" in e.results[0].html
          and e.results[0].text, e)
    ctx = sb.create_code_context()
    sb.run_code("y = 5", context=ctx)
    check("a context of its own keeps its state", sb.run_code("y", context=ctx).text == "5")
    check("contexts are apart", sb.run_code("'y' in globals()").text == "False")
    check("list_code_contexts", ctx.id in [c.id for c in sb.list_code_contexts()])
    sb.restart_code_context(ctx)
    e = sb.run_code("y", context=ctx)
    check("restart forgets the state", e.error is not None and e.error.name == "NameError", e)
    sb.remove_code_context(ctx)
    check("remove_code_context", ctx.id not in [c.id for c in sb.list_code_contexts()])
    started = time.time()
    try:
        sb.run_code("import time\nwhile True: time.sleep(0.01)", timeout=2)
        check("a call's timeout", False, "no timeout")
    except Exception as ex:
        check("a call's timeout raises TimeoutException", type(ex).__name__ == "TimeoutException", ex)
    e = sb.run_code("x")
    check("an interrupted cell leaves the context usable", e.text == "1" and time.time() - started < 10, (e, time.time() - started))
    # JavaScript: its own default context, state kept, errors with name and stack.
    sb.run_code("let n = 40; console.log('js', {a: 1})", language="js")
    e = sb.run_code("n + 2", language="javascript")
    check("run_code in javascript keeps its state", e.text == "42", e)
    e = sb.run_code("console.log('out'); await Promise.resolve(7)", language="js")
    check("javascript: console output and top-level await", e.logs.stdout == ["out\n"] and e.text == "7", e)
    e = sb.run_code("null.x", language="js")
    check("javascript: an error's name and stack", e.error is not None and e.error.name == "TypeError"
          and "<cell>" in e.error.traceback, e.error)
    js = sb.create_code_context(language="js")
    check("a javascript context of its own", sb.run_code("typeof n", context=js).text == "'undefined'")
    try:
        sb.run_code("while (true) {}", language="js", timeout=2)
        check("javascript: a call's timeout", False, "no timeout")
    except Exception as ex:
        check("javascript: a call's timeout raises TimeoutException", type(ex).__name__ == "TimeoutException", ex)
    check("javascript: an interrupted cell leaves the context usable",
          sb.run_code("n", language="js").text == "40")
    samples = []
    for _ in range(50):
        t = time.perf_counter()
        sb.run_code("x + 1")
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    print(f"run_code('x + 1') in an existing context, 50 runs: p50 {samples[25]:.2f} ms, p95 {samples[47]:.2f} ms")
    sb.kill()


async def async_checks():
    from e2b import AsyncSandbox
    sb = await AsyncSandbox.create()
    r = await sb.commands.run("echo async")
    check("AsyncSandbox: commands.run", r.stdout == "async\n", r.stdout)
    await sb.files.write("x.txt", "y")
    check("AsyncSandbox: files", await sb.files.read("x.txt") == "y")
    events = []
    handle = await sb.files.watch_dir("/home/user", lambda e: events.append((e.name, e.type.name)))
    await sb.files.write("streamed.txt", "z")
    for _ in range(100):
        if ("streamed.txt", "CREATE") in events:
            break
        await asyncio.sleep(0.02)
    check("AsyncSandbox: watch_dir streams changes", ("streamed.txt", "CREATE") in events, events)
    await handle.stop()
    await sb.kill()


def timing(n=30):
    """Time to first command: Sandbox.create() then commands.run("true")."""
    from e2b import Sandbox
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        sb = Sandbox.create()
        sb.commands.run("true")
        samples.append((time.perf_counter() - t) * 1000)
        sb.kill()
    samples.sort()
    print(f"time to first command (create + run true), {n} runs: p50 {samples[n // 2]:.1f} ms, p95 {samples[int(n * 0.95)]:.1f} ms")


def main():
    with tempfile.TemporaryDirectory(prefix="phantom-e2b.") as work:
        os.chmod(work, 0o755)
        env = dict(os.environ, PHANTOM_STATE_DIR=os.path.join(work, "state"))
        os.makedirs(env["PHANTOM_STATE_DIR"])

        def new_key(name, *extra):
            out = subprocess.run([f"{BIN_DIR}/phantom", "keys", "add", name, "--e2b", "--json", *extra],
                                 env=env, check=True, capture_output=True, text=True).stdout
            return json.loads(out)["key"]

        key, other = new_key("sdk"), new_key("other")
        small = new_key("small", "--max-concurrent", "2")
        log = open(os.path.join(work, "supervisor.log"), "w+")
        server = subprocess.Popen(
            [f"{BIN_DIR}/phantom-supervisor", "--e2b-bind", "127.0.0.1:0", "--profiles", "default",
             "--zygote-pools", "1", "--socket", os.path.join(work, "engine.sock")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        try:
            url = None
            for _ in range(600):
                log.seek(0)
                m = re.search(r"E2B API on (http://\S+)", log.read())
                if m:
                    url = m.group(1)
                    break
                if server.poll() is not None:
                    break
                time.sleep(0.05)
            check("the supervisor prints its E2B address", url is not None)
            if url:
                os.environ.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=key)
                sdk_checks(key, other)
                limits_checks(small, key)
                code_interpreter_checks()
                asyncio.run(async_checks())
                js = os.environ.get("E2B_JS_MODULES")
                if js:
                    here = os.path.dirname(os.path.abspath(__file__))
                    r = subprocess.run(["node", os.path.join(here, "sdk_test.mjs")],
                                       env=dict(os.environ, NODE_PATH=js), capture_output=True, text=True, timeout=300)
                    print(r.stdout, end="")
                    check("the JavaScript SDK suite", r.returncode == 0, r.stderr[-2000:])
                if os.environ.get("E2B_TIMING"):
                    timing(int(os.environ["E2B_TIMING"]))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                check("the supervisor stops on SIGTERM", False)
            leftovers = subprocess.run([f"{BIN_DIR}/phantom", "list", "--all-owners", "--json"], env=env,
                                       capture_output=True, text=True).stdout
            subprocess.run([f"{BIN_DIR}/phantom", "destroy", "--all", "--every-owner"], env=env,
                           capture_output=True)
            if failed:
                log.seek(0)
                print(log.read()[-4000:])
                print("sandboxes left:", leftovers)
    sys.exit(failed)


main()
