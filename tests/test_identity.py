"""Identity: ids, tags, the kernel id, and the 0600 store of adoption secrets."""

from __future__ import annotations

import stat
from pathlib import Path

from sandbox_magics import identity
from sandbox_magics.identity import Identity, SecretStore


def test_every_identity_has_its_own_client_id_and_tags_name_the_owner() -> None:
    first, second = Identity(), Identity()
    assert first.client_id != second.client_id and len(first.client_id) == 8
    tags = first.tags("gpu", now=1234.9)
    assert tags[identity.CLIENT] == first.client_id and tags[identity.PROFILE] == "gpu"
    assert tags[identity.KERNEL] == first.kernel_id == second.kernel_id
    assert identity.heartbeat_of(tags) == 1234.0 and tags[identity.VERSION] == identity.version()
    assert identity.heartbeat_of({}) is None and identity.heartbeat_of({identity.HEARTBEAT: "x"}) is None


def test_secret_store_is_private_to_the_user_and_keeps_secrets_out_of_its_repr(tmp_path: Path) -> None:
    store = SecretStore("1b7f-kernel/../x", root=tmp_path)
    store.put("sbx-1", "s3cret-token")
    store.put("sbx-2", "other")
    assert store.path.parent == tmp_path / "sandbox_magics"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert "s3cret" not in repr(store)
    assert SecretStore("1b7f-kernel/../x", root=tmp_path).get("sbx-1") == "s3cret-token"
    store.drop("sbx-1")
    assert store.get("sbx-1") is None and store.get("sbx-2") == "other"
    store.path.write_text("{not json")
    assert store.get("sbx-2") is None


def test_secret_store_loses_no_update_when_two_clients_write_at_once(tmp_path: Path) -> None:
    import threading
    stores = [SecretStore("k", root=tmp_path) for _ in range(4)]

    def put_many(store: SecretStore, offset: int) -> None:
        for i in range(25):
            store.put(f"sbx-{offset + i}", "x")

    threads = [threading.Thread(target=put_many, args=(s, 100 * n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stores[0]._read()) == 100
