# Phantom's Python interpreters that are started before their request:
#
# * `zygote.py` (no argument) — the pre-started interpreter of a pooled sandbox
#   (runtime: python, without a zygote). The sandbox's init starts it with `python3 -c`
#   — fenced exactly like any payload (session, rlimits, no_new_privs, Landlock, no
#   capabilities, seccomp) — so the interpreter and `site` are loaded before a request
#   exists. It tells the init it is ready, then waits on fd 3 for ONE request: a JSON
#   object {argv, env, cwd, rlimit_nproc, rlimit_data} with the run's stdin, stdout and
#   stderr attached (SCM_RIGHTS).
# * `zygote.py fork MODULE...` — a zygote (crates/phantom-engine/src/fork.rs): the
#   init of a zygote sandbox becomes this interpreter, unfenced but never running user
#   code. It imports the preload MODULEs, freezes the heap for copy-on-write, loads
#   libphantom_zygote.so (fd 4) and calls its serve loop, which forks each run into
#   fresh namespaces and returns only in a run's payload — fenced like a cold one —
#   with the request at fd 3 ({argv, env}; stdio, working directory and limits set).
#
# Either way the process then becomes that run, with the semantics of
# `python3 -c CODE ARGS...` / `python3 SCRIPT ARGS...`: sys.argv, sys.path[0], the
# environment, the working directory, a fresh __main__, the exit status (SystemExit,
# exit 1 with the traceback on an uncaught exception, SIGINT for KeyboardInterrupt),
# atexit handlers and flushed output. This file runs as '<phantom-zygote>'; those frames
# are cut from tracebacks.
import os
import socket
import sys

ZYGOTE = "<phantom-zygote>"


def serve():
    import json

    chan = socket.socket(fileno=3)
    # A FromInit message (crates/phantom-engine/src/channel.rs).
    chan.send(b'{"type": "ready"}')
    message, fds, _flags, _addr = socket.recv_fds(chan, 1 << 18, 3)
    chan.close()
    if len(fds) != 3 or not message:
        os._exit(125)
    request = json.loads(message)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    argv = request["argv"]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(dict(request["env"]))
    import resource

    for limit, value in ((resource.RLIMIT_NPROC, request.get("rlimit_nproc")), (resource.RLIMIT_DATA, request.get("rlimit_data"))):
        if value is not None:
            resource.setrlimit(limit, (value, value))
    return argv


def tell_failed(message):
    """A FromInit message (crates/phantom-engine/src/channel.rs) on the zygote's channel."""
    import json

    os.write(3, json.dumps({"type": "setup_failed", "message": message}).encode())


def fork_server(preload):
    import ctypes
    import gc
    import importlib
    import json
    import signal

    loaded = []
    for entry in preload:
        name = entry.rstrip("?")
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ModuleNotFoundError as e:
            # `numpy?`: only when installed (the missing module is this one or its
            # package, not one of its dependencies).
            if entry.endswith("?") and e.name is not None and name.split(".")[0] == e.name.split(".")[0]:
                continue
            tell_failed("preload: cannot import %s: %s: %s" % (name, type(e).__name__, e))
            os._exit(1)
        except BaseException as e:
            tell_failed("preload: cannot import %s: %s: %s" % (name, type(e).__name__, e))
            os._exit(1)
    os.write(3, json.dumps({"type": "preloaded", "modules": loaded}).encode())
    # Every object so far stays out of the collector's reach: a child that collects
    # garbage does not copy the zygote's pages by touching their headers.
    gc.freeze()
    # Children are reaped by the kernel; each run's own init restores SIGCHLD.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        lib = ctypes.PyDLL("/proc/self/fd/4")
    except OSError as e:
        # E.g. an image whose C library is not the host's.
        tell_failed("library: cannot load libphantom_zygote.so in this root: %s" % (e,))
        os._exit(1)
    api = ctypes.pythonapi
    serve = lib.phantom_zygote_serve
    serve.argtypes = [ctypes.c_void_p] * 3
    serve.restype = ctypes.c_int
    fd = serve(*(ctypes.cast(getattr(api, name), ctypes.c_void_p) for name in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child")))
    if fd < 0:
        # The engine closed the channel (-1), or the zygote cannot go on (-2, said).
        os._exit(0 if fd == -1 else 1)
    # A run's payload from here on, fenced.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with os.fdopen(fd, "rb") as f:
        request = json.loads(f.read())
    os.environ.clear()
    os.environ.update(dict(request["env"]))
    if "numpy" in sys.modules:
        # Its global generator was seeded in the zygote: every run would draw the same
        # numbers. (`random` reseeds itself after a fork.)
        sys.modules["numpy"].random.seed()
    return request["argv"]


def run(argv):
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    if argv[1] == "-c":
        sys.argv = ["-c"] + argv[3:]
        sys.path[0] = ""
        code = compile(argv[2], "<string>", "exec")
    else:
        path = argv[1]
        sys.argv = argv[1:]
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            sys.stderr.write("%s: can't open file %r: [Errno %d] %s\n" % (argv[0], os.path.abspath(path), e.errno, e.strerror))
            return 2
        sys.path[0] = os.path.dirname(os.path.realpath(path))
        main.__file__ = path
        main.__cached__ = None
        code = compile(source, path, "exec")
    exec(code, main.__dict__)
    return 0


def report(exc):
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == ZYGOTE:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def main():
    argv = fork_server(sys.argv[2:]) if sys.argv[1:2] == ["fork"] else serve()
    try:
        status = run(argv)
    except SystemExit as e:
        code = e.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code & 0xFF
        else:
            sys.stderr.write("%s\n" % (code,))
            status = 1
    except KeyboardInterrupt as e:
        import atexit
        import signal

        # As the interpreter does: the traceback, then death by SIGINT.
        report(e)
        atexit._run_exitfuncs()
        flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        status = 130
    except BaseException as e:
        report(e)
        status = 1
    import atexit

    atexit._run_exitfuncs()
    flush()
    os._exit(status)


main()
