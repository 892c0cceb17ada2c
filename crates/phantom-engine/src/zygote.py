# The pre-warmed Python interpreter of a pooled sandbox (runtime: python).
#
# The sandbox's init starts this with `python3 -c` — fenced exactly like any payload
# (session, rlimits, no_new_privs, Landlock, no capabilities, seccomp) — so the
# interpreter and `site` are loaded before a request exists. It tells the init it is
# ready, then waits on fd 3 for ONE request: a JSON object {argv, env, cwd,
# rlimit_nproc, rlimit_data} with the run's stdin, stdout and stderr attached
# (SCM_RIGHTS). It then becomes that run, with the semantics of
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
    argv = serve()
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
