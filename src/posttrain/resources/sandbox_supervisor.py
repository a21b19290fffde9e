"""Sandbox supervisor: run one untrusted program and its tests, report JSON on stdout.

Started by `posttrain.rollout.sandbox` as `python -I -S sandbox_supervisor.py` (stdlib only,
no site-packages, no PYTHON* variables) with a clean environment, usually as PID 1 of new
network/PID/mount namespaces. stdin and stdout are one end of a socket pair (a socket, unlike a
pipe, cannot be reopened through /proc/PID/fd). `posttrain.rollout.sandbox` also imports this
file for `decode_value`, so it must stay import-safe.

    supervisor (root or PID 1, not dumpable, never runs untrusted code)
      ├── program   uid base+1   runs the model's code; evaluates value probes; answers the judge
      ├── io test k uid base+2+k runs the model's code as __main__ on stdin k (stdout comes back)
      └── judge     uid base     runs the dataset's test code; the program's names are proxies
                                  that ask the program over a pipe and get back plain values

Who decides a verdict (see docs/rewards.md, "Reward integrity"):
* value probes (`assert EXPR == LITERAL`): the program sends back EXPR's value as a tagged plain
  value; the trainer decodes it and compares with the literal, which never enters the sandbox;
* io tests: the trainer compares the stdout that comes back with the expected output;
* every other test runs in the judge: a separate process, another uid, not dumpable, forked
  only after every program process exists, so no program process ever held the test code in
  its memory. The judge sees only plain values decoded from the program's answers.
Whatever the program does inside its own process (frames, builtins, exit codes, fds, threads)
changes only the values it answers with, never a comparison.

The spec arrives in two length-prefixed frames: frame 1 (program, probes, stdin of io tests,
limits) is read, the program processes are forked, and only then frame 2 (the judge's test
code) is read.
"""
import builtins
import fcntl
import json
import keyword
import os
import resource
import selectors
import signal
import sys
import time
import types

try:
    import ctypes
except ImportError:  # not on every platform; only Linux-specific steps need it
    ctypes = None

RESULT_FD = 3
VIOLATION_EXIT = 86
PR_GET_DUMPABLE, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 3, 4, 36, 38
RECORDS_LIMIT = 4 * 2**20  # bytes of records kept per process; flooding a pipe cannot exhaust us
CLONE_NEWUSER = 0x10000000
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None and ctypes is not None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC or None


def _prctl(option, value):
    """prctl(2) through libc: its result, or None where unavailable (not Linux)."""
    libc = _libc()
    if libc is not None:
        try:
            return libc.prctl(option, value, 0, 0, 0)
        except AttributeError:
            pass
    return None


# ---------------------------------------------------------------------------- plain values
# A value crosses a trust boundary only as a tagged JSON tree of built-in plain types, checked
# by exact type. Decoding builds fresh built-in objects, so an object the program made (one
# whose __eq__ always says True, an int subclass, a lying __repr__) can never reach a comparison.


class NotPlain(Exception):
    pass


_SEQUENCES = {list: "l", tuple: "t", set: "S", frozenset: "z"}
_BUILD = {"l": list, "t": tuple, "S": set, "z": frozenset}
_PLAIN_BASES = (int, float, complex, str, bytes, list, tuple, set, frozenset, dict)
MAX_DEPTH = 100


def encode_value(value, handle=None, depth=0):
    """A plain value as a JSON-able tree; anything else becomes `handle(value)` or raises NotPlain."""
    kind = type(value)
    if depth > MAX_DEPTH:
        raise NotPlain(f"a value nested more than {MAX_DEPTH} levels deep")
    if value is None:
        return ["N"]
    if kind is bool:
        return ["B", value]
    if kind is int:
        return ["i", format(value, "x")]  # hex: no limit on digits (decimal str() has one)
    if kind is float:
        return ["f", value.hex()]  # exact, and nan/inf survive
    if kind is complex:
        return ["c", value.real.hex(), value.imag.hex()]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["b", value.hex()]
    if kind in _SEQUENCES:
        return [_SEQUENCES[kind], [encode_value(item, handle, depth + 1) for item in value]]
    if kind is dict:
        return ["d", [[encode_value(k, handle, depth + 1), encode_value(v, handle, depth + 1)] for k, v in value.items()]]
    for base in _PLAIN_BASES:
        if isinstance(value, base):  # a subclass (Counter, namedtuple, IntEnum...): its plain data only
            return encode_value(base(value), handle, depth + 1)
    if handle is not None:
        return ["h", handle(value), kind.__name__[:100]]
    raise NotPlain(f"a {kind.__name__[:100]} object")


class BadValue(Exception):
    pass


def decode_value(tree, handle=None, depth=0):
    """The inverse of encode_value, strict: anything malformed raises BadValue. `handle(id, type)`
    turns an object reference into a proxy; without it a reference is BadValue."""
    if depth > MAX_DEPTH + 1 or not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
        raise BadValue("malformed value")
    tag, rest = tree[0], tree[1:]
    try:
        if tag == "N" and not rest:
            return None
        if tag == "B" and len(rest) == 1 and type(rest[0]) is bool:
            return rest[0]
        if tag == "i" and len(rest) == 1 and type(rest[0]) is str and rest[0].lstrip("-").isalnum():
            return int(rest[0], 16)
        if tag == "f" and len(rest) == 1 and type(rest[0]) is str and len(rest[0]) < 40:
            return float.fromhex(rest[0])
        if tag == "c" and len(rest) == 2 and all(type(p) is str and len(p) < 40 for p in rest):
            return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
        if tag == "s" and len(rest) == 1 and type(rest[0]) is str:
            return rest[0]
        if tag == "b" and len(rest) == 1 and type(rest[0]) is str:
            return bytes.fromhex(rest[0])
        if tag in _BUILD and len(rest) == 1 and type(rest[0]) is list:
            return _BUILD[tag](decode_value(item, handle, depth + 1) for item in rest[0])
        if tag == "d" and len(rest) == 1 and type(rest[0]) is list:
            pairs = rest[0]
            if not all(type(p) is list and len(p) == 2 for p in pairs):
                raise BadValue("malformed dict")
            return {decode_value(k, handle, depth + 1): decode_value(v, handle, depth + 1) for k, v in pairs}
        if tag == "h" and handle is not None and len(rest) == 2 and type(rest[0]) is int and type(rest[1]) is str:
            return handle(rest[0], rest[1])
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise BadValue(f"malformed value ({type(exc).__name__})") from None
    raise BadValue(f"malformed value (tag {tag[:10]!r})")


def describe_exception(exc):
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except BaseException:  # noqa: BLE001 - a program's exception may fail to print
        text = type(exc).__name__
    return text[:500]


# -------------------------------------------------------------------- the private filesystem

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
# statvfs flags -> mount flags a remount must keep (a user namespace refuses to drop them)
_KEPT = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
         (getattr(os, "ST_NOATIME", 1024), 1024), (getattr(os, "ST_NODIRATIME", 2048), 2048),
         (getattr(os, "ST_RELATIME", 4096), 1 << 21))
# What the Python runtime needs to import extension modules after we fork (nothing is exec'd):
# the C libraries, and the interpreter's own prefix (added at run time).
_RUNTIME_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
_TOP_LINKS = ("lib", "lib64", "lib32", "libx32", "bin", "sbin")
_DEVICES = ("null", "zero", "urandom", "random")


def _mount(source, target, fstype, flags, data=None):
    libc = _libc()
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source or ''} on {target}: {os.strerror(errno)}")


def _bind_readonly(source, target):
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    have = os.statvfs(target).f_flag
    for st_flag, ms_flag in _KEPT:
        if have & st_flag:
            flags |= ms_flag
    _mount(None, target, None, flags)


def runtime_dirs():
    """Directories the forked interpreter may still read: C libraries and its stdlib."""
    dirs = {os.path.realpath(d) for d in _RUNTIME_DIRS if os.path.isdir(d)}
    dirs |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    # A directory inside another one we bind already comes with it.
    return sorted(d for d in dirs if not any(d != o and d.startswith(o + os.sep) for o in dirs))


def enter_private_root(spec):
    """Replace the whole filesystem view of this mount namespace (ours alone: we are PID 1 of
    `unshare --mount-proc`) with a fresh tmpfs, limited in bytes and inodes, that holds only
    read-only binds of `runtime_dirs()`, four devices, a new /proc and a writable /tmp; then
    pivot_root into it and detach the old root, so nothing else of the host is reachable."""
    libc = _libc()
    root = os.path.realpath(spec["mount_point"])
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=755")
    for path in runtime_dirs():
        os.makedirs(root + path, exist_ok=True)
        _bind_readonly(path, root + path)
    for name in _TOP_LINKS:  # merged-/usr systems reach /usr/lib through /lib
        if os.path.islink("/" + name) and not os.path.lexists(f"{root}/{name}"):
            os.symlink(os.readlink("/" + name), f"{root}/{name}")
    os.makedirs(root + "/dev")
    for name in _DEVICES:
        if os.path.exists("/dev/" + name):
            open(f"{root}/dev/{name}", "w").close()
            _mount("/dev/" + name, f"{root}/dev/{name}", None, MS_BIND)
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{fd}", f"{root}/dev/{name}")
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    # The only writable place: its own tmpfs, limited in bytes and inodes.
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={spec['disk_bytes']},nr_inodes={spec['max_files']},mode=711")
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    os.chdir(root)
    if number is None or libc.syscall(number, b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root failed")
    if libc.umount2(b".", MNT_DETACH) != 0:  # the old root, stacked under the new one
        raise OSError(ctypes.get_errno(), "detaching the old root failed")
    os.chdir("/")
    # The skeleton read-only: in a user namespace every process here has our kernel uid, and a
    # writable / would let the program plant files (e.g. a missing sys.path entry the judge reads).
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    return "/tmp"


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
    entries, and introspection. A refused event is reported and ends the program at once (it
    cannot be caught). Defence in depth only, and never part of a verdict: C code and interpreter
    tricks can bypass an audit hook; the OS layers and the judging outside are the boundary."""
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


# ------------------------------------------------------------------ confining a child process


def _count_own_processes():
    uid, count = os.getuid(), 0
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        try:
            count += name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid
        except OSError:
            pass
    return count


def _remap_imports():
    """The stdlib may live where a throwaway uid cannot read (e.g. /root/.pyenv): keep directory
    descriptors opened as root and import through /proc/self/fd/N instead. Packages already
    imported (encodings, json, ...) search their own __path__: remap those too."""
    remap = {}
    for entry in sys.path:
        try:
            remap[entry] = f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"
        except OSError:
            pass
    return remap


def _apply_remap(remap):
    sys.path[:] = list(remap.values())
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            for old, new in remap.items():
                search[:] = [new + p[len(old):] if p == old or p.startswith(old + os.sep) else p for p in search]
    sys.path_importer_cache.clear()


def confine(spec, fds, uid, cwd, max_processes, file_bytes):
    """In a freshly forked child: put `fds` on 0, 1, 2, ... and close everything else, switch to
    `uid` (when we are root), set the resource limits and no_new_privs."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)
    # Move what we keep out of the way first, so dup2 onto 0..n cannot clobber one we still need.
    keep = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for target, fd in enumerate(keep):
        os.dup2(fd, target)
    os.closerange(len(keep), 65536)
    baseline = 1 if uid is not None else _count_own_processes() + 1
    limits = [(resource.RLIMIT_CPU, spec["cpu_s"], spec["cpu_s"] + 1),
              (resource.RLIMIT_NPROC, baseline + max_processes, None),
              (resource.RLIMIT_FSIZE, file_bytes, None),
              (resource.RLIMIT_NOFILE, spec["open_files"], None),
              (resource.RLIMIT_CORE, 0, None)]
    if uid is not None:
        remap = _remap_imports() if not spec["private_root"] else None
        for fd in (1, 2):  # so that reopening /dev/stdout works for the program
            try:
                os.fchown(fd, uid, uid)
            except OSError:
                pass
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if remap:
            _apply_remap(remap)
    os.chdir(cwd)
    for which, soft, hard in limits:
        current_hard = resource.getrlimit(which)[1]
        hard = soft if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # a setuid binary exec'd later cannot gain privileges


def drop_namespace_privileges():
    """Not root outside: inside our user namespace we are uid 0 with every capability. A nested
    user namespace leaves the program no capability over our namespaces (no ptrace of the judge
    or supervisor, no mounts, no chroot out of the private root)."""
    libc = _libc()
    if libc is None or libc.unshare(CLONE_NEWUSER) != 0:
        os._exit(125)  # never run the program with capabilities


# ------------------------------------------------------------------------------- seccomp
# A seccomp filter for the program processes (x86_64 only): system calls a Python solution
# never needs, that reach other processes or widen the kernel surface (new namespaces, mounts,
# BPF, io_uring, keyrings, ...), fail with EPERM. Defence in depth: no verdict depends on it.

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_DENIED_X86_64 = {
    101: "ptrace", 310: "process_vm_readv", 311: "process_vm_writev", 438: "pidfd_getfd", 312: "kcmp",
    165: "mount", 166: "umount2", 155: "pivot_root", 161: "chroot", 272: "unshare", 308: "setns",
    428: "open_tree", 429: "move_mount", 430: "fsopen", 431: "fsconfig", 432: "fsmount", 433: "fspick",
    442: "mount_setattr", 321: "bpf", 298: "perf_event_open", 323: "userfaultfd", 248: "add_key",
    249: "request_key", 250: "keyctl", 425: "io_uring_setup", 426: "io_uring_enter", 427: "io_uring_register",
    246: "kexec_load", 320: "kexec_file_load", 175: "init_module", 313: "finit_module", 176: "delete_module",
    303: "name_to_handle_at", 304: "open_by_handle_at", 169: "reboot", 167: "swapon", 168: "swapoff",
    163: "acct", 103: "syslog", 179: "quotactl", 300: "fanotify_init", 134: "uselib", 135: "personality",
    212: "lookup_dcookie", 139: "sysfs", 156: "_sysctl", 154: "modify_ldt", 173: "ioperm", 172: "iopl",
}
_SYS_CLONE, _SYS_CLONE3 = 56, 435
_CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_EPERM, _ENOSYS = 1, 38
_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000


def install_seccomp():
    """Load the filter into this process and its future children; False where not possible."""
    libc = _libc()
    if libc is None or os.uname().machine != "x86_64":
        return False

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    code = [(ld_abs, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, _RET_KILL),  # a foreign ABI: kill
            (ld_abs, 0, 0, 0), (jge, 0, 1, _X32_BIT), (ret, 0, 0, _RET_ERRNO | _EPERM)]
    for number in sorted(_DENIED_X86_64):
        code += [(jeq, 0, 1, number), (ret, 0, 0, _RET_ERRNO | _EPERM)]
    # clone3 passes its flags in memory, out of the filter's sight: ENOSYS makes libc use clone,
    # whose flags we can check (threads and fork need no namespace flag).
    code += [(jeq, 0, 1, _SYS_CLONE3), (ret, 0, 0, _RET_ERRNO | _ENOSYS),
             (jeq, 0, 3, _SYS_CLONE), (ld_abs, 0, 0, 16), (jset, 0, 1, _CLONE_NAMESPACES),
             (ret, 0, 0, _RET_ERRNO | _EPERM), (ret, 0, 0, _RET_ALLOW)]
    filters = (Filter * len(code))(*[Filter(*instruction) for instruction in code])
    program = Program(len(code), filters)
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) == 0


# ------------------------------------------------------------------------ the program process


def program_process(spec, uid, cwd, fds, as_main):
    """Run the model's program (never returns). fds: stdin, stdout, stderr, records[, rpc_in, rpc_out]."""
    confine(spec, fds, uid, cwd, spec["max_processes"], spec["file_bytes"])
    os.environ.update({"HOME": cwd, "TMPDIR": cwd})
    if spec["userns"]:
        drop_namespace_privileges()
    install_seccomp()  # after the nested user namespace, which it would refuse
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    # Bind what we call before the program runs. Not for safety (this whole process is the
    # program's to corrupt; corrupting it only changes the values it answers with), but so that
    # an innocent program that shadows a builtin still gets its tests evaluated.
    write, dumps, exec_, eval_, compile_, len_ = os.write, json.dumps, exec, eval, compile, len
    limit = spec["value_limit"]

    def send(record):
        data = (dumps(record) + "\n").encode()
        while data:
            data = data[write(RESULT_FD, data):]

    resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))  # last: all above allocates
    if spec["guard"]:
        install_guard(cwd, send)
    try:
        namespace = {"__name__": "__main__" if as_main else "solution"}
        try:
            exec_(compile_(spec["code"], "<solution>", "exec"), namespace)
            send({"event": "program", "ok": True})
        except SystemExit as exc:
            # A script run on stdin (io test) may end with sys.exit(); as a module it may not.
            clean = as_main and (exc.code is None or exc.code == 0)
            send({"event": "program", "ok": clean, **({} if clean else {"error": describe_exception(exc)})})
            return
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt and friends are failures too
            send({"event": "program", "ok": False, "error": describe_exception(exc)})
            return
        if as_main:  # an io test: its stdout is the answer
            return
        for index, expr in spec["probes"]:
            send({"event": "start", "i": index})
            try:
                value = dumps(encode_value(eval_(compile_(expr, f"<test {index}>", "eval"), namespace)))
                if len_(value) > limit:
                    raise ValueError(f"value too large to compare ({len_(value)} bytes encoded)")
                send({"event": "value", "i": index, "value": value})
            except NotPlain as exc:
                send({"event": "value", "i": index, "error": f"returned {exc}, not a plain value"})
            except BaseException as exc:  # noqa: BLE001
                send({"event": "value", "i": index, "error": describe_exception(exc)})
        if len(fds) > 4:
            serve_judge(namespace, 4, 5, limit)
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the program may have broken its streams
                pass
        os._exit(0)


def serve_judge(namespace, rpc_in, rpc_out, limit):
    """Answer the judge's requests (one JSON line each) until it hangs up. Objects that are not
    plain values stay here and travel as numbered references."""
    objects = []
    loads, dumps, write = json.loads, json.dumps, os.write

    def keep(obj):
        objects.append(obj)
        return len(objects) - 1

    def plain(value):
        return decode_value(value, lambda ref, _type: objects[ref])

    with os.fdopen(rpc_in, "rb") as requests:
        for line in requests:
            try:
                request = loads(line)
                op = request["op"]
                if op == "globals":
                    reply = {"globals": {name: encode_value(value, keep) for name, value in list(namespace.items())
                                         if not name.startswith("__")}}
                else:
                    target = objects[request["ref"]]
                    if op == "call":
                        value = target(*[plain(a) for a in request["args"]],
                                       **{k: plain(v) for k, v in request["kwargs"].items()})
                    elif op == "getattr":
                        value = getattr(target, request["name"])
                    elif op == "getitem":
                        value = target[plain(request["key"])]
                    elif op == "len":
                        value = len(target)
                    elif op == "iter":
                        value = list(target)
                    elif op == "str":
                        value = str(target)
                    else:
                        value = repr(target)
                    reply = {"value": encode_value(value, keep)}
            except BaseException as exc:  # noqa: BLE001 - the program's exception goes to the judge
                reply = {"raise": [type(exc).__name__, describe_exception(exc)]}
            data = dumps(reply)
            if len(data) > limit:
                data = dumps({"raise": ["ValueError", f"value too large to pass ({len(data)} bytes encoded)"]})
            data = (data + "\n").encode()
            while data:
                data = data[write(rpc_out, data):]


# ------------------------------------------------------------------------------- the judge


class ProgramGone(Exception):
    """The program stopped answering (it ended, crashed or sent something unreadable)."""


class NotComparable(TypeError):
    pass


class ProgramError(Exception):
    """The program raised an exception that is not a built-in one."""


class Channel:
    """The judge's end of the pipe pair to the program: one request, one reply."""

    def __init__(self, rpc_in, rpc_out, limit):
        self.reader = os.fdopen(rpc_in, "rb")
        self.out = rpc_out
        self.limit = limit

    def ask(self, request):
        data = (json.dumps(request) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.out, data):]
            line = self.reader.readline(self.limit + 2)
        except OSError as exc:
            raise ProgramGone(f"the program stopped answering ({exc.strerror})") from None
        if not line.endswith(b"\n"):
            raise ProgramGone("the program stopped answering" if not line else "the program's answer is too long")
        try:
            reply = json.loads(line)
        except ValueError:
            raise ProgramGone("the program's answer is not readable") from None
        if not isinstance(reply, dict):
            raise ProgramGone("the program's answer is not readable")
        if "raise" in reply:
            name, text = (list(reply["raise"]) + ["", ""])[:2]
            builtin = getattr(builtins, str(name), None)
            # Iteration-control exceptions would end a loop in the test code early (all(map(...)))
            if (isinstance(builtin, type) and issubclass(builtin, Exception)
                    and not issubclass(builtin, (StopIteration, StopAsyncIteration))):
                raise builtin(str(text)[len(str(name)) + 2:] if str(text).startswith(f"{name}: ") else "")
            raise ProgramError(str(text)[:500])
        return reply

    def value(self, request):
        try:
            return decode_value(self.ask(request).get("value"), self.proxy)
        except BadValue as exc:
            raise ProgramGone(f"the program's answer is not a plain value ({exc})") from None

    def proxy(self, ref, type_name):
        return Remote(self, ref, type_name)


def _refuse(name):
    def method(self, *args):
        raise NotComparable(f"{name} on a {object.__getattribute__(self, '_type')} object the program made: "
                            "only plain values (numbers, strings, lists, ...) can be compared")
    return method


class Remote:
    """An object that lives in the program's process. Calls, attributes, items, len() and
    iteration are asked of the program and come back as plain values or more references;
    comparing, hashing or testing the truth of one is refused (its answer would be the program's
    to choose, e.g. an __eq__ that always says True)."""

    __slots__ = ("_channel", "_ref", "_type")

    def __init__(self, channel, ref, type_name):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_type", type_name)

    def _ask(self, op, **fields):
        return object.__getattribute__(self, "_channel").value({"op": op, "ref": object.__getattribute__(self, "_ref"), **fields})

    def __call__(self, *args, **kwargs):
        return self._ask("call", args=[_outgoing(a) for a in args], kwargs={str(k): _outgoing(v) for k, v in kwargs.items()})

    def __getattr__(self, name):
        return self._ask("getattr", name=name)

    def __getitem__(self, key):
        return self._ask("getitem", key=_outgoing(key))

    def __len__(self):
        return self._ask("len")

    def __iter__(self):
        return iter(self._ask("iter"))

    def __str__(self):
        return str(self._ask("str"))

    def __repr__(self):
        try:
            return str(self._ask("repr"))[:200]
        except Exception:  # noqa: BLE001 - only for messages
            return f"<{object.__getattribute__(self, '_type')} object of the program>"

    __eq__ = _refuse("==")
    __ne__ = _refuse("!=")
    __lt__ = _refuse("<")
    __le__ = _refuse("<=")
    __gt__ = _refuse(">")
    __ge__ = _refuse(">=")
    __bool__ = _refuse("truth test")
    __hash__ = _refuse("hash")
    __contains__ = _refuse("'in'")
    __setattr__ = _refuse("setting an attribute")


def _reference(obj):
    if isinstance(obj, Remote):
        return object.__getattribute__(obj, "_ref")
    raise NotPlain(f"a {type(obj).__name__} object")


def _outgoing(value):
    """An argument for the program: a plain value, or one of the program's own objects."""
    try:
        return encode_value(value, _reference)
    except NotPlain as exc:
        raise TypeError(f"cannot pass {exc} to the program: only plain values and its own objects") from None


class _Raises:
    """`pytest.raises(E)` for test files: the block must raise E."""

    def __init__(self, expected, match=None):
        self.expected, self.match = expected, match

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            raise AssertionError(f"DID NOT RAISE {self.expected}")
        if not issubclass(kind, self.expected):
            return False
        if self.match is not None:
            import re

            if not re.search(self.match, str(exc)):
                raise AssertionError(f"{str(exc)!r} does not match {self.match!r}")
        return True


class _Approx:
    def __init__(self, expected, rel=1e-6, abs=1e-12):  # noqa: A002 - pytest's names
        self.expected, self.rel, self.abs = expected, rel, abs

    def __eq__(self, other):
        import math

        if isinstance(self.expected, (list, tuple)):
            return (isinstance(other, (list, tuple)) and len(other) == len(self.expected)
                    and all(_Approx(e, self.rel, self.abs) == o for e, o in zip(self.expected, other)))
        return (type(other) in (int, float) and not isinstance(other, bool)
                and math.isclose(other, self.expected, rel_tol=self.rel, abs_tol=self.abs))

    def __repr__(self):
        return f"approx({self.expected!r})"


def _fake_modules(names):
    """A `solution` module holding the program's names, and a tiny `pytest` (raises, approx)."""
    solution = types.ModuleType("solution")
    solution.__dict__.update(names)
    pytest = types.ModuleType("pytest")
    pytest.raises, pytest.approx = _Raises, _Approx
    return {"solution": solution, "pytest": pytest}


def judge_process(spec, judge, fds):
    """Run the dataset's tests against the program's answers (never returns).
    fds: stdin, stdout, stderr (all /dev/null), records, rpc_in, rpc_out."""
    confine(spec, fds, spec["judge_uid"], os.path.join(spec["workroot"], "p1"), 0, 0)
    sys.path[:] = [p for p in sys.path if os.path.isabs(p)]  # never import from the program's directory
    _prctl(PR_SET_DUMPABLE, 0)  # after setuid: no ptrace and no /proc/PID/mem or fd by the program
    if spec["judge_uid"] is None and _prctl(PR_GET_DUMPABLE, 0) != 0:
        os._exit(125)  # sharing the program's kernel uid, the judge must not be dumpable: fail closed
    resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))

    def send(record):
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(RESULT_FD, data):]

    channel = Channel(4, 5, spec["value_limit"])
    try:
        answer = channel.ask({"op": "globals"})
        # Only the program's own public names: never a builtin's name (an `abs` or `isinstance`
        # of the program's choosing would decide the test's checks), never a dunder.
        names = {k: decode_value(v, channel.proxy) for k, v in dict(answer.get("globals") or {}).items()
                 if isinstance(k, str) and k.isidentifier() and not k.startswith("_") and not hasattr(builtins, k)
                 and not keyword.iskeyword(k)}
        # A standard module the program imported (`math`) is the judge's own real module, so a
        # test that forgot its import still works and the program cannot fake `math.floor`.
        for name in [n for n in names if n in getattr(sys, "stdlib_module_names", ())]:
            try:
                names[name] = __import__(name)
            except BaseException:  # noqa: BLE001 - not importable here: the name is not the program's either
                del names[name]
        sys.modules.update(_fake_modules(names))
        namespace = {"__name__": "tests", **names}
        if judge["setup"]:
            exec(compile(judge["setup"], "<tests>", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001
        send({"event": "setup", "ok": False, "error": describe_exception(exc)})
        os._exit(0)
    for test in judge["tests"]:
        index = test["i"]
        try:
            if test["kind"] == "value":
                value = eval(compile(test["expr"], f"<test {index}>", "eval"), namespace)
                try:
                    if isinstance(value, Remote):
                        raise NotPlain(f"a {object.__getattribute__(value, '_type')} object")
                    send({"event": "value", "i": index, "value": json.dumps(encode_value(value))})
                except NotPlain as exc:
                    send({"event": "value", "i": index, "error": f"returned {exc}, not a plain value"})
                continue
            if test.get("code"):
                exec(compile(test["code"], f"<test {index}>", "exec"), namespace)
            for call in test.get("calls", ()):
                result = eval(compile(call + "()", f"<test {index}>", "eval"), namespace)
                if isinstance(result, types.CoroutineType):  # an async test function runs to completion
                    import asyncio

                    asyncio.run(result)
                elif isinstance(result, types.GeneratorType):
                    raise TypeError(f"{call} is a generator, not a test function that runs")
            send({"event": "test", "i": index, "ok": True})
        except BaseException as exc:  # noqa: BLE001
            send({"event": "test", "i": index, "ok": False, "error": describe_exception(exc)})
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


def read_frame(fd):
    """One length-prefixed JSON frame, read exactly (nothing of the next frame enters memory)."""
    def exactly(count):
        data = b""
        while len(data) < count:
            chunk = os.read(fd, count - len(data))
            if not chunk:
                raise EOFError("the spec ended early")
            data += chunk
        return data

    return json.loads(exactly(int(exactly(12).decode())))


class Supervisor:
    """One run: set up the private root, start the processes, collect what they write, report."""

    def __init__(self):
        self.spec = None  # frame 1, read by run()
        self.buffers = {}  # (process, stream) -> bytearray
        self.limits = {}  # (process, stream) -> (bytes kept, keep the "head" or the "tail")
        self.overflow = set()
        self.pids = {}  # pid -> process name
        self.status = {}  # process name -> wait status
        self.rusage = {}
        self.fds = {}  # read fd -> (process, stream)

    def reap(self):
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.pids:
                self.status[self.pids[pid]], self.rusage[self.pids[pid]] = status, usage

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

    def pipe(self, process, stream, limit, keep="tail"):
        read_end, write_end = os.pipe()
        self.fds[read_end] = (process, stream)
        self.buffers[(process, stream)] = bytearray()
        self.limits[(process, stream)] = (limit, keep)
        return write_end

    def read(self, fd):
        data = os.read(fd, 65536)
        if not data:
            return False
        key = self.fds[fd]
        buffer, (limit, keep) = self.buffers[key], self.limits[key]
        if keep == "head":
            room = limit - len(buffer)
            buffer += data[:max(0, room)]
            if len(data) > room:
                self.overflow.add(key)
        else:
            buffer += data
            del buffer[: max(0, len(buffer) - limit)]
        return True

    def start(self, name, target, *args):
        pid = os.fork()
        if pid == 0:
            try:
                target(*args)
            finally:
                os._exit(127)
        self.pids[pid] = name
        return pid

    def run(self):
        spec = self.spec = read_frame(0)
        if os.getpid() != 1:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, not to init, so we can kill them
        _prctl(PR_SET_DUMPABLE, 0)  # same-uid programs cannot open our /proc/PID/fd or ptrace us
        if spec["base_uid"] is None and _prctl(PR_GET_DUMPABLE, 0) != 0:
            raise OSError("cannot make the supervisor non-dumpable")  # fail closed: the program shares our uid
        workroot = enter_private_root(spec) if spec["private_root"] else spec["workroot"]
        spec["workroot"] = workroot
        if spec["base_uid"] is not None:
            os.chmod(workroot, 0o711)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        start = time.monotonic()
        null = os.open(os.devnull, os.O_RDWR)
        keep = spec["output_bytes"]
        judged = spec["judge"]
        rpc = (os.pipe(), os.pipe()) if judged else None  # (program -> judge, judge -> program)
        closing = [null]
        if spec["main"]:
            fds = [null, self.pipe("main", "stdout", keep), self.pipe("main", "stderr", keep),
                   self.pipe("main", "records", RECORDS_LIMIT, "head")]
            if rpc:
                fds += [rpc[1][0], rpc[0][1]]
            closing += fds[1:]
            self.start("main", program_process, spec, self.uid(1), self.workdir(1), fds, False)
        for number, text in enumerate(spec["io"]):
            stdin = self.stdin_file(text)
            fds = [stdin, self.pipe(f"io{number}", "stdout", spec["io_output_bytes"], "head"),
                   self.pipe(f"io{number}", "stderr", keep), self.pipe(f"io{number}", "records", 1 << 16, "head")]
            closing += fds
            self.start(f"io{number}", program_process, spec, self.uid(2 + number), self.workdir(2 + number), fds, True)
        if judged:
            # Only now, with every program process started, does the test code enter our memory.
            judge = read_frame(0)
            fds = [null, null, null, self.pipe("judge", "records", RECORDS_LIMIT, "head"), rpc[0][0], rpc[1][1]]
            closing += fds[3:]
            self.start("judge", judge_process, spec, judge, fds)
        for fd in closing:
            os.close(fd)
        selector = selectors.DefaultSelector()
        for fd in self.fds:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        deadline = start + spec["timeout_s"]
        timed_out, killed_at = False, None
        while len(selector.get_map()) > 1:  # until every pipe reaches EOF
            self.reap()
            now = time.monotonic()
            if killed_at is None and (len(self.status) == len(self.pids) or now >= deadline):
                timed_out = len(self.status) < len(self.pids)
                self.drain(selector, wake_r)  # what the processes wrote before they ended
                self.kill_everything()  # their children may hold the pipes open
                killed_at = now
            if killed_at is not None and now >= killed_at + 1.0:
                break  # cannot happen while we are PID 1 or a subreaper; do not hang if it does
            wait = 0.05 if killed_at is not None else max(0.0, deadline - now)
            for key, _ in selector.select(timeout=wait):
                if key.fd == wake_r:  # SIGCHLD arrived: loop round to reap
                    os.read(wake_r, 4096)
                elif not self.read(key.fd):
                    selector.unregister(key.fd)
                    os.close(key.fd)
        self.kill_everything()
        return self.report(timed_out, time.monotonic() - start)

    def drain(self, selector, wake_r):
        for key, _ in selector.select(timeout=0):
            if key.fd != wake_r:
                while self.read(key.fd) and select_ready(key.fd):
                    pass

    def uid(self, offset):
        base = self.spec["base_uid"]
        return None if base is None else base + offset

    def workdir(self, number):
        """A private writable directory per program process (each has its own uid)."""
        path = os.path.join(self.spec["workroot"], f"p{number}")
        os.mkdir(path, 0o700)
        if self.spec["base_uid"] is not None:
            # The program's own directory (number 1) is readable by the judge's group, so that a
            # test may check the files the program wrote (their contents are the program's
            # answers, like its return values).
            os.chown(path, self.spec["base_uid"] + number, self.spec["base_uid"] + (number != 1) * number)
            os.chmod(path, 0o750 if number == 1 else 0o700)
        else:  # a nested user namespace maps the program to nobody: let it write its own directory
            os.chmod(path, 0o777)
        return path

    @staticmethod
    def stdin_file(text):
        data = text.encode()
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("stdin")
        else:
            import tempfile

            fd = os.dup(tempfile.TemporaryFile().fileno())
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def report(self, timed_out, duration):
        def text(process, stream):
            return bytes(self.buffers.get((process, stream), b"")).decode(errors="replace")

        def records(process):
            found = []
            for line in bytes(self.buffers.get((process, "records"), b"")).decode(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    found.append(record)
            return found

        def state(process):
            status, usage = self.status.get(process), self.rusage.get(process)
            if status is None:
                out = {}
            elif os.WIFSIGNALED(status):
                out = {"signal": os.WTERMSIG(status)}
            else:
                out = {"exitcode": os.WEXITSTATUS(status)}
            out["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 4) if usage else None
            return out

        io = [{"stdout": text(f"io{n}", "stdout"), "stderr": text(f"io{n}", "stderr"), "records": records(f"io{n}"),
               "overflow": (f"io{n}", "stdout") in self.overflow, "status": state(f"io{n}")}
              for n in range(len(self.spec["io"]))]
        return {
            "program": records("main"), "judge": records("judge"), "io": io,
            "status": state("main"), "judge_status": state("judge"), "timed_out": timed_out,
            "duration_s": round(duration, 4), "stdout": text("main", "stdout"), "stderr": text("main", "stderr"),
        }


def select_ready(fd):
    ready = selectors.DefaultSelector()
    try:
        ready.register(fd, selectors.EVENT_READ)
        return bool(ready.select(timeout=0))
    finally:
        ready.close()


def main():
    supervisor = Supervisor()
    try:
        report = supervisor.run()
    except BaseException as exc:  # noqa: BLE001 - the trainer turns this into a failed run
        supervisor.kill_everything()
        report = {"error": describe_exception(exc)}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
