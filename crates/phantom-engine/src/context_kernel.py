# A code context's interpreter: a long-lived python3 inside a persistent sandbox,
# started as `python3 -c <this file>` by phantom's front end, which writes one JSON
# request per line to its stdin and reads one JSON event per line from its stdout.
#
#   request: {"id": N, "code": "...", "env": {...}}   or   {"interrupt": true}
#   events:  {"id": N, "type": "stdout"|"stderr", "text": "..."}
#            {"id": N, "type": "result", "text": ..., "html": ..., "png": ..., "is_main_result": bool}
#            {"id": N, "type": "error", "name": ..., "value": ..., "traceback": ...}
#            {"id": N, "type": "done", "execution_count": K}
#
# State (the globals of the cells) persists between requests. The program's own
# stdout and stderr (fd 1 and 2, so subprocesses too) are pipes read into events; the
# channel is a private copy of the original stdout. An interrupt raises
# KeyboardInterrupt in the running cell.
import ast
import base64
import io
import json
import os
import queue
import signal
import sys
import threading
import traceback

os.environ.setdefault("MPLBACKEND", "Agg")

_channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
_lock = threading.Lock()
_current = {"id": None}


def _emit(event):
    line = json.dumps(event, ensure_ascii=False)
    with _lock:
        _channel.write(line + "\n")
        _channel.flush()


def _pump(fd, kind):
    """Turn what is written to a pipe (fd 1 or 2 of this process) into events."""
    reader = os.fdopen(fd, "rb", buffering=0)
    while True:
        data = reader.read(65536)
        if not data:
            return
        _emit({"id": _current["id"], "type": kind, "text": data.decode("utf-8", "replace")})


def _redirect(target_fd, kind):
    r, w = os.pipe()
    os.dup2(w, target_fd)
    os.close(w)
    threading.Thread(target=_pump, args=(r, kind), daemon=True).start()


class _Stream(io.TextIOBase):
    """sys.stdout / sys.stderr of the cells: each write is an event, in order."""

    def __init__(self, kind, fd):
        self.kind = kind
        self._fd = fd
        self._pending = ""

    def writable(self):
        return True

    def write(self, text):
        # Line-buffered: `print("hi")` is one event "hi\n", as a notebook shows it.
        self._pending += str(text)
        if "\n" in self._pending:
            cut = self._pending.rindex("\n") + 1
            line, self._pending = self._pending[:cut], self._pending[cut:]
            _emit({"id": _current["id"], "type": self.kind, "text": line})
        return len(text)

    def flush(self):
        if self._pending:
            text, self._pending = self._pending, ""
            _emit({"id": _current["id"], "type": self.kind, "text": text})

    def fileno(self):
        return self._fd

    def isatty(self):
        return False


# What writes to fd 1 and 2 directly (subprocesses, C code) is read by the pumps.
_redirect(1, "stdout")
_redirect(2, "stderr")
sys.stdout = _Stream("stdout", 1)
sys.stderr = _Stream("stderr", 2)

_main = threading.main_thread().ident
_requests = queue.Queue()


def _read_requests():
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if request.get("interrupt"):
            if _current["id"] is not None:
                signal.pthread_kill(_main, signal.SIGINT)
            continue
        _requests.put(request)
    _requests.put(None)


threading.Thread(target=_read_requests, daemon=True).start()

_globals = {"__name__": "__main__", "__builtins__": __builtins__}
_count = 0


def _figures():
    """matplotlib figures left open by the cell, as PNG results (then closed)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    out = []
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out.append({"png": base64.b64encode(buf.getvalue()).decode(), "text": repr(fig)})
    plt.close("all")
    return out


def _formats(value):
    """The representations of a value, as a notebook shows them."""
    result = {"text": repr(value)}
    for method, key in (("_repr_html_", "html"), ("_repr_markdown_", "markdown"),
                        ("_repr_svg_", "svg"), ("_repr_latex_", "latex"), ("_repr_json_", "json")):
        f = getattr(value, method, None)
        if callable(f):
            try:
                rendered = f()
            except Exception:
                rendered = None
            if rendered is not None:
                result[key] = rendered
    f = getattr(value, "_repr_png_", None)
    if callable(f):
        try:
            png = f()
            if png:
                result["png"] = base64.b64encode(png).decode()
        except Exception:
            pass
    if type(value).__module__.startswith("matplotlib") and hasattr(value, "savefig"):
        buf = io.BytesIO()
        value.savefig(buf, format="png")
        result["png"] = base64.b64encode(buf.getvalue()).decode()
    return result


def _run(request):
    global _count
    _count += 1
    rid = request.get("id")
    _current["id"] = rid
    for k, v in (request.get("env") or {}).items():
        os.environ[str(k)] = str(v)
    try:
        tree = ast.parse(request.get("code", ""), "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), _globals)
        value = eval(compile(last, "<cell>", "eval"), _globals) if last is not None else None
        for fig in _figures():
            _emit(dict(fig, id=rid, type="result", is_main_result=False))
        if value is not None:
            _emit(dict(_formats(value), id=rid, type="result", is_main_result=True))
    except BaseException as e:  # the cell's error, KeyboardInterrupt and SystemExit included
        sys.stdout.flush()
        sys.stderr.flush()
        _emit({
            "id": rid,
            "type": "error",
            "name": type(e).__name__,
            "value": str(e),
            # From the cell's frame on: the kernel's own frame is not the user's.
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)),
        })
    finally:
        # What the cell wrote without a newline, and what its subprocesses wrote,
        # reach the channel before "done".
        sys.stdout.flush()
        sys.stderr.flush()
        _drain()
        _current["id"] = None
        _emit({"id": rid, "type": "done", "execution_count": _count})


def _drain():
    """Wait until the pipes of fd 1 and 2 are empty (the pumps have read them)."""
    import fcntl
    import termios
    import time
    for fd in (1, 2):
        for _ in range(200):
            buf = bytearray(4)
            try:
                fcntl.ioctl(fd, termios.FIONREAD, buf)
            except OSError:
                break
            if int.from_bytes(buf, sys.byteorder) == 0:
                break
            time.sleep(0.001)
    # A pump may hold what it just read: give it a moment when anything was pending.
    time.sleep(0)


signal.signal(signal.SIGINT, signal.default_int_handler)
_emit({"id": None, "type": "ready"})
while True:
    try:
        request = _requests.get()
    except KeyboardInterrupt:
        continue
    if request is None:
        break
    try:
        _run(request)
    except KeyboardInterrupt:
        # An interrupt that came between cells.
        _current["id"] = None
