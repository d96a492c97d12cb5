"""The hostile suites against a kernel pod: their test bodies, run once on the pod's container.

SIMULATED CONTROL PLANE, REAL KERNEL (as tests/test_kube_story.py): kmock's in-memory API
server with the Docker kubelet (tests/pods.DockerKubelet runs each created V1Pod's exact
container under Docker, on an internal network whose address is the pod IP). The
kernelspecs here are `setup --kubernetes` ones with the hostile limits (HOSTILE_LIMITS),
started the way Jupyter starts any: KernelManager -> argv launcher -> resident helper ->
Container -> KubeBackend -> the API -> the kubelet; the client talks to kube_proxy's
loopback ports, the proxy CurveZMQ to the pod.

The bodies are NOT copied: the hostile modules' test functions are imported below and
collected again in this module, where the fixtures they ask for (`hostile_kernel`,
`runtime`, `spawner`, `copy_kernel`, ...) are this module's: Kubernetes kernelspecs on the
simulated cluster, under runc only (a pod's runtime is its RuntimeClass; gVisor is the
hostile suites' own variant, not repeated here). Each hostile test is either imported
(`RUN`) or listed in NOT_FOR_PODS with why it does not apply to a pod;
test_every_hostile_case_is_run_on_a_pod_or_says_why_not fails when a hostile test is added
and not classified here. The module runs once, not per variant.
"""

from __future__ import annotations

import ast
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import kube_manifests

pytest.importorskip("kmock", reason="kmock needs Python 3.11+")
pytest.importorskip("kubernetes")

from tests import test_hostile_access, test_hostile_resources
from tests.broker_env import Runtime
from tests.conftest import HOSTILE_LIMITS, install_kernel
from tests.test_hostile_access import (  # noqa: F401 - collected here, with our fixtures
    copied,
    copy_host,
    namespaces,
    probe,
    probe_host,
    test_b05_the_docker_api_is_not_in_the_container,
    test_b07_no_vsock_socket_through_the_i386_abi,
    test_b07_raw_and_packet_sockets_are_refused,
    test_b07_vsock_sockets_are_refused,
    test_c01_a_host_file_outside_the_mounts_does_not_exist_inside,
    test_c02_path_traversal_from_the_work_dir_stays_in_the_container,
    test_c03_writing_outside_the_mounts_fails,
    test_c04_files_left_in_tmp_and_home_are_gone_after_a_restart,
    test_c05_a_planted_symlink_in_a_mounted_work_dir_resolves_inside_the_container,
    test_c05_copy_workdir_copies_symlinks_as_links_never_their_targets,
    test_c05_nothing_the_kernel_writes_in_its_copy_reaches_the_source,
    test_c06_renames_and_link_swaps_in_the_copy_leave_the_host_unchanged,
    test_c07_a_fifo_in_the_source_dir_does_not_hang_copy_workdir,
    test_c07_device_nodes_for_host_memory_and_disks_cannot_be_made_or_opened,
    test_c08_hard_links_to_files_the_kernel_does_not_own_fail,
    test_c10_the_connection_file_cannot_be_rewritten,
    test_c11_with_copy_workdir_the_gradebook_is_untouched_by_the_kernel,
    test_c12_hostile_names_in_the_source_dir_are_copied_intact,
    test_c12_the_kernels_raw_output_reaches_the_server_log_without_terminal_escapes,
    test_c13_the_kernels_raw_output_cannot_forge_server_log_lines,
    test_d01_no_new_privileges_is_set,
    test_d01_the_kernel_has_no_capabilities,
    test_d01_the_kernel_is_not_root,
    test_d02_su_and_sudo_do_not_make_root,
    test_d02_the_image_has_no_setuid_or_setgid_files,
    test_d03_becoming_root_fails,
    test_d04_mounting_fails_even_after_unshare,
    test_d04_unshare_is_refused_under_runc_and_virtual_under_runsc,
    test_d05_tracing_pid1_and_the_supervisor_does_not_stop_shutdown,
    test_d07_masked_proc_and_sys_paths_reveal_nothing,
    test_d07_the_hostname_is_the_containers,
    test_d08_the_hosts_environment_does_not_reach_the_kernel,
    test_d09_syscalls_into_unnamespaced_kernel_state_are_blocked,
    test_d10_only_the_minimal_devices_exist,
    test_d11_setting_the_clock_fails,
    test_d11_writing_proc_sys_fails,
    test_g01_the_kernel_runs_under_the_requested_runtime,
)
from tests.test_hostile_resources import (  # noqa: F401 - collected here, with our fixtures
    launcher_log,
    test_a_thousand_bare_connections_neither_crash_the_kernel_nor_lock_its_client_out,
    test_cpu_bomb_and_endless_sleep_are_interrupted,
    test_hmac_key_is_readable_but_not_in_the_environment_and_its_file_is_read_only,
    test_kernel_code_can_hide_its_failures_and_read_hidden_tests,
    test_kernel_ignoring_signals_and_faking_liveness_is_removed_by_shutdown,
    test_malformed_and_replayed_frames_signed_with_the_key_do_not_abort_the_client,
    test_memory_bomb_is_oom_killed_and_the_log_says_so,
    test_message_rate_flood_keeps_host_memory_bounded_and_is_counted,
    test_others_subscribing_to_iopub_do_not_spend_the_kernels_output_budget,
    test_output_flood_stops_the_kernel_and_the_log_says_budget_exceeded,
    test_stdin_prompt_reaches_the_client_only_when_it_allows_stdin,
    test_time_bomb_dies_with_the_kernel_at_its_maximum_lifetime,
)
from tests.test_kube_story import Cluster

# The hostile modules' own marks, which imported bodies do not bring along: the engine,
# and timing-sensitive attacks on a shared machine rerun before a failure counts.
pytestmark = [pytest.mark.docker, pytest.mark.flaky(reruns=2, reruns_delay=2)]

NS = "hostile"
#: The hostile modules whose every test is classified here.
HOSTILE_MODULES = (
    "test_hostile_access",
    "test_hostile_resources",
    "test_hostile_budgets",
    "test_hostile_host",
    "test_hostile_nbgrader",
)

#: Why a hostile case is not for a pod (catalogue H: host-side processes; the nbgrader
#: story: its own local grading spec).
HOST = (
    "catalogue H is about the host-side processes (launcher, provisioner, watchdog, refill, "
    "nbgrader, setup): the same host code for every backend, with local kernelspecs of its own"
)
NBGRADER = (
    "one autograde story with its own local --copy-workdir kernelspec, not rebuilt for pods "
    "(the pod's copy path is the copy cases above and test_kube_story)"
)

GUARD = (
    "guarded by NO_ROUTE_GUARD, which refuses to probe unless the kernel's only interface is "
    "`lo`: a pod has its own interface and IP (the server reaches it there); no route out is "
    "the NetworkPolicy's, simulated here by an internal network and checked by "
    "test_kube_channels (b02-no-route-out, only the kernel's ports listen, nothing connects "
    "out)"
)

NO_SOCKETS = (
    "a pod has no socket dir: the kernel listens on TCP with CurveZMQ (test_kube_channels: a "
    "plaintext or wrong-key client gets nothing)"
)

MOUNTED = (
    "a pod mounts no host directory (its work dir is a copy, or a PVC), and the body checks "
    "what a kernel writes in a MOUNTED work dir from the host side"
)

#: Hostile tests not run against a pod, and why each does not apply to one (or, marked NOT
#: CHECKED, what was seen and is left open).
NOT_FOR_PODS: dict[str, str] = {
    "test_b01_dns_lookups_fail": GUARD,
    "test_b02_the_kernel_has_only_a_loopback_interface_and_no_route": GUARD,
    "test_b02_b04_connecting_outside_fails_at_once": GUARD,
    "test_b03_a_service_on_the_hosts_loopback_is_unreachable": GUARD,
    "test_b03_the_jupyter_ports_on_the_host_are_unreachable": GUARD,
    "test_b06_a_kernel_sees_only_its_own_socket_dir": NO_SOCKETS,
    "test_b08_a_listening_backdoor_is_unreachable_from_the_host": (
        "a pod's IP is reachable by design (the server connects to it); a backdoor's port is kept"
        " out by the NetworkPolicy's ingress ports, which an internal Docker network does not "
        "simulate (it admits the host on every port)"
    ),
    "test_c10_a_replaced_kernel_socket_does_not_redirect_the_relay": NO_SOCKETS,
    "test_c11_a_gradebook_in_a_mounted_work_dir_is_warned_about": MOUNTED,
    "test_c13_a_writable_mount_in_nbgraders_autograded_tree_is_refused": MOUNTED,
    "test_c09_c12_hostile_files_in_a_mounted_work_dir_do_not_break_the_host_side": MOUNTED,
    "test_d12_no_setuid_or_setgid_file_can_be_made_in_the_mounted_work_dir": MOUNTED,
    "test_filling_memory_disk_inodes_and_descriptors_stops_at_each_limit": (
        "a pod mounts no host directory (its work dir is a copy, or a PVC), and the body checks "
        "what a kernel writes in a MOUNTED work dir from the host side (fill.bin); the pod's "
        "tmpfs sizes are emptyDir sizeLimits (test_kube_manifests)"
    ),
    "test_background_processes_die_with_the_container": (
        "a pod mounts no host directory (its work dir is a copy, or a PVC), and the body checks "
        "what a kernel writes in a MOUNTED work dir from the host side (alive.log); the pod's "
        "processes go with its deletion"
    ),
    "test_restart_starts_a_fresh_container_with_no_state": (
        "it expects the mounted work dir to keep the cell's file across the restart; a pod's work"
        " dir is a fresh copy per start (the body's docstring says so of --copy-workdir)"
    ),
    "test_c12_a_deep_tree_in_the_copy_does_not_stop_the_launchers_cleanup": (
        "it checks the host runtime dir holding a local copy; a pod's copy is in its Secret and a"
        " memory emptyDir, both deleted with the pod"
    ),
    "test_d07_only_the_containers_processes_are_visible": (
        "it expects docker-init as PID 1; a pod has no init: PID 1 is the supervisor, which reaps"
        " as init (test_supervise)"
    ),
    "test_d06_killing_pid1_the_supervisor_or_everything_ends_cleanly": (
        "it expects docker-init as PID 1 and the local launcher's 5 s removal; a pod has no init "
        "and its end is the kubelet's (restartPolicy Never). NOT CHECKED for pods: here the "
        "stand-in's container was not gone within 5 s after the supervisor was killed"
    ),
    "test_d06_stopping_the_supervisor_does_not_lift_the_lifetime_limit": (
        "it installs a local kernelspec of its own; a pod's lifetime is also its "
        "activeDeadlineSeconds, the kubelet's"
    ),
    "test_g01_setup_refuses_a_runtime_the_engine_does_not_have": (
        "a local engine check; --kubernetes checks the RuntimeClass instead "
        "(test_kube_backend::test_setup_refuses_a_runtime_class_the_cluster_lacks)"
    ),
    "test_fork_and_thread_bombs_are_bounded_by_the_pids_limit": (
        "a pod spec has no pids limit: the supervisor's RLIMIT_NPROC counts every task of the "
        "kernel's uid on the node (raised to 4096 here, PODS_NPROC); the bomb is bounded (EAGAIN)"
        " but not at the body's 128, and kernels sharing a uid share that bound"
    ),
    "test_writing_into_the_socket_dir_stops_the_kernel_at_once": NO_SOCKETS,
    "test_socket_replaced_by_a_symlink_is_refused_and_its_target_never_reached": NO_SOCKETS,
    "test_copy_workdir_writes_stay_in_a_capped_tmpfs_not_on_the_hosts_disk": (
        "it installs a local kernelspec of its own (copy_limited_kernel); a pod's copy is a "
        "memory emptyDir with a sizeLimit (test_kube_manifests)"
    ),
    "test_fd_level_output_is_counted_and_the_raw_stream_is_capped": (
        "it checks the local container's log driver (none) and the relay's raw stream; a pod's "
        "log is the kubelet's (the stand-in keeps Docker's json-file) and the proxy meters whole "
        "messages"
    ),
    "test_hostile_notebook_metadata_and_outputs_reach_nbclient_as_inert_data": (
        "it compares the container's mounts with a local kernel's (the work dir mounted); a pod "
        "mounts only its Secret and emptyDirs"
    ),
    "test_sigkill_of_the_host_side_mid_cell_removes_a_resisting_kernel": (
        "it reads the local container's launcher-pid label; a pod has it as an annotation, and a "
        "pod whose host side was killed is ended by gc, its owner or activeDeadlineSeconds "
        "(test_kube_backend)"
    ),
    "test_multicore_spin_is_held_to_one_cpu_and_a_sibling_kernel_answers": (
        "NOT CHECKED for pods: it read 0.18 CPUs for the spinning stand-in container from the "
        "engine's cgroup files, where about 1 is expected; the body's cgroup lookup needs a look "
        "for the stand-in. The pod's CPU is requests = limits (test_kube_manifests)"
    ),
    "test_a_flooding_notebook_graded_with_the_profile_stops_at_64_mib": (
        "it installs a local kernelspec of its own (grading_kernel); the argv path's budgets for "
        "pods are the proxy's, run above by the output-flood cases"
    ),
    "test_the_provisioner_enforces_the_launchers_budgets_while_the_bytes_flow": (
        "a provisioner's clients talk straight to the pod over Curve: no relay meters budgets "
        "there (docs/kubernetes.md); the argv path's proxy does (output-flood cases above)"
    ),
    "test_the_source_release_and_submissions_are_byte_identical": NBGRADER,
    "test_each_well_behaved_student_gets_the_right_score": NBGRADER,
    "test_hostile_students_get_their_zero_in_the_gradebook": NBGRADER,
    "test_mallorys_attacks_ran_and_each_was_refused": NBGRADER,
    "test_the_gradebook_is_intact": NBGRADER,
    "test_no_hostile_file_appears_outside_the_kernels_copy": NBGRADER,
    "test_autograde_finishes_in_time_and_leaves_no_container": NBGRADER,
    "test_h01_the_launcher_and_its_pool_refill_never_import_from_the_notebooks_dir": HOST,
    "test_h02_the_provisioner_and_its_refill_never_import_from_the_cwd": HOST,
    "test_h03_nbgrader_autograde_never_imports_a_submitted_json_py": HOST,
    "test_h04_an_old_kernelspec_still_runs_is_flagged_and_is_rewritten": HOST,
    "test_h04_setup_rewrites_our_old_kernelspecs_and_says_so": HOST,
    "test_h05_h06_settings_and_env_values_never_appear_in_ps": HOST,
    "test_h07_a_runtime_base_taken_by_another_user_does_not_stop_kernels": HOST,
}
#: Parametrized cases of tests run here that do not apply to a pod.
NOT_FOR_PODS_CASES: dict[str, str] = {
    "test_c08_hard_links_to_files_the_kernel_does_not_own_fail[host-file]": (
        "the pod's work dir is a copy whose files the kernel's uid owns: no root-only host "
        "file is there to link (the image-file case runs)"
    ),
}
#: Cases that fail on a pod and are the product's gaps (strict xfail: fixing one fails it).
POD_GAPS: dict[str, str] = {}


class OwnUid:
    """Equal to any uid of kube_manifests.own_uid's range: a pod that keeps nothing runs
    as a uid of its own (derived from its kernel id), which D01's body cannot name."""

    def __eq__(self, other: object) -> bool:
        base, span = kube_manifests.OWN_UID_BASE, kube_manifests.OWN_UID_SPAN
        return isinstance(other, int) and base <= other < base + span

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"a uid in [{kube_manifests.OWN_UID_BASE}, +{kube_manifests.OWN_UID_SPAN})"


@pytest.fixture(autouse=True)
def _pod_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    """D01 on a pod expects the pod's own uid, not this host's 65534."""
    monkeypatch.setattr(test_hostile_access, "kernel_uid", lambda *_: OwnUid())


@pytest.fixture(autouse=True)
def _pod_cases(request: pytest.FixtureRequest) -> None:
    """A parametrized case listed above: skipped with its reason, or a strict xfail."""
    name = request.node.name
    if name in NOT_FOR_PODS_CASES:
        pytest.skip(NOT_FOR_PODS_CASES[name])
    if name in POD_GAPS:
        request.node.add_marker(pytest.mark.xfail(reason=POD_GAPS[name], strict=True))


@pytest.fixture(scope="module")
def kube_cluster(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The simulated cluster for the module, and KUBECONFIG naming it (the resident helper
    gets it with each request, as the argv story's kernels do). Everything it ran is
    removed after the module: containers, network, the API server."""
    root = tmp_path_factory.mktemp("kubelet")
    root.chmod(0o755)
    sim = Cluster(root)
    config = root.parent / f"kubeconfig-{secrets.token_hex(3)}"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "sim", "cluster": {"server": sim.server.url}}],
                "users": [{"name": "sim", "user": {"token": "t"}}],
                "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}],
                "current-context": "sim",
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(config))
        try:
            yield sim
        finally:
            sim.close()


#: A pod's process cap is the supervisor's RLIMIT_NPROC, which counts every task of the
#: kernel's uid on the node (no user namespace): other tests' kernels on this machine run
#: as the same uid (65534), and their threads alone can exceed the hostile 128, so that no
#: pod could start a thread. The pods here get 4096 (the last --pids-limit wins); see
#: NOT_FOR_PODS' fork-bomb entry and docs/kubernetes.md ("What the admin must trust").
PODS_NPROC = ("--pids-limit", "4096")


def kube_kernel(name: str, image: str, *extra: str) -> str:
    """`setup --kubernetes` with the hostile limits (and `extra`) as kernelspec `name`."""
    install_kernel(
        name, image, "--kubernetes", "--namespace", NS, *HOSTILE_LIMITS, *PODS_NPROC, *extra
    )
    return name


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """The pod's runtime: the node's default (a RuntimeClass is the admin's; gVisor is
    the hostile suites' own variant)."""
    return Runtime("runc")


@pytest.fixture(scope="module")
def hostile_kernel(kube_cluster: Cluster, kernel_image: str) -> str:
    """The hostile suites' kernelspec, as a pod: --copy-workdir (a pod mounts no host
    directory; the copy is the grading setup the hostile suites recommend)."""
    return kube_kernel("jdk-test-hostile-kube", kernel_image, "--copy-workdir")


@pytest.fixture(scope="module")
def short_lived_kernel(kube_cluster: Cluster, kernel_image: str) -> str:
    """test_hostile_resources' spec with a LIFETIME cap, as a pod."""
    lifetime = str(test_hostile_resources.LIFETIME)
    return kube_kernel("jdk-test-hostile-kube-short", kernel_image, "--copy-workdir",
                       "--max-lifetime", lifetime)  # fmt: skip


@pytest.fixture(scope="module")
def copy_kernel(hostile_kernel: str) -> str:
    """test_hostile_access's --copy-workdir kernel: the same spec here."""
    return hostile_kernel


@pytest.fixture(scope="module")
def spawner(
    kube_cluster: Cluster, kernel_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[test_hostile_access.Session]:
    """test_hostile_access's spawner (a higher pids limit for probes that start
    processes), as a pod."""
    name = kube_kernel("jdk-test-hostile-kube-spawn", kernel_image, "--no-workdir")
    base = tmp_path_factory.mktemp("spawner")
    work = test_hostile_access.private_dir(base / "work")
    with test_hostile_access.session_of(name, work, base / "log") as session:
        yield session


def hostile_tests(module: str) -> list[str]:
    """The names of `module`'s test functions (read from its source: importing it here
    would collect them all)."""
    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


def test_every_hostile_case_is_run_on_a_pod_or_says_why_not() -> None:
    """Each hostile test is collected here (imported) or in NOT_FOR_PODS with a reason;
    nothing is in both, and no reason names a test that does not exist."""
    run = {name for name in globals() if name.startswith("test_") and name in ALL_HOSTILE}
    unclassified = sorted(ALL_HOSTILE - run - set(NOT_FOR_PODS))
    assert unclassified == []
    assert sorted(run & set(NOT_FOR_PODS)) == []
    assert sorted(set(NOT_FOR_PODS) - ALL_HOSTILE) == []
    assert all(len(reason) > 20 for reason in NOT_FOR_PODS.values())
    cases = {name.partition("[")[0] for name in [*NOT_FOR_PODS_CASES, *POD_GAPS]}
    assert sorted(cases - run) == []


ALL_HOSTILE = {name for module in HOSTILE_MODULES for name in hostile_tests(module)}
_ = test_hostile_resources  # the module's helpers are the bodies' own
