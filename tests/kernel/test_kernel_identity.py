"""In a real kernel: the kernel id comes from the connection file and survives a restart,
and a graceful restart leaves no workspace folder behind."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel, wait_until

CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"


def test_kernel_id_is_the_connection_files_and_a_restart_keeps_it_and_leaves_no_folder(
        profiles_file: Path, tmp_path: Path) -> None:
    workspaces = tmp_path / "ws"
    k = Kernel(kernel_env(profiles_file, workspaces))
    try:
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        assert k.execute("%%sandbox bash\necho hi > f.txt").status == "ok"
        before = k.execute(f"print({CLIENT}.identity.kernel_id, {CLIENT}.id)").stdout.split()
        assert Path(k.manager.connection_file).stem.removeprefix("kernel-") == before[0]
        folders = list(workspaces.glob(f"kernel-*-{before[1]}"))
        assert len(folders) == 1
        k.manager.restart_kernel(now=False)
        k.client.wait_for_ready(timeout=60)
        assert wait_until(lambda: not folders[0].exists(), 30), "the restart left its workspace"
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        after = k.execute(f"print({CLIENT}.identity.kernel_id, {CLIENT}.id)").stdout.split()
        assert after[0] == before[0] and after[1] != before[1]
    finally:
        k.shutdown()
