"""Hostile files and arguments against the CLI (issue 13, items 15-19).

Whatever a file or an argument holds, svlaunch answers with located errors and exit 1: no
traceback (tests/conftest.py fails any test that leaves one), no hang, no raw control character
on the terminal, no unbounded output, no message about Python's insides.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.cli import main
from launcher.compile.stratovirt.tokens import STRATOVIRT_OPTIONS
from launcher.manifest.load import load_text, load_text_full, read_source

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parents[2]
GOOD = 'name = "{name}"\nqmp = "/run/{name}.qmp"\n[boot]\nkernel = "k"\ninitrd = "i"\n'
#: what a terminal acts on: C0 but newline, DEL, C1, the bidi overrides and isolates
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
LEAKS = (
    "Traceback",
    "set_int_max_str_digits",
    "index out of range",
    "Illegal seek",
    "NoneType",
    "object has no attribute",
    "codec can't",
    "invalid literal",
    "MemoryError",
)


def run(*argv: str) -> tuple[int, str, str]:
    """``svlaunch ARGV`` in this process; its output must be safe for a terminal."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    assert_clean(out.getvalue() + err.getvalue())
    return rc, out.getvalue(), err.getvalue()


def run_process(*argv: str | bytes, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """``svlaunch ARGV`` as its own process (bytes argv as the shell passes them)."""
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.cli", *argv],
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert_clean((proc.stdout + proc.stderr).decode("utf-8"))  # strict: the output is UTF-8
    return proc


def assert_clean(text: str) -> None:
    raw = RAW.search(text)
    assert raw is None, f"raw {raw.group()!r} at {raw.start()}: {text[max(raw.start() - 80, 0) :]}"
    for leak in LEAKS:
        assert leak not in text, text


# -- 15: tracebacks for nesting, NUL, bytes that are not UTF-8 ---------------------------------


def test_deep_toml_is_located_and_the_folder_goes_on(tmp_path: Path) -> None:
    (tmp_path / "a-deep.toml").write_text('name = "deep"\nx = ' + "[" * 500 + "]" * 500 + "\n")
    (tmp_path / "b-good.toml").write_text(GOOD.format(name="good"))
    rc, out, err = run("validate", str(tmp_path))
    assert rc == 1
    assert f"{tmp_path / 'a-deep.toml'}:2:69: error[too-deep]" in err
    assert "2 manifest(s) checked: 1 valid, 1 invalid" in out


def test_deep_yaml_is_located(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nx: " + "{a: " * 300 + "1" + "}" * 300 + "\n")
    rc, _, err = run("validate", str(path))
    assert rc == 1 and f"{path}:2:" in err and "error[too-deep]" in err


@pytest.mark.parametrize("command", ["validate", "check", "cmdline", "plan", "up"])
def test_nul_in_a_path_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(GOOD.format(name="nul").replace("/run/nul.qmp", "/run/nul\\u0000.qmp"))
    monkeypatch.setenv("SVLAUNCH_RUNTIME_DIR", str(tmp_path / "runtime"))
    rc, _, err = run(command, *(["-d"] if command == "up" else []), str(path))
    assert rc == 1
    assert f"{path}:2:7: error[control-character]: the value holds a NUL at character 9" in err
    assert not (tmp_path / "runtime").exists() or not os.listdir(tmp_path / "runtime")


def test_import_refuses_argv_that_is_not_utf8() -> None:
    proc = run_process(
        "import", "--", "-machine", "microvm", "-m", "512M", "-kernel", b"/boot/\xffvmlinux"
    )
    assert proc.returncode == 1
    assert b"argv:6:7: error[argv]: the argument is not UTF-8 text (byte 0xff)" in proc.stderr


def test_import_refuses_control_characters() -> None:
    rc, out, err = run("import", "--", "-m", "512M", "-append", "console=ttyS0\x1b[2J")
    assert rc == 1 and out == ""
    assert "argv:4:14: error[argv]: the argument holds the control character U+001B" in err


def test_manifest_under_a_folder_that_is_not_utf8(tmp_path: Path) -> None:
    folder = os.path.join(os.fsencode(tmp_path), b"vms-\xff")
    os.mkdir(folder)
    manifest = os.path.join(folder, b"vm.toml")
    with open(manifest, "w") as f:
        f.write(GOOD.format(name="bytes"))
    for command in ("validate", "check", "cmdline"):
        proc = run_process(command, manifest)
        assert proc.returncode == 1, proc.stderr
        shown = os.fsencode(tmp_path) + b"/vms-\\xff/vm.toml"
        assert shown + b":4:10: error[path-not-utf8]" in proc.stderr, proc.stderr
        assert shown + b":5:10: error[path-not-utf8]" in proc.stderr
    with open(manifest, "w") as f:  # absolute paths only: nothing depends on the folder's name
        f.write(GOOD.format(name="bytes").replace('"k"', '"/k"').replace('"i"', '"/i"'))
    proc = run_process("validate", manifest)
    assert proc.returncode == 0 and b"1 valid" in proc.stdout


# -- 16: only regular files are read, without blocking -----------------------------------------


def test_a_fifo_named_like_a_manifest_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "vm.toml"
    os.mkfifo(fifo)
    for command in ("validate", "check"):
        proc = run_process(command, str(fifo), timeout=30)
        assert proc.returncode == 1
        assert b"cannot read the manifest: it is a FIFO (named pipe), not a file" in proc.stderr


def test_the_folder_walk_reports_odd_entries_and_ends(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.toml")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.yaml"))
    os.symlink("/dev/zero", tmp_path / "zero.yml")
    os.symlink("loop.toml", tmp_path / "loop.toml")
    (tmp_path / "sub").mkdir()
    os.symlink("..", tmp_path / "sub" / "up")  # a folder loop through a symlink
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "sub" / "good.toml").write_text(GOOD.format(name="good"))
    try:  # as a process: a walk that blocks fails the test instead of hanging the suite
        proc = run_process("validate", str(tmp_path), timeout=30)
    finally:
        sock.close()
    rc, out, err = proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    assert rc == 1
    assert "5 manifest(s) checked: 1 valid, 4 invalid" in out
    assert "fifo.toml: error[file-unreadable]: cannot read the manifest: it is a FIFO" in err
    assert "sock.yaml: error[file-unreadable]: cannot read the manifest: it is a socket" in err
    assert "zero.yml: error[file-unreadable]: cannot read the manifest: it is a character" in err
    assert "loop.toml: error[file-unreadable]: cannot read the manifest: Too many levels" in err


def test_a_folder_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    levels = sys.getrecursionlimit() + 100
    fds = [os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)]
    for _ in range(levels):  # one level at a time, relative (os.makedirs would recurse itself)
        os.mkdir("d", dir_fd=fds[-1])
        fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    absolute = GOOD.format(name="deep").replace('"k"', '"/k"').replace('"i"', '"/i"')
    file = os.open("vm.toml", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1])
    os.write(file, absolute.encode())  # (a relative initrd would be too long a path)
    os.close(file)
    try:
        rc, out, _ = run("validate", str(tmp_path))
    finally:  # bottom up: shutil.rmtree (pytest's clean-up) recurses too
        os.unlink("vm.toml", dir_fd=fds[-1])
        for parent, child in zip(fds[-2::-1], fds[:0:-1], strict=True):
            os.close(child)
            os.rmdir("d", dir_fd=parent)
        os.close(fds[0])
    assert rc == 0 and "1 manifest(s) checked: 1 valid" in out


def test_a_folder_is_not_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "vm.toml").mkdir()
    rc, _, err = run("check", str(tmp_path / "vm.toml"))
    assert rc == 1 and "cannot read the manifest: it is a folder, not a file" in err


# -- 17: user text never reaches the terminal raw ----------------------------------------------

SCREEN = "\x1b[2J\x1b[H\x1b[32mall manifests valid\x1b[0m\r"  # what the crafted file printed


def test_control_characters_in_keys_values_and_source_lines(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    key = SCREEN.encode("unicode_escape").decode().replace("\\x", "\\u00")
    path.write_text(GOOD.format(name="vm") + f'"{key}" = 1\ncmdline = "{key}"\n')
    for argv in (["validate", str(path)], ["check", str(path)], ["cmdline", str(path)]):
        rc, _, err = run(*argv)
        assert rc == 1 and "error[control-character]" in err
        assert "\\x1b[2J\\x1b[H\\x1b[32mall manifests valid\\x1b[0m\\r" in err
    raw_line = tmp_path / "raw.toml"  # a control character TOML refuses: shown in the snippet
    raw_line.write_text(GOOD.format(name="raw") + f"x = 1 # {SCREEN}\n")
    rc, _, err = run("validate", str(raw_line))
    assert rc == 1 and "6 | x = 1 # \\x1b[2J" in err and "error[toml-syntax]" in err


def test_caret_stays_under_the_column_after_escaping(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text('name = "vm"\nx = "\x1b\x1b" oops\n')
    _, _, err = run("validate", str(path))
    line = next(x for x in err.splitlines() if x.startswith("  2 | "))
    caret = err.splitlines()[err.splitlines().index(line) + 1]
    assert line[caret.index("^")] == "\\"  # under the first escaped ESC, where TOML stopped


def test_file_names_are_escaped_in_text_json_and_the_table(tmp_path: Path) -> None:
    name = tmp_path / "[bold]\x1b]0;owned\x07\u202e.toml"
    name.write_text("name = 1\n")
    (tmp_path / "good.toml").write_text(GOOD.format(name="good"))
    rc, out, err = run("validate", "--color", "always", str(tmp_path))
    assert rc == 1 and "[bold]\\x1b]0;owned\\x07\\u202e.toml" in out + err
    rc, out, _ = run("validate", "--format", "json", str(name))
    assert "\x1b" not in out and "\\u001b" not in out  # escaped before JSON, not by it
    report = json.loads(out)
    assert report["files"][0]["file"].endswith("[bold]\\x1b]0;owned\\x07\\u202e.toml")


def test_argparse_and_unknown_commands_echo_escaped() -> None:
    rc, _, err = run("\x1b[2Jvalidate")
    assert rc == 2 and "unknown command '\\x1b[2Jvalidate'" in err
    proc = run_process("validate", "x.toml", "--\x1b[31m")
    assert proc.returncode == 2 and b"unrecognized arguments: --\\x1b[31m" in proc.stderr


def test_escape_writes_out_what_a_terminal_would_act_on() -> None:
    from launcher.report import escape

    assert escape("a\x1b[2J\r\n\t\x00\x7f\x9b\u202e\udcff\u200b é 中") == (
        "a\\x1b[2J\\r\\n\\t\\x00\\x7f\\x9b\\u202e\\xff\\u200b é 中"
    )
    assert escape("two\nlines\x1b", lines=True) == "two\nlines\\x1b"


# -- 18: bounded output ------------------------------------------------------------------------


def test_issues_are_capped_per_file_with_a_count_of_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "many.toml"
    path.write_text('name = "vm"\n' + "".join(f"[t{i}]\n" for i in range(2000)))
    rc, out, err = run("validate", str(path))
    assert rc == 1 and len(err) < 40_000
    assert err.count("error[unknown-key]") == 50
    assert f"svlaunch: 1950 more issue(s) in {path} not shown (--max-issues 0" in err
    assert "(2000 error(s), 0 warning(s))" in out
    _, _, every = run("validate", "--max-issues", "0", str(path))
    assert every.count("error[unknown-key]") == 2000
    _, out, _ = run("validate", "--format", "json", str(path))
    (entry,) = json.loads(out)["files"]
    assert len(entry["issues"]) == 50 and entry["issues_not_shown"] == 1950


def test_a_huge_key_is_cut_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(GOOD.format(name="vm") + "k" * 200_000 + " = 1\n")
    rc, _, err = run("validate", str(path))
    assert rc == 1 and len(err) < 10_000 and "more characters)" in err


# -- 19: messages in the user's terms ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt", "where", "code"),
    [
        ("name = 'vm'\nx = " + "9" * 5000 + "\n", "toml", ":2:5:", "number-range"),
        ("name: vm\nx: " + "9" * 5000 + "\n", "yaml", ":2:4:", "number-range"),
        ("name: vm\nx: 0x" + "f" * 5000 + "\n", "yaml", ":2:4:", "number-range"),
        ("name: vm\nx: 2024-13-45\n", "yaml", ":2:4:", "yaml-syntax"),
        ("name: vm\nx: !!int\n", "yaml", ":2:4:", "yaml-syntax"),
        ("name:\n", "yaml", ":1:6:", "wrong-type"),
        ("name: vm\nx: 2024-01-01\n", "yaml", ":2:4:", "wrong-type"),
        ("name: vm\nx: !!binary aGk=\n", "yaml", ":2:4:", "wrong-type"),
        ("name = 'vm'\nx = 1979-05-27\n", "toml", ":2:5:", "wrong-type"),
        ("name: vm\nx: [\x01]\n", "yaml", ":2:5:", "yaml-syntax"),
        ("name: vm\n? [a, b]\n: 1\n", "yaml", ":2:3:", "key-type"),
    ],
)
def test_messages_name_the_input_not_python(
    tmp_path: Path, text: str, fmt: str, where: str, code: str
) -> None:
    path = tmp_path / f"vm.{fmt}"
    path.write_text(text)
    rc, _, err = run("validate", str(path))
    assert rc == 1 and f"{path}{where} error[{code}]" in err, err


NINES = "9" * 5000


@pytest.mark.parametrize(
    "argv",
    [
        ["-smp", NINES],
        ["-smp", f"cpus={NINES}"],
        ["-m", NINES],
        ["-m", f"{NINES}G"],
        ["-incoming", "tcp:1.2.3.\u00b2:5"],  # '²' is a digit to str.isdigit, not to int()
        ["-incoming", f"tcp:1.2.3.4:{NINES}"],
        [
            "-machine",
            "q35",
            "-object",
            "memory-backend-ram,size=128M,id=m,host-nodes=0,policy=bind",
            "-numa",
            "node,nodeid=0,cpus=0-99999999999,memdev=m",
        ],
    ],
)
def test_import_numbers_in_the_users_terms(argv: list[str]) -> None:
    rc, _, err = run("import", "--", *argv)
    assert rc == 1 and "error[argv]" in err


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (f'[memory]\nsize = "{NINES}M"', "size-syntax"),
        ('[[numa.nodes]]\nid = 0\ncpus = "0-99999999999"\nsize = "512M"', "int-list-syntax"),
        ('[[numa.nodes]]\nid = 0\ncpus = "\u00b2"\nsize = "512M"', "bad-syntax"),
    ],
)
def test_manifest_numbers_in_the_users_terms(tmp_path: Path, line: str, code: str) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(GOOD.format(name="vm") + line + "\n")
    rc, _, err = run("validate", str(path))
    assert rc == 1 and f"error[{code}]" in err


def test_every_value_a_plan_or_argv_cannot_carry_is_refused_at_load() -> None:
    for value in ("\\u0000", "\\u001b", "\\u007f", "\\u009b", "\\r"):
        _, issues = load_text(f'name = "vm"\nqmp = "/q{value}"\n', "toml")
        assert [(i.code, i.path) for i in issues] == [("control-character", "qmp")], value
    _, issues = load_text('name = "vm"\n[boot]\ncmdline = "a\\tb\\nc"\n', "toml")
    assert issues and all(i.code != "control-character" for i in issues)


def test_read_source_refuses_what_is_not_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(bytes(range(256)))
    (tmp_path / "utf16.toml").write_bytes("\ufeffname = 1".encode("utf-16"))
    (tmp_path / "big.toml").write_bytes(b"#" * (2 << 20))
    for name, message in (
        ("bin.toml", "is not UTF-8 text (byte 0x80)"),
        ("utf16.toml", "is not UTF-8 text (byte 0xff)"),
        ("big.toml", "larger than 1 MiB"),
    ):
        text, issues = read_source(str(tmp_path / name))
        assert text is None and message in issues[0].message


# -- fuzzing: every outcome is a located error -------------------------------------------------

ODD = st.sampled_from(
    [
        "\ufeff",
        "\x00",
        "\x1b[2J",
        "\r",
        "\t",
        "\x85",
        "\u2028",
        "\u202e",
        "\U0001f600",
        "é",
        "\udcff",  # a byte that was not UTF-8, as Python decodes one
        "9" * 5000,
        "0x" + "f" * 40,
        "[" * 300,
        "{a=" * 300,
        "- " * 300,
        "&a [*a]",
        "<<: *a",
        "1e999",
        "nan",
        "\\u0000",
        "\\e",
        "\\ud800",
        '"\\U0010ffff"',
        "2024-13-45",
        "1979-05-27T07:32:00Z",
        "!!binary",
        "!!int",
        "!!python/object:os.system",
        "? ",
        "---\n",
        "...\n",
    ]
)
WORDS = st.sampled_from(
    ["name", "qmp", "boot", "kernel", "cpu", "cpus", "memory", "size", "[drives.a]", "file"]
)
SYNTAX = st.sampled_from(["[[", "]]", "\n", " = ", ": ", "- ", "[", "]", "{", "}", ",", "'", '"'])
TEXTS = st.lists(st.one_of(ODD, WORDS, SYNTAX, st.text(max_size=8)), max_size=30).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(TEXTS, st.sampled_from(["toml", "yaml"]))
def test_fuzz_loaders_give_located_issues(text: str, fmt: str) -> None:
    loaded = load_text_full(text, fmt, "/tmp/fuzz/vm." + fmt)
    for issue in loaded.issues:
        assert issue.mark is not None and issue.mark.line > 0 and issue.code, issue
        for leak in LEAKS:
            assert leak not in issue.message, issue


OPTIONS = [*sorted(STRATOVIRT_OPTIONS), "-exec-file", "-source", "-uid", "-gid", "--"]
VALUES = st.one_of(
    st.text(max_size=12),
    ODD,
    st.sampled_from(
        [
            "microvm",
            "q35",
            "512M",
            "99999999999999999999999G",
            "9" * 5000,
            "cpus=2,sockets=9999999999999999999999",
            "virtio-blk-device,drive=a,id=b",
            "id=a,file=/x",
            "unix:/tmp/q,server,nowait",
            "node,cpus=0-99999999999",
            "memory-backend-ram,size=128M,id=m",
            "pcie-root-port,port=0x1,bus=pcie.0,addr=0x1",
            ",",
            "=",
            "",
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.sampled_from(OPTIONS), VALUES), max_size=10), st.booleans())
def test_fuzz_import_gives_located_errors(argv: list[str], ozone: bool) -> None:
    """The whole command, in process: argv checks, the importer, the manifest it prints."""
    rc, _, err = run("import", *(["--ozone"] if ozone else []), "--", *argv)
    assert rc in (0, 1, 2), err
    assert rc != 1 or "error[" in err


# -- the suite's own traceback check can fail ---------------------------------------------------


@pytest.mark.traceback_ok  # the inner session's crash lands in this session's record folder too
def test_the_suite_fails_a_test_that_crashes_svlaunch(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SVLAUNCH_CRASH_DIR", str(tmp_path))
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(
        boom="def add_arguments(parser):\n    pass\n\n"
        "def run(args):\n    raise RuntimeError('a bug')\n",
        test_inner="""
import sys
import pytest
from launcher import cli

cli.COMMANDS["boom"] = cli.CommandInfo("boom", "a command with a bug")

def test_crash_in_process():
    assert cli.main(["boom"]) == 3

@pytest.mark.traceback_ok
def test_crash_allowed():
    assert cli.main(["boom"]) == 3

def test_traceback_printed():
    print("Traceback (most recent call last):", file=sys.stderr)

def test_quiet():
    assert cli.main(["schema", "-o", "/dev/null"]) == 0
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*test_crash_in_process*", "*svlaunch crashed*"])


def test_an_engine_log_tail_reaches_the_terminal_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The log quotes guest and manifest text: a failed start's tail cannot drive the terminal."""
    from launcher.commands.up import _print_log_tail

    log = tmp_path / "engine.log"
    log.write_bytes(
        b"ok line\nguest said \x1b]0;owned\x07 and \xe2\x80\xae reversed\nlast: cause\n"
    )
    _print_log_tail(str(log))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "\\x1b]0;owned\\x07" in err and "\\u202e" in err
    assert err.splitlines()[-1] == "last: cause"
