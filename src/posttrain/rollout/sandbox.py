"""Run untrusted, model-written Python against unit tests, contained, and judge it from outside.

Process tree for one run (see docs/rewards.md, "Reward integrity" and "How a run is contained"):

    trainer thread ── [unshare --net --ipc --pid --mount-proc] ── supervisor ──┬── program   (uid A)
                                                                (PID 1, root) ├── io test k (uid A+1+k)
                                                                              └── judge     (uid J)

* The trainer (this module) splits the tests (`parse_tests`), keeps every expected value and
  expected output to itself, starts the supervisor in a new session with a clean environment
  and, where the kernel allows, new network/IPC/PID/mount namespaces; it kills the whole session
  after a wall-clock deadline.
* The supervisor (`posttrain/resources/sandbox_supervisor.py`, stdlib only) pivots into a
  private, size-limited tmpfs root that holds only the Python runtime, forks the program
  processes under resource limits as throwaway uids, then forks the judge.
* Verdicts: `assert EXPR == LITERAL` is a *probe*: the program process sends EXPR's value as a
  plain value (exact built-in types only) and `_judge` here compares it with the literal. Io
  tests (stdin -> stdout) are compared here too. Every other test runs in the judge, a separate
  process that never held the program's code and that the program cannot touch; the program's
  names are proxies there that return plain values. So nothing the program does in its own
  process (frames, builtins, exit codes, forged output, threads) can turn a failure into a pass.

`Sandbox(limits).run(code, tests)` returns a `SandboxResult`; `run_many` runs many at once on a
thread pool (each run is its own process tree, so runs do not share anything).
"""
from __future__ import annotations

import ast
import concurrent.futures
import functools
import importlib.util
import json
import math
import os
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import PosttrainError

SUPERVISOR = Path(__file__).resolve().parent.parent / "resources" / "sandbox_supervisor.py"
VIOLATION_EXIT = 86  # the program exits with this after a guard violation
_GRACE_S = 3.0  # how long past the program deadline the trainer waits for the supervisor
_VALUE_LIMIT = 1 << 20  # longest encoded value a test may send back (bytes of JSON)
_IO_OUTPUT_LIMIT = 1 << 20  # stdout kept per io test; longer output fails that test
_REPORT_LIMIT = 64 << 20  # the supervisor's report, read at most


def _load_wire():
    """The supervisor script's value codec (one definition for both sides of the boundary)."""
    spec = importlib.util.spec_from_file_location("posttrain_sandbox_supervisor", SUPERVISOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_wire = _load_wire()
# Imported rather than run as a script, so that Python uses its cached bytecode (compiling the
# supervisor on every run cost more than the rest of its start-up).
_START_SUPERVISOR = (f"import sys; sys.path.insert(0, {str(SUPERVISOR.parent)!r}); "
                     "import sandbox_supervisor; del sys.path[0]; sandbox_supervisor.main()")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run. `cpu_s=None` means ceil(timeout_s)."""

    timeout_s: float = 3.0  # wall clock for the program plus all its tests
    cpu_s: float | None = None  # RLIMIT_CPU per process (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 256  # RLIMIT_AS: address space, so MemoryError rather than the OOM killer
    max_processes: int = 8  # RLIMIT_NPROC for each program process (a throwaway uid each, as root)
    max_file_mb: int = 8  # RLIMIT_FSIZE: largest file the program may write (EFBIG beyond)
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 4096  # tail of stdout/stderr kept in the result
    disk_mb: int = 16  # size of the private tmpfs (all files of the run together)
    max_files: int = 512  # inodes of the private tmpfs (files + directories, runtime mount points included)

    def validate(self) -> "SandboxLimits":
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_open_files", "output_bytes",
                     "disk_mb", "max_files"):
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
    """What happened. `reason` is None exactly when `passed` is True. `violations` lists blocked
    actions (escape or forgery attempts), separately from test failures."""

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

    @property
    def blocked(self) -> str | None:
        """The first blocked action ("blocked: network (socket.__new__)"), or None."""
        return self.violations[0] if self.violations else None


# ------------------------------------------------------------------------------------ tests


@dataclass(frozen=True)
class _Test:
    """A test as the sandbox runs it (`wire`) and what the trainer compares against.

    wire["kind"]: "probe" (the program evaluates `expr`; compared here with `expected`),
    "value" (the judge evaluates `expr` with the test setup; compared here), "exec" (the judge
    runs `code` and calls `calls`; its verdict) or "io" (stdin in, stdout compared here)."""

    name: str
    wire: dict[str, Any]
    expected: Any = None


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _assert_test(node: ast.Assert, source: str, has_setup: bool) -> _Test:
    """`assert A == <literal>` is evaluated as a value and compared here; anything else runs in the judge."""
    name = ast.get_source_segment(source, node) or ast.unparse(node)
    test = node.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        left, right = test.left, test.comparators[0]
        left_ok, left_value = _literal(left)
        right_ok, right_value = _literal(right)
        if right_ok != left_ok:
            expr, expected = (left, right_value) if right_ok else (right, left_value)
            # The program process does not run the test setup: with setup, the judge evaluates.
            kind = "value" if has_setup else "probe"
            return _Test(name, {"kind": kind, "expr": ast.unparse(expr)}, expected)
    return _Test(name, {"kind": "exec", "code": ast.unparse(node), "calls": []})


def _test_names(module: ast.Module) -> list[str]:
    """Calls that run a module's test functions: `test_x()` and `TestCase().test_y()`."""
    calls = []
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            calls.append(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            calls += [f"{node.name}().{m.name}" for m in node.body
                      if isinstance(m, ast.FunctionDef) and m.name.startswith("test")]
    return calls


def _io_test(item: dict, index: int) -> _Test:
    stdin = item.get("stdin", item.get("input"))
    stdout = item.get("stdout", item.get("output"))
    if not isinstance(stdin, str) or not isinstance(stdout, str):
        raise PosttrainError(f"test {index}: an io test needs string 'stdin' and 'stdout' fields")
    return _Test(str(item.get("name") or f"io test {index}"), {"kind": "io", "stdin": stdin}, stdout)


def parse_tests(tests: str | Sequence[Any]) -> tuple[str, list[_Test]]:
    """Split a record's tests into test setup code and tests.

    `tests` is either a list whose items are each one test (Python code, usually one `assert`;
    code that defines `test_*` functions runs them all; or `{"stdin": ..., "stdout": ...}` for a
    program that reads stdin), or one source string (a pytest-style file) whose top-level
    `assert`s, `def test_*()` functions and `Test*` classes' `test_*` methods are the tests and
    whose other statements (imports, helpers) are setup, run in the judge. A string with none of
    those is one test: the whole string must run without error. Bad test code is the data's
    fault, so it raises PosttrainError.
    """
    items = [tests] if isinstance(tests, str) else list(tests)
    setup: list[str] = []
    parsed: list[_Test] = []
    for index, source in enumerate(items):
        if isinstance(source, dict):
            parsed.append(_io_test(source, index))
            continue
        if not isinstance(source, str):
            raise PosttrainError(f"test {index} must be a string of Python code or a stdin/stdout dict, "
                                 f"got {type(source).__name__}")
        try:
            module = ast.parse(source)
        except SyntaxError as exc:
            raise PosttrainError(f"test {index} is not valid Python: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(tests, str):  # one list item is one test, whatever it contains
            only = module.body[0] if len(module.body) == 1 else None
            parsed.append(_assert_test(only, source, False) if isinstance(only, ast.Assert)
                          else _Test(source.strip(), {"kind": "exec", "code": source, "calls": _test_names(module)}))
            continue
        calls = _test_names(module)
        functions = {c for c in calls if "(" not in c}
        setup_nodes = [n for n in module.body if not isinstance(n, ast.Assert)]
        found = []
        for node in module.body:
            if isinstance(node, ast.Assert):
                found.append(_assert_test(node, source, bool(setup_nodes)))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in functions:
                found.append(_Test(node.name, {"kind": "exec", "code": "", "calls": [node.name]}))
            elif isinstance(node, ast.ClassDef):
                found += [_Test(c, {"kind": "exec", "code": "", "calls": [c]}) for c in calls
                          if c.startswith(node.name + "().")]
        if found:
            setup += [ast.unparse(node) for node in setup_nodes]
        else:  # e.g. HumanEval's `def check(candidate): ...` then `check(f)`: the whole file is the test
            found = [_Test("<test code>", {"kind": "exec", "code": source, "calls": []})]
        parsed += found
    return "\n".join(setup), parsed


def _decode(text: Any) -> tuple[bool, Any]:
    """A value the sandbox sent (JSON of a tagged plain value) -> (ok, built-in object)."""
    if not isinstance(text, str) or len(text) > _VALUE_LIMIT + 1024:
        return False, None
    try:
        return True, _wire.decode_value(json.loads(text))
    except (ValueError, RecursionError, MemoryError, _wire.BadValue):
        return False, None


def _compare(test: _Test, record: dict[str, Any]) -> TestOutcome:
    if "error" in record:
        return TestOutcome(test.name, False, str(record["error"])[:500])
    ok, value = _decode(record.get("value"))
    if not ok:
        return TestOutcome(test.name, False, "the value that came back is not a plain value")
    try:
        equal = bool(value == test.expected)  # both built-in plain values: == is Python's own
    except (RecursionError, MemoryError):
        equal = False
    return TestOutcome(test.name, equal, None if equal else f"expected {_show(test.expected)}, got {_show(value)}")


def _show(value: Any) -> str:
    """A short repr for messages; a huge int's repr would raise (the int-to-str digit limit)."""
    try:
        return _short(repr(value))
    except (ValueError, RecursionError, MemoryError):
        return f"<{type(value).__name__} too large to show>"


def _lines(text: str) -> list[str]:
    """Output as competitive judges compare it: trailing spaces and trailing blank lines ignored."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _compare_io(test: _Test, got: str) -> TestOutcome:
    want, have = _lines(test.expected), _lines(got)
    if want == have:
        return TestOutcome(test.name, True)
    for number, (w, h) in enumerate(zip(want, have), 1):
        if w != h:
            return TestOutcome(test.name, False, f"line {number}: expected {_short(repr(w))}, got {_short(repr(h))}")
    return TestOutcome(test.name, False, f"expected {len(want)} lines of output, got {len(have)}")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ isolation


@dataclass(frozen=True)
class _Isolation:
    name: str  # "namespaces" or "process"
    prefix: tuple[str, ...]  # command prefix that creates the namespaces (empty: none)
    drop_uid: bool  # run the program as throwaway uids (only possible as root)


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
    unshare = shutil.which("unshare")
    if wanted != "process" and unshare and sys.platform.startswith("linux"):
        flags = ("--net", "--ipc", "--pid", "--fork", "--kill-child", "--mount-proc")
        # As root: plain namespaces (a user namespace would keep uid 0, exempt from RLIMIT_NPROC).
        # Otherwise an unprivileged user namespace maps us to root inside it.
        candidate = _Isolation("namespaces", (unshare, *flags) if root else (unshare, "--user", "--map-root-user", *flags),
                               root)
        connect = "import socket; socket.create_connection(('127.0.0.1', 9), 0.5)"
        if _probe(candidate.prefix, "pass") and not _probe(candidate.prefix, connect) and _private_root_works(candidate):
            return candidate  # namespaces work, the loopback is unreachable, the private root mounts
    if wanted == "namespaces":
        raise PosttrainError("sandbox isolation 'namespaces' is not available here (is `unshare` installed, are user "
                             "namespaces enabled, may we mount tmpfs?); use isolation='auto' or 'process'")
    if not root:
        raise PosttrainError("the code sandbox cannot judge safely here: without namespaces and without root the "
                             "program would run as your own user and could rewrite the files the trainer runs. "
                             "Enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or "
                             "run as root (see docs/rewards.md, 'Reward integrity')")
    return _Isolation("process", (), True)


def _private_root_works(isolation: _Isolation) -> bool:
    """One real run in the private root: mounts, pivot_root and the stdlib must all work."""
    try:
        box = Sandbox.__new__(Sandbox)
        box.limits, box.guard, box._isolation = SandboxLimits(timeout_s=10), False, isolation
        result = box.run("import json, math\nvalue = 2", ["assert value == 2"])
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False
    return result.passed


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


def _frame(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    return f"{len(data):012d}".encode() + data


# ------------------------------------------------------------------------------- sandbox


class Sandbox:
    """Runs programs against tests under `limits`.

    isolation: "auto" (namespaces when the kernel allows, else process), "namespaces"
    (required: error if unavailable) or "process" (no namespaces; needs root). guard: install
    the audit-hook guard in the program's interpreter (defence in depth that names blocked
    actions; no verdict depends on it).
    """

    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "auto", guard: bool = True):
        if isolation not in ("auto", "namespaces", "process"):
            raise PosttrainError(f"sandbox isolation must be auto, namespaces or process, got '{isolation}'")
        self.limits = (limits or SandboxLimits()).validate()
        self.guard = guard
        self._isolation = _isolation(isolation)

    @property
    def isolation(self) -> str:
        """What this sandbox uses, e.g. 'namespaces+uid' or 'process+uid'."""
        return self._isolation.name + ("+uid" if self._isolation.drop_uid else "")

    def run(self, code: str, tests: str | Sequence[Any] = ()) -> SandboxResult:
        """Run `code` against each test; see SandboxResult."""
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

    def run_many(self, jobs: Iterable[tuple[str, str | Sequence[Any]]], max_workers: int | None = None) -> list[SandboxResult]:
        """Run `(code, tests)` jobs concurrently (threads; each job is its own process tree)."""
        jobs = list(jobs)
        workers = max_workers or max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))

    # -- plumbing -----------------------------------------------------------------------

    def _specs(self, code: str, setup: str, parsed: list[_Test], workdir: str) -> tuple[dict, dict | None]:
        """Frame 1 (everything the program processes may know) and frame 2 (the judge's test code)."""
        limits = self.limits
        probes = [[i, t.wire["expr"]] for i, t in enumerate(parsed) if t.wire["kind"] == "probe"]
        judged = [{"i": i, **t.wire} for i, t in enumerate(parsed) if t.wire["kind"] in ("value", "exec")]
        io = [t.wire["stdin"] for t in parsed if t.wire["kind"] == "io"]
        # Throwaway uids per run (as root): the judge, the program, one per io test. RLIMIT_NPROC
        # counts per uid, so runs and processes cannot starve each other or signal each other.
        base = 2**20 + secrets.randbelow(2**30) if self._isolation.drop_uid else None
        namespaced = self._isolation.name == "namespaces"
        program = {
            "code": code, "probes": probes, "io": io, "main": bool(probes or judged or not io), "judge": bool(judged),
            "guard": self.guard, "timeout_s": limits.timeout_s, "cpu_s": math.ceil(limits.cpu_s or limits.timeout_s),
            "memory_bytes": limits.memory_mb * 2**20, "max_processes": limits.max_processes,
            "file_bytes": limits.max_file_mb * 2**20, "open_files": limits.max_open_files,
            "output_bytes": limits.output_bytes, "io_output_bytes": _IO_OUTPUT_LIMIT, "value_limit": _VALUE_LIMIT,
            "private_root": namespaced, "mount_point": workdir, "workroot": workdir,
            "disk_bytes": limits.disk_mb * 2**20, "max_files": limits.max_files,
            "base_uid": base, "judge_uid": base, "userns": namespaced and not self._isolation.drop_uid,
        }
        return program, ({"setup": setup, "tests": judged} if judged else None)

    def _launch(self, code, setup, parsed, workdir) -> tuple[dict[str, Any] | None, str | None]:
        """Start the supervisor, wait for it, kill what is left; return (report, failure)."""
        program, judge = self._specs(code, setup, parsed, workdir)
        payload = _frame(program) + (_frame(judge) if judge else b"")
        ours, theirs = socket.socketpair()  # a socket cannot be reopened through /proc/PID/fd, unlike a pipe
        command = [*self._isolation.prefix, sys.executable, "-I", "-S", "-c", _START_SUPERVISOR]
        try:
            process = subprocess.Popen(command, stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL,
                                       cwd=workdir, env=_clean_env(workdir), start_new_session=True)
        except OSError as exc:
            ours.close()
            theirs.close()
            return None, f"sandbox error: cannot start the supervisor: {exc}"
        theirs.close()
        deadline = time.monotonic() + self.limits.timeout_s + _GRACE_S
        try:
            out = _exchange(ours, payload, deadline)
        finally:
            ours.close()
            _kill_group(process.pid)  # anything left in the session (the supervisor's own kill is first)
            process.wait()
        if out is None:
            return None, f"timeout after {self.limits.timeout_s:g}s (supervisor unresponsive, killed)"
        if process.returncode != 0:
            how = (f"was killed by signal {-process.returncode} ({_signal_name(-process.returncode)})"
                   if process.returncode < 0 else f"exited with code {process.returncode}")
            return None, f"sandbox supervisor {how}"
        try:
            report = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return None, "sandbox error: the supervisor sent no report"
        if not isinstance(report, dict) or "error" in report:
            return None, f"sandbox error: {str(report.get('error') if isinstance(report, dict) else report)[:300]}"
        return report, None

    def _interpret(self, parsed: list[_Test], report: dict[str, Any] | None, failure: str | None) -> SandboxResult:
        if report is None:
            tests = [TestOutcome(t.name, False, failure) for t in parsed]
            return SandboxResult(False, tests, failure, isolation=self.isolation)
        program_records = [r for r in report.get("program", []) if isinstance(r, dict)]
        io_runs = report.get("io", [])
        violations = [f"blocked: {r.get('kind')} ({r.get('detail')})" for run in [program_records] +
                      [run.get("records", []) for run in io_runs] for r in run
                      if isinstance(r, dict) and r.get("event") == "violation"]
        values: dict[int, list[dict]] = {}
        for record in program_records:
            if record.get("event") == "value" and type(record.get("i")) is int:
                values.setdefault(record["i"], []).append(record)
        if any(len(found) > 1 for found in values.values()):
            violations.append("blocked: forged report (more than one result for a test)")
        exits = [report.get("status", {}).get("exitcode")] + [run.get("status", {}).get("exitcode") for run in io_runs]
        if self.guard and not violations and VIOLATION_EXIT in exits:  # the guard's record was lost (flooded pipe)
            violations.append("blocked: an action the guard refused (its record was lost)")
        started = {r["i"] for r in program_records if r.get("event") == "start" and type(r.get("i")) is int}
        judge = {r["i"]: r for r in report.get("judge", []) if isinstance(r, dict) and type(r.get("i")) is int}
        judge_setup = next((r for r in report.get("judge", []) if isinstance(r, dict) and r.get("event") == "setup"), None)
        program = next((r for r in program_records if r.get("event") == "program"), None)
        probes_missing = any(t.wire["kind"] == "probe" and i not in values for i, t in enumerate(parsed))
        ended = self._ending(report, program, violations, probes_missing)
        if ended is None and judge_setup is not None:
            ended = "test setup failed: " + str(judge_setup.get("error"))[:300]
        tests, io_index = [], 0
        for index, test in enumerate(parsed):
            kind = test.wire["kind"]
            missing = f"not run: {ended}" if ended else "not run"
            if kind == "io":
                outcome = self._io_outcome(test, io_runs[io_index] if io_index < len(io_runs) else None, report)
                io_index += 1
            elif kind == "probe":
                found = values.get(index, [])
                if ended and index in started and not found:
                    missing = ended
                outcome = _compare(test, found[0]) if len(found) == 1 else TestOutcome(test.name, False, missing)
            elif judge_setup is not None:  # (when the program ended early, that is the reason)
                outcome = TestOutcome(test.name, False, missing if ended else
                                      "test setup failed: " + str(judge_setup.get("error"))[:300])
            elif index in judge:
                record = judge[index]
                if kind == "value":
                    outcome = _compare(test, record)
                else:
                    outcome = TestOutcome(test.name, record.get("ok") is True,
                                          None if record.get("ok") is True else str(record.get("error"))[:500])
            else:
                outcome = TestOutcome(test.name, False, missing)
            if violations:  # an escape or forgery attempt earns nothing, even from tests that passed before it
                outcome = TestOutcome(test.name, False, violations[0])
            tests.append(outcome)
        failed = [t for t in tests if not t.passed]
        reason = ended
        if reason is None and failed:
            reason = f"{len(failed)} of {len(tests)} tests failed; first: {failed[0].name}: {failed[0].error}"
        status = report.get("status", {})
        return SandboxResult(
            passed=reason is None, tests=tests, reason=reason, stdout=str(report.get("stdout", "")),
            stderr=str(report.get("stderr", "")), duration_s=report.get("duration_s", 0.0), cpu_s=status.get("cpu_s"),
            violations=violations, isolation=self.isolation)

    def _io_outcome(self, test: _Test, run: dict[str, Any] | None, report: dict[str, Any]) -> TestOutcome:
        if run is None:
            return TestOutcome(test.name, False, "not run")
        program = next((r for r in run.get("records", []) if isinstance(r, dict) and r.get("event") == "program"), None)
        if program is not None and not program.get("ok"):
            return TestOutcome(test.name, False, f"program raised {str(program.get('error'))[:300]}")
        if run.get("overflow"):
            return TestOutcome(test.name, False, f"output longer than {_IO_OUTPUT_LIMIT} bytes")
        died = self._death(run.get("status", {}))
        if died:
            return TestOutcome(test.name, False, died)
        status = run.get("status", {})
        if "exitcode" not in status:
            return TestOutcome(test.name, False, f"timeout after {self.limits.timeout_s:g}s" if report.get("timed_out")
                               else "not run")
        if status["exitcode"] != 0:  # a runtime error, as competitive judges count it
            return TestOutcome(test.name, False, f"exited with code {status['exitcode']}")
        return _compare_io(test, str(run.get("stdout", "")))

    def _death(self, status: dict[str, Any]) -> str | None:
        """Why a process died of a signal (None when it exited)."""
        signum = status.get("signal")
        if signum is None:
            return None
        cpu_limit = math.ceil(self.limits.cpu_s or self.limits.timeout_s)
        if signum == signal.SIGXCPU or (signum == signal.SIGKILL and (status.get("cpu_s") or 0) >= cpu_limit):
            return f"cpu time limit ({cpu_limit}s)"
        if signum == signal.SIGXFSZ:
            return f"file size limit ({self.limits.max_file_mb} MB)"
        return f"killed by signal {signum} ({_signal_name(signum)})"

    def _ending(self, report, program, violations, probes_missing: bool) -> str | None:
        """Why the run as a whole failed (None when the program ran and the tests were judged)."""
        if violations:
            return violations[0]
        if report.get("timed_out"):
            return f"timeout after {self.limits.timeout_s:g}s"
        status = report.get("status", {})
        if program is not None and not program.get("ok"):
            error = str(program.get("error"))
            if error.startswith("MemoryError"):
                return f"memory limit ({self.limits.memory_mb} MB): {error}"
            if "[Errno 27]" in error:  # EFBIG: Python ignores SIGXFSZ, so the write fails instead
                return f"file size limit ({self.limits.max_file_mb} MB): {error}"
            if "[Errno 28]" in error or "[Errno 122]" in error:  # ENOSPC / EDQUOT on the private tmpfs
                return f"disk limit ({self.limits.disk_mb} MB, {self.limits.max_files} files): {error}"
            return f"program raised {error}" if not error.startswith("SyntaxError") else f"syntax error: {error}"
        died = self._death(status)
        if died:
            return died
        if "exitcode" in status and (status["exitcode"] != 0 or program is None or probes_missing):
            return f"exited with code {status.get('exitcode')} before the tests finished"
        judge = report.get("judge_status", {})
        if self._death(judge):
            return f"the test code was stopped: {self._death(judge)}"
        return None


def _exchange(sock: socket.socket, payload: bytes, deadline: float) -> bytes | None:
    """Send the spec, read the report until EOF; None when the deadline passes first."""
    sock.setblocking(False)
    out = bytearray()
    view = memoryview(payload)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, writable, _ = select.select([sock], [sock] if view else [], [], left)
        if writable:
            try:
                view = view[sock.send(view):]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                view = view[len(view):]  # the supervisor is gone; read what it said
            if not view:
                sock.shutdown(socket.SHUT_WR)
        if readable:
            try:
                chunk = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            if len(out) < _REPORT_LIMIT:
                out += chunk


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


def run_python(code: str, tests: str | Sequence[Any] = (), limits: SandboxLimits | None = None) -> SandboxResult:
    """One-call convenience: run `code` against `tests` in a default Sandbox."""
    key = (limits,)
    if key not in _DEFAULT:
        _DEFAULT[key] = Sandbox(limits)
    return _DEFAULT[key].run(code, tests)
