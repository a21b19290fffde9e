"""Run untrusted, model-written Python against unit tests, contained.

Process tree for one run (see docs/rewards.md, "sandbox: what it defends and what it does not"):

    trainer thread ── [unshare --net --pid --mount-proc] ── supervisor ── program + tests
                                                           (sandbox_supervisor.py)

* The trainer (this module) starts the supervisor in a new session with a clean environment, a
  fresh temporary working directory and, where the kernel allows, new network/PID/mount
  namespaces; it kills the whole session after a wall-clock deadline and deletes the directory.
* The supervisor (`posttrain/resources/sandbox_supervisor.py`, stdlib only, run as
  `python -I -S`) forks the program under resource limits (CPU, address space, processes,
  file size, open files), as a throwaway uid when we are root, with an audit-hook guard, and
  reports per-test records back. It is never the program's victim: as PID 1 of its namespace
  it ignores the program's SIGKILL, and as root it runs under a different uid.
* Equality tests `assert f(x) == <literal>` are judged HERE, outside the sandbox: the program
  only sees `f(x)`, sends back `repr(value)`, and the expected value never enters its process,
  so a program cannot forge a pass it did not earn (no "always equal" objects, no fake reports).

`Sandbox(limits).run(code, tests)` returns a `SandboxResult`; `run_many` runs many at once on a
thread pool (each run is its own process tree, so runs do not share anything).
"""
from __future__ import annotations

import ast
import concurrent.futures
import functools
import json
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import PosttrainError

SUPERVISOR = Path(__file__).resolve().parent.parent / "resources" / "sandbox_supervisor.py"
VIOLATION_EXIT = 86  # the supervisor's child exits with this after a guard violation
_GRACE_S = 3.0  # how long past the program deadline the trainer waits for the supervisor
_VALUE_LIMIT = 65536  # longest repr() a value test may send back


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run. `cpu_s=None` means ceil(timeout_s)."""

    timeout_s: float = 3.0  # wall clock for the program plus all its tests
    cpu_s: float | None = None  # RLIMIT_CPU (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 256  # RLIMIT_AS: address space, so MemoryError rather than the OOM killer
    max_processes: int = 8  # RLIMIT_NPROC, counted above what exists when the program starts
    max_file_mb: int = 8  # RLIMIT_FSIZE: largest file the program may write (SIGXFSZ beyond)
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 4096  # tail of stdout/stderr kept in the result

    def validate(self) -> "SandboxLimits":
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_open_files", "output_bytes"):
            if not getattr(self, name) > 0:
                raise PosttrainError(f"sandbox limit '{name}' must be positive, got {getattr(self, name)!r}")
        if self.cpu_s is not None and not self.cpu_s > 0:
            raise PosttrainError(f"sandbox limit 'cpu_s' must be positive, got {self.cpu_s!r}")
        return self


@dataclass
class TestOutcome:
    """One unit test: its name (source text or function name), pass/fail and why it failed."""

    name: str
    passed: bool
    error: str | None = None


@dataclass
class SandboxResult:
    """What happened. `reason` is None exactly when `passed` is True."""

    passed: bool
    tests: list[TestOutcome]
    reason: str | None
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    cpu_s: float | None = None
    violations: list[str] = field(default_factory=list)
    isolation: str = ""
    workdir: str = ""  # deleted before the result is returned; kept to audit left-over processes

    @property
    def fraction_passed(self) -> float:
        return sum(t.passed for t in self.tests) / len(self.tests) if self.tests else float(self.passed)


# ------------------------------------------------------------------------------------ tests


@dataclass(frozen=True)
class _Test:
    """A test as the supervisor runs it (`wire`) and what the trainer compares against."""

    name: str
    wire: dict[str, Any]
    expected: Any = None
    compare: bool = False  # True: the supervisor sends repr(value); we compare with `expected`


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _assert_test(node: ast.Assert, source: str) -> _Test:
    """`assert A == <literal>` becomes a value test evaluated outside; anything else runs as is."""
    name = ast.get_source_segment(source, node) or ast.unparse(node)
    test = node.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        left, right = test.left, test.comparators[0]
        left_ok, left_value = _literal(left)
        right_ok, right_value = _literal(right)
        if right_ok != left_ok:
            expr, expected = (left, right_value) if right_ok else (right, left_value)
            return _Test(name, {"kind": "value", "expr": ast.unparse(expr)}, expected, compare=True)
    return _Test(name, {"kind": "exec", "code": ast.unparse(node)})


def parse_tests(tests: str | Sequence[str]) -> tuple[str, list[_Test]]:
    """Split a record's tests into setup code and tests.

    `tests` is either a list of statements (each one test, usually an `assert`), or one source
    string whose top-level `assert`s and `def test_*()` functions are the tests and whose other
    statements (imports, helpers) are setup run after the program. Bad test code is the data's
    fault, so it raises PosttrainError.
    """
    items = [tests] if isinstance(tests, str) else list(tests)
    setup: list[str] = []
    parsed: list[_Test] = []
    for index, source in enumerate(items):
        if not isinstance(source, str):
            raise PosttrainError(f"test {index} must be a string of Python code, got {type(source).__name__}")
        try:
            module = ast.parse(source)
        except SyntaxError as exc:
            raise PosttrainError(f"test {index} is not valid Python: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(tests, str):  # one list item is one test, whatever it contains
            only = module.body[0] if len(module.body) == 1 else None
            parsed.append(_assert_test(only, source) if isinstance(only, ast.Assert)
                          else _Test(source.strip(), {"kind": "exec", "code": source}))
            continue
        for node in module.body:
            if isinstance(node, ast.Assert):
                parsed.append(_assert_test(node, source))
            elif isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                setup.append(ast.unparse(node))
                parsed.append(_Test(node.name, {"kind": "call", "name": node.name}))
            else:
                setup.append(ast.unparse(node))
    return "\n".join(setup), parsed


def _judge(test: _Test, record: dict[str, Any] | None, missing: str) -> TestOutcome:
    """Turn the supervisor's record for one test into an outcome."""
    if record is None:
        return TestOutcome(test.name, False, missing)
    if not record.get("ok"):
        return TestOutcome(test.name, False, str(record.get("error") or "failed"))
    if not test.compare:
        return TestOutcome(test.name, True)
    text = str(record.get("value", ""))
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return TestOutcome(test.name, False, f"returned {_short(text)}, which is not a plain value to compare")
    try:
        equal = bool(value == test.expected)
    except Exception:  # noqa: BLE001 - a literal's == does not raise, but stay safe
        equal = False
    return TestOutcome(test.name, equal, None if equal else f"expected {_short(repr(test.expected))}, got {_short(text)}")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ isolation


@dataclass(frozen=True)
class _Isolation:
    name: str  # "namespaces" or "process"
    prefix: tuple[str, ...]  # command prefix that creates the namespaces (empty: none)
    drop_uid: bool  # run the program as a throwaway uid (only possible as root)


def _probe(prefix: Sequence[str], script: str) -> bool:
    try:
        done = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", script], env=_clean_env("/"),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=None)
def _isolation(wanted: str) -> _Isolation:
    """Find the strongest isolation this machine allows (probed once per process)."""
    root = os.geteuid() == 0
    prefix: tuple[str, ...] = ()
    unshare = shutil.which("unshare")
    if wanted != "process" and unshare and sys.platform.startswith("linux"):
        flags = ("--net", "--pid", "--fork", "--kill-child", "--mount-proc")
        # As root: plain namespaces (a user namespace would keep uid 0, exempt from RLIMIT_NPROC).
        # Otherwise an unprivileged user namespace maps us to root inside it.
        candidate = (unshare, *flags) if root else (unshare, "--user", "--map-root-user", *flags)
        connect = "import socket; socket.create_connection(('127.0.0.1', 9), 0.5)"
        if _probe(candidate, "pass") and not _probe(candidate, connect):
            prefix = candidate  # namespaces work, and inside them even the loopback is unreachable
    if wanted == "namespaces" and not prefix:
        raise PosttrainError("sandbox isolation 'namespaces' is not available here (is `unshare` installed "
                             "and are user namespaces enabled?); use isolation='auto' or 'process'")
    uid = 2**20 + 7
    drop = root and _probe(prefix, f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid})")
    return _Isolation("namespaces" if prefix else "process", prefix, drop)


def _clean_env(workdir: str) -> dict[str, str]:
    """The only environment the sandbox sees: nothing inherited, so no secrets."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir}


def _remove_tree(path: str) -> None:
    """Delete the working directory even if the program removed permissions inside it."""
    def retry(function, target, _exc):
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
            function(target)
        except OSError:
            pass
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=lambda f, p, e: retry(f, p, e[1]))


# ------------------------------------------------------------------------------- sandbox


class Sandbox:
    """Runs programs against tests under `limits`.

    isolation: "auto" (namespaces when the kernel allows, else process), "namespaces"
    (required: error if unavailable) or "process" (no namespaces). guard: install the
    audit-hook guard in the program's interpreter (defence in depth; the OS limits and
    namespaces do not depend on it).
    """

    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "auto", guard: bool = True):
        if isolation not in ("auto", "namespaces", "process"):
            raise PosttrainError(f"sandbox isolation must be auto, namespaces or process, got '{isolation}'")
        self.limits = (limits or SandboxLimits()).validate()
        self.guard = guard
        self._isolation = _isolation(isolation)

    @property
    def isolation(self) -> str:
        """What this sandbox uses, e.g. 'namespaces+uid' or 'process'."""
        return self._isolation.name + ("+uid" if self._isolation.drop_uid else "")

    def run(self, code: str, tests: str | Sequence[str] = ()) -> SandboxResult:
        """Run `code`, then each test in the same interpreter; see SandboxResult."""
        setup, parsed = parse_tests(tests)
        names = [t.name for t in parsed]
        try:
            compile(code, "<solution>", "exec")  # cheap refusal of code that cannot run, no process
        except SyntaxError as exc:
            reason = f"syntax error: {exc.msg} (line {exc.lineno})"
            return SandboxResult(False, [TestOutcome(n, False, reason) for n in names], reason, isolation=self.isolation)
        except (ValueError, MemoryError, RecursionError) as exc:
            reason = f"cannot compile program: {type(exc).__name__}"
            return SandboxResult(False, [TestOutcome(n, False, reason) for n in names], reason, isolation=self.isolation)
        workdir = tempfile.mkdtemp(prefix="posttrain-sandbox-")
        try:
            report, failure = self._launch(code, setup, parsed, workdir)
        finally:
            _remove_tree(workdir)
        result = self._interpret(parsed, report, failure)
        result.workdir = workdir
        return result

    def run_many(self, jobs: Iterable[tuple[str, str | Sequence[str]]], max_workers: int | None = None) -> list[SandboxResult]:
        """Run `(code, tests)` jobs concurrently (threads; each job is its own process tree)."""
        jobs = list(jobs)
        workers = max_workers or max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))

    # -- plumbing -----------------------------------------------------------------------

    def _spec(self, code: str, setup: str, parsed: list[_Test]) -> dict[str, Any]:
        limits = self.limits
        return {
            "code": code, "setup": setup, "tests": [t.wire for t in parsed], "guard": self.guard,
            "timeout_s": limits.timeout_s, "cpu_s": math.ceil(limits.cpu_s or limits.timeout_s),
            "memory_bytes": limits.memory_mb * 2**20, "max_processes": limits.max_processes,
            "file_bytes": limits.max_file_mb * 2**20, "open_files": limits.max_open_files,
            "output_bytes": limits.output_bytes, "value_limit": _VALUE_LIMIT,
            "readonly_fs": self._isolation.name == "namespaces",
            # A throwaway uid per run: RLIMIT_NPROC counts per uid, so runs cannot starve each other.
            "uid": 2**20 + secrets.randbelow(2**30) if self._isolation.drop_uid else None,
        }

    def _launch(self, code, setup, parsed, workdir) -> tuple[dict[str, Any] | None, str | None]:
        """Start the supervisor, wait for it, kill what is left; return (report, failure)."""
        command = [*self._isolation.prefix, sys.executable, "-I", "-S", str(SUPERVISOR)]
        payload = json.dumps(self._spec(code, setup, parsed)).encode()
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       cwd=workdir, env=_clean_env(workdir), start_new_session=True)
        except OSError as exc:
            return None, f"sandbox error: cannot start the supervisor: {exc}"
        watchdog = False
        try:
            out, err = process.communicate(payload, timeout=self.limits.timeout_s + _GRACE_S)
        except subprocess.TimeoutExpired:
            watchdog = True
            _kill_group(process.pid)
            out, err = process.communicate()
        finally:
            _kill_group(process.pid)  # anything left in the session (the supervisor's own kill is first)
        if watchdog:
            return None, f"timeout after {self.limits.timeout_s:g}s (supervisor unresponsive, killed)"
        if process.returncode != 0:
            how = (f"was killed by signal {-process.returncode} ({_signal_name(-process.returncode)})"
                   if process.returncode < 0 else f"exited with code {process.returncode}")
            detail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            hint = " (did the program kill its parent?)" if process.returncode < 0 else f": {detail[0][:200]}"
            return None, f"sandbox supervisor {how}{hint}"
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            return json.loads(lines[-1]), None
        except (IndexError, json.JSONDecodeError):
            return None, "sandbox error: the supervisor sent no report"

    def _interpret(self, parsed: list[_Test], report: dict[str, Any] | None, failure: str | None) -> SandboxResult:
        if report is None:
            tests = [TestOutcome(t.name, False, failure) for t in parsed]
            return SandboxResult(False, tests, failure, isolation=self.isolation)
        records = report["records"]
        by_test = {r["i"]: r for r in records if r.get("event") == "test" and isinstance(r.get("i"), int)}
        started = {r["i"] for r in records if r.get("event") == "start" and isinstance(r.get("i"), int)}
        program = ([r for r in records if r.get("event") == "program"] or [None])[-1]  # setup comes after
        violations = [f"blocked: {r.get('kind')} ({r.get('detail')})" for r in records if r.get("event") == "violation"]
        ended = self._ending(report, program, violations)
        tests = []
        for index, test in enumerate(parsed):
            missing = ended or "not run"
            if ended and index not in started:
                missing = f"not run: {ended}"
            outcome = _judge(test, by_test.get(index), missing)
            if violations:  # an escape attempt earns nothing, even from tests that passed before it
                outcome = TestOutcome(test.name, False, violations[0])
            tests.append(outcome)
        failed = [t for t in tests if not t.passed]
        reason = ended
        if reason is None and failed:
            reason = f"{len(failed)} of {len(tests)} tests failed; first: {failed[0].name}: {failed[0].error}"
        return SandboxResult(
            passed=reason is None, tests=tests, reason=reason, stdout=report.get("stdout", ""),
            stderr=report.get("stderr", ""), duration_s=report.get("duration_s", 0.0), cpu_s=report.get("cpu_s"),
            violations=violations, isolation=self.isolation)

    def _ending(self, report, program, violations) -> str | None:
        """Why the run as a whole failed (None when the program ran and every test got a record)."""
        status = report.get("status", {})
        if violations:
            return violations[0]
        if report.get("timed_out"):
            return f"timeout after {self.limits.timeout_s:g}s"
        if program is not None and not program.get("ok"):
            error = str(program.get("error"))
            if error.startswith("MemoryError"):
                return f"memory limit ({self.limits.memory_mb} MB): {error}"
            if error.startswith("test setup failed"):
                return error
            if "[Errno 27]" in error:  # EFBIG: Python ignores SIGXFSZ, so the write fails instead
                return f"file size limit ({self.limits.max_file_mb} MB): {error}"
            return f"program raised {error}" if not error.startswith("SyntaxError") else f"syntax error: {error}"
        signum = status.get("signal")
        if signum is not None:
            cpu_limit = math.ceil(self.limits.cpu_s or self.limits.timeout_s)
            if signum == signal.SIGXCPU or (signum == signal.SIGKILL and (report.get("cpu_s") or 0) >= cpu_limit):
                return f"cpu time limit ({cpu_limit}s)"
            if signum == signal.SIGXFSZ:
                return f"file size limit ({self.limits.max_file_mb} MB)"
            return f"killed by signal {signum} ({_signal_name(signum)})"
        if not any(r.get("event") == "done" for r in report["records"]):
            return f"exited with code {status.get('exitcode')} before the tests finished"
        return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_DEFAULT: dict[tuple, Sandbox] = {}


def run_python(code: str, tests: str | Sequence[str] = (), limits: SandboxLimits | None = None) -> SandboxResult:
    """One-call convenience: run `code` against `tests` in a default Sandbox."""
    key = (limits,)
    if key not in _DEFAULT:
        _DEFAULT[key] = Sandbox(limits)
    return _DEFAULT[key].run(code, tests)
