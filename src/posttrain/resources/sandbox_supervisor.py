"""Sandbox supervisor: run one untrusted program and its tests, report JSON on stdout.

Started by `posttrain.rollout.sandbox` as `python -I -S sandbox_supervisor.py` (stdlib only,
no site-packages, no PYTHON* variables) in a fresh working directory with a clean
environment, usually as PID 1 of new network/PID/mount namespaces. It reads a JSON spec
on stdin, forks the program, and prints one JSON report line when everything it started
is dead. This file is not imported by posttrain; it is a script.

    supervisor (this process: subreaper or PID 1, not dumpable, never runs user code)
      └── child: rlimits -> [throwaway uid] -> no_new_privs -> [audit guard] -> program -> tests
            └── anything the program forks (bounded by RLIMIT_NPROC, killed at the end)

Records travel from the child on a pipe (fd 3) as JSON lines tagged with a per-run token;
lines without the token are ignored. The child never sees expected values of equality tests.
"""
import fcntl
import json
import os
import resource
import selectors
import signal
import sys
import time

RESULT_FD = 3
VIOLATION_EXIT = 86
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
RECORDS_LIMIT = 4 * 2**20  # bytes of records kept; a program that floods fd 3 cannot exhaust us


def _prctl(option, value):
    """prctl(2) through libc; quietly does nothing where unavailable (not Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass


# -------------------------------------------------------------------- read-only filesystem

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
_KEPT_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
                     "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}


def _unescape(field):
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def make_filesystem_readonly(workdir):
    """Inside our private mount namespace: make every mount read-only except `workdir`.

    The working directory is bind-mounted onto itself first, so it is a mount of its own that
    stays writable. Per-mount flags that a user namespace locks (nosuid, nodev, noexec, atime)
    are kept, since changing them is refused. Returns the mount points that could not be
    remounted (they stay writable; the guard and file permissions still apply there)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    workdir = os.path.realpath(workdir)
    if libc.mount(workdir.encode(), workdir.encode(), None, MS_BIND, None) != 0:
        return ["<bind of the working directory failed>"]
    os.chdir(workdir)  # our cwd still points into the mount underneath; step onto the new one
    failed = []
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split() for line in handle]
    for fields in mounts:
        point = _unescape(fields[4])
        if point == workdir:
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for option in fields[5].split(","):
            flags |= _KEPT_MOUNT_FLAGS.get(option, 0)
        if libc.mount(None, point.encode(), None, flags, None) != 0:
            failed.append(point)
    return failed


# ----------------------------------------------------------------------------- the guard

_NETWORK = "socket."
_PROCESS = {"os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "subprocess.Popen",
            "os.startfile", "pty.spawn"}
_INTROSPECT = {"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
               "sys.settrace", "sys.setprofile"}
# Modules that reach around the hook: raw C calls, fork+exec without os.fork, interpreters
# without our hook (audit hooks are per interpreter).
_BLOCKED_IMPORTS = {"_ctypes": "native code", "_testcapi": "native code", "_testinternalcapi": "native code",
                    "_posixsubprocess": "process creation", "_xxsubinterpreters": "process creation"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# event -> indices of path arguments that must stay inside the working directory, and of dir_fd
_PATH_EVENTS = {"os.remove": ((0,), 1), "os.rmdir": ((0,), 1), "os.mkdir": ((0,), 2), "os.chmod": ((0,), 2),
                "os.chown": ((0,), 3), "os.rename": ((0, 1), 2), "os.link": ((0, 1), 2), "os.symlink": ((1,), 2),
                "os.truncate": ((0,), None), "os.utime": ((0,), None), "os.mkfifo": ((0,), None),
                "os.mknod": ((0,), None), "shutil.rmtree": ((0,), None), "os.setxattr": ((0,), None),
                "os.removexattr": ((0,), None)}


def install_guard(workdir, send):
    """Audit hook: the program's interpreter refuses network, process creation, signals to other
    processes, native code (ctypes), writes outside `workdir`, reading other processes' /proc
    entries, and the introspection needed to forge reports. A refused event is reported and ends
    the program at once (it cannot be caught). Defence in depth only: C code and interpreter
    tricks can bypass an audit hook; the OS limits and namespaces are the boundary."""
    root = os.path.realpath(workdir)
    own = str(os.getpid())
    realpath, join, fspath, fsdecode, isdir = os.path.realpath, os.path.join, os.fspath, os.fsdecode, os.path.isdir
    readlink, getcwd, exit_now = os.readlink, os.getcwd, os._exit

    def deny(kind, detail):
        send({"event": "violation", "kind": kind, "detail": str(detail)[:200]})
        exit_now(VIOLATION_EXIT)

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            return None  # an already-open descriptor: it was checked when opened
        path = fsdecode(fspath(path))
        base = readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0 else getcwd()
        return realpath(join(base, path))

    own_fds = f"/proc/{own}/fd/"  # e.g. /dev/stdout: descriptors this process already holds

    def inside(path):
        return (path is None or path == root or path.startswith(root + os.sep) or path == "/dev/null"
                or path.startswith(own_fds))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            target = resolve(path)
            if target is None:
                return
            writing = bool((flags or 0) & _WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(target):
                deny("write outside sandbox", target)
            if target.startswith("/proc/") and target.split("/")[2].isdigit() and target.split("/")[2] != own:
                deny("reading another process", target)
            if not inside(target) and isdir(target):  # a directory fd would allow dir_fd-relative writes
                deny("opening a directory outside sandbox", target)
        elif event.startswith(_NETWORK):
            deny("network", event)
        elif event in _PROCESS:
            deny("process creation", event)
        elif event in ("os.kill", "os.killpg"):
            if event == "os.killpg" or str(args[0]) != own:
                deny("signal to another process", f"{event}{tuple(args)}")
        elif event.startswith("ctypes."):
            deny("native code", event)
        elif event == "import" and args[0] in _BLOCKED_IMPORTS:
            deny(_BLOCKED_IMPORTS[args[0]], f"import {args[0]}")
        elif event == "resource.prlimit" and args[0] not in (0, os.getpid()):
            deny("limits of another process", f"prlimit on pid {args[0]}")
        elif event in _INTROSPECT:
            deny("introspection", event)
        elif event in _PATH_EVENTS:
            indices, dir_index = _PATH_EVENTS[event]
            dir_fd = args[dir_index] if dir_index is not None and dir_index < len(args) else None
            for index in indices:
                target = resolve(args[index], dir_fd)
                if not inside(target):
                    deny("write outside sandbox", f"{event} {target}")

    sys.addaudithook(hook)


# ------------------------------------------------------------------------------ the child


def _describe(exc):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:500]


def run_program(spec, send):
    """Execute the program, then setup, then each test, in one namespace; report each step."""
    # Bind what we call before the program runs: it may replace builtins.exec with a no-op.
    exec_, eval_, compile_, repr_, len_ = exec, eval, compile, repr, len
    namespace = {"__name__": "solution"}
    ok = True
    try:
        exec_(compile_(spec["code"], "<solution>", "exec"), namespace)
        send({"event": "program", "ok": True})
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends are failures too
        send({"event": "program", "ok": False, "error": _describe(exc)})
        ok = False
    if ok and spec.get("setup"):
        try:
            exec_(compile_(spec["setup"], "<tests>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001
            send({"event": "program", "ok": False, "error": "test setup failed: " + _describe(exc)})
            ok = False
    if not ok:
        return
    limit = spec["value_limit"]
    for index, test in enumerate(spec["tests"]):
        send({"event": "start", "i": index})
        try:
            if test["kind"] == "value":
                value = repr_(eval_(compile_(test["expr"], f"<test {index}>", "eval"), namespace))
                if len_(value) > limit:
                    raise ValueError(f"returned value too large to compare ({len_(value)} characters)")
                send({"event": "test", "i": index, "ok": True, "value": value})
                continue
            if test["kind"] == "exec":
                exec_(compile_(test["code"], f"<test {index}>", "exec"), namespace)
            else:
                namespace[test["name"]]()
            send({"event": "test", "i": index, "ok": True})
        except BaseException as exc:  # noqa: BLE001
            send({"event": "test", "i": index, "ok": False, "error": _describe(exc)})


def _count_own_processes():
    uid, count = os.getuid(), 0
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        try:
            count += name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid
        except OSError:
            pass
    return count


def child(spec, token, out_w, err_w, result_w):
    """In the forked child: confine this process, then run the program. Never returns."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Move the four descriptors the program keeps out of the way first, so that dup2 onto
    # 0..3 cannot clobber one we still need, then close everything else we inherited.
    keep = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (os.open(os.devnull, os.O_RDONLY), out_w, err_w, result_w)]
    for target, fd in enumerate(keep):
        os.dup2(fd, target)
    os.closerange(RESULT_FD + 1, 65536)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    uid = spec["uid"]
    baseline = 1 if uid is not None else _count_own_processes() + 1
    limits = [(resource.RLIMIT_CPU, spec["cpu_s"], spec["cpu_s"] + 1),
              (resource.RLIMIT_NPROC, baseline + spec["max_processes"], None),
              (resource.RLIMIT_FSIZE, spec["file_bytes"], None),
              (resource.RLIMIT_NOFILE, spec["open_files"], None),
              (resource.RLIMIT_CORE, 0, None)]
    if uid is not None:
        # The stdlib may live where the throwaway uid cannot read (e.g. /root/.pyenv): keep
        # directory descriptors opened as root and import through /proc/self/fd/N instead.
        # Packages already imported (encodings, json, ...) search their own __path__: remap too.
        remap = {}
        for entry in sys.path:
            try:
                remap[entry] = f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"
            except OSError:
                pass
        for fd in (1, 2):  # so that reopening /dev/stdout works for the program
            os.fchown(fd, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        sys.path[:] = list(remap.values())
        for module in list(sys.modules.values()):
            search = getattr(module, "__path__", None)
            if isinstance(search, list):
                for old, new in remap.items():
                    search[:] = [new + p[len(old):] if p == old or p.startswith(old + os.sep) else p for p in search]
        sys.path_importer_cache.clear()
    for which, soft, hard in limits:
        current_hard = resource.getrlimit(which)[1]
        hard = soft if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # a setuid binary exec'd later cannot gain privileges
    # Address space last: everything above may allocate.
    resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))

    write, dumps = os.write, json.dumps

    def send(record):
        record["t"] = token
        data = (dumps(record) + "\n").encode()
        while data:
            data = data[write(RESULT_FD, data):]

    if spec["guard"]:
        install_guard(os.getcwd(), send)
    try:
        run_program(spec, send)
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the program may have broken its streams
                pass
        send({"event": "done"})
    except BaseException:  # noqa: BLE001 - e.g. MemoryError while reporting
        os._exit(1)
    os._exit(0)


# ------------------------------------------------------------------------- the supervisor


def _children():
    """PIDs whose parent is this process (orphans of the program are re-parented to us)."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        pids = []
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as handle:
                    if name.isdigit() and int(handle.read().rsplit(")", 1)[1].split()[1]) == me:
                        pids.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
        return pids


class Supervisor:
    def __init__(self, spec):
        self.spec = spec
        self.token = os.urandom(16).hex()
        self.buffers = {"stdout": bytearray(), "stderr": bytearray(), "records": bytearray()}
        self.status = None  # the program's wait status
        self.rusage = None

    def reap(self):
        """Collect every exited child without blocking; remember the program's status."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status, self.rusage = status, usage

    def kill_everything(self):
        """SIGKILL every descendant until none is left (a fork bomb keeps forking meanwhile)."""
        for _ in range(10000):
            if os.getpid() == 1:  # PID 1 of a namespace: kill(-1) reaches every other process in it
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in _children():  # as a subreaper every descendant ends up our child
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.reap()
            if not _children() and not self.others_in_namespace():
                return
            time.sleep(0.001)

    @staticmethod
    def others_in_namespace():
        if os.getpid() != 1:
            return False
        try:
            os.kill(-1, 0)
        except ProcessLookupError:
            return False
        return True

    def read(self, fd, name):
        data = os.read(fd, 65536)
        if not data:
            return False
        buffer = self.buffers[name]
        if name == "records":
            if len(buffer) < RECORDS_LIMIT:
                buffer += data
        else:
            buffer += data
            del buffer[: max(0, len(buffer) - self.spec["output_bytes"])]
        return True

    def run(self):
        spec = self.spec
        if os.getpid() != 1:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, not to init, so we can kill them
        _prctl(PR_SET_DUMPABLE, 0)  # same-uid programs cannot open our /proc/PID/fd or ptrace us
        if spec["uid"] is not None:
            os.chown(".", spec["uid"], spec["uid"])
            os.chmod(".", 0o700)
        # Only as PID 1 of fresh namespaces (unshare --mount-proc implies a private mount
        # namespace): never remount anything in a namespace someone else shares.
        self.writable = make_filesystem_readonly(os.getcwd()) if spec["readonly_fs"] and os.getpid() == 1 else None
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        pipes = {name: os.pipe() for name in ("stdout", "stderr", "records")}
        start = time.monotonic()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(wake_r)
                os.close(wake_w)
                child(spec, self.token, pipes["stdout"][1], pipes["stderr"][1], pipes["records"][1])
            finally:
                os._exit(127)
        selector = selectors.DefaultSelector()
        for name, (read_end, write_end) in pipes.items():
            os.close(write_end)
            selector.register(read_end, selectors.EVENT_READ, name)
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        deadline = start + spec["timeout_s"]
        timed_out, killed_at = False, None
        while len(selector.get_map()) > 1:  # until stdout, stderr and records all reach EOF
            self.reap()
            now = time.monotonic()
            if killed_at is None and (self.status is not None or now >= deadline):
                timed_out = self.status is None
                self.kill_everything()  # the program's children may hold the pipes open
                killed_at = now
            if killed_at is not None and now >= killed_at + 1.0:
                break  # cannot happen while we are PID 1 or a subreaper; do not hang if it does
            wait = 0.05 if killed_at is not None else max(0.0, deadline - now)
            for key, _ in selector.select(timeout=wait):
                if key.data == "wake":  # SIGCHLD arrived: loop round to reap
                    os.read(wake_r, 4096)
                elif not self.read(key.fd, key.data):
                    selector.unregister(key.fd)
                    os.close(key.fd)
        self.kill_everything()
        duration = time.monotonic() - start
        return self.report(timed_out, duration)

    def report(self, timed_out, duration):
        records = []
        for line in bytes(self.buffers["records"]).decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.pop("t", None) == self.token:
                records.append(record)
        status, usage = self.status, self.rusage
        if status is None:
            state = {}
        elif os.WIFSIGNALED(status):
            state = {"signal": os.WTERMSIG(status)}
        else:
            state = {"exitcode": os.WEXITSTATUS(status)}
        return {
            "records": records, "status": state, "timed_out": timed_out, "duration_s": round(duration, 4),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 4) if usage else None,
            "still_writable": self.writable,
            "stdout": bytes(self.buffers["stdout"]).decode(errors="replace"),
            "stderr": bytes(self.buffers["stderr"]).decode(errors="replace"),
        }


def main():
    spec = json.loads(sys.stdin.buffer.read())
    report = Supervisor(spec).run()
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
