"""The sandbox: normal programs, and escape attempts that must be contained and reported.

Each escape test runs twice where it makes sense: with the audit-hook guard (the attempt is
refused and named) and without it (the OS layers alone must still contain it), so the guard is
never the only thing a test relies on.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import pytest

from posttrain.errors import PosttrainError
from posttrain.rollout import sandbox as sandbox_module
from posttrain.rollout.sandbox import Sandbox, SandboxLimits, parse_tests

FAST = SandboxLimits(timeout_s=2.0)


@pytest.fixture(scope="module")
def guarded():
    return Sandbox(FAST)


@pytest.fixture(scope="module")
def unguarded():
    return Sandbox(FAST, guard=False)


def namespaced(box: Sandbox) -> bool:
    return box.isolation.startswith("namespaces")


def leftover_processes(workdir: str) -> list[int]:
    """Processes whose working directory is (was) the sandbox's: none may outlive a run."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/cwd").startswith(workdir):
                    found.append(int(name))
            except OSError:
                pass
    return found


# ---------------------------------------------------------------------- normal programs

def test_passing_program(guarded):
    code = "def add(a, b):\n    return a + b\nprint('hello from the sandbox')"
    result = guarded.run(code, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) > 3"])
    assert result.passed and result.reason is None
    assert [t.passed for t in result.tests] == [True, True, True]
    assert result.fraction_passed == 1.0
    assert result.stdout == "hello from the sandbox\n"
    assert not os.path.exists(result.workdir)  # the working directory is gone afterwards


def test_failing_program_reports_each_test(guarded):
    result = guarded.run("def add(a, b):\n    return a - b", ["assert add(1, 2) == 3", "assert add(2, 0) == 2",
                                                               "assert add(5, 1) > 10"])
    assert not result.passed
    assert [t.passed for t in result.tests] == [False, True, False]
    assert result.tests[0].error == "expected 3, got -1"
    assert result.tests[2].error.startswith("AssertionError")
    assert result.fraction_passed == pytest.approx(1 / 3)
    assert result.reason.startswith("2 of 3 tests failed")


def test_program_may_use_its_working_directory(guarded):
    code = "open('notes.txt', 'w').write('kept')\nimport os, tempfile\nos.mkdir('sub')\ntmp = tempfile.mkdtemp()"
    result = guarded.run(code, ["assert open('notes.txt').read() == 'kept'", "assert os.path.isdir('sub')",
                                "assert tmp.startswith(os.getcwd())"])
    assert result.passed, result.reason


def test_test_functions_and_setup_in_one_string(guarded):
    tests = "import math\ndef test_ok():\n    assert sq(3) == 9\ndef test_bad():\n    assert sq(2) == 5\nassert sq(4) == 16"
    result = guarded.run("def sq(x):\n    return x * x", tests)
    assert [(t.name, t.passed) for t in result.tests] == [("test_ok", True), ("test_bad", False), ("assert sq(4) == 16", True)]


def test_failing_test_setup_is_the_reason(guarded):
    result = guarded.run("def f():\n    return 1", "import no_such_module_xyz\nassert f() == 1")
    assert result.reason.startswith("test setup failed: ModuleNotFoundError")


def test_a_violation_after_passing_tests_earns_nothing(guarded):
    code = ("import threading, time, socket\n"
            "def later():\n    time.sleep(0.3)\n    socket.socket()\n"
            "threading.Thread(target=later).start()\n"
            "def f():\n    time.sleep(0.6)\n    return 1")
    result = guarded.run(code, ["assert f() == 1"])
    assert result.reason.startswith("blocked: network") and result.fraction_passed == 0.0


def test_syntax_error_fails_without_starting_a_process(guarded):
    result = guarded.run("def f(:\n  pass", ["assert f() == 1"])
    assert not result.passed and result.reason.startswith("syntax error")
    assert result.tests[0].error == result.reason and result.workdir == ""


def test_program_exception_fails_all_tests(guarded):
    result = guarded.run("def f():\n    return 1\nraise ValueError('boom')", ["assert f() == 1"])
    assert result.reason == "program raised ValueError: boom"
    assert result.tests[0].error == "not run: program raised ValueError: boom"


def test_exiting_early_does_not_pass_the_tests(guarded):
    result = guarded.run("import os\nos._exit(0)", ["assert True"])
    assert not result.passed and "before the tests finished" in result.reason
    result = guarded.run("import sys\nsys.exit(0)", ["assert True"])
    assert not result.passed and result.reason == "program raised SystemExit: 0"


def test_io_tests_compare_stdout_in_the_trainer(guarded):
    code = "import sys\nn = int(input())\nprint(n * 2)  \nprint()\nsys.exit(0 if n < 9 else 3)"
    tests = [{"stdin": "3\n", "stdout": "6"}, {"stdin": "4", "stdout": "9\n"}, {"input": "9", "output": "18"}]
    result = guarded.run(code, tests)
    assert [t.passed for t in result.tests] == [True, False, False]
    assert result.tests[1].error == "line 1: expected '9', got '8'"
    assert result.tests[2].error == "program raised SystemExit: 3"


def test_output_is_kept_as_a_tail(guarded):
    result = guarded.run("print('x' * 100000)\nprint('END')")
    assert result.passed
    assert result.stdout.endswith("END\n") and len(result.stdout) <= FAST.output_bytes


# ---------------------------------------------------------------------- forging a pass

def test_always_equal_object_cannot_fake_an_equality_test(guarded):
    code = "class Anything:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Anything()"
    result = guarded.run(code, ["assert add(1, 2) == 3"])
    assert not result.passed and "not a plain value" in result.tests[0].error


def test_subclasses_of_plain_types_arrive_as_their_plain_data(guarded):
    code = ("import collections, enum\nclass Color(enum.IntEnum):\n    RED = 1\n"
            "def count(s):\n    return collections.Counter(s)\n"
            "def pair():\n    return collections.namedtuple('P', 'x y')(1, 2)\n"
            "def red():\n    return Color.RED")
    result = guarded.run(code, ["assert count('aab') == {'a': 2, 'b': 1}", "assert pair() == (1, 2)", "assert red() == 1",
                                "assert count('ab') == {'a': 2}"])
    assert [t.passed for t in result.tests] == [True, True, True, False]
    assert result.tests[3].error == "expected {'a': 2}, got {'a': 1, 'b': 1}"


def test_replacing_builtins_cannot_skip_the_tests(guarded):
    code = "import builtins\nbuiltins.exec = lambda *args, **kwargs: None\ndef f():\n    return 0"
    result = guarded.run(code, ["assert f() > 5", "assert f() == 7"])
    assert [t.passed for t in result.tests] == [False, False]


def test_forged_reports_are_ignored(unguarded):
    # The program writes "all passed" records straight onto the report pipe, then leaves.
    code = ("import os, json\n"
            "for i in range(2):\n"
            "    os.write(3, (json.dumps({'event': 'test', 'i': i, 'ok': True}) + '\\n').encode())\n"
            "os.write(3, b'{\"event\": \"done\"}\\n')\n"
            "os._exit(0)")
    result = unguarded.run(code, ["assert False", "assert 1 == 2"])
    assert not result.passed
    assert not any(t.passed for t in result.tests)


# ---------------------------------------------------------------------- escape attempts

@pytest.mark.parametrize("guard", [True, False])
def test_socket_to_a_local_listener_is_contained(guard):
    box = Sandbox(FAST, guard=guard)
    if not guard and not namespaced(box):
        pytest.skip("without namespaces only the guard stops network access")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            received.append(conn.recv(100) or b"<connected>")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'stolen')"
    try:
        result = box.run(code, ["assert True"])
    finally:
        stop.set()
        thread.join(2)
        listener.close()
    assert received == []
    assert not result.passed
    if guard:
        assert result.reason.startswith("blocked: network")
    else:
        assert "Network is unreachable" in result.reason or "refused" in result.reason


@pytest.mark.parametrize("guard", [True, False])
def test_writing_outside_the_directory_is_contained(guard):
    box = Sandbox(FAST, guard=guard)
    if not guard and not namespaced(box):
        pytest.skip("without namespaces only the guard and file permissions stop writes to /tmp")
    target = f"/tmp/posttrain-escape-{uuid.uuid4().hex}"
    victim = f"/tmp/posttrain-victim-{uuid.uuid4().hex}"
    with open(victim, "w") as handle:
        handle.write("keep me")
    os.chmod(victim, 0o666)
    try:
        for code in (f"open({target!r}, 'w').write('escaped')",
                     f"import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('escaped')",
                     f"import os\nos.remove({victim!r})",
                     f"import os\nos.link({victim!r}, 'hard')\nopen('hard', 'w').write('overwritten')"):
            result = box.run(code, ["assert True"])
            assert not result.passed, code
            assert not os.path.exists(target), code
            assert open(victim).read() == "keep me", code
            if guard:
                assert result.reason.startswith("blocked: write outside sandbox"), result.reason
            else:
                assert result.reason.startswith("program raised"), result.reason
    finally:
        for path in (target, victim):
            if os.path.exists(path):
                os.remove(path)


@pytest.mark.parametrize("guard", [True, False])
def test_environment_secrets_are_not_visible(guard, monkeypatch):
    box = Sandbox(FAST, guard=guard)
    if not guard and box.isolation == "process":
        pytest.skip("a same-uid process without namespaces can read /proc/PID/environ; only the guard stops it")
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", "hunter2-do-not-leak")
    steal = ("import os\n"
             "found = [k for k in os.environ if 'SECRET' in k]\n"
             "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
             "    try:\n"
             "        found += [pid] if b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read() else []\n"
             "    except OSError:\n"
             "        pass\n"
             "print(found)\n"
             "secret = os.environ['POSTTRAIN_TEST_SECRET']")
    result = box.run(steal, ["assert secret"])
    assert not result.passed
    assert "hunter2" not in result.stdout + result.stderr + result.reason
    if guard:
        assert result.reason.startswith("blocked: reading another process"), result.reason
    else:
        assert result.stdout == "[]\n"
        assert result.reason == "program raised KeyError: 'POSTTRAIN_TEST_SECRET'"


@pytest.mark.parametrize("guard", [True, False])
def test_fork_bomb_is_contained(guard):
    box = Sandbox(SandboxLimits(timeout_s=1.5, max_processes=8), guard=guard)
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)"
    start = time.monotonic()
    result = box.run(bomb, ["assert True"])
    elapsed = time.monotonic() - start
    assert not result.passed
    assert result.reason.startswith("blocked: process creation" if guard else "timeout")
    assert elapsed < 1.5 + 3.0  # the program deadline plus the supervisor's grace
    assert leftover_processes(result.workdir) == []


def test_fork_is_limited_by_rlimit_nproc():
    box = Sandbox(SandboxLimits(timeout_s=3, max_processes=4), guard=False)
    code = ("import os, time\nmade = 0\nfor _ in range(50):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n"
            "    made += 1\nprint(made)")
    result = box.run(code)
    assert result.passed, result.reason
    assert 1 <= int(result.stdout) <= 4  # the limit bites well before 50
    assert leftover_processes(result.workdir) == []  # the sleeping children were killed at the end


def test_infinite_sleep_hits_the_wall_clock():
    box = Sandbox(SandboxLimits(timeout_s=1.0))
    start = time.monotonic()
    result = box.run("import time\ntime.sleep(100)", ["assert True"])
    assert result.reason == "timeout after 1s"
    assert result.tests[0].error == "not run: timeout after 1s"
    assert time.monotonic() - start < 4


def test_busy_loop_hits_the_cpu_limit():
    # A generous wall clock: on a loaded machine one CPU second can take several wall seconds.
    box = Sandbox(SandboxLimits(timeout_s=30.0, cpu_s=1))
    result = box.run("while True:\n    pass")
    assert result.reason == "cpu time limit (1s)"
    assert 0.9 <= result.cpu_s < 2.5


def test_timeout_inside_a_test_keeps_earlier_results(guarded):
    code = "import time\ndef f(x):\n    if x == 2:\n        time.sleep(100)\n    return x"
    result = guarded.run(code, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"])
    assert [t.passed for t in result.tests] == [True, False, False]
    assert result.tests[1].error == "timeout after 2s" and result.tests[2].error == "not run: timeout after 2s"


@pytest.mark.parametrize("code", ["x = bytearray(10 ** 10)", "chunks = []\nwhile True:\n    chunks.append(b'x' * 2**20)"])
def test_memory_bomb_is_reported(code):
    box = Sandbox(SandboxLimits(timeout_s=3.0, memory_mb=128), guard=False)
    result = box.run(code, ["assert True"])
    assert result.reason == "memory limit (128 MB): MemoryError"


def test_big_file_hits_the_size_limit(guarded):
    box = Sandbox(SandboxLimits(timeout_s=2.0, max_file_mb=1))
    result = box.run("open('big.bin', 'wb').write(b'x' * 3 * 2**20)")
    assert result.reason.startswith("file size limit (1 MB)")


@pytest.mark.parametrize("guard", [True, False])
def test_killing_the_parent_is_contained(guard):
    box = Sandbox(FAST, guard=guard)
    code = "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(0.2)\nkilled_parent = True"
    result = box.run(code, ["assert not killed_parent"])
    assert not result.passed  # never a pass, whatever happened to the supervisor
    if guard:
        assert result.reason.startswith("blocked: signal to another process"), result.reason
    elif box.isolation == "process":
        assert result.reason.startswith("sandbox supervisor was killed by signal 9")
    # and this test process (the trainer) is alive to check it; its children are not stuck
    assert leftover_processes(result.workdir) == []


def test_signalling_the_process_group_is_contained(guarded):
    result = guarded.run("import os, signal\nos.killpg(0, signal.SIGKILL)", ["assert True"])
    assert result.reason.startswith("blocked: signal to another process")


def test_native_code_is_blocked_by_the_guard(guarded):
    result = guarded.run("import ctypes\nctypes.CDLL(None).getpid()", ["assert True"])
    assert result.reason.startswith("blocked: native code")


# ---------------------------------------------------------------------- plumbing

def test_run_many_keeps_order_and_runs_concurrently(guarded):
    jobs = [(f"def f():\n    return {i}", [f"assert f() == {i if i % 3 else -1}"]) for i in range(6)]
    results = guarded.run_many(jobs, max_workers=3)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(6)]


def test_process_isolation_still_contains(monkeypatch):
    box = Sandbox(FAST, isolation="process")
    assert box.isolation.startswith("process")
    assert box.run("def f():\n    return 2", ["assert f() == 2"]).passed
    assert box.run("import socket\nsocket.socket()").reason.startswith("blocked: network")


def test_namespaces_required_but_missing_is_a_clear_error(monkeypatch):
    sandbox_module._isolation.cache_clear()
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    try:
        with pytest.raises(PosttrainError, match="isolation 'namespaces' is not available"):
            Sandbox(isolation="namespaces")
    finally:
        sandbox_module._isolation.cache_clear()


def test_no_safe_isolation_is_refused(monkeypatch):
    # Not root and no namespaces: the program would share our uid, so no verdict could be trusted.
    sandbox_module._isolation.cache_clear()
    monkeypatch.setattr(sandbox_module.os, "geteuid", lambda: 1000)
    try:
        with pytest.raises(PosttrainError, match="cannot judge safely here"):
            Sandbox(isolation="process")
    finally:
        sandbox_module._isolation.cache_clear()


def test_bad_limits_and_bad_tests_are_one_line_errors():
    with pytest.raises(PosttrainError, match="sandbox limit 'timeout_s' must be positive"):
        Sandbox(SandboxLimits(timeout_s=0))
    with pytest.raises(PosttrainError, match=r"test 1 is not valid Python: .*line 1"):
        parse_tests(["assert True", "assert ("])
    with pytest.raises(PosttrainError, match="sandbox isolation must be"):
        Sandbox(isolation="docker")


def test_parse_tests_keeps_expected_values_out_of_the_sandbox():
    setup, tests = parse_tests(["assert f(1) == [1, 2]", "assert 3 == g()", "assert f(1) == g()", "assert h(2)"])
    assert setup == ""
    assert [t.wire["kind"] for t in tests] == ["probe", "probe", "exec", "exec"]
    assert tests[0].wire == {"kind": "probe", "expr": "f(1)"} and tests[0].expected == [1, 2]
    assert tests[1].wire == {"kind": "probe", "expr": "g()"} and tests[1].expected == 3
