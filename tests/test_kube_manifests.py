"""kube_manifests: every object a kernel's pod needs, field by field, and against the schema.

Pure: no cluster, no API server. Each object is also validated offline against the
Kubernetes OpenAPI schema (kubernetes-validate, strict: an unknown field fails) for the
newest release it ships and for 1.29, the oldest we claim. A real API server's admission
(PodSecurity "restricted", quotas) is not run here: see docs/kubernetes.md.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import hardening, kube_channels, kube_manifests
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.kube_manifests import PodLaunch, PodOwner
from jupyter_docker_kernel.settings import KernelSettings

kubernetes_validate = pytest.importorskip("kubernetes_validate")

NS = "kernels"
SCHEMA_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def settings(**kw: Any) -> KernelSettings:
    kw.setdefault("kube_namespace", NS)
    kw.setdefault("workdir", "copy")
    return KernelSettings(**kw)


def launch(**kw: Any) -> PodLaunch:
    base: dict[str, Any] = {
        "kernel_id": "5e1f0c2a-aaaa-bbbb-cccc-0123456789ab",
        "name": kube_manifests.pod_name("5e1f0c2a-aaaa-bbbb-cccc-0123456789ab", "0a1b2c"),
        "namespace": NS,
        "user": "1000:100",
        "workdir": "/home/jovyan/course/ps1",
        "server": "jupyter-alice",
        "launcher_pid": 42,
        "kernelspec": "course",
        "copy": True,
    }
    base.update(kw)
    return PodLaunch(**base)


def container(pod: dict[str, Any]) -> dict[str, Any]:
    [only] = pod["spec"]["containers"]
    return dict(only)


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


def mount_path(pod: dict[str, Any], name: str) -> str:
    return str(next(m for m in container(pod)["volumeMounts"] if m["name"] == name)["mountPath"])


def validate(obj: dict[str, Any]) -> None:
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# -- the pod's hardening, one field a row ------------------------------------------------------

POD = kube_manifests.render_pod(settings(), launch())
SPEC = POD["spec"]
CTR = container(POD)

HARDENING: list[tuple[str, Any, Any]] = [
    ("runAsNonRoot (container)", CTR["securityContext"]["runAsNonRoot"], True),
    ("runAsUser", CTR["securityContext"]["runAsUser"], 1000),
    ("runAsGroup", CTR["securityContext"]["runAsGroup"], 100),
    ("allowPrivilegeEscalation", CTR["securityContext"]["allowPrivilegeEscalation"], False),
    ("privileged", CTR["securityContext"]["privileged"], False),
    ("capabilities dropped", CTR["securityContext"]["capabilities"], {"drop": ["ALL"]}),
    ("readOnlyRootFilesystem", CTR["securityContext"]["readOnlyRootFilesystem"], True),
    ("seccomp (container)", CTR["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"}),
    ("seccomp (pod)", SPEC["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"}),
    ("runAsNonRoot (pod)", SPEC["securityContext"]["runAsNonRoot"], True),
    ("fsGroup is the kernel's gid", SPEC["securityContext"]["fsGroup"], 100),
    ("no service account token", SPEC["automountServiceAccountToken"], False),
    ("no service links in env", SPEC["enableServiceLinks"], False),
    ("hostNetwork", SPEC["hostNetwork"], False),
    ("hostPID", SPEC["hostPID"], False),
    ("hostIPC", SPEC["hostIPC"], False),
    ("shareProcessNamespace", SPEC["shareProcessNamespace"], False),
    ("restartPolicy", SPEC["restartPolicy"], "Never"),
    ("activeDeadlineSeconds = lifetime + grace", SPEC["activeDeadlineSeconds"], 86400 + 5),
    ("imagePullPolicy", CTR["imagePullPolicy"], "Never"),
    ("image", CTR["image"], KernelSettings().image),
    (
        "stdin held (the lifeline)",
        (CTR["stdin"], CTR["stdinOnce"], CTR["tty"]),
        (True, False, False),
    ),
    ("no runtimeClassName by default", "runtimeClassName" in SPEC, False),
    ("no ownerReferences outside the cluster", "ownerReferences" in POD["metadata"], False),
]


@pytest.mark.parametrize(("field", "got", "want"), HARDENING, ids=[r[0] for r in HARDENING])
def test_pod_hardening_field(field: str, got: Any, want: Any) -> None:
    assert got == want, field


def test_pod_requests_equal_limits_for_cpu_memory_and_ephemeral_storage() -> None:
    pod = kube_manifests.render_pod(settings(memory="1536m", cpus=1.5, fsize="256m"), launch())
    resources = container(pod)["resources"]
    want = {"cpu": "1500m", "memory": "1536Mi", "ephemeral-storage": "256Mi"}
    assert resources == {"requests": want, "limits": want}


def test_pod_tmp_and_home_are_memory_dirs_capped_at_tmp_size() -> None:
    pod = kube_manifests.render_pod(settings(tmp_size="128m"), launch())
    for name, path in (("tmp", "/tmp"), ("home", hardening.HOME)):
        assert volume(pod, name)["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Mi"}
        assert mount_path(pod, name) == path


def test_pod_gets_runtime_class_from_runtime_setting() -> None:
    pod = kube_manifests.render_pod(settings(runtime="gvisor"), launch())
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    validate(pod)


def test_pod_pulls_only_when_the_admin_asks() -> None:
    pod = kube_manifests.render_pod(settings(kube_pull="IfNotPresent"), launch())
    assert container(pod)["imagePullPolicy"] == "IfNotPresent"


def test_pod_is_owned_by_the_server_pod_in_the_cluster() -> None:
    owner = PodOwner(name="jupyter-alice", uid="0b5a7c3e-1111-2222-3333-444455556666")
    pod = kube_manifests.render_pod(settings(), launch(owner=owner))
    assert pod["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "jupyter-alice",
            "uid": "0b5a7c3e-1111-2222-3333-444455556666",
            "blockOwnerDeletion": False,
        }
    ]
    validate(pod)


def test_pod_labels_select_it_for_gc_list_and_the_network_policy() -> None:
    meta = POD["metadata"]
    assert meta["labels"][kube_manifests.LABEL_KERNEL_ID] == "5e1f0c2a-aaaa-bbbb-cccc-0123456789ab"
    assert meta["labels"][kube_manifests.LABEL_SERVER] == "jupyter-alice"
    policy = kube_manifests.render_network_policy(NS, {"component": "singleuser-server"})
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= meta["labels"].items()


def test_a_kernel_id_that_is_no_dns_label_is_kept_whole_in_an_annotation() -> None:
    """A KernelManager without a kernel id names its connection file by mkstemp
    ("tmp8lg0jc8_.json"): the label can only hold a DNS label of that id, so `list` (and
    the tests' stand-in kubelet) read the id whole from the annotation."""
    pod = kube_manifests.render_pod(settings(), launch(kernel_id="tmp8lg_0jc8_"))
    meta = pod["metadata"]
    assert meta["labels"][kube_manifests.LABEL_KERNEL_ID] == "tmp8lg-0jc8"
    assert meta["annotations"][kube_manifests.ANNOTATION_KERNEL_ID] == "tmp8lg_0jc8_"
    validate(pod)


def test_pod_listens_on_the_fixed_kernel_ports_and_the_supervisors_signal_port() -> None:
    ports = {p["name"]: p["containerPort"] for p in CTR["ports"]}
    assert ports == {
        "shell": 40001, "iopub": 40002, "stdin": 40003, "control": 40004, "hb": 40005,
        "signal": 40006,
    }  # fmt: skip


def test_pod_environment_is_the_docker_run_environment() -> None:
    s = settings(cpus=2)
    pod = kube_manifests.render_pod(s, launch())
    env = [(e["name"], e["value"]) for e in container(pod)["env"]]
    assert env == hardening.container_env(s)


def test_pod_reads_the_users_env_values_from_the_secret_not_the_spec() -> None:
    s = settings(env=(("TOKEN", "s3cret"), ("HOME", "/work")))
    pod = kube_manifests.render_pod(s, launch())
    validate(pod)
    assert "s3cret" not in json.dumps(pod)
    env = container(pod)["env"]
    assert env[-2:] == [
        {
            "name": "TOKEN",
            "valueFrom": {"secretKeyRef": {"name": volume(pod, "kernel")["secret"]["secretName"],
                                           "key": "env.TOKEN"}},
        },
        {
            "name": "HOME",
            "valueFrom": {"secretKeyRef": {"name": volume(pod, "kernel")["secret"]["secretName"],
                                           "key": "env.HOME"}},
        },
    ]  # fmt: skip
    assert env[0] == {"name": "HOME", "value": hardening.HOME}  # ours first; the user's wins
    secret = kube_manifests.render_secret(launch(), {}, supervisor=b"", usage_hook=b"", env=s.env)
    assert base64.b64decode(secret["data"]["env.TOKEN"]) == b"s3cret"


def test_pod_command_is_the_supervisor_then_the_kernel_with_pod_limits() -> None:
    s = settings(nofile=2048, fsize="64m", pids_limit=128, max_lifetime=3600)
    command = container(kube_manifests.render_pod(s, launch()))["command"]
    assert command[:2] == ["python3", hardening.SUPERVISOR_TARGET]
    # The kernel reads the supervisor's private copy of the read-only Secret's file
    # (ipykernel 7 rewrites a connection file holding Curve keys: kube_channels).
    assert command[command.index("--") + 1 :] == kube_channels.kernel_command(s)
    copy = command[command.index("--connection-copy") + 1]
    assert copy == f"{hardening.CONNECTION_TARGET}={kube_channels.KERNEL_CONNECTION}"
    pairs = [command[i + 1] for i, a in enumerate(command) if a == "--rlimit"]
    assert pairs == ["nofile=2048", f"fsize={64 << 20}", "core=0", "nproc=128"]
    assert command[command.index("--lifetime") + 1] == "3600"


def test_pod_supervisor_serves_signals_on_the_signal_port_with_the_secrets_keys() -> None:
    """Interrupts by signal without pods/exec: the supervisor listens on 40006 with the
    keys of the Secret's connection file (kube_channels.send_signal is its client)."""
    command = container(kube_manifests.render_pod(settings(), launch()))["command"]
    served = command[command.index("--signal-port") + 1]
    assert served == f"40006={hardening.CONNECTION_TARGET}"
    assert command.index("--signal-port") < command.index("--")


def test_pod_copy_mode_receives_the_work_dir_from_the_secret_into_a_capped_memory_dir() -> None:
    pod = kube_manifests.render_pod(settings(copy_limit="64m"), launch())
    command = container(pod)["command"]
    assert command[command.index("--receive-workdir") + 1] == "/home/jovyan/course/ps1"
    assert command[command.index("--receive-from") + 1] == kube_manifests.WORKDIR_STREAM
    assert volume(pod, "workdir")["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    assert mount_path(pod, "workdir") == "/home/jovyan/course/ps1"
    items = {i["key"] for i in volume(pod, "kernel")["secret"]["items"]}
    assert kube_manifests.KEY_WORKDIR in items


def test_pod_copy_of_a_project_root_starts_in_the_notebook_dir() -> None:
    pod = kube_manifests.render_pod(
        settings(workdir_root="..1"),
        launch(project_root="/home/jovyan/course", workdir="/home/jovyan/course/ps1"),
    )
    command = container(pod)["command"]
    assert command[command.index("--receive-workdir") + 1] == "/home/jovyan/course"
    assert command[command.index("--chdir") + 1] == "/home/jovyan/course/ps1"


def test_pod_pvc_mode_mounts_the_claim_at_its_path() -> None:
    s = settings(workdir="mount", kube_pvc="claim-alice:/home/jovyan")
    pod = kube_manifests.render_pod(s, launch(copy=False))
    assert volume(pod, "workdir")["persistentVolumeClaim"] == {
        "claimName": "claim-alice",
        "readOnly": False,
    }
    assert mount_path(pod, "workdir") == "/home/jovyan"
    assert container(pod)["workingDir"] == "/home/jovyan/course/ps1"
    assert "--receive-workdir" not in container(pod)["command"]
    validate(pod)


def test_pod_no_workdir_starts_in_home() -> None:
    pod = kube_manifests.render_pod(settings(workdir="none"), launch(workdir="", copy=False))
    assert container(pod)["workingDir"] == hardening.HOME
    assert all(v["name"] != "workdir" for v in pod["spec"]["volumes"])


def test_pod_mounts_the_secret_read_only_where_docker_run_bind_mounts_our_files() -> None:
    kernel = volume(POD, "kernel")["secret"]
    assert kernel["secretName"] == kube_manifests.secret_name(POD["metadata"]["name"])
    assert kernel["defaultMode"] == 0o440
    mount = next(m for m in CTR["volumeMounts"] if m["name"] == "kernel")
    assert mount["readOnly"] is True
    paths = {f"{mount['mountPath']}/{i['path']}" for i in kernel["items"]}
    assert {
        hardening.CONNECTION_TARGET,
        hardening.SUPERVISOR_TARGET,
        hardening.USAGE_HOOK_TARGET,
    } <= paths


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"workdir": "none"},
        {"workdir": "mount", "kube_pvc": "claim-alice:/home/jovyan:ro"},
        {"runtime": "gvisor", "kube_pull": "Always", "cpus": 0.25, "memory": "700m"},
    ],
    ids=["copy", "none", "pvc", "gvisor"],
)
def test_pod_validates_against_the_kubernetes_schema(kw: dict[str, Any]) -> None:
    s = settings(**kw)
    validate(kube_manifests.render_pod(s, launch(copy=s.workdir == "copy")))


def test_pod_schema_validation_catches_a_wrong_field() -> None:
    pod = json.loads(json.dumps(POD))
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = "no"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pod)


def test_pod_user_gives_a_kernel_that_keeps_nothing_a_uid_of_its_own() -> None:
    """nproc counts a uid's tasks node-wide: kernels must not share one by default."""
    a = kube_manifests.pod_user(settings(), 1000, 100, "kernel-a")
    b = kube_manifests.pod_user(settings(), 1000, 100, "kernel-b")
    uid_a, gid_a = (int(x) for x in a.split(":"))
    base, span = kube_manifests.OWN_UID_BASE, kube_manifests.OWN_UID_SPAN
    assert base <= uid_a < base + span
    assert gid_a == 100  # the server's group, which the Secret's files are readable by
    assert a != b
    assert kube_manifests.pod_user(settings(), 1000, 100, "kernel-a") == a  # restarts keep it


@pytest.mark.parametrize(
    "kw",
    [{"kube_pvc": "home:/home/jovyan", "workdir": "mount"}, {"kernel_user": "1234"}],
    ids=["claim", "configured"],
)
def test_pod_user_keeps_the_servers_or_the_configured_uid(kw: dict[str, Any]) -> None:
    """A kernel whose files outlive it (a claim) keeps the server's uid; a configured user wins."""
    got = kube_manifests.pod_user(settings(**kw), 1000, 100, "kernel-a")
    assert int(got.split(":")[0]) < kube_manifests.OWN_UID_BASE


def test_pod_name_is_a_dns_label_of_the_kernel_id() -> None:
    name = kube_manifests.pod_name("Kernel_ID.With.Dots" + "x" * 80, "0a1b2c")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert len(name) <= 63


# -- the Secret --------------------------------------------------------------------------------


def test_secret_carries_connection_supervisor_and_copy_and_is_immutable() -> None:
    connection = kube_channels.pod_connection(kube_channels.KernelKeys.generate())
    secret = kube_manifests.render_secret(
        launch(), connection, supervisor=b"sup", usage_hook=b"use", workdir_stream=b"tree"
    )
    validate(secret)
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert json.loads(data["kernel.json"]) == connection
    assert (data["supervise.py"], data["sitecustomize.py"], data["workdir.stream"]) == (
        b"sup",
        b"use",
        b"tree",
    )
    assert secret["immutable"] is True
    assert secret["metadata"]["labels"] == POD["metadata"]["labels"]


def test_secret_owner_is_the_created_pod() -> None:
    pod = {"metadata": {"name": "jdk-x", "uid": "u-1"}}
    [owner] = kube_manifests.secret_owner(pod)
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "jdk-x", "u-1")


# -- the NetworkPolicy and the Role ----------------------------------------------------------


def test_network_policy_denies_all_egress_of_kernel_pods() -> None:
    policy = kube_manifests.render_network_policy(NS, {"component": "singleuser-server"})
    validate(policy)
    assert "Egress" in policy["spec"]["policyTypes"]
    assert policy["spec"]["egress"] == []


def test_network_policy_admits_only_the_servers_pods_on_the_kernel_and_signal_ports() -> None:
    policy = kube_manifests.render_network_policy(NS, {"component": "singleuser-server"})
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"component": "singleuser-server"}}}]
    ports = sorted(p["port"] for p in rule["ports"])
    assert ports == [40001, 40002, 40003, 40004, 40005, 40006]


def test_network_policy_names_the_servers_namespace_when_it_differs() -> None:
    policy = kube_manifests.render_network_policy(NS, {"component": "hub"}, "jhub")
    validate(policy)
    [peer] = policy["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "jhub"}}


def test_role_is_namespaced_and_grants_no_wildcards() -> None:
    role = kube_manifests.render_role(NS)
    validate(role)
    validate(kube_manifests.render_role_binding(NS, "hub", "jhub"))
    validate(kube_manifests.render_runtimeclass_reader())
    assert role["kind"] == "Role"
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    granted = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert ("pods", "create") in granted
    assert ("pods", "exec") not in granted
    assert not any(r[0] == "pods/exec" for r in granted)


def test_docs_show_the_rendered_network_policy_and_role() -> None:
    """docs/kubernetes.md's YAML is what the code renders (kept in step by this test)."""
    yaml = pytest.importorskip("yaml")
    text = (Path(__file__).parents[1] / "docs" / "kubernetes.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    docs = [d for d in blocks if isinstance(d, dict) and "kind" in d]
    by_kind = {d["kind"]: d for d in docs}
    assert by_kind["NetworkPolicy"] == kube_manifests.render_network_policy(
        "kernels", {"component": "singleuser-server"}, "jhub"
    )
    assert by_kind["Role"] == kube_manifests.render_role("kernels")


# -- settings a pod cannot honour are refused ------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"pool": 2}, "--pool"),
        ({"docker_args": ("--privileged",)}, "--docker-arg"),
        ({"gpus": "all"}, "--gpus"),
        ({"workdir": "mount"}, "--kube-pvc"),
        ({"kernel_transport": "tcp"}, "--kernel-transport"),
        ({"network": "bridge"}, "--network bridge"),
        ({"kube_pull": "Sometimes"}, "--kube-pull"),
        ({"kube_namespace": "Not_A_Name"}, "--namespace"),
        ({"workdir": "mount", "kube_pvc": "claim"}, "--kube-pvc"),
    ],
)
def test_settings_refuse_what_a_pod_cannot_honour(kw: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(named)):
        settings(**kw)


def test_settings_refuse_kube_options_without_kubernetes() -> None:
    with pytest.raises(SettingsError, match="--kubernetes"):
        KernelSettings(kube_context="prod")


def test_settings_round_trip_through_kernel_json() -> None:
    s = settings(workdir="mount", kube_pvc="claim-alice:/home/jovyan", kube_context="prod")
    assert KernelSettings.from_dict(s.to_dict()) == s


def test_quantity_keeps_the_exact_byte_count() -> None:
    assert [kube_manifests.quantity(x) for x in ("512m", "2g", "1536m", "100k", "1000")] == [
        "512Mi",
        "2Gi",
        "1536Mi",
        "100Ki",
        "1000",
    ]
    assert [kube_manifests.cpu_quantity(x) for x in (1.0, 0.5, 2.25)] == ["1", "500m", "2250m"]


def test_show_as_command_keeps_the_kubernetes_options(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """setup --kubernetes ... -> show --as-command gives the same options back."""
    import shlex

    from jupyter_docker_kernel import cli

    argv = ["setup", "--name", "pods", "--user", "--skip-checks", "--kubernetes",
            "--namespace", NS, "--kube-context", "prod", "--kube-pull", "Always",
            "--kube-pvc", "claim-alice:/home/jovyan", "--provisioner"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["show", "pods", "--as-command"]) == 0
    line = shlex.split(capsys.readouterr().out)
    for option, value in (
        ("--namespace", NS),
        ("--kube-context", "prod"),
        ("--kube-pull", "Always"),
        ("--kube-pvc", "claim-alice:/home/jovyan"),
    ):
        assert line[line.index(option) + 1] == value
    assert "--kubernetes" in line


# -- PodSecurity "restricted" (what the namespace label makes the API server enforce) ---------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}  # fmt: skip


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' baseline and restricted rules (Kubernetes 1.25+), as
    written in their documentation, for the fields a pod of ours can set."""
    spec = pod["spec"]
    psc = spec.get("securityContext") or {}
    out = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {vol['name']}: {kinds}")
    for ctr in spec["containers"] + spec.get("initContainers", []):
        sc = ctr.get("securityContext") or {}
        name = ctr["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities not dropped")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities added")
        if any(p.get("hostPort") for p in ctr.get("ports") or []):
            out.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
    return out


@pytest.mark.parametrize(
    "kw",
    [{}, {"workdir": "none"}, {"workdir": "mount", "kube_pvc": "c:/home/jovyan"}],
    ids=["copy", "none", "pvc"],
)
def test_pod_satisfies_the_pod_security_restricted_profile(kw: dict[str, Any]) -> None:
    s = settings(**kw)
    assert restricted_violations(kube_manifests.render_pod(s, launch())) == []


def test_restricted_check_catches_a_pod_that_breaks_it() -> None:
    pod = json.loads(json.dumps(POD))
    pod["spec"]["hostPID"] = True
    pod["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    assert restricted_violations(pod) == [
        "hostPID",
        "volume h: {'hostPath'}",
        "kernel: capabilities added",
    ]
