"""list / show / remove / doctor / gc --json through cli.main, as users run them.

Specs are written with kernelspec.install directly (setup would refuse a missing image)
into a data dir of each test's own. Doctor's verdicts are tested in the three situations
that matter: no engine, an engine without the spec's image, and everything in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, doctor, kernelspec, manage, pool
from jupyter_docker_kernel.launcher import runtime_base
from jupyter_docker_kernel.settings import KernelSettings, Mount
from tests.conftest import needs_docker_cli

MISSING_IMAGE = "jupyter-docker-kernel/absent:no-such-tag"


def write_spec(name: str, settings: KernelSettings) -> Path:
    """Install one of our kernelspecs without setup's checks."""
    data = kernelspec.build_kernel_json(settings, display_name=f"{name} (container)")
    return kernelspec.install(name, data, user=True, prefix=None, replace=True)


def write_foreign_spec(data_dir: Path, name: str) -> Path:
    """A kernelspec somebody else wrote (no metadata of ours)."""
    path = data_dir / "kernels" / name
    path.mkdir(parents=True)
    (path / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Other",
                "language": "python",
            }
        )
    )
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def statuses(out: str) -> dict[str, str]:
    """doctor's text output ('STATUS  name: detail' lines) as {check name: status}.

    A per-spec name is 'spec: check', so the known check words say where the name ends.
    """
    found: dict[str, str] = {}
    for line in out.splitlines():
        head = line[:4].strip()
        if head in ("OK", "WARN", "FAIL", "SKIP"):
            body = line[6:]
            for c in (
                "kernelspec",
                "launcher",
                "hardening",
                "mounts",
                "image",
                "kernel",
                "sockets",
            ):
                marker = f": {c}: "
                if marker in body:
                    found[body.split(marker)[0] + f": {c}"] = head
                    break
            else:
                found[body.split(": ", 1)[0]] = head
    return found


# -- pure: formatting and argument lists ----------------------------------------------------


def test_format_report_puts_a_fix_line_under_failures_only() -> None:
    """Each check is one 'STATUS  name: detail' line; FAIL and WARN get a 'fix:' line."""
    report = doctor.Report(
        [
            doctor.Check("engine", "OK", "docker 20.10", fix="never shown"),
            doctor.Check("image", "FAIL", "x is not present", fix="build it"),
            doctor.Check("kernel", "SKIP", "engine unreachable"),
        ],
        seconds=1.25,
    )
    lines = doctor.format_report(report)
    assert lines[:4] == [
        "OK    engine: docker 20.10",
        "FAIL  image: x is not present",
        "      fix: build it",
        "SKIP  kernel: engine unreachable",
    ]
    assert lines[4] == "NOT ready: 1 OK, 1 FAIL, 1 SKIP (3 checks in 1.2 s)"


def test_report_is_ok_with_warnings_and_skips_but_not_with_a_failure() -> None:
    """Only FAIL makes a report not ok (doctor exits 1); its JSON says the same."""
    good = doctor.Report([doctor.Check("a", "OK", ""), doctor.Check("b", "WARN", "", "f")])
    bad = doctor.Report([*good.checks, doctor.Check("c", "FAIL", "", "f")])
    assert good.ok
    assert not bad.ok
    data = json.loads(json.dumps(bad.to_json()))
    assert data["ok"] is False
    assert data["counts"] == {"OK": 1, "WARN": 1, "FAIL": 1, "SKIP": 0}
    assert [c["status"] for c in data["checks"]] == ["OK", "WARN", "FAIL"]


def test_show_args_are_the_launchers_hardened_run_args() -> None:
    """effective_args is hardening.run_args for a placeholder kernel, plus the cidfile."""
    args = manage.effective_args(KernelSettings(image="img:1", memory="1g"), workdir="/nb")
    joined = " ".join(args)
    assert args[0] == "run"
    assert args[1].startswith("--cidfile=")
    for part in ("--network none", "--cap-drop ALL", "--read-only", "--memory 1g",
                 "--name jdk-KERNEL-ID-NONCE", "target=/nb", "img:1"):  # fmt: skip
        assert part in joined


def test_format_list_shows_image_presence_and_limits() -> None:
    """A present image reads 'yes', a missing one 'MISSING', an unknown one '?'."""
    settings = KernelSettings(image="img:1", memory="1g", runtime="runsc")
    specs = [
        manage.SpecInfo("a", "/p/a", "A", "/py", settings, image_present=True),
        manage.SpecInfo("b", "/p/b", "B", "/py", settings, image_present=False),
        manage.SpecInfo("c", "/p/c", "C", "/py", settings),
        manage.SpecInfo("d", "/p/d", "", "", None, error="cannot read kernel.json"),
    ]
    lines = cli.format_list(specs, note="engine down")
    assert lines[0].split() == ["NAME", "IMAGE", "PRESENT", "LIMITS", "PATH"]
    assert lines[1].split()[:3] == ["a", "img:1", "yes"]
    assert lines[2].split()[:3] == ["b", "img:1", "MISSING"]
    assert lines[3].split()[:3] == ["c", "img:1", "?"]
    assert "mem 1g" in lines[1]
    assert "runtime runsc" in lines[1]
    assert "BROKEN (see below)" in lines[4]
    assert lines[-1] == "note: engine down"


# -- remove, show: refusals need no engine ----------------------------------------------------


def test_remove_refuses_a_kernelspec_that_is_not_ours(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """remove NAME of someone else's spec exits 1 with one error line; the spec stays."""
    path = write_foreign_spec(data_dir, "other")
    code, _out, err = run(["remove", "other", "-y"], capsys)
    assert code == 1
    assert "not written by jupyter-docker-kernel. Nothing was done." in err
    assert len(err.splitlines()) == 1
    assert (path / "kernel.json").exists()


def test_remove_of_an_unknown_name_says_so_and_lists_ours(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """remove of a name nobody installed exits 1 and names the specs that exist."""
    write_spec("jdk-test-kept", KernelSettings())
    code, _, err = run(["remove", "nosuch", "-y"], capsys)
    assert code == 1
    assert "No kernelspec named 'nosuch' (ours: jdk-test-kept)" in err
    assert (data_dir / "kernels" / "jdk-test-kept").exists()


def test_remove_without_yes_and_no_terminal_removes_nothing(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -y and with stdin not a terminal, remove asks for -y and keeps the spec."""
    write_spec("jdk-test-kept", KernelSettings())
    code, _, err = run(["remove", "jdk-test-kept"], capsys)
    assert code == 1
    assert "Pass -y" in err
    assert (data_dir / "kernels" / "jdk-test-kept").exists()


def test_show_prints_settings_and_the_hardened_docker_run_command(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """show NAME prints every setting and the docker run command, --network none included."""
    write_spec("jdk-test-show", KernelSettings(memory="1g", mounts=(Mount("/srv", "/data"),)))
    code, out, _ = run(["show", "jdk-test-show"], capsys)
    assert code == 0
    assert '  * memory            "1g"' in out
    assert "    cpus              1.0" in out
    assert "\n    --network none \\\n" in out
    assert "\n    --cap-drop ALL \\\n" in out
    assert "type=bind,source=/srv,target=/data" in out


def test_show_command_is_the_run_args_with_line_breaks_only(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Joining show's command lines gives back exactly the launcher's argument list."""
    import shlex

    settings = KernelSettings(docker_args=("--privileged",), env=(("A", "x y"),))
    write_spec("jdk-test-show", settings)
    code, out, _ = run(["show", "jdk-test-show"], capsys)
    command = out.split("filled in per start; the work dir is the notebook's):\n")[1]
    argv = shlex.split(command.replace("\\\n", " "))
    assert code == 0
    assert argv[0] == "docker"
    assert argv[1:] == manage.effective_args(settings)
    assert command.splitlines()[-1].startswith(
        "    python3 /opt/jupyter-docker-kernel/supervise.py"
    )


def test_show_json_has_settings_and_the_docker_argv(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """show --json parses; docker_argv is the full command and settings_effective has
    the defaults too."""
    write_spec("jdk-test-show", KernelSettings(cpus=0.5))
    code, out, _ = run(["show", "jdk-test-show", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["name"] == "jdk-test-show"
    assert data["docker_argv"][:2] == ["docker", "run"]
    assert "--network" in data["docker_argv"]
    assert "none" in data["docker_argv"]
    assert data["settings"] == {"image": KernelSettings().image, "cpus": 0.5}
    assert data["settings_effective"]["memory"] == "2g"


# -- no engine ------------------------------------------------------------------------------


@needs_docker_cli
def test_list_without_engine_shows_specs_with_unknown_image_presence(
    data_dir: Path, no_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """list still works without an engine: presence is '?' and a note says why."""
    write_spec("jdk-test-listed", KernelSettings())
    code, out, _ = run(["list"], capsys)
    assert code == 0
    assert out.splitlines()[1].split()[:3] == ["jdk-test-listed", KernelSettings().image, "?"]
    assert "image presence is unknown" in out
    data = json.loads(run(["list", "--json"], capsys)[1])
    assert data["kernelspecs"][0]["image_present"] is None


@needs_docker_cli
def test_doctor_without_engine_fails_the_engine_and_skips_what_needs_it(
    data_dir: Path, no_engine: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No engine: 'engine' FAILs with a fix, runtimes and images are SKIP, host-side
    checks still run (a missing mount source FAILs too), and doctor exits 1."""
    write_spec("jdk-test-doc", KernelSettings(mounts=(Mount(str(tmp_path / "gone"), "/d"),)))
    code, out, _ = run(["doctor"], capsys)
    found = statuses(out)
    assert code == 1
    assert found["engine CLI"] == "OK"
    assert found["engine"] == "FAIL"
    assert "Cannot reach the container engine at unix:///nonexistent.sock" in out
    assert "      fix: Is it running? Try 'docker info'" in out
    assert found["runtimes"] == "SKIP"
    assert found["runtime dir"] == "OK"
    assert found["jdk-test-doc: launcher"] == "OK"
    assert found["jdk-test-doc: mounts"] == "FAIL"
    assert found["jdk-test-doc: image"] == "SKIP"
    assert "jdk-test-doc: kernel" not in found
    assert out.splitlines()[-1].startswith("NOT ready: ")


@needs_docker_cli
def test_doctor_json_without_engine_parses_and_says_not_ok(
    data_dir: Path, no_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor --json is one JSON document with ok false and the engine check's fix."""
    code, out, _ = run(["doctor", "--json"], capsys)
    data = json.loads(out)
    assert code == 1
    assert data["ok"] is False
    engine = next(c for c in data["checks"] if c["name"] == "engine")
    assert engine["status"] == "FAIL"
    assert engine["fix"]
    assert any(c["name"] == "kernelspecs" and c["status"] == "WARN" for c in data["checks"])


def test_doctor_without_an_engine_cli_fails_it_and_list_still_works(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No engine CLI on PATH: 'engine CLI' FAILs, 'engine' is SKIP; list shows '?'."""
    monkeypatch.setenv("JUPYTER_DOCKER_KERNEL_ENGINE", "no-such-docker-cli")
    write_spec("jdk-test-doc", KernelSettings())
    code, out, _ = run(["doctor"], capsys)
    found = statuses(out)
    assert code == 1
    assert found["engine CLI"] == "FAIL"
    assert "'no-such-docker-cli' is not on PATH" in out
    assert found["engine"] == "SKIP"
    code, out, _ = run(["list"], capsys)
    assert code == 0
    assert out.splitlines()[1].split()[2] == "?"


def test_doctor_warns_when_the_runtime_dir_is_not_private_and_names_the_fallback(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The kernels' socket dir must be ours and 0700: with a 0755 one kernels use a private
    fallback (H07), and doctor WARNs, naming both and what to do."""
    xdg = tmp_path / "xdg"
    (xdg / "jupyter-docker-kernel").mkdir(parents=True)
    (xdg / "jupyter-docker-kernel").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("JUPYTER_DOCKER_KERNEL_ENGINE", "no-such-docker-cli")
    _, out, _ = run(["doctor"], capsys)
    assert statuses(out)["runtime dir"] == "WARN"
    assert f"{xdg}/jupyter-docker-kernel has mode 0755, not 0700; kernels use " in out
    assert f"{tmp_path}/tmp/jdk-{os.getuid()}-" in out
    assert "fix: kernels still start;" in out


def test_doctor_warns_about_network_access_and_verbatim_docker_args(
    data_dir: Path, no_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spec that loosens the defaults gets a WARN line (not a FAIL) naming what: the
    same words setup prints as warnings (readiness.loosenings)."""
    write_spec(
        "jdk-test-open", KernelSettings(network="bridge", docker_args=("--add-host=db:10.0.0.5",))
    )
    code, out, _ = run(["doctor"], capsys)
    assert statuses(out)["jdk-test-open: hardening"] == "WARN"
    assert "--network bridge: the kernel can reach the network" in out
    assert "--docker-arg=--add-host=db:10.0.0.5 is passed verbatim to docker run, unchecked" in out
    assert code == 1  # the engine is down; the WARN alone would not fail doctor


def test_doctor_of_a_foreign_name_is_an_error_and_checks_nothing(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor NAME for a spec that is not ours exits 1 with one error line, no checks."""
    write_foreign_spec(data_dir, "other")
    code, out, err = run(["doctor", "other"], capsys)
    assert code == 1
    assert out == ""
    assert err.startswith("error: Kernelspec 'other'")


# -- with an engine -----------------------------------------------------------------------


@pytest.mark.docker
def test_list_shows_present_and_missing_images(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """list shows each of our specs with its image, 'yes' when present, 'MISSING' when not."""
    write_spec("jdk-test-here", KernelSettings(image=kernel_image))
    write_spec("jdk-test-gone", KernelSettings(image=MISSING_IMAGE))
    write_foreign_spec(data_dir, "other")
    code, out, _ = run(["list"], capsys)
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert code == 0
    assert rows == {
        "jdk-test-gone": [MISSING_IMAGE, "MISSING"],
        "jdk-test-here": [kernel_image, "yes"],
    }
    data = json.loads(run(["list", "--json"], capsys)[1])
    assert {s["name"]: s["image_present"] for s in data["kernelspecs"]} == {
        "jdk-test-gone": False,
        "jdk-test-here": True,
    }


@pytest.mark.docker
def test_remove_deletes_the_spec_and_list_no_longer_shows_it(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """remove NAME -y deletes the spec dir; list afterwards does not show it."""
    path = write_spec("jdk-test-doomed", KernelSettings(image=kernel_image))
    write_spec("jdk-test-kept", KernelSettings(image=kernel_image))
    code, out, _ = run(["remove", "jdk-test-doomed", "-y", "--json"], capsys)
    assert code == 0
    assert json.loads(out) == {
        "removed": "jdk-test-doomed",
        "path": str(path),
        "warm_containers": [],
        "pool_key": pool.pool_key(KernelSettings(image=kernel_image), os.getuid()),
    }
    assert not path.exists()
    names = [line.split()[0] for line in run(["list"], capsys)[1].splitlines()[1:]]
    assert names == ["jdk-test-kept"]


@pytest.mark.docker
def test_doctor_with_engine_but_no_image_fails_the_image_with_how_to_build_it(
    data_dir: Path, engine: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """Engine up, image missing: engine and runtimes OK, image FAIL (with a fix), the
    probe is not attempted, exit 1."""
    write_spec("jdk-test-noimg", KernelSettings(image=MISSING_IMAGE))
    code, out, _ = run(["doctor", "jdk-test-noimg"], capsys)
    found = statuses(out)
    assert code == 1
    assert found["engine"] == "OK"
    assert found["runtime runc"] == "OK"
    assert found["jdk-test-noimg: image"] == "FAIL"
    assert f"{MISSING_IMAGE} is not present (kernels never pull)" in out
    assert f"fix: jupyter-docker-kernel image build --tag {MISSING_IMAGE}" in out
    assert "jdk-test-noimg: kernel" not in found


@pytest.mark.docker
def test_doctor_fails_the_kernel_check_when_the_python_has_no_ipykernel(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image Python without ipykernel: 'kernel' FAILs saying so; the socket path works."""
    write_spec("jdk-test-noipk", KernelSettings(image=kernel_image, python="/usr/bin/python3.11"))
    code, out, _ = run(["doctor", "jdk-test-noipk"], capsys)
    found = statuses(out)
    assert code == 1
    assert found["jdk-test-noipk: kernel"] == "FAIL"
    assert f"{kernel_image} has Python 3." in out
    assert "but no ipykernel" in out
    assert found["jdk-test-noipk: sockets"] == "OK"


@pytest.mark.docker
def test_doctor_fails_the_kernel_check_when_the_python_does_not_exist(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --python path missing in the image: 'kernel' FAILs with the engine's reason and
    'sockets' is SKIP (no container ran); nothing of the probe is left behind."""
    write_spec("jdk-test-nopy", KernelSettings(image=kernel_image, python="/nope/python3"))
    code, out, _ = run(["doctor", "jdk-test-nopy"], capsys)
    found = statuses(out)
    assert code == 1
    assert found["jdk-test-nopy: kernel"] == "FAIL"
    assert "/nope/python3" in out
    assert "no such file or directory" in out.lower()
    assert found["jdk-test-nopy: sockets"] == "SKIP"
    assert not [p for p in runtime_base().iterdir() if p.name.startswith("probe-")]


@pytest.mark.docker
def test_doctor_with_an_unregistered_runtime_fails_it_and_skips_the_probe(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spec asking for a runtime the engine lacks: that runtime FAILs naming the spec."""
    write_spec("jdk-test-rt", KernelSettings(image=kernel_image, runtime="no-such-runtime"))
    code, out, _ = run(["doctor"], capsys)
    found = statuses(out)
    assert code == 1
    assert found["runtime no-such-runtime"] == "FAIL"
    assert "not registered, but asked for by jdk-test-rt" in out
    assert found["jdk-test-rt: kernel"] == "SKIP"


@pytest.mark.docker
@pytest.mark.parametrize("runtime", ["runc", "runsc"], indirect=True)  # doctor runs as root
def test_doctor_with_everything_in_place_is_all_ok_and_quick(
    data_dir: Path, kernel_image: str, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Engine, image and spec in place (under runc and gVisor): every check OK (the probe
    container imported ipykernel unprivileged and the host reached its socket), exit 0."""
    chosen = None if runtime == "runc" else runtime
    write_spec("jdk-test-good", KernelSettings(image=kernel_image, runtime=chosen))
    code, out, _ = run(["doctor", "--json"], capsys)
    data = json.loads(out)
    bad = [c for c in data["checks"] if c["status"] != "OK"]
    assert not bad
    assert code == 0
    assert data["ok"] is True
    names = [c["name"] for c in data["checks"]]
    assert {"engine", "runtime dir", "jdk-test-good: kernel", "jdk-test-good: sockets"} <= set(
        names
    )
    kernel = next(c for c in data["checks"] if c["name"] == "jdk-test-good: kernel")
    assert "ipykernel" in kernel["detail"]
    assert "uid:gid 0:" not in kernel["detail"]
    # About 1 s (runc) and 2-4 s (runsc) here when idle; a loaded shared machine gets slack.
    assert data["seconds"] < 60


@pytest.mark.docker
def test_doctor_probes_as_the_specs_dedicated_kernel_user(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --kernel-user the probe runs as that uid and its socket dir is set up the way
    the launcher sets one up for it, so the socket check passes as it would for a kernel."""
    write_spec("jdk-test-uid", KernelSettings(image=kernel_image, kernel_user="4321:4321"))
    code, out, _ = run(["doctor", "jdk-test-uid"], capsys)
    found = statuses(out)
    assert code == 0, out
    assert found["jdk-test-uid: kernel"] == "OK"
    assert "as uid:gid 4321:4321" in out
    assert found["jdk-test-uid: sockets"] == "OK"


@pytest.mark.docker
def test_doctor_runs_one_probe_for_specs_that_share_it_and_keeps_each_specs_lines_together(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two specs whose containers are the same (they differ only in a relay budget) share
    one probe container; each spec's kernel/sockets lines still follow its image line."""
    write_spec("jdk-test-a", KernelSettings(image=kernel_image))
    write_spec("jdk-test-b", KernelSettings(image=kernel_image, max_message="32m"))
    code, out, _ = run(["doctor", "--json"], capsys)
    checks = json.loads(out)["checks"]
    names = [c["name"] for c in checks if c["name"].startswith("jdk-test-")]
    assert code == 0
    assert names == [
        f"jdk-test-{spec}: {check}"
        for spec in "ab"
        for check in ("kernelspec", "launcher", "mounts", "image", "kernel", "sockets")
    ]
    second = next(c for c in checks if c["name"] == "jdk-test-b: kernel")
    assert second["detail"].endswith("(same probe as above)")


@pytest.mark.docker
def test_gc_json_parses(engine: object, capsys: pytest.CaptureFixture[str]) -> None:
    """gc --dry-run --json prints one JSON object with what would go and what was kept."""
    code, out, _ = run(["gc", "--dry-run", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert set(data) == {
        "dry_run",
        "containers",
        "dirs",
        "kept",
        "logs",
        "node_containers",
        "node_dirs",
    }
    assert data["dry_run"] is True


# -- broken and shadowed specs of ours (issue 12, item 8) -----------------------------------


def break_spec(path: Path, text: str = '{"argv": [') -> None:
    """Leave kernel.json as an editor or a full disk might: not JSON any more."""
    (path / "kernel.json").write_text(text)


@pytest.mark.parametrize("marker", [True, False], ids=["marker file", "older spec, no marker"])
def test_a_broken_spec_of_ours_is_listed_with_the_reason_and_can_be_removed(
    data_dir: Path, no_engine: None, marker: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """kernel.json that no longer parses: list shows the spec as broken and why, show says
    so in one line, remove removes it. Ours by the marker file, or (specs written before
    it) by the launcher module named in kernel.json's text."""
    path = write_spec("jdk-test-broken", KernelSettings())
    if marker:
        break_spec(path)
    else:
        (path / kernelspec.MARKER_FILE).unlink()
        break_spec(path, '{"argv": ["python3", "-m", "jupyter_docker_kernel.launcher",')
    code, out, _ = run(["list"], capsys)
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["jdk-test-broken", "-"]
    assert f"warning: jdk-test-broken ({path}) is broken: kernel.json is not valid JSON" in out
    assert "remove jdk-test-broken" in out
    data = json.loads(run(["list", "--json"], capsys)[1])
    assert data["kernelspecs"][0]["error"].startswith("kernel.json is not valid JSON (")
    code, _, err = run(["show", "jdk-test-broken"], capsys)
    assert code == 1
    assert "is ours but broken" in err
    code, out, _ = run(["remove", "jdk-test-broken", "-y"], capsys)
    assert (code, out.splitlines()[0]) == (0, f"Removed kernelspec jdk-test-broken ({path})")
    assert not path.exists()


def test_a_broken_spec_that_is_not_ours_is_neither_listed_nor_removed(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreign spec with broken JSON and no trace of our launcher stays someone else's."""
    path = write_foreign_spec(data_dir, "other")
    break_spec(path)
    assert "other" not in run(["list"], capsys)[1]
    code, _, err = run(["remove", "other", "-y"], capsys)
    assert code == 1
    assert "not written by jupyter-docker-kernel" in err
    assert path.exists()


@pytest.fixture
def front_dir(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernel dir Jupyter searches before the user's (as a venv's share/jupyter comes
    before the system's): whatever is named there shadows the same name further on."""
    front = tmp_path / "front"
    (front / "kernels").mkdir(parents=True)
    monkeypatch.setenv("JUPYTER_PATH", f"{front}{os.pathsep}{data_dir}")
    return front


def test_a_shadowed_spec_of_ours_is_listed_as_shadowed_and_remove_removes_ours(
    data_dir: Path, front_dir: Path, no_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ours named like a spec Jupyter finds first: list names the spec that shadows it,
    and remove removes ours (not the other one, which was never ours to remove)."""
    ours = write_spec("jdk-test-twin", KernelSettings())
    theirs = write_foreign_spec(front_dir, "jdk-test-twin")
    code, out, _ = run(["list"], capsys)
    assert code == 0
    assert f"warning: jdk-test-twin ({ours}) is shadowed by {theirs}" in out
    data = json.loads(run(["list", "--json"], capsys)[1])
    assert data["kernelspecs"][0]["shadowed_by"] == str(theirs)
    assert f"is shadowed by {theirs}" in run(["show", "jdk-test-twin"], capsys)[1]
    code, out, _ = run(["remove", "jdk-test-twin", "-y"], capsys)
    assert (code, out.splitlines()[0]) == (0, f"Removed kernelspec jdk-test-twin ({ours})")
    assert not ours.exists()
    assert (theirs / "kernel.json").exists()


def test_setup_refuses_a_name_that_an_earlier_spec_would_shadow(
    data_dir: Path, front_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """setup --name X where Jupyter finds another X first: refused up front, nothing written
    (it used to be written, never used, and then not removable)."""
    theirs = write_foreign_spec(front_dir, "python3")
    argv = ["setup", "--name", "python3", "--user", "--skip-checks"]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert f"A kernelspec named 'python3' in {theirs} comes first in Jupyter's search" in err
    assert "Nothing was written. Choose another --name (e.g. python3-docker)" in err
    assert not (data_dir / "kernels" / "python3").exists()


def test_setup_of_python3_warns_that_it_takes_jupyters_own_kernels_place(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where ours would come first, python3 is written, with a warning that every notebook
    asking for python3 now gets the container."""
    code, out, _ = run(["setup", "--name", "python3", "--user", "--skip-checks"], capsys)
    assert code == 0
    assert "warning: 'python3' is the name of Jupyter's own Python kernel" in out
    assert kernelspec.find_ours() == {"python3": data_dir / "kernels" / "python3"}


def spec_json(data_dir: Path, name: str) -> dict[str, object]:
    data = json.loads((data_dir / "kernels" / name / "kernel.json").read_text())
    assert isinstance(data, dict)
    return data


def test_setup_replace_keeps_what_is_not_given_and_says_what_changed(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--replace with one option changes that option only: the other settings, the display
    name and the interrupt mode stay, and the output lists the change."""
    base = ["setup", "--name", "k", "--user", "--skip-checks"]
    first = ["--image", "course:1", "--memory", "1g", "--cpus", "0.5", "--env", "A=1",
             "--display-name", "Course", "--interrupt-mode", "message",
             "--network", "bridge"]  # fmt: skip
    assert run([*base, *first], capsys)[0] == 0
    code, out, _ = run([*base, "--replace", "--cpus", "2", "--env", "B=2"], capsys)
    assert code == 0
    assert "  changed: --env B; --cpus 0.5 -> 2" in out
    data = spec_json(data_dir, "k")
    assert kernelspec.settings_from_kernel_json(data) == KernelSettings(
        image="course:1", memory="1g", cpus=2.0, env=(("A", "1"), ("B", "2")), network="bridge"
    )
    assert (data["display_name"], data["interrupt_mode"]) == ("Course", "message")
    code, out, _ = run([*base, "--replace"], capsys)
    assert "settings unchanged" in out
    code, out, _ = run([*base, "--replace", "--reset", "--image", "course:1"], capsys)
    assert code == 0
    assert "--memory 1g -> 2g" in out
    assert kernelspec.settings_from_kernel_json(spec_json(data_dir, "k")) == KernelSettings(
        image="course:1"
    )


def test_setup_replace_of_a_broken_spec_needs_reset(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Settings that cannot be read cannot be kept: --replace says so and writes nothing;
    --replace --reset rewrites the spec."""
    path = write_spec("k", KernelSettings(memory="1g"))
    break_spec(path)
    base = ["setup", "--name", "k", "--user", "--skip-checks", "--replace"]
    code, _, err = run(base, capsys)
    assert code == 1
    assert "is broken" in err
    assert "Add --reset" in err
    assert run([*base, "--reset"], capsys)[0] == 0
    assert kernelspec.settings_from_kernel_json(spec_json(data_dir, "k")) == KernelSettings()


def test_show_as_command_recreates_the_same_settings_under_a_new_name(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """setup with many options -> show --as-command -> that line under another name gives
    a spec with identical settings, display name aside."""
    import shlex

    (tmp_path / "data dir").mkdir()
    monkeypatch.chdir(tmp_path)
    argv = [
        "setup", "--name", "orig", "--user", "--skip-checks", "--image", "course/py:2",
        "--mount", "data dir:/data:ro", "--env", "A=x y", "--env", "B=", "--copy-workdir",
        "--python", "python3.12", "--docker-arg=--shm-size=1g", "--network", "bridge",
        "--runtime", "runsc", "--memory", "1.5g", "--cpus", "0.5", "--pids-limit", "64",
        "--tmp-size", "256m", "--tmp-inodes", "4096", "--nofile", "2048", "--fsize", "2gb",
        "--max-lifetime", "3600", "--max-message", "8m", "--output-budget", "100m",
        "--copy-limit", "200m", "--kernel-user", "1234:1234", "--interrupt-mode", "message",
        "--provisioner", "--engine-host", "unix:///run/podman/podman.sock",
        "--kernel-transport", "tcp", "--keep-entrypoint",
        "--kernel-cmd", "python3.12", "-m", "ipykernel_launcher", "-f", "{connection_file}",
    ]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    code, out, _ = run(["show", "orig", "--as-command"], capsys)
    assert code == 0
    line = shlex.split(out)
    assert line[:4] == ["jupyter-docker-kernel", "setup", "--name", "orig"]
    assert "--user" in line
    again = [*line[1:3], "copy", *line[4:]]
    at = again.index("--kernel-cmd")  # it takes the rest of the line: options go before
    assert run([*again[:at], "--skip-checks", *again[at:]], capsys)[0] == 0
    orig, copy = spec_json(data_dir, "orig"), spec_json(data_dir, "copy")
    assert kernelspec.settings_from_kernel_json(copy) == kernelspec.settings_from_kernel_json(orig)
    for key in ("interrupt_mode", "language", "metadata"):
        assert copy[key] == orig[key]


def test_setup_replace_refuses_to_overwrite_a_spec_that_is_not_ours(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--replace over someone else's spec (ipykernel's python3, say) is refused: remove
    could never give it back."""
    theirs = write_foreign_spec(data_dir, "python3")
    before = (theirs / "kernel.json").read_text()
    code, _, err = run(
        ["setup", "--name", "python3", "--user", "--skip-checks", "--replace"], capsys
    )
    assert code == 1
    assert "was not written by jupyter-docker-kernel; --replace only replaces our own" in err
    assert (theirs / "kernel.json").read_text() == before


def test_list_and_gc_say_which_node_did_not_answer_and_go_on() -> None:
    """A kernelspec's node refusing SSH: one warning naming it, for list and for gc, and the
    other node (here none answers either) is still asked: nothing raises."""
    from jupyter_docker_kernel import node_manage
    from jupyter_docker_kernel.errors import DockerKernelError

    urls = ["ssh://nobody@127.0.0.1:1", "ssh://nobody@127.0.0.1:2"]
    listed = node_manage.kernels(urls)
    assert [url for url, rows in listed if isinstance(rows, DockerKernelError)] == urls
    collected, warnings = node_manage.gc(urls, dry_run=True)
    assert collected.containers == []
    assert [w.split(" not collected")[0] for w in warnings] == [f"warning: node {u}" for u in urls]
